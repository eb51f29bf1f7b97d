//! Brings revokes made on any instance to this one: read from the store
//! every second (the instance that made one applied it at once), the ones
//! past `--revoke-retention-secs` pruned now and then.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::auth::Auth;
use crate::clock::now_ms;
use crate::store::Store;

const EVERY: Duration = Duration::from_secs(1);
/// How far back each read looks: revokes are told apart by id, and one
/// committed a little after another with a lower id is still seen.
const WINDOW_MS: i64 = 5 * 60 * 1000;
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

pub async fn follow(
    store: Arc<dyn Store>,
    auth: Arc<Auth>,
    retention_secs: u64,
    mut shutdown: watch::Receiver<bool>,
) {
    let retention_ms = retention_secs.saturating_mul(1000) as i64;
    // First everything still in force, then a window.
    let mut since = now_ms() - retention_ms;
    let mut tick = tokio::time::interval(EVERY);
    let mut pruned = tokio::time::Instant::now();
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let read_from = now_ms() - WINDOW_MS;
        match store.revocations(since).await {
            Ok(revoked) => {
                since = read_from.max(since);
                for r in auth.revoke(revoked) {
                    tracing::info!(id = r.id, sub = ?r.what.sub, space = ?r.what.space, doc = ?r.what.doc, "revoke applied");
                }
                if failing {
                    tracing::info!("revokes are read again");
                    failing = false;
                }
            }
            Err(e) if !failing => {
                tracing::warn!(error = %e, "cannot read revokes (retrying every second)");
                failing = true;
            }
            Err(_) => {}
        }
        if pruned.elapsed() >= PRUNE_EVERY {
            pruned = tokio::time::Instant::now();
            if let Err(e) = store.prune_revocations(now_ms() - retention_ms).await {
                tracing::warn!(error = %e, "cannot prune revokes");
            }
        }
    }
}
