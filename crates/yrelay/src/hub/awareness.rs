//! Presence on a live document: which awareness states are fresh, who
//! introduced which client id, the bounds, and the removals announced when a
//! connection leaves.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use yrs::sync::{Awareness, AwarenessUpdate};
use yrs::updates::encoder::Encode;

use super::live::DocState;
use crate::clock::now_ms;
use crate::log::Origin;

/// Awareness states not renewed for this long are not sent to new joiners
/// (clients renew every 15 s; y-protocols drops states after 30 s).
const AWARENESS_STALE_MS: u64 = 30_000;

/// Presence is sent at once while a document's fan-out stays within
/// `PRESENCE_FRAMES_PER_TICK` frames per tick; past that, the changes made
/// within a tick are merged (each client's latest state) and sent as one
/// update when it ends. 1,000 people moving their cursors once a second
/// then cost each of them 20 frames a second, not 1,000; ten people are
/// sent every change at once.
pub const PRESENCE_TICK: Duration = Duration::from_millis(50);
pub const PRESENCE_FRAMES_PER_TICK: usize = 1000;

/// The awareness clients changed since presence was last sent, and the
/// frames sent in the current tick.
#[derive(Debug, Default)]
pub(super) struct PresenceTick {
    changed: HashSet<u64>,
    /// The connection every pending change came from, if they share one
    /// (`Some(None)`: several, or unknown).
    origin: Option<Option<Origin>>,
    tick_started: Option<Instant>,
    frames: usize,
}

impl PresenceTick {
    /// Notes the clients an applied awareness entry changed.
    pub fn record(&mut self, clients: impl IntoIterator<Item = u64>, origin: Option<Origin>) {
        self.changed.extend(clients);
        self.origin = match self.origin {
            None => Some(origin),
            Some(o) if o == origin => Some(o),
            Some(_) => Some(None),
        };
    }

    /// When the pending changes are due (`None`: nothing pending).
    pub fn due_at(&self) -> Option<Instant> {
        if self.changed.is_empty() {
            return None;
        }
        Some(match self.tick_started {
            Some(at) => at + PRESENCE_TICK,
            None => Instant::now(),
        })
    }

    /// Whether a frame to each of `subscribers` fits in this tick (the
    /// first of a tick always does); a new tick starts when it is over.
    fn may_send(&mut self, subscribers: usize, now: Instant) -> bool {
        if self.tick_started.is_none_or(|at| now >= at + PRESENCE_TICK) {
            self.tick_started = Some(now);
            self.frames = 0;
        }
        self.frames == 0 || self.frames + subscribers <= PRESENCE_FRAMES_PER_TICK
    }
}

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

    /// The pending presence changes as one awareness update (each changed
    /// client's current state, `null` for one removed) with the origin they
    /// share, if they may be sent now.
    pub(super) fn take_presence(&mut self) -> Option<(Vec<u8>, Option<Origin>)> {
        let subscribers = self.subscribers.len();
        let tick = &mut self.presence;
        if tick.changed.is_empty() || !tick.may_send(subscribers, Instant::now()) {
            return None;
        }
        tick.frames += subscribers.max(1);
        let origin = tick.origin.take().flatten();
        let clients: Vec<_> = tick
            .changed
            .drain()
            .map(yrs::ClientID::new)
            .filter(|&id| self.awareness.meta(id).is_some())
            .collect();
        if clients.is_empty() {
            return None;
        }
        let update = self.awareness.update_with_clients(clients).ok()?;
        Some((update.encode_v1(), origin))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_is_sent_at_once_until_a_tick_holds_its_frames_then_merged() {
        let start = Instant::now();
        let mut few = PresenceTick::default();
        // Ten subscribers: every change goes at once.
        for i in 0..50 {
            few.record([i], None);
            assert!(few.may_send(10, start));
            few.frames += 10;
            few.changed.clear();
        }
        let mut many = PresenceTick::default();
        many.record([1], None);
        assert!(
            many.may_send(1500, start),
            "the first of a tick always goes"
        );
        many.frames += 1500;
        many.changed.clear();
        assert_eq!(many.due_at(), None);
        many.record([2], None);
        many.record([3], None);
        let within = start + PRESENCE_TICK / 2;
        assert!(!many.may_send(1500, within), "the rest of the tick waits");
        assert_eq!(many.due_at(), Some(start + PRESENCE_TICK));
        assert_eq!(many.changed.len(), 2, "both changes go in one update");
        assert!(many.may_send(1500, start + PRESENCE_TICK), "a new tick");
    }

    #[test]
    fn merged_presence_keeps_the_origin_only_when_every_change_shares_it() {
        let a = Origin {
            instance: 1,
            connection: 1,
        };
        let b = Origin {
            instance: 1,
            connection: 2,
        };
        let mut tick = PresenceTick::default();
        tick.record([1], Some(a));
        tick.record([1], Some(a));
        assert_eq!(tick.origin, Some(Some(a)));
        tick.record([2], Some(b));
        assert_eq!(tick.origin, Some(None));
    }
}
