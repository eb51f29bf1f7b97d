//! Presence on a live document: which awareness states are fresh, who
//! introduced which client id, the bounds, and the removals announced when a
//! connection leaves.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use yrs::sync::{Awareness, AwarenessUpdate};
use yrs::updates::encoder::Encode;

use super::live::DocState;
use crate::clock::now_ms;
use crate::log::Origin;

/// Awareness states not renewed for this long are not sent to new joiners
/// (clients renew every 15 s; y-protocols drops states after 30 s).
const AWARENESS_STALE_MS: u64 = 30_000;

/// How much presence one connection and one document may hold
/// (`--max-awareness-clients`, `--max-awareness-states`).
#[derive(Debug, Clone, Copy)]
pub struct AwarenessBounds {
    /// Awareness client ids one connection may introduce.
    pub per_connection: usize,
    /// Awareness states one document may hold.
    pub per_doc: usize,
}

/// Why an awareness update is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AwarenessRefusal {
    #[error("awareness client {0} belongs to another connection")]
    Foreign(u64),
    #[error("a connection may introduce at most {0} awareness clients")]
    TooManyClients(usize),
    #[error("the document holds as many awareness states as it may ({0})")]
    TooManyStates(usize),
}

impl DocState {
    /// Drops awareness states not renewed for twice the time clients wait
    /// (clients renew every 15 s and drop a peer after 30 s), so that
    /// connections that vanished without a removal free their place; and
    /// rebuilds the awareness when removed clients (which yrs keeps as
    /// entries) outnumber the present ones.
    pub(super) fn sweep_awareness(&mut self) {
        let stale_before = (now_ms() as u64).saturating_sub(2 * AWARENESS_STALE_MS);
        let stale: Vec<_> = self
            .awareness
            .iter()
            .filter(|(_, s)| s.data.is_some() && s.last_updated < stale_before)
            .map(|(id, _)| id)
            .collect();
        for id in stale {
            self.awareness.remove_state(id);
            self.awareness_owners.remove(&id.get());
        }
        let present: Vec<_> = self
            .awareness
            .iter()
            .filter(|(_, s)| s.data.is_some())
            .map(|(id, _)| id)
            .collect();
        if self.awareness.iter().count() > 2 * present.len() + 64 {
            let mut fresh = Awareness::new(self.awareness.doc().clone());
            if let Ok(update) = self.awareness.update_with_clients(present) {
                let _ = fresh.apply_update(update);
            }
            self.awareness = fresh;
        }
    }

    /// Whether `origin`, which has introduced `introduced`, may publish
    /// `update`: it changes only client ids that are new or its own, stays
    /// within its own bound and within the document's.
    pub(super) fn admit_awareness(
        &self,
        update: &AwarenessUpdate,
        origin: Option<Origin>,
        introduced: &HashSet<u64>,
        bounds: AwarenessBounds,
    ) -> Result<(), AwarenessRefusal> {
        let mut new_here = 0;
        let mut new_for_it = 0;
        for (client, state) in &update.clients {
            let id = client.get();
            match self.awareness_owners.get(&id) {
                Some(owner) if *owner != origin => return Err(AwarenessRefusal::Foreign(id)),
                Some(_) => {}
                None if &*state.json != "null" => new_here += 1,
                None => {}
            }
            if &*state.json != "null" && !introduced.contains(&id) {
                new_for_it += 1;
            }
        }
        if introduced.len() + new_for_it > bounds.per_connection {
            return Err(AwarenessRefusal::TooManyClients(bounds.per_connection));
        }
        if new_here > 0 && self.awareness_owners.len() + new_here > bounds.per_doc {
            return Err(AwarenessRefusal::TooManyStates(bounds.per_doc));
        }
        Ok(())
    }
}

/// The awareness states renewed lately (an encoded awareness update), but
/// those of `except`; `None` if there are none.
pub(super) fn fresh_awareness(awareness: &Awareness, except: &HashSet<u64>) -> Option<Vec<u8>> {
    let fresh_after = (now_ms() as u64).saturating_sub(AWARENESS_STALE_MS);
    let clients: Vec<_> = awareness
        .iter()
        .filter(|(id, s)| {
            s.data.is_some() && s.last_updated >= fresh_after && !except.contains(&id.get())
        })
        .map(|(id, _)| id)
        .collect();
    if clients.is_empty() {
        return None;
    }
    awareness
        .update_with_clients(clients)
        .ok()
        .map(|u| u.encode_v1())
}

/// Awareness client ids a connection introduced and has not removed: what
/// to announce as gone when it leaves.
#[derive(Debug, Default, Clone)]
pub struct AwarenessClients(HashSet<u64>);

impl AwarenessClients {
    /// Notes the clients `update` sets (introduced) or removes (`null`).
    pub fn record(&mut self, update: &AwarenessUpdate) {
        for (client, entry) in &update.clients {
            if &*entry.json == "null" {
                self.0.remove(&client.get());
            } else {
                self.0.insert(client.get());
            }
        }
    }

    pub fn ids(&self) -> &HashSet<u64> {
        &self.0
    }
}

/// Builds the awareness update that removes `clients` (as y-websocket's
/// server does when a connection closes).
pub(super) fn removal_update(
    awareness: &Awareness,
    clients: &HashSet<u64>,
) -> Option<AwarenessUpdate> {
    use yrs::sync::awareness::AwarenessUpdateEntry;
    let entries: HashMap<_, _> = clients
        .iter()
        .filter_map(|&c| {
            let id = yrs::ClientID::new(c);
            let (clock, _) = awareness.meta(id)?;
            Some((
                id,
                AwarenessUpdateEntry {
                    clock: clock + 1,
                    json: Arc::from("null"),
                },
            ))
        })
        .collect();
    (!entries.is_empty()).then_some(AwarenessUpdate { clients: entries })
}
