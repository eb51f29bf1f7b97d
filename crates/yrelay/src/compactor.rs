//! The compactor: moves what the log holds into the store, then merges a
//! document's appended updates into its snapshot (yrs apply with GC,
//! re-encode) so loads stay fast and the store small.
//!
//! Each document is worked on under a lease taken from the log, so at most
//! one compactor (of any number of `serve` and `worker` processes) works on
//! it at a time; a crashed holder's lease runs out after [`LEASE`] and
//! another takes over. The log is trimmed only up to what the store has.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use yrelay_protocol::DocAddress;
use yrelay_protocol::update::merge_updates;

use crate::clock::now_ms;
use crate::log::{Log, LogCursor};
use crate::metrics;
use crate::store::{NewUpdate, NewVersion, Store, StoreError};

/// How long a compactor may hold a document before another may take over.
pub const LEASE: Duration = Duration::from_secs(10);
/// How often history is pruned past its windows, at most.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// How often a stop's drain asks again for a document another holds.
const DRAIN_RETRY: Duration = Duration::from_millis(50);
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
    /// This instance's id: its compactors' leases name it.
    pub instance: u64,
    pub history: HistoryConfig,
}

/// How much history the store keeps.
#[derive(Debug, Clone, Copy)]
pub struct HistoryConfig {
    /// A compaction records a version at most this often per document.
    pub interval: Duration,
    /// Every update is kept with its time and editor this long.
    pub exact: Duration,
    /// Versions are kept this long (the newest before the exact window
    /// always: the history after it builds on it).
    pub retention: Duration,
    /// Labelled versions are kept past the retention.
    pub keep_labelled: bool,
    /// Documents in the trash are purged after this long.
    pub trash_retention: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Log(#[from] crate::log::LogError),
}

/// What one pass over the backlog did.
#[derive(Debug, Default)]
struct BacklogPass {
    /// Documents persisted.
    worked: usize,
    /// Documents skipped: another compactor held them.
    held_elsewhere: usize,
}

pub struct Compactor {
    store: Arc<dyn Store>,
    log: Arc<dyn Log>,
    config: CompactorConfig,
    holder: String,
    /// When history was last pruned.
    pruned: std::sync::Mutex<Option<Instant>>,
}

impl Compactor {
    pub fn new(store: Arc<dyn Store>, log: Arc<dyn Log>, config: CompactorConfig) -> Self {
        // Each compactor of the instance its own holder (a lease is
        // reentrant for its holder).
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let holder = format!("{:016x}-{n}", config.instance);
        Self {
            store,
            log,
            config,
            holder,
            pruned: std::sync::Mutex::new(None),
        }
    }

    /// Runs until `shutdown` changes (a round under way ends first).
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
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

    /// Moves what it can of the log's backlog to the store, for at most
    /// `limit` (a graceful stop), and says what is left. A document another
    /// compactor holds is waited for: its holder may be failing on the
    /// store, and its lease runs out.
    pub async fn drain(&self, limit: Duration) {
        let drained = tokio::time::timeout(limit, async {
            loop {
                match self.persist_backlog().await {
                    Ok(pass) if pass.worked > 0 => continue,
                    Ok(pass) if pass.held_elsewhere == 0 => return Ok(()),
                    Ok(_) => tokio::time::sleep(DRAIN_RETRY).await,
                    Err(e) => return Err(e),
                }
            }
        })
        .await;
        if let Ok(Err(e)) = &drained {
            tracing::warn!(error = %e, "moving the log's backlog to the store failed");
        }
        match measure_backlog(&*self.store, &*self.log).await {
            Ok(left) if left.updates == 0 => {
                tracing::info!("at stop the store holds everything the log held")
            }
            Ok(left) => tracing::warn!(
                updates = left.updates,
                docs = left.docs,
                "at stop the log holds updates the store does not have yet (a compactor moves them once one runs)"
            ),
            Err(e) => tracing::warn!(error = %e, "at stop the backlog could not be measured"),
        }
    }

    /// One pass: drain the log's backlog into the store, compact, and
    /// prune history and the trash past their windows (at most every
    /// [`PRUNE_EVERY`]).
    pub async fn round(&self) -> Result<(), CompactError> {
        self.persist_backlog().await?;
        let idle_before = now_ms() - self.config.idle.as_millis() as i64;
        self.compact_candidates(idle_before).await?;
        self.prune_history().await
    }

    async fn prune_history(&self) -> Result<(), CompactError> {
        let history = self.config.history;
        let every = PRUNE_EVERY.min(history.exact).min(history.trash_retention);
        {
            let mut pruned = self.pruned.lock().unwrap_or_else(|e| e.into_inner());
            if pruned.is_some_and(|at| at.elapsed() < every) {
                return Ok(());
            }
            *pruned = Some(Instant::now());
        }
        let now = now_ms();
        let pruned = self
            .store
            .prune(
                now - history.exact.as_millis() as i64,
                now - history.retention.as_millis() as i64,
                history.keep_labelled,
            )
            .await?;
        if pruned != Default::default() {
            tracing::info!(
                changes = pruned.changes,
                versions = pruned.versions,
                "history pruned past its windows"
            );
        }
        let expired = now - history.trash_retention.as_millis() as i64;
        for addr in self.store.expired_trash(expired, 32).await? {
            self.store.delete(&addr, now).await?;
            self.log.delete(&addr).await?;
            tracing::info!(doc = %addr, "document purged from the trash (past its retention)");
        }
        Ok(())
    }

    /// Persists the documents of the backlog whose lease it gets.
    async fn persist_backlog(&self) -> Result<BacklogPass, CompactError> {
        let mut pass = BacklogPass::default();
        for addr in self.log.coordination().backlog(64).await? {
            if !self
                .log
                .coordination()
                .try_lease(&addr, &self.holder, LEASE)
                .await?
            {
                pass.held_elsewhere += 1;
                continue;
            }
            let outcome = self.persist(&addr).await;
            self.log
                .coordination()
                .release_lease(&addr, &self.holder)
                .await?;
            outcome?;
            pass.worked += 1;
        }
        Ok(pass)
    }

    async fn compact_candidates(&self, idle_before: i64) -> Result<(), CompactError> {
        for addr in self
            .store
            .compaction_candidates(self.config.min_updates, idle_before, 32)
            .await?
        {
            if self
                .log
                .coordination()
                .try_lease(&addr, &self.holder, LEASE)
                .await?
            {
                let outcome = compact(&*self.store, &addr, self.config.history.interval).await;
                self.log
                    .coordination()
                    .release_lease(&addr, &self.holder)
                    .await?;
                outcome?;
            }
        }
        Ok(())
    }

    /// Appends to the store what the log holds beyond the store's cursor,
    /// then trims the log up to it.
    async fn persist(&self, addr: &DocAddress) -> Result<(), CompactError> {
        let cursor = self.store.log_cursor(addr).await?;
        let entries = held_after(&*self.log, addr, cursor).await?;
        for chunk in entries.chunks(PERSIST_BATCH) {
            let batch: Vec<NewUpdate> = chunk
                .iter()
                .map(|e| NewUpdate {
                    addr: addr.clone(),
                    data: e.payload.clone(),
                    log_cursor: e.cursor,
                    timestamp_ms: e.timestamp_ms,
                    editor: e.editor.clone(),
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
        self.log
            .coordination()
            .clear_backlog(addr, persisted)
            .await?;
        if !entries.is_empty() {
            tracing::debug!(doc = %addr, updates = entries.len(), "log persisted to store");
        }
        Ok(())
    }
}

/// What the log holds beyond the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    pub docs: usize,
    pub updates: usize,
}

/// Documents listed in the backlog, at most (the gauge and `yrelay backlog`).
const BACKLOG_SCAN: usize = 100_000;

/// Counts what the log holds beyond the store, for every document (all it
/// holds of a document when the store cannot say: an outage is counted in
/// full, never as drained).
pub async fn measure_backlog(store: &dyn Store, log: &dyn Log) -> Result<Backlog, CompactError> {
    let mut backlog = Backlog::default();
    for addr in log.coordination().backlog(BACKLOG_SCAN).await? {
        let owed = match store.log_cursor(&addr).await {
            Ok(cursor) => held_after(log, &addr, cursor).await?.len(),
            Err(_) => log.read(&addr, None).await?.map_or(0, |held| held.len()),
        };
        if owed > 0 {
            backlog.docs += 1;
            backlog.updates += owed;
        }
    }
    Ok(backlog)
}

/// Keeps `yrelay_store_backlog_updates` current on this instance (whether
/// it compacts or not), every `every`, until `shutdown` changes.
pub async fn watch_backlog(
    store: Arc<dyn Store>,
    log: Arc<dyn Log>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        match measure_backlog(&*store, &*log).await {
            Ok(backlog) => metrics::store_backlog(backlog.updates as f64),
            Err(e) => tracing::debug!(error = %e, "backlog not measured"),
        }
    }
}

/// The update entries the log holds of `addr` after `cursor` (trimmed past
/// it or not).
async fn held_after(
    log: &dyn Log,
    addr: &DocAddress,
    cursor: Option<LogCursor>,
) -> Result<Vec<crate::log::LogEntry>, crate::log::LogError> {
    Ok(match log.read(addr, cursor).await? {
        Some(entries) => entries,
        None => {
            let held = log.read(addr, None).await?.unwrap_or_default();
            held.into_iter().filter(|e| e.cursor > cursor).collect()
        }
    })
}

/// Compacts one document: everything appended so far goes into the
/// snapshot (and the history), and the snapshot is recorded as a version
/// when the newest is older than `version_every`.
pub async fn compact(
    store: &dyn Store,
    addr: &DocAddress,
    version_every: Duration,
) -> Result<(), StoreError> {
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
    let version = NewVersion {
        state: &snapshot,
        timestamp_ms: now_ms(),
        label: None,
        compacted: true,
        unless_within_ms: Some(version_every.as_millis() as i64),
    };
    if let Some(v) = store.add_version(addr, version).await? {
        tracing::debug!(doc = %addr, version = v.id, "version recorded");
    }
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
