//! What the inspector reads: pages of spaces and documents from the store,
//! and who is connected to a document live on this instance, with the
//! presence (awareness states) each connection introduced.

use std::collections::HashMap;

use yrelay_protocol::DocAddress;

use super::live::Seen;
use super::{DocHub, HubError};
use crate::store::{DocMeta, SpaceMeta};
use crate::vocab::Origin;

/// A live document as this instance sees it.
pub struct LiveView {
    /// This instance's id.
    pub instance: u64,
    /// The replica's state vector: each client's next clock.
    pub state_vector: Vec<(u64, u32)>,
    /// This instance's connections to it, by connection id.
    pub connections: Vec<(u64, Seen)>,
    /// Every awareness state the replica holds (from every instance).
    pub presence: Vec<Presence>,
}

/// One awareness client's state.
pub struct Presence {
    pub client: u64,
    pub clock: u32,
    /// Its state as the client set it (JSON), `None` once it left.
    pub state: Option<String>,
    /// When it was last renewed (ms since the epoch).
    pub updated_ms: u64,
    /// The connection that introduced it (on this instance or another), if
    /// one did.
    pub origin: Option<Origin>,
}

impl DocHub {
    /// A page of a space's documents (see [`crate::store::Store::page`]).
    pub async fn page(
        &self,
        space: &str,
        search: &str,
        from: &str,
        limit: i64,
    ) -> Result<Vec<DocMeta>, HubError> {
        Ok(self.inner.store.page(space, search, from, limit).await?)
    }

    /// A page of spaces (see [`crate::store::Store::spaces`]).
    pub async fn spaces(
        &self,
        search: &str,
        from: &str,
        limit: i64,
    ) -> Result<Vec<SpaceMeta>, HubError> {
        Ok(self.inner.store.spaces(search, from, limit).await?)
    }

    /// Who is connected to `addr` here and its presence; `None` when the
    /// document is not live on this instance (it is not loaded for this).
    pub fn live_view(&self, addr: &DocAddress) -> Option<LiveView> {
        let doc = self.inner.loaded(addr)?;
        let state = doc.lock();
        let mut connections: Vec<_> = state
            .subscribers
            .iter()
            .map(|(id, s)| (*id, s.seen.clone()))
            .collect();
        connections.sort_by_key(|(id, seen)| (seen.since_ms, *id));
        let instance = self.inner.instance;
        let presence = state
            .awareness
            .iter()
            .map(|(id, s)| Presence {
                client: id.get(),
                clock: s.clock,
                state: s.data.as_ref().map(|d| d.to_string()),
                updated_ms: s.last_updated,
                origin: state.awareness_owners.get(&id.get()).copied().flatten(),
            })
            .collect();
        let mut state_vector: Vec<_> = {
            use yrs::{ReadTxn, Transact};
            let txn = state.awareness.doc().transact();
            txn.state_vector()
                .iter()
                .map(|(c, k)| (c.get(), *k))
                .collect()
        };
        state_vector.sort_unstable();
        Some(LiveView {
            instance,
            state_vector,
            connections,
            presence,
        })
    }

    /// How many connections each document of `space` has on this instance
    /// (documents live here only).
    pub fn live_counts(&self, space: &str) -> HashMap<String, usize> {
        let docs: Vec<_> = self
            .inner
            .lock_docs()
            .iter()
            .filter(|(addr, _)| addr.space() == space)
            .filter_map(|(addr, slot)| Some((addr.doc().to_string(), slot.doc.get()?.clone())))
            .collect();
        docs.into_iter()
            .map(|(doc, live)| (doc, live.lock().subscribers.len()))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}
