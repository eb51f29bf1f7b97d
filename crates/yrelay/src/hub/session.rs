//! A subscriber's handle on a live document, owned by one connection (or one
//! event stream). Dropping it unsubscribes and announces the removal of the
//! awareness clients it introduced.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use tokio::sync::mpsc;
use yrelay_protocol::DocAddress;
use yrelay_protocol::update::CheckedUpdate;
use yrs::sync::AwarenessUpdate;
use yrs::updates::encoder::Encode;
use yrs::{ReadTxn, StateVector, Transact};

use super::awareness::{AwarenessClients, fresh_awareness};
use super::live::{LiveDoc, Seen, Subscriber};
use super::{Ack, CloseReason, DocEvent, DocHub, HubError, Writer};
use crate::log::Origin;

pub struct Session {
    hub: DocHub,
    doc: Arc<LiveDoc>,
    origin: Origin,
    /// The signed-in user of the connection, if any.
    editor: Option<Arc<str>>,
    events: mpsc::Receiver<DocEvent>,
    closed: Arc<OnceLock<CloseReason>>,
    /// Awareness clients this session introduced and has not removed.
    awareness_clients: AwarenessClients,
}

impl Session {
    /// Registers a subscriber; `None` if the document was unloaded meanwhile.
    pub(super) fn attach(hub: DocHub, doc: Arc<LiveDoc>, origin: Origin) -> Option<Self> {
        let (tx, events) = mpsc::channel(hub.inner.config.subscriber_queue);
        let closed = Arc::new(OnceLock::new());
        {
            let mut state = doc.lock();
            if state.closed {
                return None;
            }
            state.subscribers.insert(
                origin.connection,
                Subscriber {
                    tx,
                    closed: closed.clone(),
                    seen: Seen {
                        transport: "rest",
                        user: None,
                        since_ms: crate::clock::now_ms(),
                    },
                },
            );
            state.idle_since = None;
        }
        Some(Self {
            hub,
            doc,
            origin,
            editor: None,
            events,
            closed,
            awareness_clients: AwarenessClients::default(),
        })
    }

    /// Names the signed-in user its updates are written by.
    pub fn with_editor(mut self, editor: Option<String>) -> Self {
        self.editor = editor.map(Arc::from);
        let editor = self.editor.clone();
        self.seen(|seen| seen.user = editor);
        self
    }

    /// Names the transport the inspector lists the connection under.
    pub fn via(self, transport: &'static str) -> Self {
        self.seen(|seen| seen.transport = transport);
        self
    }

    fn seen(&self, change: impl FnOnce(&mut Seen)) {
        if let Some(subscriber) = self.doc.lock().subscribers.get_mut(&self.origin.connection) {
            change(&mut subscriber.seen);
        }
    }

    pub fn addr(&self) -> &DocAddress {
        self.doc.addr()
    }

    /// The cursor of the last log entry the replica has applied.
    pub fn cursor(&self) -> Option<crate::log::LogCursor> {
        self.doc.lock().cursor
    }

    /// The replica's state vector (v1).
    pub fn state_vector(&self) -> Vec<u8> {
        let state = self.doc.lock();
        let sv = state.awareness.doc().transact().state_vector();
        sv.encode_v1()
    }

    /// What a peer with state vector `sv` misses (v1 update); for a new
    /// peer (empty `sv`) the replica's shared encode.
    pub fn diff(&self, sv: &StateVector) -> Arc<[u8]> {
        let mut state = self.doc.lock();
        if sv.is_empty() {
            return state.full_state();
        }
        state.awareness.doc().transact().encode_diff_v1(sv).into()
    }

    /// The current awareness states (an encoded awareness update), if any.
    pub fn awareness(&self) -> Option<Vec<u8>> {
        fresh_awareness(&self.doc.lock().awareness, &Default::default())
    }

    /// The next event for this subscriber, or why the hub ended it.
    pub async fn next_event(&mut self) -> Result<DocEvent, CloseReason> {
        match self.events.recv().await {
            Some(event) => Ok(event),
            None => Err(self.closed.get().copied().unwrap_or(CloseReason::Resync)),
        }
    }

    /// The next event if one is waiting (to batch several into one message).
    pub fn try_next_event(&mut self) -> Option<DocEvent> {
        self.events.try_recv().ok()
    }

    /// Makes `update` durable; the returned future owns what it needs, so a
    /// connection can keep several in flight while it goes on reading.
    pub fn submit_update(
        &self,
        update: CheckedUpdate,
        transport: &'static str,
    ) -> impl Future<Output = Result<Ack, HubError>> + Send + 'static {
        let hub = self.hub.clone();
        let doc = self.doc.clone();
        let writer = Writer {
            origin: Some(self.origin),
            editor: self.editor.clone(),
        };
        async move { hub.submit_to(&doc, update, writer, transport).await }
    }

    /// Sends a stateless message to the document's other connections, on
    /// every instance.
    pub async fn submit_stateless(&self, payload: String) -> Result<(), HubError> {
        self.hub
            .broadcast_stateless(self.addr(), payload, Some(self.origin))
            .await
    }

    /// Relays an (already validated) awareness update to every subscriber of
    /// the document, on every instance.
    pub async fn submit_awareness(
        &mut self,
        raw: Vec<u8>,
        update: &AwarenessUpdate,
    ) -> Result<(), HubError> {
        self.hub
            .publish_awareness(
                self.addr(),
                raw,
                update,
                Some(self.origin),
                &self.awareness_clients,
            )
            .await?;
        self.awareness_clients.record(update);
        Ok(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        {
            let mut state = self.doc.lock();
            state.subscribers.remove(&self.origin.connection);
            if state.subscribers.is_empty() {
                state.idle_since = Some(Instant::now());
            }
        }
        self.hub
            .forget_awareness(&self.doc, &self.awareness_clients, self.origin);
    }
}
