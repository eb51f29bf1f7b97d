//! The DocHub: this instance's live documents.
//!
//! For each live document it holds a replica (a yrs `Doc` inside an
//! awareness state), the log cursor the replica has applied, and the local
//! subscribers. It answers sync requests from memory, checks incoming
//! updates, makes them durable (store and/or log), and fans log entries out
//! to subscribers. Transports talk to the hub only; the hub talks to the
//! store and the log and knows nothing of transports.
//!
//! Concurrency per document: one `std::sync::Mutex` around its [`live`]
//! state, held only for in-memory work (apply, diff, enqueue to bounded
//! subscriber queues), never across an await. One tail task per live
//! document applies log entries in cursor order and unloads the document once
//! it has been idle.

mod awareness;
mod history;
mod inspect;
mod live;
mod manage;
#[cfg(test)]
mod resume_tests;
mod session;
mod tail;
mod versions;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;
use yrelay_protocol::DocAddress;
use yrelay_protocol::nesting::NestingError;
use yrelay_protocol::update::CheckedUpdate;
use yrs::sync::AwarenessUpdate;
use yrs::updates::encoder::Encode;

use crate::clock::now_ms;
use crate::log::{EntryKind, Log, LogCursor, LogEntry, LogError, Origin};
use crate::metrics;
use crate::store::{GroupCommit, NewUpdate, Store, StoreError};
pub use awareness::{AwarenessBounds, AwarenessClients, AwarenessRefusal};
pub use inspect::{LiveView, Presence};
use live::LiveDoc;
pub use live::{AwarenessEvent, CloseReason, DocEvent, DocNotice, SpaceEvent, UpdateEvent};
pub use manage::{SpaceFeed, SpaceNotice};
pub use session::Session;
pub use versions::{PastState, RestoreTarget, Restored};

/// Who submits an update: the connection, which is not sent its own update
/// back, and the signed-in user (AFFiNE's `editor`); either may be unknown.
#[derive(Debug, Clone, Default)]
pub struct Writer {
    pub origin: Option<Origin>,
    pub editor: Option<Arc<str>>,
}

/// When an update counts as accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Once the log holds it (with an in-process log, the store commit).
    Log,
    /// Once the store has committed it.
    Store,
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Durability::Log => "log",
            Durability::Store => "store",
        })
    }
}

#[derive(Debug, Clone)]
pub struct HubConfig {
    pub durability: Durability,
    /// A live document with no subscriber is unloaded after this long.
    pub idle_unload: Duration,
    /// Bound of each subscriber's outbound queue (a full queue closes it).
    pub subscriber_queue: usize,
    pub awareness: AwarenessBounds,
    /// This instance's id (`vocab::new_instance_id`).
    pub instance: u64,
    /// How far back the store keeps every update (`?at=` is exact within).
    pub history_exact: Duration,
    /// Where document events go as webhooks, if anywhere.
    pub hooks: Option<Arc<crate::hooks::Hooks>>,
}

/// Why an instance cannot serve now.
#[derive(Debug, thiserror::Error)]
pub enum Unready {
    #[error("store unavailable: {0}")]
    Store(String),
    #[error("log unavailable: {0}")]
    Log(String),
}

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("the document is blocked: it accepts no updates")]
    Blocked,
    /// The document is in the trash, or the update builds on what a
    /// deleted document held.
    #[error(
        "the document was deleted: it is in the trash (undelete it first), or this update builds on what it held"
    )]
    Deleted,
    /// The update is well formed but would harm the document (nested too
    /// deep); refused like an undecodable one.
    #[error("update refused: {0}")]
    BadUpdate(String),
    /// An awareness update that would touch another connection's clients or
    /// pass a bound.
    #[error("awareness refused: {0}")]
    Awareness(#[from] AwarenessRefusal),
    /// The document cannot be shown in the form asked for (it nests deeper
    /// than a JSON export walks).
    #[error("{0}")]
    Unexportable(String),
    #[error("version {0} of this document does not exist")]
    VersionNotFound(i64),
    /// A moment the history cannot show.
    #[error("{0}")]
    NotInHistory(String),
}

/// What the writer of an accepted update is told.
#[derive(Debug, Clone, Copy)]
pub struct Ack {
    /// The update's log cursor (`None` for an empty update, which is neither
    /// stored nor relayed).
    pub cursor: Option<LogCursor>,
    pub timestamp_ms: i64,
}

#[derive(Clone)]
pub struct DocHub {
    inner: Arc<HubInner>,
}

struct HubInner {
    store: Arc<dyn Store>,
    log: Arc<dyn Log>,
    commit: GroupCommit,
    config: HubConfig,
    /// Ack after the store commit (durability = store, or a non-durable log).
    store_first: bool,
    instance: u64,
    next_connection: AtomicU64,
    docs: Mutex<HashMap<DocAddress, Arc<Slot>>>,
}

/// A document's place in the map: loaded at most once, however many
/// connections ask for it at the same time.
#[derive(Default)]
struct Slot {
    doc: OnceCell<Arc<LiveDoc>>,
}

impl DocHub {
    pub fn new(store: Arc<dyn Store>, log: Arc<dyn Log>, config: HubConfig) -> Self {
        let store_first = config.durability == Durability::Store || !log.is_durable();
        let commit = GroupCommit::start(store.clone(), 512, 64 * 1024);
        let instance = config.instance;
        Self {
            inner: Arc::new(HubInner {
                store,
                log,
                commit,
                config,
                store_first,
                instance,
                next_connection: AtomicU64::new(1),
                docs: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    fn log(&self) -> &Arc<dyn Log> {
        &self.inner.log
    }

    /// Whether this instance can serve (`/readyz`): the names of its store
    /// and log, or what fails (the last store commit, or a ping).
    pub async fn readiness(&self) -> Result<(&'static str, &'static str), Unready> {
        if let Some(e) = self.inner.commit.failing() {
            return Err(Unready::Store(format!("the last store commit failed: {e}")));
        }
        let (store, log) = (self.store(), self.log());
        store
            .ping()
            .await
            .map_err(|e| Unready::Store(e.to_string()))?;
        log.ping().await.map_err(|e| Unready::Log(e.to_string()))?;
        Ok((store.name(), log.name()))
    }

    /// The updates the log still holds after `after`, in order (for a
    /// client resuming by cursor); `None` when it no longer holds `after`.
    pub async fn replay(
        &self,
        addr: &DocAddress,
        after: LogCursor,
    ) -> Result<Option<Vec<LogEntry>>, HubError> {
        Ok(self.log().read(addr, Some(after)).await?)
    }

    /// A new writer identity (for transports whose connections submit
    /// through the hub without a session of their own, such as Socket.IO).
    pub fn new_origin(&self) -> Origin {
        Origin {
            instance: self.inner.instance,
            connection: self.inner.next_connection.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Joins a document: loads it if needed and subscribes to its events.
    pub async fn join(&self, addr: &DocAddress) -> Result<Session, HubError> {
        let origin = self.new_origin();
        loop {
            let doc = self.live(addr).await?;
            if let Some(session) = Session::attach(self.clone(), doc, origin) {
                return Ok(session);
            }
            // The document was unloaded between lookup and attach: load again.
        }
    }

    /// Checks nothing (the caller passes a [`CheckedUpdate`]), makes the
    /// update durable and returns once it is accepted. Fan-out, including to
    /// this instance's subscribers, happens through the log.
    pub async fn submit_update(
        &self,
        addr: &DocAddress,
        update: CheckedUpdate,
        writer: Writer,
        transport: &'static str,
    ) -> Result<Ack, HubError> {
        let doc = self.live(addr).await?;
        let payload = update.bytes().to_vec();
        let ack = self.submit_to(&doc, update, writer, transport).await?;
        // Read your writes: a request that follows this one on this instance
        // sees the update even before the log delivers it to the replica (a
        // CRDT merge: the log's copy changes nothing then).
        doc.apply_accepted(&payload);
        Ok(ack)
    }

    /// [`DocHub::submit_update`] on a document already live.
    async fn submit_to(
        &self,
        doc: &LiveDoc,
        update: CheckedUpdate,
        writer: Writer,
        transport: &'static str,
    ) -> Result<Ack, HubError> {
        if update.is_empty() {
            return Ok(Ack {
                cursor: None,
                timestamp_ms: now_ms(),
            });
        }
        {
            let mut state = doc.lock();
            if state.blocked {
                return Err(HubError::Blocked);
            }
            if state.trashed {
                metrics::rejected("trashed");
                return Err(HubError::Deleted);
            }
            // Recorded now, not when the log delivers it: an update that
            // builds on this one may come before that.
            let may_wait = !state.deleted;
            match state.nesting.admit(update.bytes(), may_wait) {
                Ok(()) => {}
                Err(NestingError::Missing) => {
                    metrics::rejected("deleted");
                    return Err(HubError::Deleted);
                }
                Err(e) => {
                    metrics::rejected("too_deep");
                    return Err(HubError::BadUpdate(e.to_string()));
                }
            }
        }
        let announce = doc.space_event_due();
        let addr = doc.addr();
        let started = Instant::now();
        let payload: Arc<[u8]> = update.into_bytes().into();
        if self.inner.store_first {
            self.inner
                .commit
                .append(NewUpdate {
                    addr: addr.clone(),
                    data: payload.clone(),
                    log_cursor: None,
                    timestamp_ms: now_ms(),
                    editor: writer.editor.clone(),
                })
                .await?;
        }
        let bytes = payload.len();
        let entry = self
            .inner
            .log
            .append_update(addr, payload, writer.origin, writer.editor.clone())
            .await?;
        metrics::update_accepted(transport, bytes, started.elapsed().as_secs_f64());
        if let Some(hooks) = &self.inner.config.hooks {
            let cursor = entry.cursor.map(|c| c.to_string());
            hooks.updated(addr, writer.editor.as_deref(), entry.timestamp_ms, cursor);
        }
        if let Some(event) = announce {
            self.announce(addr, event, entry.timestamp_ms, None);
        }
        Ok(Ack {
            cursor: entry.cursor,
            timestamp_ms: entry.timestamp_ms,
        })
    }

    /// Relays an (already decoded) awareness update of `origin` to every
    /// subscriber of the document, on every instance, if it may: it changes
    /// only client ids that are new or that `origin` introduced (those in
    /// `introduced`), within the bounds per connection and per document.
    pub async fn publish_awareness(
        &self,
        addr: &DocAddress,
        raw: Vec<u8>,
        update: &AwarenessUpdate,
        origin: Option<Origin>,
        introduced: &AwarenessClients,
    ) -> Result<(), HubError> {
        let doc = self.live(addr).await?;
        let refused = doc.lock().admit_awareness(
            update,
            origin,
            introduced.ids(),
            self.inner.config.awareness,
        );
        if let Err(refusal) = refused {
            metrics::rejected("awareness");
            return Err(HubError::Awareness(refusal));
        }
        self.relay_awareness(addr, raw, origin).await
    }

    /// Relays an awareness update (a removal the server makes) unchecked.
    async fn relay_awareness(
        &self,
        addr: &DocAddress,
        raw: Vec<u8>,
        origin: Option<Origin>,
    ) -> Result<(), HubError> {
        self.inner
            .log
            .publish(addr, EntryKind::Awareness, raw.into(), origin)
            .await?;
        Ok(())
    }

    /// The document's awareness states renewed lately (an encoded awareness
    /// update), but those of `except`; `None` if there are none.
    pub async fn awareness_states(
        &self,
        addr: &DocAddress,
        except: &AwarenessClients,
    ) -> Result<Option<Vec<u8>>, HubError> {
        let doc = self.live(addr).await?;
        let state = doc.lock();
        Ok(awareness::fresh_awareness(&state.awareness, except.ids()))
    }

    /// Announces that `clients`, of a connection that is leaving the
    /// document, are gone (as y-websocket's server does when a connection
    /// closes). Nothing to do if the document is not live here.
    pub fn forget_awareness_of(
        &self,
        addr: &DocAddress,
        clients: &AwarenessClients,
        origin: Origin,
    ) {
        if let Some(doc) = self.inner.loaded(addr) {
            self.forget_awareness(&doc, clients, origin);
        }
    }

    fn forget_awareness(&self, doc: &LiveDoc, clients: &AwarenessClients, origin: Origin) {
        let Some(removal) = awareness::removal_update(&doc.lock().awareness, clients.ids()) else {
            return;
        };
        let hub = self.clone();
        let addr = doc.addr().clone();
        tokio::spawn(async move {
            let raw = removal.encode_v1();
            let _ = hub.relay_awareness(&addr, raw, Some(origin)).await;
        });
    }

    /// Closes every session (server shutdown).
    pub fn close_all(&self, reason: CloseReason) {
        let docs: Vec<_> = self.inner.lock_docs().values().cloned().collect();
        for slot in docs {
            if let Some(doc) = slot.doc.get() {
                doc.close_subscribers(reason);
            }
        }
    }

    async fn live(&self, addr: &DocAddress) -> Result<Arc<LiveDoc>, HubError> {
        let slot = self
            .inner
            .lock_docs()
            .entry(addr.clone())
            .or_default()
            .clone();
        let loaded = slot
            .doc
            .get_or_try_init(|| async {
                let doc = LiveDoc::load(
                    &self.inner.store,
                    &self.inner.log,
                    addr,
                    self.inner.instance,
                )
                .await?;
                metrics::doc_loaded();
                tracing::info!(doc = %addr, "document loaded");
                tokio::spawn(tail::tail(self.clone(), doc.0.clone(), doc.1));
                Ok::<_, HubError>(doc.0)
            })
            .await;
        if loaded.is_err() {
            let mut docs = self.inner.lock_docs();
            if docs
                .get(addr)
                .is_some_and(|s| Arc::ptr_eq(s, &slot) && s.doc.get().is_none())
            {
                docs.remove(addr);
            }
        }
        loaded.cloned()
    }

    /// Removes `doc` from the map if it is still idle; true when it did.
    fn unload_if_idle(&self, doc: &Arc<LiveDoc>) -> bool {
        let mut docs = self.inner.lock_docs();
        if !doc.close_if_idle(self.inner.config.idle_unload) {
            return false;
        }
        if remove_live(&mut docs, doc) {
            tracing::info!(doc = %doc.addr(), "document unloaded (idle)");
        }
        true
    }

    /// Drops `doc` from the map at once (its log feed could not be resumed).
    fn forget(&self, doc: &Arc<LiveDoc>) {
        remove_live(&mut self.inner.lock_docs(), doc);
    }
}

/// Removes `doc` from the map if the map still holds this very document
/// (and not a newer load of the same address).
fn remove_live(docs: &mut HashMap<DocAddress, Arc<Slot>>, doc: &Arc<LiveDoc>) -> bool {
    let addr = doc.addr();
    let ours = docs
        .get(addr)
        .and_then(|s| s.doc.get())
        .is_some_and(|d| Arc::ptr_eq(d, doc));
    if ours {
        docs.remove(addr);
        metrics::doc_unloaded();
    }
    ours
}

impl HubInner {
    fn lock_docs(&self) -> std::sync::MutexGuard<'_, HashMap<DocAddress, Arc<Slot>>> {
        self.docs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The document if it is live here (never loads it).
    fn loaded(&self, addr: &DocAddress) -> Option<Arc<LiveDoc>> {
        self.lock_docs().get(addr)?.doc.get().cloned()
    }
}
