//! The compactor: moves what the log holds into the store, then merges a
//! document's appended updates into its snapshot (yrs apply with GC,
//! re-encode) so loads stay fast and the store small.
//!
//! Each document is worked on under a lease taken from the log, so at most
//! one compactor (of any number of `serve` and `worker` processes) works on
//! it at a time; a crashed holder's lease runs out after [`LEASE`] and
//! another takes over. The log is trimmed only up to what the store has.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use yrelay_protocol::DocAddress;
use yrelay_protocol::update::merge_updates;

use crate::clock::now_ms;
use crate::log::{Log, LogCursor};
use crate::metrics;
use crate::store::{NewUpdate, Store, StoreError};

/// How long a compactor may hold a document before another may take over.
pub const LEASE: Duration = Duration::from_secs(10);
/// Updates written to the store per transaction when draining the log.
const PERSIST_BATCH: usize = 1000;

#[derive(Debug, Clone)]
pub struct CompactorConfig {
    pub min_updates: i64,
    pub idle: Duration,
    pub poll: Duration,
    /// Persisted entries stay in the log this long, so event streams can
    /// resume by cursor (on any instance) instead of resyncing.
    pub log_retention: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Log(#[from] crate::log::LogError),
}

pub struct Compactor {
    store: Arc<dyn Store>,
    log: Arc<dyn Log>,
    config: CompactorConfig,
    holder: String,
}

impl Compactor {
    pub fn new(store: Arc<dyn Store>, log: Arc<dyn Log>, config: CompactorConfig) -> Self {
        let holder = format!("{}-{}", std::process::id(), now_ms());
        Self {
            store,
            log,
            config,
            holder,
        }
    }

    /// Runs until `shutdown` changes.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.config.poll);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            if let Err(e) = self.round().await {
                metrics::store_error();
                tracing::warn!(error = %e, "compactor round failed; retrying");
            }
        }
    }

    /// One pass: drain the log's backlog into the store, then compact.
    pub async fn round(&self) -> Result<(), CompactError> {
        let mut owed = 0;
        let mut outcome = Ok(());
        for addr in self.log.backlog(64).await? {
            if self.log.try_lease(&addr, &self.holder, LEASE).await? {
                outcome = self.persist(&addr, &mut owed).await;
                self.log.release_lease(&addr, &self.holder).await?;
                if outcome.is_err() {
                    break;
                }
            }
        }
        // What the log held beyond the store when we looked (while the store
        // is down this is what waits for it).
        metrics::store_backlog(owed as f64);
        outcome?;
        let idle_before = now_ms() - self.config.idle.as_millis() as i64;
        for addr in self
            .store
            .compaction_candidates(self.config.min_updates, idle_before, 32)
            .await?
        {
            if self.log.try_lease(&addr, &self.holder, LEASE).await? {
                let outcome = compact(&*self.store, &addr).await;
                self.log.release_lease(&addr, &self.holder).await?;
                outcome?;
            }
        }
        Ok(())
    }

    /// Appends to the store what the log holds beyond the store's cursor,
    /// then trims the log up to it. Adds what it found owed to `owed`.
    async fn persist(&self, addr: &DocAddress, owed: &mut usize) -> Result<(), CompactError> {
        let cursor = match self.store.log_cursor(addr).await {
            Ok(cursor) => cursor,
            Err(e) => {
                // The store is down: all the log holds is owed.
                *owed += self
                    .log
                    .read(addr, None)
                    .await?
                    .map_or(0, |held| held.len());
                return Err(e.into());
            }
        };
        let entries = match self.log.read(addr, cursor).await? {
            Some(entries) => entries,
            None => {
                let held = self.log.read(addr, None).await?.unwrap_or_default();
                held.into_iter().filter(|e| e.cursor > cursor).collect()
            }
        };
        *owed += entries.len();
        for chunk in entries.chunks(PERSIST_BATCH) {
            let batch: Vec<NewUpdate> = chunk
                .iter()
                .map(|e| NewUpdate {
                    addr: addr.clone(),
                    data: e.payload.clone(),
                    log_cursor: e.cursor,
                    timestamp_ms: e.timestamp_ms,
                })
                .collect();
            self.store.append(&batch).await?;
        }
        // Trim what the store has and the retention window no longer needs.
        let persisted = entries.last().and_then(|e| e.cursor).or(cursor);
        let horizon = LogCursor {
            ms: (now_ms() - self.config.log_retention.as_millis() as i64).max(0) as u64,
            seq: 0,
        };
        if let Some(upto) = persisted.map(|p| p.min(horizon)) {
            self.log.trim(addr, upto).await?;
        }
        self.log.clear_backlog(addr, persisted).await?;
        if !entries.is_empty() {
            tracing::debug!(doc = %addr, updates = entries.len(), "log persisted to store");
        }
        Ok(())
    }
}

/// Compacts one document: everything appended so far goes into the snapshot.
pub async fn compact(store: &dyn Store, addr: &DocAddress) -> Result<(), StoreError> {
    let Some(stored) = store.load(addr).await? else {
        return Ok(());
    };
    if stored.updates.is_empty() {
        return Ok(());
    }
    let merged: Vec<i64> = stored.updates.iter().map(|(id, _)| *id).collect();
    let started = Instant::now();
    let count = stored.updates.len();
    let before: usize = stored.snapshot.as_ref().map_or(0, Vec::len)
        + stored.updates.iter().map(|(_, u)| u.len()).sum::<usize>();
    if before > 8 * 1024 * 1024 {
        tracing::info!(doc = %addr, updates = count, bytes = before, "compacting a large document");
    }
    let snapshot = tokio::task::spawn_blocking(move || {
        let parts = stored
            .snapshot
            .iter()
            .chain(stored.updates.iter().map(|(_, u)| u));
        merge_updates(parts.map(Vec::as_slice))
    })
    .await
    .map_err(|e| StoreError::Corrupt(format!("compaction task failed: {e}")))?
    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    store.compact(addr, &snapshot, &merged).await?;
    metrics::compaction(count);
    tracing::info!(
        doc = %addr,
        updates = count,
        bytes_before = before,
        bytes_after = snapshot.len(),
        ms = started.elapsed().as_millis() as u64,
        "compacted"
    );
    Ok(())
}
