//! Resuming a live document's log feed when the log no longer holds its
//! cursor: what another instance appends meanwhile still reaches it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
use yrelay_protocol::DocAddress;
use yrs::{Doc, Text, Transact};

use super::{AwarenessBounds, DocEvent, DocHub, Durability, HubConfig};
use crate::log::{
    Coordination, EntryKind, LocalLog, Log, LogCursor, LogEntry, LogError, Origin, Subscription,
};

/// A local log whose first feed can be broken, whose next read after that
/// claims the cursor was trimmed, and whose read after that lets "another
/// instance" append an update just after it has read: the moment between
/// catching up from the store and subscribing again.
struct GappyLog {
    inner: LocalLog,
    break_first: Mutex<Option<oneshot::Receiver<()>>>,
    reads_after_break: AtomicUsize,
    broken: Arc<std::sync::atomic::AtomicBool>,
    late_update: Vec<u8>,
}

#[async_trait]
impl Log for GappyLog {
    fn name(&self) -> &'static str {
        "gappy"
    }

    fn is_durable(&self) -> bool {
        self.inner.is_durable()
    }

    async fn append_update(
        &self,
        addr: &DocAddress,
        update: Arc<[u8]>,
        origin: Option<Origin>,
        editor: Option<Arc<str>>,
    ) -> Result<LogEntry, LogError> {
        self.inner.append_update(addr, update, origin, editor).await
    }

    async fn publish(
        &self,
        addr: &DocAddress,
        kind: EntryKind,
        payload: Arc<[u8]>,
        origin: Option<Origin>,
    ) -> Result<(), LogError> {
        self.inner.publish(addr, kind, payload, origin).await
    }

    async fn subscribe(&self, addr: &DocAddress) -> Result<Subscription, LogError> {
        let mut feed = self.inner.subscribe(addr).await?;
        let mut stop = self.break_first.lock().unwrap().take();
        let broken = self.broken.clone();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let entry = match stop.as_mut() {
                    Some(stop) => tokio::select! {
                        entry = feed.recv() => entry,
                        _ = stop => {
                            broken.store(true, Ordering::SeqCst);
                            return;
                        }
                    },
                    None => feed.recv().await,
                };
                let Some(entry) = entry else { return };
                if tx.send(entry).await.is_err() {
                    return;
                }
            }
        });
        Ok(Subscription::new(rx, Box::new(())))
    }

    async fn read(
        &self,
        addr: &DocAddress,
        after: Option<LogCursor>,
    ) -> Result<Option<Vec<LogEntry>>, LogError> {
        if !self.broken.load(Ordering::SeqCst) {
            return self.inner.read(addr, after).await;
        }
        match self.reads_after_break.fetch_add(1, Ordering::SeqCst) {
            0 => Ok(None),
            1 => {
                let read = self.inner.read(addr, after).await;
                let late = Arc::from(self.late_update.as_slice());
                self.inner.append_update(addr, late, None, None).await?;
                read
            }
            _ => self.inner.read(addr, after).await,
        }
    }

    async fn trim(&self, addr: &DocAddress, upto: LogCursor) -> Result<(), LogError> {
        self.inner.trim(addr, upto).await
    }

    async fn delete(&self, addr: &DocAddress) -> Result<(), LogError> {
        self.inner.delete(addr).await
    }

    async fn ping(&self) -> Result<(), LogError> {
        Ok(())
    }

    fn coordination(&self) -> &dyn Coordination {
        self.inner.coordination()
    }
}

#[tokio::test]
async fn an_update_appended_while_resuming_from_the_store_is_not_missed() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("y.db").display());
    let store = crate::store::open(&url).await.unwrap();
    let late = Doc::with_client_id(77);
    let text = late.get_or_insert_text("text");
    let late_update = {
        let mut txn = late.transact_mut();
        text.push(&mut txn, "appended by another instance");
        txn.encode_update_v1()
    };
    let (break_feed, stop) = oneshot::channel();
    let log = Arc::new(GappyLog {
        inner: LocalLog::new(100),
        break_first: Mutex::new(Some(stop)),
        reads_after_break: AtomicUsize::new(0),
        broken: Arc::default(),
        late_update: late_update.clone(),
    });
    let config = HubConfig {
        durability: Durability::Log,
        idle_unload: Duration::from_secs(60),
        subscriber_queue: 64,
        awareness: AwarenessBounds {
            per_connection: 8,
            per_doc: 100,
        },
        instance: crate::vocab::new_instance_id(),
        history_exact: Duration::from_secs(60),
        hooks: None,
    };
    let hub = DocHub::new(store, log, config);
    let addr = DocAddress::parse("s", "gap").unwrap();
    let mut session = hub.join(&addr).await.unwrap();
    break_feed.send(()).unwrap();
    let delivered = async {
        loop {
            match session.next_event().await {
                Ok(DocEvent::Update(update)) if *update.payload == *late_update => return,
                Ok(_) => {}
                Err(reason) => panic!("session ended: {reason:?}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), delivered)
        .await
        .expect("the update appended during the resume reaches the session");
}
