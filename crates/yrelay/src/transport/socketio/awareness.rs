//! The awareness events: join, leave, load and update awareness.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::{Value, json};
use socketioxide::extract::SocketRef;
use yrelay_protocol::DocAddress;
use yrelay_protocol::sync::decode_awareness;

use crate::hub::HubError;
use crate::metrics;

use super::gateway::Gateway;
use super::wire::{
    Reply, SioError, SpaceRef, awareness_room, bad_request, base64, doc_event, error, internal,
    parse, protocol_for, too_old,
};

impl Gateway {
    pub(super) async fn join_awareness(self: Arc<Self>, socket: SocketRef, data: Value) -> Reply {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct JoinAwareness {
            #[serde(flatten)]
            space: SpaceRef,
            doc_id: String,
            client_version: String,
        }
        let join: JoinAwareness = parse(data)?;
        if protocol_for(&join.client_version)?.is_none() {
            return Ok(too_old(&socket));
        }
        self.member(&socket, &join.space)?;
        let addr = join.space.address(&join.doc_id)?;
        self.check_read(&socket, &addr, &join.space)?;
        socket.join(awareness_room(&join.space, &addr));
        self.watch(&join.space, &addr).await;
        Ok(json!({ "clientId": socket.id.to_string(), "success": true }))
    }

    pub(super) async fn leave_awareness(self: Arc<Self>, socket: SocketRef, data: Value) -> Reply {
        let (space, addr) = self.awareness_target(&socket, data)?;
        socket.leave(awareness_room(&space, &addr));
        self.forget_presence(&socket, &addr);
        Ok(json!({ "clientId": socket.id.to_string(), "success": true }))
    }

    /// Removes the awareness clients `socket` introduced in `addr`.
    pub(super) fn forget_presence(&self, socket: &SocketRef, addr: &DocAddress) {
        let mine = self
            .state()
            .conns
            .get_mut(&socket.id)
            .and_then(|c| Some((c.awareness.remove(addr)?, c.origin)));
        if let Some((clients, origin)) = mine {
            self.app.hub.forget_awareness_of(addr, &clients, origin);
        }
    }

    pub(super) async fn load_awarenesses(self: Arc<Self>, socket: SocketRef, data: Value) -> Reply {
        let (space, addr) = self.awareness_target(&socket, data)?;
        let head = doc_event(&space, &addr);
        // The sockets here re-send theirs; the replica knows everyone's.
        let _ = socket
            .to(awareness_room(&space, &addr))
            .emit("space:collect-awareness", &head)
            .await;
        let mine = self
            .state()
            .conns
            .get(&socket.id)
            .and_then(|c| c.awareness.get(&addr).cloned())
            .unwrap_or_default();
        let states = self
            .app
            .hub
            .awareness_states(&addr, &mine)
            .await
            .map_err(internal)?;
        if let Some(states) = states {
            let mut event = head;
            event["awarenessUpdate"] = STANDARD.encode(states).into();
            let _ = socket.emit("space:broadcast-awareness-update", &event);
        }
        Ok(json!({ "clientId": socket.id.to_string() }))
    }

    pub(super) async fn update_awareness(self: Arc<Self>, socket: SocketRef, data: Value) -> Reply {
        let raw = data
            .get("awarenessUpdate")
            .and_then(Value::as_str)
            .ok_or_else(|| bad_request("awarenessUpdate (base64) is required"))?;
        let raw = base64("awarenessUpdate", raw)?;
        let update =
            decode_awareness(&raw).map_err(|e| bad_request(format!("awarenessUpdate: {e}")))?;
        let (space, addr) = self.awareness_target(&socket, data)?;
        self.watch(&space, &addr).await;
        let within_rate = self
            .state()
            .conns
            .get_mut(&socket.id)
            .is_some_and(|c| c.awareness_rate.take());
        if !within_rate {
            metrics::rejected("awareness_rate_limited");
            return Err(error(
                429,
                "TOO_MANY_REQUESTS",
                format!(
                    "more than {} awareness updates per second",
                    self.app.limits.max_awareness_per_sec
                ),
                json!({}),
            ));
        }
        let (origin, introduced) = self
            .state()
            .conns
            .get(&socket.id)
            .map(|conn| (conn.origin, conn.awareness.get(&addr).cloned()))
            .unzip();
        let introduced = introduced.flatten().unwrap_or_default();
        match self
            .app
            .hub
            .publish_awareness(&addr, raw, &update, origin, &introduced)
            .await
        {
            Ok(()) => {}
            Err(HubError::Awareness(refusal)) => return Err(bad_request(refusal.to_string())),
            Err(e) => return Err(internal(e)),
        }
        if let Some(conn) = self.state().conns.get_mut(&socket.id) {
            conn.awareness
                .entry(addr.clone())
                .or_default()
                .record(&update);
        }
        Ok(json!({}))
    }

    /// `{spaceType, spaceId, docId}` of an awareness event, for a member.
    pub(super) fn awareness_target(
        &self,
        socket: &SocketRef,
        data: Value,
    ) -> Result<(SpaceRef, DocAddress), SioError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Target {
            #[serde(flatten)]
            space: SpaceRef,
            doc_id: String,
        }
        let target: Target = parse(data)?;
        self.member(socket, &target.space)?;
        let addr = target.space.address(&target.doc_id)?;
        self.check_read(socket, &addr, &target.space)?;
        Ok((target.space, addr))
    }
}
