//! A document's durable history, read to load it or to catch up.

use std::sync::Arc;

use yrelay_protocol::DocAddress;

use super::HubError;
use super::live::DocState;
use crate::log::{Log, LogCursor, LogEntry};
use crate::store::Store;

/// A document's durable history: what the store holds, then the log after
/// the store's cursor.
pub(super) struct History {
    stored: Vec<Vec<u8>>,
    blocked: bool,
    deleted: bool,
    /// In the trash: served empty, written by nobody.
    trashed: bool,
    cursor: Option<LogCursor>,
    tail: Vec<LogEntry>,
}

impl History {
    pub(super) async fn read(
        store: &Arc<dyn Store>,
        log: &Arc<dyn Log>,
        addr: &DocAddress,
    ) -> Result<Self, HubError> {
        // The compactor may move entries into the store and trim them from
        // the log between our two reads: then read the store again.
        let deleted = store.deleted_at(addr).await?.is_some();
        for _ in 0..5 {
            let stored = store.load(addr).await?;
            let cursor = stored.as_ref().and_then(|s| s.log_cursor);
            let blocked = stored.as_ref().is_some_and(|s| s.meta.blocked);
            let trashed = stored.as_ref().is_some_and(|s| s.meta.trashed_at.is_some());
            if let Some(tail) = log.read(addr, cursor).await? {
                let (stored, tail) = if trashed {
                    (None, Vec::new())
                } else {
                    (stored, tail)
                };
                let stored = stored
                    .map(|s| {
                        s.snapshot
                            .into_iter()
                            .chain(s.updates.into_iter().map(|(_, u)| u))
                            .collect()
                    })
                    .unwrap_or_default();
                return Ok(Self {
                    stored,
                    blocked,
                    deleted,
                    trashed,
                    cursor,
                    tail,
                });
            }
        }
        Err(HubError::Log(crate::log::LogError::Unavailable(
            "the log keeps moving past the store; try again".into(),
        )))
    }

    /// Merges the history into a replica (idempotent: CRDT merge).
    pub(super) fn apply_to(&self, state: &mut DocState, addr: &DocAddress) {
        for update in &self.stored {
            state.apply_update(addr, update, "stored");
        }
        if state.cursor < self.cursor {
            state.cursor = self.cursor;
        }
        state.blocked = self.blocked;
        state.deleted = self.deleted;
        state.trashed = self.trashed;
        for entry in &self.tail {
            state.apply(addr, entry);
        }
    }
}
