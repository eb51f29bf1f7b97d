//! The tail task of each live document: its log feed, applied in order,
//! resumed when it breaks, and the unload once the document is idle.

use std::sync::Arc;
use std::time::Duration;

use super::DocHub;
use super::history::History;
use super::live::{CloseReason, DocNotice, LiveDoc};
use crate::log::{EntryKind, Subscription};

/// The tail task of a live document: applies its log entries in order,
/// resumes the feed by cursor when it breaks, and unloads the document once
/// it is idle.
pub(super) async fn tail(hub: DocHub, doc: Arc<LiveDoc>, mut feed: Subscription) {
    let period =
        (hub.inner.config.idle_unload / 2).clamp(Duration::from_millis(50), Duration::from_secs(5));
    let mut idle_check = tokio::time::interval(period);
    loop {
        let presence_due = doc.presence_due_at();
        tokio::select! {
            _ = until(presence_due) => doc.send_presence(),
            entry = feed.recv() => match entry {
                Some(entry) if entry.kind == EntryKind::Notice => {
                    match serde_json::from_slice::<DocNotice>(&entry.payload) {
                        Ok(DocNotice::Blocked(blocked)) => doc.lock().blocked = blocked,
                        Ok(DocNotice::Stateless(payload)) => doc.fan_out_stateless(payload, entry.origin),
                        Ok(DocNotice::Deleted) => {
                            tracing::info!(doc = %doc.addr, "document deleted: closing its connections");
                            doc.lock().closed = true;
                            doc.close_subscribers(CloseReason::Deleted);
                            hub.forget(&doc);
                            return;
                        }
                        Ok(DocNotice::Undeleted) => {
                            doc.lock().closed = true;
                            doc.close_subscribers(CloseReason::Resync);
                            hub.forget(&doc);
                            return;
                        }
                        Err(e) => tracing::warn!(doc = %doc.addr, error = %e, "unknown notice ignored"),
                    }
                }
                Some(entry) => doc.deliver(&entry),
                None => match resume(&hub, &doc).await {
                    Some(resumed) => feed = resumed,
                    None => {
                        tracing::warn!(doc = %doc.addr, "log feed lost and not resumable; clients will resync");
                        doc.lock().closed = true;
                        doc.close_subscribers(CloseReason::Resync);
                        hub.forget(&doc);
                        return;
                    }
                },
            },
            _ = idle_check.tick() => {
                {
                    let mut state = doc.lock();
                    state.sweep_awareness();
                    state.release_full_state();
                }
                if hub.unload_if_idle(&doc) {
                    return;
                }
            }
        }
    }
}

/// Waits until `at`; forever when there is nothing to wait for.
async fn until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Subscribes again and replays what the log holds after the replica's
/// cursor, retrying while the log is unreachable (a restarting Redis). When
/// the log no longer holds that cursor (the compactor moved it to the
/// store), catches up from the store instead and sends subscribers what they
/// missed as one update. `None` when neither works for long.
async fn resume(hub: &DocHub, doc: &Arc<LiveDoc>) -> Option<Subscription> {
    const ATTEMPTS: u32 = 60;
    let log = hub.log();
    for attempt in 1..=ATTEMPTS {
        // Subscribed first, as loading does: whatever is appended while it
        // catches up arrives on this feed.
        let resumed = async {
            let feed = log.subscribe(&doc.addr).await?;
            let cursor = doc.lock().cursor;
            Ok::<_, crate::log::LogError>((feed, log.read(&doc.addr, cursor).await?))
        };
        match resumed.await {
            Ok((feed, Some(missed))) => {
                for entry in &missed {
                    doc.deliver(entry);
                }
                if attempt > 1 {
                    tracing::info!(doc = %doc.addr, attempt, "log feed resumed");
                }
                return Some(feed);
            }
            Ok((feed, None)) => match History::read(hub.store(), log, &doc.addr).await {
                Ok(history) => {
                    doc.catch_up(&history);
                    return Some(feed);
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(250)).await,
            },
            Err(e) if attempt == ATTEMPTS => {
                tracing::warn!(doc = %doc.addr, error = %e, "log feed not resumable");
                return None;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(250)).await,
        }
    }
    None
}
