//! The document events: join and leave a space, load, push, timestamps, delete.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::{Value, json};
use socketioxide::extract::SocketRef;
use yrelay_protocol::update::{check_update, decode_state_vector};
use yrs::StateVector;

use crate::clock::now_ms;
use crate::hub::{HubError, Writer};
use crate::metrics;

use super::TRANSPORT;
use super::gateway::Gateway;
use super::wire::{
    Protocol, Reply, SpaceRef, bad_request, base64, error, internal, parse, protocol_for, too_old,
};

impl Gateway {
    pub(super) async fn join(self: Arc<Self>, socket: SocketRef, data: Value) -> Reply {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Join {
            #[serde(flatten)]
            space: SpaceRef,
            client_version: String,
        }
        let join: Join = parse(data)?;
        let Some(protocol) = protocol_for(&join.client_version)? else {
            return Ok(too_old(&socket));
        };
        self.check_space(&socket, &join.space)?;
        let (keep, drop) = match protocol {
            Protocol::V025 => ("sync-025", "sync-026"),
            Protocol::V026 | Protocol::Batch => ("sync-026", "sync-025"),
        };
        socket.leave(join.space.room(drop));
        socket.join([join.space.room("sync"), join.space.room(keep)]);
        if let Some(conn) = self.state().conns.get_mut(&socket.id) {
            conn.spaces.insert(join.space, protocol);
        }
        Ok(json!({ "clientId": socket.id.to_string(), "success": true }))
    }

    pub(super) async fn leave(self: Arc<Self>, socket: SocketRef, data: Value) -> Reply {
        let space: SpaceRef = parse(data)?;
        self.member(&socket, &space)?;
        socket.leave([
            space.room("sync"),
            space.room("sync-025"),
            space.room("sync-026"),
        ]);
        if let Some(conn) = self.state().conns.get_mut(&socket.id) {
            conn.spaces.remove(&space);
        }
        self.stop_watchers_if_unused(&space);
        Ok(json!({ "clientId": socket.id.to_string(), "success": true }))
    }

    pub(super) async fn load_doc(self: Arc<Self>, socket: SocketRef, data: Value) -> Reply {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct LoadDoc {
            #[serde(flatten)]
            space: SpaceRef,
            doc_id: String,
            state_vector: Option<String>,
        }
        let load: LoadDoc = parse(data)?;
        self.member(&socket, &load.space)?;
        let addr = load.space.address(&load.doc_id)?;
        self.check_read(&socket, &addr, &load.space)?;
        let doc_ref = json!({ "spaceId": load.space.space_id, "docId": load.doc_id });
        self.take_doc(&socket, &addr, &doc_ref)?;
        self.take_sync(&socket, &doc_ref)?;
        let sv = match load.state_vector.as_deref().filter(|s| !s.is_empty()) {
            Some(text) => decode_state_vector(&base64("stateVector", text)?)
                .map_err(|_| bad_request("stateVector is not a Yjs state vector"))?,
            None => StateVector::default(),
        };
        self.watch(&load.space, &addr).await;
        let Some((missing, state)) = self
            .app
            .hub
            .sync_state(&addr, &sv)
            .await
            .map_err(internal)?
        else {
            // Still watched: a document created later (on any transport)
            // reaches the socket. What a socket can keep loaded this way is
            // bounded by --max-docs-per-connection, and released once no
            // socket here is a member of the space.
            return Err(error(
                404,
                "DOC_NOT_FOUND",
                format!("document {} does not exist", load.doc_id),
                doc_ref,
            ));
        };
        let timestamp = self
            .app
            .hub
            .meta(&addr)
            .await
            .ok()
            .flatten()
            .map(|m| m.updated_at)
            .unwrap_or_else(now_ms);
        Ok(json!({
            "missing": STANDARD.encode(missing),
            "state": STANDARD.encode(state),
            "timestamp": timestamp,
        }))
    }

    pub(super) async fn push_doc_update(self: Arc<Self>, socket: SocketRef, data: Value) -> Reply {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Push {
            #[serde(flatten)]
            space: SpaceRef,
            doc_id: String,
            update: String,
        }
        let push: Push = parse(data)?;
        self.member(&socket, &push.space)?;
        let addr = push.space.address(&push.doc_id)?;
        // Permission before decoding: a reader's update is never looked into.
        self.check_write(&socket, &addr, &push.space)?;
        let update = base64("update", &push.update)?;
        if update.len() > self.app.limits.max_message_size {
            metrics::rejected("too_big");
            return Err(error(
                413,
                "BODY_TOO_LARGE",
                format!(
                    "an update of {} bytes exceeds the limit of {} bytes",
                    update.len(),
                    self.app.limits.max_message_size
                ),
                json!({ "spaceId": push.space.space_id, "docId": push.doc_id }),
            ));
        }
        let update = check_update(update).map_err(|e| {
            metrics::rejected("bad_update");
            bad_request(e.to_string())
        })?;
        self.take_doc(
            &socket,
            &addr,
            &json!({ "spaceId": push.space.space_id, "docId": push.doc_id }),
        )?;
        let within_rate = self
            .state()
            .conns
            .get_mut(&socket.id)
            .is_some_and(|c| c.rate.take());
        if !within_rate {
            metrics::rejected("rate_limited");
            return Err(error(
                429,
                "TOO_MANY_REQUESTS",
                format!(
                    "more than {} updates per second",
                    self.app.limits.max_updates_per_sec
                ),
                json!({ "spaceId": push.space.space_id, "docId": push.doc_id }),
            ));
        }
        self.watch(&push.space, &addr).await;
        let writer = self
            .state()
            .conns
            .get(&socket.id)
            .map(|c| Writer {
                origin: Some(c.origin),
                editor: c.sub.as_deref().map(Arc::from),
            })
            .unwrap_or_default();
        match self
            .app
            .hub
            .submit_update(&addr, update, writer, TRANSPORT)
            .await
        {
            Ok(ack) => Ok(json!({ "accepted": true, "timestamp": ack.timestamp_ms })),
            Err(HubError::Blocked) => Err(error(
                403,
                "DOC_UPDATE_BLOCKED",
                format!("document {} is blocked", push.doc_id),
                json!({ "spaceId": push.space.space_id, "docId": push.doc_id }),
            )),
            Err(HubError::BadUpdate(reason)) => Err(bad_request(reason)),
            Err(HubError::Deleted) => Err(error(
                410,
                "DOC_DELETED",
                format!("document {} was deleted", push.doc_id),
                json!({ "spaceId": push.space.space_id, "docId": push.doc_id }),
            )),
            Err(e) => Err(error(
                500,
                "FAILED_TO_SAVE_UPDATES",
                e.to_string(),
                json!({}),
            )),
        }
    }

    pub(super) async fn load_doc_timestamps(
        self: Arc<Self>,
        socket: SocketRef,
        data: Value,
    ) -> Reply {
        #[derive(Deserialize)]
        struct Timestamps {
            #[serde(flatten)]
            space: SpaceRef,
            timestamp: Option<i64>,
        }
        let query: Timestamps = parse(data)?;
        self.member(&socket, &query.space)?;
        let docs = self
            .app
            .hub
            .list(&query.space.space(), query.timestamp)
            .await
            .map_err(internal)?;
        // Only the documents this socket may read (a member by the grant of
        // one document sees that one).
        let claims = self.claims(&socket);
        let readable = |doc: &str| {
            let Ok(claims) = &claims else { return false };
            query
                .space
                .address(doc)
                .is_ok_and(|addr| self.app.auth.doc_permit(claims.as_ref(), &addr).is_ok())
        };
        Ok(Value::Object(
            docs.into_iter()
                .filter(|m| readable(&m.doc))
                .map(|m| (m.doc, Value::from(m.updated_at)))
                .collect(),
        ))
    }

    pub(super) async fn delete_doc(self: Arc<Self>, socket: SocketRef, data: Value) -> Reply {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Delete {
            #[serde(flatten)]
            space: SpaceRef,
            doc_id: String,
        }
        let delete: Delete = parse(data)?;
        self.member(&socket, &delete.space)?;
        let addr = delete.space.address(&delete.doc_id)?;
        self.check_write(&socket, &addr, &delete.space)?;
        self.app.hub.delete(&addr, false).await.map_err(internal)?;
        Ok(json!({ "success": true }))
    }
}
