//! AFFiNE's batch protocol (clients from 0.27.5): `space:join-batch` makes
//! the socket a member of a space with an active subscription per listed
//! document; subscribers get the document's updates and presence, every
//! batch member an invalidation of the space after any change in it.

use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use socketioxide::extract::{AckSender, Event, SocketRef};
use socketioxide::socket::Sid;
use yrelay_protocol::DocAddress;

use super::broadcast::emit_to_room;
use super::gateway::Gateway;
use super::wire::{
    Protocol, Reply, SpaceRef, awareness_room, bad_request, batch_version, error, parse,
    space_type, subscribers_room, too_old,
};

/// Entries one `space:join-batch` may list.
const MAX_ENTRIES: usize = 100;
/// A space's batch members get at most one invalidation this often: the
/// first change at once, the changes that come meanwhile as one at the end
/// (each invalidation makes every client ask for the space's timestamps).
const INVALIDATE_EVERY: Duration = Duration::from_millis(250);

/// The changes of a space not yet sent as an invalidation.
#[derive(Debug, Default)]
pub(super) struct Pending {
    /// `None` while there is no change; then who not to tell: the socket
    /// that wrote them, when all the changes are its own.
    except: Option<Option<Sid>>,
    timestamp: i64,
}

impl Pending {
    fn add(&mut self, sender: Option<Sid>, timestamp: i64) {
        self.except = match self.except {
            Some(writer) if writer != sender => Some(None),
            _ => Some(sender),
        };
        self.timestamp = self.timestamp.max(timestamp);
    }
}

impl Gateway {
    pub(super) async fn join_batch(self: Arc<Self>, socket: SocketRef, data: Value) -> Reply {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Entry {
            #[serde(flatten)]
            space: SpaceRef,
            doc_id: Option<String>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct JoinBatch {
            spaces: Vec<Entry>,
            client_version: String,
        }
        let join: JoinBatch = parse(data)?;
        if !batch_version(&join.client_version)? {
            return Ok(too_old(&socket));
        }
        let Some(space) = join.spaces.first().map(|e| e.space.clone()) else {
            return Err(bad_request("spaces must list 1 to 100 entries"));
        };
        if join.spaces.len() > MAX_ENTRIES {
            return Err(bad_request("spaces must list 1 to 100 entries"));
        }
        if join.spaces.iter().any(|e| e.space != space) {
            return Err(bad_request(
                "the entries of a join must all be of one space",
            ));
        }
        let mut seen = HashSet::new();
        if !join.spaces.iter().all(|e| seen.insert(e.doc_id.as_deref())) {
            return Err(bad_request("an entry is listed twice"));
        }
        // All or nothing: every check before anything changes.
        self.check_space(&socket, &space)?;
        let mut docs = Vec::new();
        for doc_id in join.spaces.iter().filter_map(|e| e.doc_id.as_deref()) {
            let addr = space.address(doc_id)?;
            self.check_read(&socket, &addr, &space)?;
            docs.push(addr);
        }
        let doc_ref = json!({ "spaceId": space.space_id });
        for addr in &docs {
            self.take_doc(&socket, addr, &doc_ref)?;
        }
        socket.leave([space.room("sync-025"), space.room("sync-026")]);
        socket.join([space.room("sync"), space.room("batch")]);
        for addr in &docs {
            socket.join([subscribers_room(&space, addr), awareness_room(&space, addr)]);
        }
        if let Some(conn) = self.state().conns.get_mut(&socket.id) {
            conn.spaces.insert(space.clone(), Protocol::Batch);
            let subscriptions = docs.iter().map(|addr| (space.clone(), addr.clone()));
            conn.subscriptions.extend(subscriptions);
        }
        for addr in &docs {
            self.watch(&space, addr).await;
        }
        self.watch_space(&space);
        Ok(json!({ "clientId": socket.id.to_string(), "success": true }))
    }

    pub(super) async fn leave_batch(self: Arc<Self>, socket: SocketRef, data: Value) -> Reply {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct LeaveBatch {
            #[serde(flatten)]
            space: SpaceRef,
            #[serde(default)]
            doc_ids: Vec<String>,
        }
        let leave: LeaveBatch = parse(data)?;
        let space = leave.space;
        self.member(&socket, &space)?;
        for doc_id in &leave.doc_ids {
            let addr = space.address(doc_id)?;
            self.unsubscribe(&socket, &space, &addr);
        }
        let subscribed = self
            .state()
            .conns
            .get(&socket.id)
            .is_some_and(|c| c.subscriptions.iter().any(|(s, _)| *s == space));
        if leave.doc_ids.is_empty() && !subscribed {
            socket.leave([space.room("sync"), space.room("batch")]);
            if let Some(conn) = self.state().conns.get_mut(&socket.id) {
                conn.spaces.remove(&space);
            }
            self.stop_watchers_if_unused(&space);
        }
        Ok(json!({ "clientId": socket.id.to_string(), "success": true }))
    }

    /// `space:doc-lifecycle` (trash, restore, delete) appears in newer
    /// clients, but its server side is not specified yet.
    pub(super) async fn doc_lifecycle(self: Arc<Self>, _: SocketRef, _: Value) -> Reply {
        Err(error(
            400,
            "BAD_REQUEST",
            "space:doc-lifecycle is not supported by this server yet",
            json!({}),
        ))
    }

    /// Ends one subscription of `socket`: its broadcasts and its presence.
    pub(super) fn unsubscribe(&self, socket: &SocketRef, space: &SpaceRef, addr: &DocAddress) {
        socket.leave([subscribers_room(space, addr), awareness_room(space, addr)]);
        if let Some(conn) = self.state().conns.get_mut(&socket.id) {
            conn.subscriptions.remove(&(space.clone(), addr.clone()));
        }
        self.forget_presence(socket, addr);
    }

    /// Ends every subscription to `addr` here (the document was deleted).
    pub(super) fn end_subscriptions_of(&self, space: &SpaceRef, addr: &DocAddress) {
        let key = (space.clone(), addr.clone());
        let subscribers: Vec<_> = self
            .state()
            .conns
            .iter()
            .filter(|(_, conn)| conn.subscriptions.contains(&key))
            .map(|(sid, _)| *sid)
            .collect();
        for sid in subscribers {
            if let Some(socket) = self.io.get_socket(sid) {
                self.unsubscribe(&socket, space, addr);
            }
        }
    }

    /// Tells the space's batch members that it changed (not `sender`, the
    /// socket that wrote the change), at most every [`INVALIDATE_EVERY`].
    pub(super) fn invalidate(
        self: &Arc<Self>,
        space: &SpaceRef,
        sender: Option<Sid>,
        timestamp: i64,
    ) {
        {
            let mut state = self.state();
            let windows = &mut state.invalidations;
            if let Some(pending) = windows.get_mut(space) {
                pending.add(sender, timestamp);
                return;
            }
            windows.insert(space.clone(), Pending::default());
        }
        let mut first = Pending::default();
        first.add(sender, timestamp);
        self.send_invalidation(space, &first);
        let gateway = Arc::downgrade(self);
        let space = space.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(INVALIDATE_EVERY).await;
                let Some(gw) = gateway.upgrade() else { return };
                let pending = {
                    let mut state = gw.state();
                    let windows = &mut state.invalidations;
                    match windows.get_mut(&space) {
                        Some(pending) if pending.except.is_some() => std::mem::take(pending),
                        _ => {
                            windows.remove(&space);
                            return;
                        }
                    }
                };
                gw.send_invalidation(&space, &pending);
            }
        });
    }

    fn send_invalidation(&self, space: &SpaceRef, pending: &Pending) {
        let event = json!({
            "spaceType": space_type(space),
            "spaceId": space.space_id,
            "timestamp": pending.timestamp,
        });
        let name = "space:broadcast-doc-invalidation";
        emit_to_room(
            self,
            space.room("batch"),
            pending.except.flatten(),
            name,
            &event,
        );
    }

    /// Starts the watcher of `space`'s events unless it runs.
    fn watch_space(self: &Arc<Self>, space: &SpaceRef) {
        let mut state = self.state();
        let watchers = &mut state.space_watchers;
        if watchers.get(space).is_some_and(|task| !task.is_finished()) {
            return;
        }
        let task = tokio::spawn(invalidate(Arc::downgrade(self), space.clone()));
        watchers.insert(space.clone(), task);
    }
}

/// Sends the space's batch members an invalidation for every change of a
/// document not watched here, on any instance and transport (a watched
/// document's watcher sends its own, without the writer).
async fn invalidate(gateway: Weak<Gateway>, space: SpaceRef) {
    loop {
        let Some(hub) = gateway.upgrade().map(|gw| gw.app.hub.clone()) else {
            return;
        };
        let Ok(mut feed) = hub.space_events(&space.space()).await else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        while let Some(notice) = feed.next().await {
            let Some(gw) = gateway.upgrade() else { return };
            let doc = notice.data.get("doc").and_then(Value::as_str);
            let addr = doc.and_then(|doc| DocAddress::parse(&space.space(), doc).ok());
            let watched = addr.is_some_and(|addr| {
                gw.state()
                    .watchers
                    .get(&(space.clone(), addr))
                    .is_some_and(|task| !task.is_finished())
            });
            if watched {
                continue;
            }
            let timestamp = notice.data.get("timestamp").and_then(Value::as_i64);
            gw.invalidate(&space, None, timestamp.unwrap_or_default());
        }
        // The feed ended (the log broke): subscribe again.
    }
}

/// An event this server does not know: an error ack naming it.
pub(super) async fn unknown_event(Event(name): Event, ack: AckSender) {
    let _ = ack.send(&bad_request(format!("unknown event {name:?}")).to_ack());
}
