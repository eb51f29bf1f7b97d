//! AFFiNE's Socket.IO `space:*` sync protocol (socketioxide, default path
//! `/socket.io/`, namespace `/`). The contract is
//! `spec/socketio-space-protocol.md`; in short:
//!
//! - A socket joins a space (`space:join`), then loads and pushes documents.
//!   A workspace doc `(spaceId, docId)` is the document `{spaceId}/{docId}`
//!   of every other transport; a userspace doc is `@{spaceId}/{docId}`.
//! - Broadcasts come from the hub, not from the pushing socket: for each
//!   document a socket of this instance has loaded or pushed, one watcher
//!   holds a hub session and emits every update (from this socket, another
//!   socket, another transport or another instance) to the space's rooms,
//!   except to the socket that wrote it. Clients from 0.26 get
//!   `space:broadcast-doc-updates`, several pending updates merged into one;
//!   0.25 clients get one `space:broadcast-doc-update` per update.
//! - Awareness goes through the hub like every other transport's (so to
//!   sockets of the awareness room on every instance, and to y-websocket and
//!   SSE clients of the document), never stored. The watcher emits it to
//!   the room but to its sender; a socket's awareness clients are announced
//!   gone when it leaves the room or disconnects, and `space:load-awarenesses`
//!   also answers with the states the document's replica knows.
//!
//! Every failure is an ack `{error: {status, code, type, name, message,
//! data}}`; the socket stays usable.

mod access;
mod awareness;
mod batch;
mod broadcast;
mod docs;
mod gateway;
mod wire;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::extract::{SocketRef, TryData};
use socketioxide::layer::SocketIoLayer;
use socketioxide::socket::Sid;

use crate::auth::AuthError;
use crate::metrics;
use crate::state::AppState;

use gateway::{Gateway, connect_credentials};

const TRANSPORT: &str = "socketio";
/// How long an engine.io session may wait for its Socket.IO connect (a
/// client sends it at once): a session that never connects holds no slot.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest Socket.IO packet (or polling payload, or WebSocket message)
/// that carries an update of `max_update` bytes: base64 (4/3) in a JSON
/// event, with room for its other fields.
fn packet_limit(max_update: usize) -> usize {
    max_update.saturating_add(2) / 3 * 4 + 64 * 1024
}

/// The layer serving Socket.IO, and the gateway behind it.
pub fn layer(app: AppState) -> SocketIoLayer {
    // One size limit on every transport (--max-message-size, for the update
    // a packet carries): the polling transport's payloads and the WebSocket
    // transport's messages and frames (tungstenite's own default, 16 MiB,
    // tore connections without a word).
    let limit = packet_limit(app.limits.max_message_size);
    let (layer, io) = SocketIo::builder()
        .max_payload(limit as u64)
        .ws_max_message_size(limit)
        .ws_max_frame_size(limit)
        .max_buffer_size(4096)
        .connect_timeout(CONNECT_TIMEOUT)
        .build_layer();
    let gateway = Arc::new(Gateway::new(app, io.clone()));
    tokio::spawn(housekeeping(Arc::downgrade(&gateway)));
    tokio::spawn(access::follow_revokes(
        Arc::downgrade(&gateway),
        gateway.app.auth.revocations.watch(),
    ));
    // Everything happens in the middleware, which socketioxide awaits before
    // it sends the connect packet: its connect handler runs in a task of its
    // own, after that packet, so event handlers registered there missed a
    // client's first event now and then (`space:join` sent at once on
    // connect was dropped for about 1 in 3000 sockets under load).
    let admit = {
        let gw = gateway.clone();
        move |socket: SocketRef, TryData(auth): TryData<Value>| {
            let gw = gw.clone();
            async move {
                let auth = auth.ok();
                let who = connect_credentials(&socket, &auth);
                let claims = gw.app.auth.claims(&who, None, None).await.map_err(|e| {
                    metrics::rejected("unauthorized");
                    match e {
                        AuthError::Unavailable(_) => {
                            format!("AUTH_UNAVAILABLE: {e}; try again later")
                        }
                        e => format!("sign in required: {e}"),
                    }
                })?;
                // Sockets count against --max-connections like WebSockets
                // and event streams do.
                let slot = gw
                    .app
                    .limits
                    .connection_slot()
                    .map_err(|_| "TOO_MANY_CONNECTIONS: this instance holds as many connections as it may; try again later".to_string())?;
                gw.connected(socket, (who, claims), slot);
                Ok::<(), String>(())
            }
        }
    };
    let connected = |_: SocketRef| async {};
    use socketioxide::handler::ConnectHandler;
    io.ns("/", connected.with(admit));
    layer
}

/// Refuses a new engine.io session (a handshake: no `sid` yet) with 503
/// `TOO_MANY_CONNECTIONS` while the instance holds as many connections as it
/// may, before socketioxide keeps any state for it (the socket's own slot is
/// taken when it connects).
pub async fn refuse_handshakes_when_full(
    State(app): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let uri = request.uri();
    let handshake = uri.path().starts_with("/socket.io")
        && !uri
            .query()
            .is_some_and(|q| q.split('&').any(|p| p.starts_with("sid=")));
    if handshake && let Err(full) = app.limits.connection_slot() {
        return full.into_response();
    }
    next.run(request).await
}

/// Every 5 s: sets `yrelay_active_users` (users seen in the last minute),
/// and forgets sockets that were admitted but never connected (socketioxide
/// removes a socket whose connect packet could not be sent without a
/// disconnect event; admitted ones are in the namespace within moments).
async fn housekeeping(gateway: std::sync::Weak<Gateway>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let Some(gw) = gateway.upgrade() else { return };
        {
            let mut state = gw.state();
            let seen = &mut state.seen;
            seen.retain(|_, at| at.elapsed() < Duration::from_secs(60));
            metrics::active_users(seen.len());
        }
        let admitted: Vec<Sid> = gw
            .state()
            .conns
            .iter()
            .filter(|(_, c)| c.opened.elapsed() > Duration::from_secs(10))
            .map(|(sid, _)| *sid)
            .collect();
        for sid in admitted {
            if gw.io.get_socket(sid).is_none() {
                gw.forget(sid);
            }
        }
        gw.end_expired_sockets();
        gw.end_lost_subscriptions();
    }
}
