//! One live document: replica, cursor, subscribers and the events they get.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use yrelay_protocol::DocAddress;
use yrelay_protocol::nesting::{MAX_TYPE_DEPTH, Nesting};
use yrelay_protocol::update::apply_update;
use yrs::sync::{Awareness, AwarenessUpdate};
use yrs::updates::decoder::Decode;
use yrs::{Doc, ReadTxn, Transact};

use super::HubError;
use super::awareness::PresenceTick;
use super::history::History;
use crate::log::{EntryKind, Log, LogCursor, LogEntry, Origin, Subscription};
use crate::metrics;
use crate::store::Store;

/// `doc.updated` events of one document, at most this often per instance.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(1);

/// What a space's event feed says about one of its documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpaceEvent {
    Created,
    Updated,
    Renamed,
    Deleted,
    Undeleted,
}

impl SpaceEvent {
    pub fn name(self) -> &'static str {
        match self {
            SpaceEvent::Created => "doc.created",
            SpaceEvent::Updated => "doc.updated",
            SpaceEvent::Renamed => "doc.renamed",
            SpaceEvent::Deleted => "doc.deleted",
            SpaceEvent::Undeleted => "doc.undeleted",
        }
    }
}

/// An event for a subscriber: one pointer wide, shared by every
/// subscriber (each connection's queue holds its events inline).
#[derive(Debug, Clone)]
pub enum DocEvent {
    Update(Arc<UpdateEvent>),
    Awareness(Arc<AwarenessEvent>),
    /// A stateless message (Hocuspocus): an app's string, relayed to every
    /// other connection of the document and never stored.
    Stateless {
        payload: Arc<str>,
    },
}

/// A document update (v1), with its log cursor.
#[derive(Debug)]
pub struct UpdateEvent {
    pub payload: Arc<[u8]>,
    pub cursor: Option<LogCursor>,
    pub timestamp_ms: i64,
    /// The connection that wrote it (`None`: unknown, or a catch-up).
    pub origin: Option<Origin>,
    /// The signed-in user who wrote it, if known.
    pub editor: Option<Arc<str>>,
}

/// An awareness update.
#[derive(Debug)]
pub struct AwarenessEvent {
    pub payload: Arc<[u8]>,
    /// The connection every state in it came from (`None`: several, or
    /// unknown).
    pub origin: Option<Origin>,
}

/// Why the hub ended a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Its queue was full: it could not keep up. It may reconnect and resync.
    SlowConsumer,
    /// The document's log feed broke and could not be resumed: resync.
    Resync,
    /// The server is shutting down.
    ShuttingDown,
    /// The document was deleted.
    Deleted,
}

/// A change of the document itself, relayed to every instance through the
/// log (as a notice entry, JSON).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DocNotice {
    /// The blocked flag changed: a blocked document accepts no updates.
    Blocked(bool),
    /// The document was deleted: its subscribers are closed and every
    /// instance drops its replica.
    Deleted,
    /// The document came back from the trash: every instance drops its
    /// (empty) replica and its subscribers resync.
    Undeleted,
    /// A stateless message for the document's connections.
    Stateless(String),
}

pub(super) struct Subscriber {
    pub tx: mpsc::Sender<DocEvent>,
    pub closed: Arc<OnceLock<CloseReason>>,
    /// What the inspector shows of the connection.
    pub seen: Seen,
}

/// A connection as the inspector lists it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Its transport (`websocket`, `sse`, `socketio`, `hocuspocus`; `rest`
    /// for a request that reads the replica).
    pub transport: &'static str,
    /// The signed-in user, if any.
    pub user: Option<Arc<str>>,
    /// When it joined the document (ms since the epoch).
    pub since_ms: i64,
}

pub(super) struct DocState {
    /// The replica lives inside the awareness state (`awareness.doc()`).
    pub awareness: Awareness,
    pub cursor: Option<LogCursor>,
    pub subscribers: HashMap<u64, Subscriber>,
    pub idle_since: Option<Instant>,
    /// Set once the document is unloaded: nobody may attach any more.
    pub closed: bool,
    /// A blocked document accepts no updates.
    pub blocked: bool,
    /// When this instance last announced a change of the document to its
    /// space's event feed.
    pub announced: Option<Instant>,
    /// How deep the replica's types nest (updates nesting deeper are refused).
    pub nesting: Nesting,
    /// The document was deleted once: updates that build on what it held
    /// then are refused (they could never show up).
    pub deleted: bool,
    /// The document is in the trash: it is served empty and refuses every
    /// update until it is undeleted.
    pub trashed: bool,
    /// Which connection introduced each awareness client id (`None`: one
    /// without a connection, an SSE POST); only it may change or remove it.
    pub awareness_owners: HashMap<u64, Option<Origin>>,
    /// The whole replica encoded (what a new client misses):
    /// clients joining at once share one encode instead of each making
    /// their own under this lock. Dropped when the document changes, and by
    /// the tail's sweep once no sync holds it.
    pub full_state: Option<Arc<[u8]>>,
    /// Presence changed since it was last sent (sent once per tick).
    pub presence: PresenceTick,
}

pub struct LiveDoc {
    pub(super) addr: DocAddress,
    /// This instance's id: an entry's origin connection is one of ours
    /// only when its instance matches.
    instance: u64,
    state: Mutex<DocState>,
}

impl LiveDoc {
    /// Loads a document: subscribe to its log first, then read the store and
    /// the log after the store's cursor, so no update falls in between.
    pub(super) async fn load(
        store: &Arc<dyn Store>,
        log: &Arc<dyn Log>,
        addr: &DocAddress,
        instance: u64,
    ) -> Result<(Arc<LiveDoc>, Subscription), HubError> {
        let subscription = log.subscribe(addr).await?;
        let history = History::read(store, log, addr).await?;
        let live = Arc::new(LiveDoc {
            addr: addr.clone(),
            instance,
            state: Mutex::new(DocState {
                awareness: Awareness::new(Doc::new()),
                cursor: None,
                subscribers: HashMap::new(),
                idle_since: Some(Instant::now()),
                closed: false,
                blocked: false,
                announced: None,
                nesting: Nesting::default(),
                deleted: false,
                trashed: false,
                awareness_owners: HashMap::new(),
                full_state: None,
                presence: PresenceTick::default(),
            }),
        });
        history.apply_to(&mut live.lock(), addr);
        Ok((live, subscription))
    }

    pub fn addr(&self) -> &DocAddress {
        &self.addr
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, DocState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the document holds anything (a document never written, or
    /// only ever sent empty updates, does not).
    pub(super) fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Which event an update about to be accepted announces to the space:
    /// `doc.created` for the first content, `doc.updated` at most once a
    /// second per document and instance, or nothing.
    pub(super) fn space_event_due(&self) -> Option<SpaceEvent> {
        let mut state = self.lock();
        let due = if state.is_empty() {
            SpaceEvent::Created
        } else if state
            .announced
            .is_some_and(|at| at.elapsed() < ANNOUNCE_EVERY)
        {
            return None;
        } else {
            SpaceEvent::Updated
        };
        state.announced = Some(Instant::now());
        Some(due)
    }

    /// Applies an accepted update to the replica ahead of its log entry
    /// (which will then change nothing); the cursor stays where it is.
    pub(super) fn apply_accepted(&self, update: &[u8]) {
        self.lock().apply_update(&self.addr, update, "accepted");
    }

    /// Applies a log entry and fans it out to the subscribers.
    pub(super) fn deliver(&self, entry: &LogEntry) {
        if self.lock().apply(&self.addr, entry) {
            self.fan_out(entry);
        }
    }

    /// Sends an (applied) entry to the subscribers; presence may wait for
    /// the end of its tick (the tail task sends it then).
    fn fan_out(&self, entry: &LogEntry) {
        match entry.kind {
            EntryKind::Update => {}
            EntryKind::Awareness => return self.send_presence(),
            EntryKind::Notice => return,
        }
        let event = DocEvent::Update(Arc::new(UpdateEvent {
            payload: entry.payload.clone(),
            cursor: entry.cursor,
            timestamp_ms: entry.timestamp_ms,
            origin: entry.origin,
            editor: entry.editor.clone(),
        }));
        let skip = entry.origin.filter(|o| o.instance == self.instance);
        self.send_to_subscribers(&mut self.lock(), event, skip, "update");
    }

    /// Sends the presence changes that are due, merged. Awareness goes back
    /// to its sender too: y-websocket clients count it as the sign of a live
    /// connection.
    pub(super) fn send_presence(&self) {
        let mut state = self.lock();
        if let Some((payload, origin)) = state.take_presence() {
            let event = DocEvent::Awareness(Arc::new(AwarenessEvent {
                payload: payload.into(),
                origin,
            }));
            self.send_to_subscribers(&mut state, event, None, "awareness");
        }
    }

    /// When the tail task must send the pending presence changes.
    pub(super) fn presence_due_at(&self) -> Option<Instant> {
        self.lock().presence.due_at()
    }

    /// Sends a stateless message to every subscriber but its sender's.
    pub(super) fn fan_out_stateless(&self, payload: String, origin: Option<Origin>) {
        let mut state = self.lock();
        let event = DocEvent::Stateless {
            payload: payload.into(),
        };
        let skip = origin.filter(|o| o.instance == self.instance);
        self.send_to_subscribers(&mut state, event, skip, "stateless");
    }

    fn send_to_subscribers(
        &self,
        state: &mut DocState,
        event: DocEvent,
        skip: Option<Origin>,
        mode: &'static str,
    ) {
        let mut sent = 0;
        state.subscribers.retain(|id, sub| {
            if skip.is_some_and(|o| o.connection == *id) {
                return true;
            }
            match sub.tx.try_send(event.clone()) {
                Ok(()) => {
                    sent += 1;
                    true
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    let _ = sub.closed.set(CloseReason::SlowConsumer);
                    metrics::slow_consumer_closed();
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        metrics::broadcast(mode, sent);
        if state.subscribers.is_empty() && state.idle_since.is_none() {
            state.idle_since = Some(Instant::now());
        }
    }

    /// Merges `history` and sends subscribers what it added, as one update.
    pub(super) fn catch_up(&self, history: &History) {
        let (missed, cursor) = {
            let mut state = self.lock();
            let before = state.awareness.doc().transact().state_vector();
            history.apply_to(&mut state, &self.addr);
            (
                state.awareness.doc().transact().encode_diff_v1(&before),
                state.cursor,
            )
        };
        if missed.as_slice() == yrs::Update::EMPTY_V1 {
            return;
        }
        let entry = LogEntry {
            cursor,
            kind: EntryKind::Update,
            origin: None,
            editor: None,
            payload: missed.into(),
            timestamp_ms: crate::clock::now_ms(),
        };
        self.fan_out(&entry);
    }

    /// Ends every subscription with `reason`.
    pub(super) fn close_subscribers(&self, reason: CloseReason) {
        let mut state = self.lock();
        for (_, sub) in state.subscribers.drain() {
            let _ = sub.closed.set(reason);
        }
        state.idle_since.get_or_insert_with(Instant::now);
    }

    /// Marks the document closed if it has had no subscriber for `idle`.
    pub(super) fn close_if_idle(&self, idle: Duration) -> bool {
        let mut state = self.lock();
        let idle_enough = state.subscribers.is_empty()
            && state
                .idle_since
                .is_some_and(|since| since.elapsed() >= idle);
        if idle_enough {
            state.closed = true;
        }
        idle_enough
    }
}

impl DocState {
    /// Whether the replica holds nothing.
    pub(super) fn is_empty(&self) -> bool {
        self.awareness.doc().transact().state_vector().is_empty()
    }

    /// Applies an update that was accepted (`what`: where it comes from) to
    /// the replica, and records how deep it nests. One stored before nesting
    /// was bounded may nest deeper: it is applied all the same (yrs has the
    /// stack for far more, see `main.rs`), logged and counted.
    pub(super) fn apply_update(&mut self, addr: &DocAddress, update: &[u8], what: &str) {
        match self.nesting.record(update) {
            Ok(deepest) if deepest > MAX_TYPE_DEPTH => {
                metrics::too_deep_doc();
                tracing::warn!(doc = %addr, depth = deepest, limit = MAX_TYPE_DEPTH, "{what} update nests types deeper than the limit");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(doc = %addr, error = %e, "{what} update is not one yjs could apply; skipped");
                return;
            }
        }
        if let Err(e) = apply_update(self.awareness.doc(), update) {
            tracing::error!(doc = %addr, error = %e, "{what} update does not apply; skipped");
        }
        self.full_state = None;
    }

    /// Drops the shared full state once no sync holds it any more (a
    /// document's encoded copy is kept only while joiners share it).
    pub(super) fn release_full_state(&mut self) {
        if self
            .full_state
            .as_ref()
            .is_some_and(|encoded| Arc::strong_count(encoded) == 1)
        {
            self.full_state = None;
        }
    }

    /// The whole replica as one v1 update, encoded once per change.
    pub(super) fn full_state(&mut self) -> Arc<[u8]> {
        let doc = self.awareness.doc();
        self.full_state
            .get_or_insert_with(|| {
                doc.transact()
                    .encode_state_as_update_v1(&yrs::StateVector::default())
                    .into()
            })
            .clone()
    }

    /// Applies an entry to the replica; false when it was already applied
    /// (de-duplication by cursor).
    pub(super) fn apply(&mut self, addr: &DocAddress, entry: &LogEntry) -> bool {
        match entry.kind {
            EntryKind::Update => {
                if let (Some(have), Some(c)) = (self.cursor, entry.cursor)
                    && c <= have
                {
                    return false;
                }
                self.apply_update(addr, &entry.payload, "logged");
                if entry.cursor.is_some() {
                    self.cursor = entry.cursor;
                }
            }
            EntryKind::Awareness => {
                if let Ok(update) = AwarenessUpdate::decode_v1(&entry.payload) {
                    self.presence
                        .record(update.clients.keys().map(|c| c.get()), entry.origin);
                    for (client, state) in &update.clients {
                        if &*state.json == "null" {
                            self.awareness_owners.remove(&client.get());
                        } else {
                            self.awareness_owners
                                .entry(client.get())
                                .or_insert(entry.origin);
                        }
                    }
                    let _ = self.awareness.apply_update(update);
                }
            }
            EntryKind::Notice => return false,
        }
        true
    }
}
