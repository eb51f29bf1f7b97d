//! The in-process log of the embedded mode: cursors from one process-wide
//! sequence, a bounded window of recent entries per document (for resuming by
//! cursor), fan-out to subscribers in this process. Not durable: in this mode
//! the store commit is the acknowledgement.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};

use async_trait::async_trait;
use tokio::sync::mpsc;
use yrelay_protocol::DocAddress;

use super::{Coordination, EntryKind, Log, LogCursor, LogEntry, LogError, Origin, Subscription};
use crate::clock::now_ms;

/// How many entries a subscriber may have queued before its feed is ended.
const FEED_BOUND: usize = 4096;

pub struct LocalLog {
    inner: Arc<Mutex<Inner>>,
    /// How many recent update entries each live document keeps for `read`.
    retain: usize,
}

struct Inner {
    last: LogCursor,
    next_subscriber: u64,
    streams: HashMap<DocAddress, Stream>,
}

struct Stream {
    /// Everything at or before `floor` is not held by this stream.
    floor: LogCursor,
    entries: VecDeque<LogEntry>,
    subscribers: Vec<(u64, mpsc::Sender<LogEntry>)>,
}

impl Inner {
    fn next_cursor(&mut self) -> LogCursor {
        let now = now_ms() as u64;
        self.last = if now > self.last.ms {
            LogCursor { ms: now, seq: 0 }
        } else {
            LogCursor {
                ms: self.last.ms,
                seq: self.last.seq + 1,
            }
        };
        self.last
    }

    fn fan_out(&mut self, addr: &DocAddress, entry: &LogEntry) {
        if let Some(stream) = self.streams.get_mut(addr) {
            // A full or closed feed is dropped: its owner sees the end and catches up.
            stream
                .subscribers
                .retain(|(_, tx)| tx.try_send(entry.clone()).is_ok());
        }
    }
}

impl LocalLog {
    pub fn new(retain: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                // Nothing from before this process is held: a cursor from an
                // earlier run must get a full sync, not a partial replay.
                last: LogCursor {
                    ms: now_ms() as u64,
                    seq: 0,
                },
                next_subscriber: 0,
                streams: HashMap::new(),
            })),
            retain,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Unregisters a subscriber; the stream goes when its last subscriber does.
struct Unsubscribe {
    inner: Weak<Mutex<Inner>>,
    addr: DocAddress,
    id: u64,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        let mut inner = inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(stream) = inner.streams.get_mut(&self.addr) {
            stream.subscribers.retain(|(id, _)| *id != self.id);
            if stream.subscribers.is_empty() {
                inner.streams.remove(&self.addr);
            }
        }
    }
}

#[async_trait]
impl Log for LocalLog {
    fn name(&self) -> &'static str {
        "local"
    }

    fn is_durable(&self) -> bool {
        false
    }

    async fn append_update(
        &self,
        addr: &DocAddress,
        update: Arc<[u8]>,
        origin: Option<Origin>,
        editor: Option<Arc<str>>,
    ) -> Result<LogEntry, LogError> {
        let mut inner = self.lock();
        let cursor = inner.next_cursor();
        let entry = LogEntry {
            cursor: Some(cursor),
            kind: EntryKind::Update,
            origin,
            editor,
            payload: update,
            timestamp_ms: cursor.ms as i64,
        };
        inner.fan_out(addr, &entry);
        if let Some(stream) = inner.streams.get_mut(addr) {
            stream.entries.push_back(entry.clone());
            while stream.entries.len() > self.retain {
                if let Some(old) = stream.entries.pop_front() {
                    stream.floor = old.cursor.unwrap_or(stream.floor);
                }
            }
        }
        Ok(entry)
    }

    async fn publish(
        &self,
        addr: &DocAddress,
        kind: EntryKind,
        payload: Arc<[u8]>,
        origin: Option<Origin>,
    ) -> Result<(), LogError> {
        let entry = LogEntry {
            cursor: None,
            kind,
            origin,
            editor: None,
            payload,
            timestamp_ms: now_ms(),
        };
        self.lock().fan_out(addr, &entry);
        Ok(())
    }

    async fn subscribe(&self, addr: &DocAddress) -> Result<Subscription, LogError> {
        let (tx, rx) = mpsc::channel(FEED_BOUND);
        let mut inner = self.lock();
        let id = inner.next_subscriber;
        inner.next_subscriber += 1;
        let floor = inner.last;
        inner
            .streams
            .entry(addr.clone())
            .or_insert_with(|| Stream {
                floor,
                entries: VecDeque::new(),
                subscribers: Vec::new(),
            })
            .subscribers
            .push((id, tx));
        let guard = Unsubscribe {
            inner: Arc::downgrade(&self.inner),
            addr: addr.clone(),
            id,
        };
        Ok(Subscription::new(rx, Box::new(guard)))
    }

    async fn read(
        &self,
        addr: &DocAddress,
        after: Option<LogCursor>,
    ) -> Result<Option<Vec<LogEntry>>, LogError> {
        let inner = self.lock();
        let Some(stream) = inner.streams.get(addr) else {
            // Nothing held: only "everything" can be answered (with nothing).
            return Ok(after.is_none().then(Vec::new));
        };
        match after {
            Some(c) if c < stream.floor => Ok(None),
            _ => Ok(Some(
                stream
                    .entries
                    .iter()
                    .filter(|e| after.is_none_or(|a| e.cursor.is_some_and(|c| c > a)))
                    .cloned()
                    .collect(),
            )),
        }
    }

    async fn trim(&self, addr: &DocAddress, upto: LogCursor) -> Result<(), LogError> {
        let mut inner = self.lock();
        if let Some(stream) = inner.streams.get_mut(addr) {
            while stream
                .entries
                .front()
                .is_some_and(|e| e.cursor.is_some_and(|c| c <= upto))
            {
                stream.entries.pop_front();
            }
            stream.floor = stream.floor.max(upto);
        }
        Ok(())
    }

    async fn delete(&self, addr: &DocAddress) -> Result<(), LogError> {
        let mut inner = self.lock();
        let last = inner.last;
        if let Some(stream) = inner.streams.get_mut(addr) {
            stream.entries.clear();
            stream.floor = last;
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), LogError> {
        Ok(())
    }

    fn coordination(&self) -> &dyn Coordination {
        &Solo
    }
}

/// One process: nothing is owed (the store commit precedes every append)
/// and its one compactor task needs no lease.
struct Solo;

#[async_trait]
impl Coordination for Solo {
    async fn backlog(&self, _limit: usize) -> Result<Vec<DocAddress>, LogError> {
        // The store commit precedes every append: nothing is ever owed.
        Ok(Vec::new())
    }

    async fn clear_backlog(
        &self,
        _addr: &DocAddress,
        _persisted: Option<LogCursor>,
    ) -> Result<(), LogError> {
        Ok(())
    }

    async fn try_lease(
        &self,
        _addr: &DocAddress,
        _holder: &str,
        _ttl: std::time::Duration,
    ) -> Result<bool, LogError> {
        // One process, one compactor task.
        Ok(true)
    }

    async fn release_lease(&self, _addr: &DocAddress, _holder: &str) -> Result<(), LogError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> DocAddress {
        DocAddress::parse("s", "d").unwrap()
    }

    #[tokio::test]
    async fn subscribers_see_appends_in_cursor_order_and_can_resume() {
        let log = LocalLog::new(2);
        let mut sub = log.subscribe(&addr()).await.unwrap();
        let mut cursors = Vec::new();
        for i in 0..3u8 {
            let e = log
                .append_update(&addr(), Arc::from(vec![i]), None, None)
                .await
                .unwrap();
            cursors.push(e.cursor.unwrap());
        }
        for (i, c) in cursors.iter().enumerate() {
            let e = sub.recv().await.unwrap();
            assert_eq!(e.cursor, Some(*c));
            assert_eq!(&*e.payload, &[i as u8]);
        }
        assert!(cursors.windows(2).all(|w| w[0] < w[1]));
        // retains the last two: resuming after the first works, before it does not
        let tail = log.read(&addr(), Some(cursors[0])).await.unwrap().unwrap();
        assert_eq!(tail.len(), 2);
        assert!(
            log.read(&addr(), Some(LogCursor { ms: 0, seq: 0 }))
                .await
                .unwrap()
                .is_none()
        );
        log.trim(&addr(), cursors[1]).await.unwrap();
        assert!(log.read(&addr(), Some(cursors[0])).await.unwrap().is_none());
        assert_eq!(
            log.read(&addr(), Some(cursors[1]))
                .await
                .unwrap()
                .unwrap()
                .len(),
            1
        );
    }

    #[tokio::test]
    async fn a_full_feed_ends_instead_of_dropping() {
        let log = LocalLog::new(10);
        let mut sub = log.subscribe(&addr()).await.unwrap();
        for _ in 0..FEED_BOUND + 1 {
            log.append_update(&addr(), Arc::from(vec![1u8]), None, None)
                .await
                .unwrap();
        }
        let mut received = 0;
        while sub.recv().await.is_some() {
            received += 1;
        }
        assert_eq!(received, FEED_BOUND);
    }

    #[test]
    fn cursor_text_round_trips() {
        let c = LogCursor {
            ms: 1700000000000,
            seq: 7,
        };
        assert_eq!(c.to_string().parse::<LogCursor>().unwrap(), c);
        assert!("x-1".parse::<LogCursor>().is_err());
    }
}
