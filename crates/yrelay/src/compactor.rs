//! The compactor: merges a document's appended updates into its snapshot
//! (yrs apply with GC, re-encode) so loads stay fast and the store small.
//!
//! In the embedded mode one compactor task runs inside `serve`, so at most
//! one compaction per document runs at a time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use yrelay_protocol::DocAddress;
use yrelay_protocol::update::merge_updates;

use crate::clock::now_ms;
use crate::metrics;
use crate::store::{Store, StoreError};

#[derive(Debug, Clone)]
pub struct CompactorConfig {
    pub min_updates: i64,
    pub idle: Duration,
    pub poll: Duration,
}

/// Runs until `shutdown` changes.
pub async fn run(
    store: Arc<dyn Store>,
    config: CompactorConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(config.poll);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let idle_before = now_ms() - config.idle.as_millis() as i64;
        let candidates = match store
            .compaction_candidates(config.min_updates, idle_before, 32)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                metrics::store_error();
                tracing::warn!(error = %e, "compactor cannot list documents");
                continue;
            }
        };
        for addr in candidates {
            if let Err(e) = compact(&*store, &addr).await {
                metrics::store_error();
                tracing::warn!(doc = %addr, error = %e, "compaction failed");
            }
        }
    }
}

/// Compacts one document: everything appended so far goes into the snapshot.
pub async fn compact(store: &dyn Store, addr: &DocAddress) -> Result<(), StoreError> {
    let Some(stored) = store.load(addr).await? else {
        return Ok(());
    };
    let Some(&(upto, _)) = stored.updates.last() else {
        return Ok(());
    };
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
    store.compact(addr, &snapshot, upto).await?;
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
