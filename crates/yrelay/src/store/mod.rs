//! The store: durable history of every document.
//!
//! A document is a compacted snapshot (one v1 update) plus the updates
//! appended since, plus metadata. SQLite is the embedded default; PostgreSQL
//! serves scaled-out deployments behind the same trait.
//!
//! How the rest of the server uses a store:
//! - Writers call [`Store::append`] with a batch of updates from many
//!   documents (the [`GroupCommit`] batches concurrent writers into one
//!   transaction). When the log is the source of truth (scaled out), each
//!   update carries the log cursor it came from and the store records the
//!   highest one per document, so the log can be trimmed up to it.
//! - Loaders call [`Store::load`] after subscribing to the log (subscribe
//!   before load) and then read the log after [`StoredDoc::log_cursor`].
//! - The compactor replaces snapshot + appended updates by a merged snapshot
//!   with [`Store::compact`]; appends that race with it are kept.

mod access;
mod group_commit;
mod history;
mod outbox;
mod postgres;
mod sql;
mod sqlite;

use async_trait::async_trait;
use std::sync::Arc;
use yrelay_protocol::DocAddress;

use crate::vocab::LogCursor;
pub use crate::vocab::{DocMeta, SpaceMeta};
pub use access::Revokes;
pub use group_commit::GroupCommit;
pub use history::{History, NewVersion, Pruned};
pub use outbox::{Attempted, Delivery, NewDelivery, Outbox, SpaceHook};
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// Everything the store holds for one document.
#[derive(Debug, Clone)]
pub struct StoredDoc {
    pub snapshot: Option<Vec<u8>>,
    /// Appended updates as `(id, bytes)`, in commit order.
    pub updates: Vec<(i64, Vec<u8>)>,
    /// Up to where the store holds the log (`None`: the store is not fed
    /// from the log, or holds nothing of it).
    pub log_cursor: Option<LogCursor>,
    pub meta: DocMeta,
}

/// One update to append.
#[derive(Debug, Clone)]
pub struct NewUpdate {
    pub addr: DocAddress,
    pub data: Arc<[u8]>,
    pub log_cursor: Option<LogCursor>,
    pub timestamp_ms: i64,
    /// Who wrote it (the token's subject), when known.
    pub editor: Option<Arc<str>>,
}

/// What one appended batch changes in one document's metadata.
#[derive(Debug, Clone)]
pub struct DocDelta {
    pub addr: DocAddress,
    pub first_ms: i64,
    pub last_ms: i64,
    pub bytes: i64,
    pub updates: i64,
    pub log_cursor: Option<LogCursor>,
}

/// Sums a batch per document, so metadata is written once per document.
pub(crate) fn doc_deltas(batch: &[NewUpdate]) -> Vec<DocDelta> {
    let mut deltas: Vec<DocDelta> = Vec::new();
    for u in batch {
        match deltas.iter_mut().find(|d| d.addr == u.addr) {
            Some(d) => {
                d.first_ms = d.first_ms.min(u.timestamp_ms);
                d.last_ms = d.last_ms.max(u.timestamp_ms);
                d.bytes += u.data.len() as i64;
                d.updates += 1;
                d.log_cursor = d.log_cursor.max(u.log_cursor);
            }
            None => deltas.push(DocDelta {
                addr: u.addr.clone(),
                first_ms: u.timestamp_ms,
                last_ms: u.timestamp_ms,
                bytes: u.data.len() as i64,
                updates: 1,
                log_cursor: u.log_cursor,
            }),
        }
    }
    // One lock order for every transaction: batches of several instances
    // upsert the same rows at once without deadlock.
    deltas.sort_by(|a, b| a.addr.cmp(&b.addr));
    deltas
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
}

/// Durable history of documents (see the module docs for how it is used).
#[async_trait]
pub trait Store: History + Outbox + Revokes + Send + Sync + 'static {
    /// A short name for logs and `/readyz` ("sqlite", "postgres").
    fn name(&self) -> &'static str;

    /// Everything stored for `addr`, or `None` if it was never written.
    async fn load(&self, addr: &DocAddress) -> Result<Option<StoredDoc>, StoreError>;

    /// Appends a batch of updates in one transaction, creating documents as
    /// needed and keeping their metadata current.
    async fn append(&self, batch: &[NewUpdate]) -> Result<(), StoreError>;

    /// Replaces the snapshot of `addr` and moves the appended updates
    /// `merged` (their ids, ascending; `snapshot` includes them) to the
    /// document's history, in one transaction. Only those:
    /// a transaction that committed after they were read may hold a lower id
    /// (PostgreSQL allots ids at insert, not at commit).
    async fn compact(
        &self,
        addr: &DocAddress,
        snapshot: &[u8],
        merged: &[i64],
    ) -> Result<(), StoreError>;

    /// Up to where the store holds the log of `addr`.
    async fn log_cursor(&self, addr: &DocAddress) -> Result<Option<LogCursor>, StoreError>;

    /// Metadata of one document.
    async fn meta(&self, addr: &DocAddress) -> Result<Option<DocMeta>, StoreError>;

    /// Documents of a space, optionally only those changed after `after` (ms).
    async fn list(&self, space: &str, after: Option<i64>) -> Result<Vec<DocMeta>, StoreError>;

    /// A page of a space's documents in id order: those after `from` whose
    /// id or title contains `search` (any case), at most `limit`.
    async fn page(
        &self,
        space: &str,
        search: &str,
        from: &str,
        limit: i64,
    ) -> Result<Vec<DocMeta>, StoreError>;

    /// A page of spaces in name order (those with a document not in the
    /// trash): after `from`, whose name contains `search`, at most `limit`.
    async fn spaces(
        &self,
        search: &str,
        from: &str,
        limit: i64,
    ) -> Result<Vec<SpaceMeta>, StoreError>;

    /// Documents worth compacting: at least `min_pending` appended updates,
    /// or any appended update and no change since `idle_before` (ms).
    async fn compaction_candidates(
        &self,
        min_pending: i64,
        idle_before: i64,
        limit: i64,
    ) -> Result<Vec<DocAddress>, StoreError>;

    /// Creates a document holding `snapshot`, only if it does not exist
    /// (one-time import). `false` when it already exists.
    async fn create(
        &self,
        addr: &DocAddress,
        snapshot: &[u8],
        timestamp_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Sets the title and/or the blocked flag; the new metadata, or `None`
    /// if the document does not exist.
    async fn update_meta(
        &self,
        addr: &DocAddress,
        title: Option<&str>,
        blocked: Option<bool>,
    ) -> Result<Option<DocMeta>, StoreError>;

    /// Removes a document, its history and versions, leaving a tombstone dated
    /// `timestamp_ms`. `false` if it did not exist.
    async fn delete(&self, addr: &DocAddress, timestamp_ms: i64) -> Result<bool, StoreError>;

    /// When the document was last deleted, if ever.
    async fn deleted_at(&self, addr: &DocAddress) -> Result<Option<i64>, StoreError>;

    /// Checks that the store is reachable (for `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;
}

/// Runs `work` (a transaction, begun and committed by it) on a pooled
/// connection that is closed, not returned to the pool, if the work failed:
/// after a failed COMMIT (SQLite on a full disk) the connection may still
/// hold the transaction open, and sqlx would nest the next one in it as a
/// savepoint that is never committed (answered as saved, lost on restart).
pub(crate) async fn transaction<DB: sqlx::Database, T>(
    pool: &sqlx::Pool<DB>,
    work: impl AsyncFnOnce(&mut DB::Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let mut conn = pool
        .acquire()
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let outcome = work(&mut conn).await;
    if outcome.is_err() {
        conn.close_on_drop();
    }
    outcome
}

/// [`open`] for a server or worker: a PostgreSQL store that is
/// unreachable does not stop the start (see [`PostgresStore::open_or_wait`]).
pub async fn open_or_wait(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(PostgresStore::open_or_wait(url).await?));
    }
    open(url).await
}

/// Opens the store named by a URL (`sqlite://PATH` or `postgres://...`).
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        return Ok(Arc::new(SqliteStore::open(path).await?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(PostgresStore::open(url).await?));
    }
    Err(StoreError::Unavailable(format!(
        "unsupported store URL {url:?} (expected sqlite://PATH or postgres://...)"
    )))
}
