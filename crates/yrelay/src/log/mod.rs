//! The log: an ordered append log per document, with cursors.
//!
//! Instances learn about each other's updates only through the log. The
//! in-process [`LocalLog`] serves the embedded single-node mode; a Redis
//! Streams log (`XADD`/`XREAD` ids as cursors) serves scaled-out deployments.
//!
//! The contract every implementation keeps:
//! - **Cursors are global and ordered.** A cursor names one entry of one
//!   document's log; entries are totally ordered by cursor, and the same
//!   cursor means the same entry on every instance (so a client may resume on
//!   another instance by cursor).
//! - **Subscribe before load.** [`Log::subscribe`] starts delivering every
//!   entry appended after the call returns; a loader subscribes first, then
//!   reads store and [`Log::read`], and drops delivered entries whose cursor is
//!   not newer than what it has (de-duplication by cursor).
//! - **Trim after persist.** [`Log::trim`] is called only up to a cursor the
//!   store has durably covered.
//! - **Awareness is relayed, never persisted.** Awareness entries (and
//!   notices about the document) go through the same subscription (so every
//!   instance sees them) but are not returned by [`Log::read`] and carry no
//!   cursor.

mod local;
mod redis;

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;
use yrelay_protocol::DocAddress;

pub use self::redis::RedisLog;
pub use crate::vocab::{CursorParseError, LogCursor, Origin};
pub use local::LocalLog;

/// What a log entry carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A checked, non-empty Yjs v1 update.
    Update,
    /// An awareness update (relayed, never persisted).
    Awareness,
    /// A change of the document itself, such as blocked or deleted (JSON,
    /// relayed, never persisted).
    Notice,
}

/// One entry of a document's log as delivered to subscribers.
#[derive(Debug, Clone)]
pub struct LogEntry {
    /// `None` for awareness entries.
    pub cursor: Option<LogCursor>,
    pub kind: EntryKind,
    pub origin: Option<Origin>,
    /// The signed-in user who wrote an update, if known (AFFiNE's `editor`).
    pub editor: Option<Arc<str>>,
    pub payload: Arc<[u8]>,
    /// Milliseconds since the epoch when the entry was appended.
    pub timestamp_ms: i64,
}

/// A live feed of one document's new entries. Dropping it unsubscribes.
///
/// The feed is bounded: a subscriber that falls behind, or whose connection
/// to the log breaks, sees the feed end (`recv` returns `None`). It then
/// subscribes again and catches up by cursor with [`Log::read`] (or reloads
/// from the store when the log no longer holds its cursor). Entries are never
/// dropped silently.
pub struct Subscription {
    rx: mpsc::Receiver<LogEntry>,
    _guard: Box<dyn Send + Sync>,
}

impl Subscription {
    /// `guard` is dropped with the subscription (to unregister it).
    pub fn new(rx: mpsc::Receiver<LogEntry>, guard: Box<dyn Send + Sync>) -> Self {
        Self { rx, _guard: guard }
    }

    pub async fn recv(&mut self) -> Option<LogEntry> {
        self.rx.recv().await
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log unavailable: {0}")]
    Unavailable(String),
}

/// The shared, ordered log of every document.
#[async_trait]
pub trait Log: Send + Sync + 'static {
    /// A short name for logs and `/readyz` ("local", "redis").
    fn name(&self) -> &'static str;

    /// Whether an appended entry survives the crash of this process. When it
    /// does not, the store commit is the acknowledgement.
    fn is_durable(&self) -> bool;

    /// Appends an update and returns its cursor once the log holds it.
    async fn append_update(
        &self,
        addr: &DocAddress,
        update: Arc<[u8]>,
        origin: Option<Origin>,
        editor: Option<Arc<str>>,
    ) -> Result<LogEntry, LogError>;

    /// Relays an entry that is never persisted (`kind` is awareness or a
    /// notice) to every subscriber of the document.
    async fn publish(
        &self,
        addr: &DocAddress,
        kind: EntryKind,
        payload: Arc<[u8]>,
        origin: Option<Origin>,
    ) -> Result<(), LogError>;

    /// Starts delivering entries appended from now on (see the module docs).
    async fn subscribe(&self, addr: &DocAddress) -> Result<Subscription, LogError>;

    /// The update entries the log holds after `after` (all it holds for
    /// `None`), in order. `Ok(None)` when `after` is older than what the log
    /// still holds (trimmed): the caller must fall back to the store.
    async fn read(
        &self,
        addr: &DocAddress,
        after: Option<LogCursor>,
    ) -> Result<Option<Vec<LogEntry>>, LogError>;

    /// Drops the entries up to and including `upto` (the store has them).
    async fn trim(&self, addr: &DocAddress, upto: LogCursor) -> Result<(), LogError>;

    /// Removes a document's log entirely (document deletion).
    async fn delete(&self, addr: &DocAddress) -> Result<(), LogError>;

    /// Checks that the log is reachable (for `/readyz`).
    async fn ping(&self) -> Result<(), LogError>;

    /// How compactors share the work on this log.
    fn coordination(&self) -> &dyn Coordination;
}

/// How compactors share the work: which documents the log holds beyond the
/// store, and which compactor works on which document.
#[async_trait]
pub trait Coordination: Send + Sync {
    /// Documents whose log may hold updates the store does not have yet,
    /// oldest first (the compactor's work list). Empty for a log that the
    /// store always precedes.
    async fn backlog(&self, limit: usize) -> Result<Vec<DocAddress>, LogError>;

    /// Takes the document off the backlog if the store holds everything its
    /// log holds (`persisted`: the store's cursor, once it is updated).
    async fn clear_backlog(
        &self,
        addr: &DocAddress,
        persisted: Option<LogCursor>,
    ) -> Result<(), LogError>;

    /// Takes (or renews) the exclusive right to compact `addr` for `ttl`.
    /// A holder that dies loses it when `ttl` runs out.
    async fn try_lease(
        &self,
        addr: &DocAddress,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, LogError>;

    /// Gives a lease back early.
    async fn release_lease(&self, addr: &DocAddress, holder: &str) -> Result<(), LogError>;
}

/// Opens the log named by a setting: `local`, or `redis://...` (whose
/// appends wait for `replicas` Redis replicas) for the instance `instance`.
pub async fn open(
    setting: &str,
    local_retain: usize,
    replicas: usize,
    instance: u64,
) -> Result<Arc<dyn Log>, LogError> {
    if setting == "local" {
        if replicas > 0 {
            return Err(LogError::Unavailable(
                "log_replicas needs a Redis log (--log redis://...)".into(),
            ));
        }
        return Ok(Arc::new(LocalLog::new(local_retain)));
    }
    if setting.starts_with("redis://") || setting.starts_with("rediss://") {
        return Ok(Arc::new(
            RedisLog::connect(setting, replicas, instance).await?,
        ));
    }
    Err(LogError::Unavailable(format!(
        "unsupported log {setting:?} (expected local or redis://HOST:PORT)"
    )))
}
