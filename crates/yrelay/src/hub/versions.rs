//! A document's history for the REST API: its versions, the document as it
//! was at any moment, who changed what, and restoring an earlier state
//! (one ordinary update, relayed to every connection like any other).

use std::time::{Duration, Instant};

use yrelay_protocol::DocAddress;
use yrelay_protocol::restore::restoring_update;
use yrelay_protocol::update::{check_update, merge_updates};
use yrs::{ReadTxn, StateVector, Transact};

use super::{Ack, DocHub, HubError, Writer};
use crate::clock::now_ms;
use crate::store::NewVersion;
use crate::vocab::{Change, VersionMeta};

/// The document as it was at a moment.
#[derive(Debug)]
pub struct PastState {
    /// Its full state (one v1 update).
    pub state: Vec<u8>,
    /// The moment it shows: the one asked for within the exact window, the
    /// version's beyond it.
    pub timestamp_ms: i64,
    /// Whether it is exactly the moment asked for.
    pub exact: bool,
}

/// What to restore a document to.
#[derive(Debug, Clone, Copy)]
pub enum RestoreTarget {
    Version(i64),
    At(i64),
}

/// What a restore did.
#[derive(Debug)]
pub struct Restored {
    pub ack: Ack,
    /// The version recorded of the state before it (to undo it).
    pub version: VersionMeta,
}

impl DocHub {
    /// The versions of `addr`, newest first; `None` when it does not exist.
    pub async fn versions(&self, addr: &DocAddress) -> Result<Option<Vec<VersionMeta>>, HubError> {
        if !self.exists(addr).await? {
            return Ok(None);
        }
        Ok(Some(self.inner.store.versions(addr).await?))
    }

    /// Whether the document exists: in the store, or (scaled out, not
    /// persisted yet) only in the log.
    pub async fn exists(&self, addr: &DocAddress) -> Result<bool, HubError> {
        Ok(self.inner.store.meta(addr).await?.is_some() || !self.live(addr).await?.is_empty())
    }

    /// Records a version of the document's current state (the live
    /// replica: what the log holds too); `None` when it does not exist.
    pub async fn record_version(
        &self,
        addr: &DocAddress,
        label: Option<&str>,
    ) -> Result<Option<VersionMeta>, HubError> {
        Ok(self.record(addr, label).await?.map(|(version, _)| version))
    }

    /// [`DocHub::record_version`], with the state it recorded.
    async fn record(
        &self,
        addr: &DocAddress,
        label: Option<&str>,
    ) -> Result<Option<(VersionMeta, Vec<u8>)>, HubError> {
        let Some((state, held)) = self.current_state(addr).await? else {
            return Ok(None);
        };
        let version = NewVersion {
            state: &state,
            timestamp_ms: now_ms(),
            label,
            compacted: false,
            unless_within_ms: None,
        };
        let recorded = self.inner.store.add_version(addr, version).await?;
        if let Some(v) = &recorded {
            let locked_ms = held.as_secs_f64() * 1000.0;
            tracing::info!(doc = %addr, version = v.id, bytes = v.size, locked_ms, "version recorded");
        }
        Ok(recorded.map(|v| (v, state)))
    }

    /// One version and its state.
    pub async fn version(
        &self,
        addr: &DocAddress,
        id: i64,
    ) -> Result<(VersionMeta, Vec<u8>), HubError> {
        self.inner
            .store
            .version(addr, id)
            .await?
            .ok_or(HubError::VersionNotFound(id))
    }

    /// The document as it was at `at` (ms): exactly, within the exact
    /// window; as of the newest version at or before it beyond.
    pub async fn state_at(&self, addr: &DocAddress, at: i64) -> Result<PastState, HubError> {
        let now = now_ms();
        if at > now {
            return Err(HubError::NotInHistory(format!(
                "at={at} is in the future (now is {now})"
            )));
        }
        let store = &self.inner.store;
        let base = store.version_at(addr, at).await?;
        let exact = at >= now - self.inner.config.history_exact.as_millis() as i64;
        if !exact {
            let (version, state) = base.ok_or_else(|| before_history(at))?;
            return Ok(PastState {
                state,
                timestamp_ms: version.timestamp_ms,
                exact: false,
            });
        }
        // Every update of the window up to `at`: those a version holds too
        // merge to nothing new.
        let changes = self.changes(addr, i64::MIN, at).await?;
        if base.is_none() && changes.is_empty() {
            return Err(before_history(at));
        }
        let state = tokio::task::spawn_blocking(move || {
            let parts = base
                .iter()
                .map(|(_, state)| state.as_slice())
                .chain(changes.iter().map(|c| c.data.as_slice()));
            merge_updates(parts)
        })
        .await
        .map_err(|e| HubError::Unexportable(format!("history task failed: {e}")))?
        .map_err(|e| HubError::Unexportable(format!("history does not merge: {e}")))?;
        Ok(PastState {
            state,
            timestamp_ms: at,
            exact: true,
        })
    }

    /// The updates of `addr` written from `from` to `to`, oldest first: the
    /// store's, and (scaled out) those only the log holds yet.
    pub async fn changes(
        &self,
        addr: &DocAddress,
        from: i64,
        to: i64,
    ) -> Result<Vec<Change>, HubError> {
        let store = &self.inner.store;
        let logged = if self.inner.store_first {
            Vec::new()
        } else {
            let cursor = store.log_cursor(addr).await?;
            let entries = self.inner.log.read(addr, cursor).await?.unwrap_or_default();
            entries
                .into_iter()
                .filter(|e| (from..=to).contains(&e.timestamp_ms))
                .map(|e| Change {
                    timestamp_ms: e.timestamp_ms,
                    editor: e.editor.map(|e| e.to_string()),
                    data: e.payload.to_vec(),
                })
                .collect()
        };
        let mut changes = store.changes(addr, from, to).await?;
        // An entry persisted between the two reads is in both.
        let stored = changes.len();
        for change in logged {
            if !changes[..stored].contains(&change) {
                changes.push(change);
            }
        }
        changes.sort_by_key(|c| c.timestamp_ms);
        Ok(changes)
    }

    /// Restores `addr` to an earlier state: records a version of the
    /// current state, then submits the one update that makes every root
    /// type's content equal the old state's. `None` when the document does
    /// not exist.
    pub async fn restore(
        &self,
        addr: &DocAddress,
        target: RestoreTarget,
        writer: Writer,
    ) -> Result<Option<Restored>, HubError> {
        if !self.exists(addr).await? {
            return Ok(None);
        }
        let old = match target {
            RestoreTarget::Version(id) => self.version(addr, id).await?.1,
            RestoreTarget::At(at) => self.state_at(addr, at).await?.state,
        };
        let Some((version, current)) = self.record(addr, Some("before restore")).await? else {
            return Ok(None);
        };
        let fix = tokio::task::spawn_blocking(move || restoring_update(&current, &old))
            .await
            .map_err(|e| HubError::Unexportable(format!("restore task failed: {e}")))?
            .map_err(|e| HubError::Unexportable(e.to_string()))?;
        let update = check_update(fix).map_err(|e| HubError::BadUpdate(e.to_string()))?;
        let ack = self.submit_update(addr, update, writer, "rest").await?;
        tracing::info!(doc = %addr, ?target, before = version.id, "document restored");
        Ok(Some(Restored { ack, version }))
    }

    /// The live replica's full state and how long the document was locked
    /// for it; `None` when the document was never written.
    async fn current_state(
        &self,
        addr: &DocAddress,
    ) -> Result<Option<(Vec<u8>, Duration)>, HubError> {
        self.read_replica(addr, |doc| {
            let started = Instant::now();
            let state = doc
                .transact()
                .encode_state_as_update_v1(&StateVector::default());
            (state, started.elapsed())
        })
        .await
    }
}

fn before_history(at: i64) -> HubError {
    HubError::NotInHistory(format!(
        "at={at} is before the document's history (it did not exist, or the versions of then are past their retention)"
    ))
}
