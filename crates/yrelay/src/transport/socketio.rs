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

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::{Value, json};
use socketioxide::SocketError;
use socketioxide::extract::{AckSender, SocketRef, TryData};
use socketioxide::layer::SocketIoLayer;
use socketioxide::socket::Sid;
use socketioxide::{SocketIo, TransportType};
use yrelay_protocol::DocAddress;
use yrelay_protocol::sync::decode_awareness;
use yrelay_protocol::update::{check_update, decode_state_vector, merge_updates};
use yrs::StateVector;

use crate::auth::AuthError;
use crate::clock::now_ms;
use crate::edge::UpdateRate;
use crate::hub::{AwarenessClients, DocEvent, HubError, Session, Writer};
use crate::log::Origin;
use crate::metrics;
use crate::server::AppState;

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

/// An ack: `{data}` or `{error}`.
type Reply = Result<Value, Value>;

fn error(status: u16, name: &str, message: impl Into<String>, data: Value) -> Value {
    let kind = match status {
        400 => "INVALID_INPUT",
        401 => "AUTHENTICATION_REQUIRED",
        403 => "ACTION_FORBIDDEN",
        404 | 410 => "RESOURCE_NOT_FOUND",
        413 => "INVALID_INPUT",
        429 => "TOO_MANY_REQUESTS",
        _ => "INTERNAL_SERVER_ERROR",
    };
    json!({ "error": {
        "status": status, "code": name, "type": kind, "name": name,
        "message": message.into(), "data": data,
    }})
}

fn bad_request(message: impl Into<String>) -> Value {
    metrics::rejected("bad_request");
    error(400, "BAD_REQUEST", message, json!({}))
}

/// Which protocol room (and broadcast shape) a client version gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// 0.25.x: one `space:broadcast-doc-update` per update.
    V025,
    /// 0.26.0 and later (prereleases included): `space:broadcast-doc-updates`.
    V026,
}

/// `None` for versions below 0.25.0 (refused).
fn protocol_for(version: &str) -> Result<Option<Protocol>, Value> {
    let core = version.split(['-', '+']).next().unwrap_or_default();
    let mut parts = core.split('.').map(str::parse::<u64>);
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => Ok(match (major, minor) {
            (0, m) if m < 25 => None,
            (0, 25) => Some(Protocol::V025),
            _ => Some(Protocol::V026),
        }),
        _ => Err(bad_request(format!(
            "clientVersion {version:?} is not a version"
        ))),
    }
}

/// The `{spaceType, spaceId}` every event carries.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpaceRef {
    space_type: SpaceType,
    space_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
enum SpaceType {
    Workspace,
    Userspace,
}

impl SpaceRef {
    fn name(&self) -> String {
        format!("{}:{}", space_type(self), self.space_id)
    }

    /// The space's id on the other transports.
    fn space(&self) -> String {
        match self.space_type {
            SpaceType::Workspace => self.space_id.clone(),
            SpaceType::Userspace => format!("@{}", self.space_id),
        }
    }

    fn room(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.name())
    }

    /// The document `doc_id` (legacy forms normalised) of this space.
    fn address(&self, doc_id: &str) -> Result<DocAddress, Value> {
        let id = &self.space_id;
        let doc = doc_id
            .strip_prefix(&format!("ws:{id}:page:"))
            .or_else(|| doc_id.strip_prefix(&format!("ws:{id}:")))
            .or_else(|| doc_id.strip_prefix(&format!("{id}:")))
            .unwrap_or(doc_id);
        DocAddress::parse(&self.space(), doc).map_err(|e| bad_request(e.to_string()))
    }
}

fn parse<T: serde::de::DeserializeOwned>(data: Value) -> Result<T, Value> {
    serde_json::from_value(data).map_err(|e| bad_request(format!("bad payload: {e}")))
}

fn base64(field: &str, text: &str) -> Result<Vec<u8>, Value> {
    STANDARD
        .decode(text)
        .map_err(|e| bad_request(format!("{field} is not base64: {e}")))
}

/// What the gateway knows about one socket.
struct Conn {
    /// `socketio-websocket` or `socketio-polling`.
    transport: &'static str,
    opened: Instant,
    token: Option<String>,
    sub: Option<String>,
    origin: Origin,
    rate: UpdateRate,
    /// Sync requests (load-doc) per second.
    syncs: UpdateRate,
    /// Awareness updates per second.
    awareness_rate: UpdateRate,
    /// The documents it loaded or wrote (at most --max-docs-per-connection).
    docs: HashSet<DocAddress>,
    /// Joined spaces and the protocol each was joined with.
    spaces: HashMap<SpaceRef, Protocol>,
    /// The awareness clients this socket introduced, per document.
    awareness: HashMap<DocAddress, AwarenessClients>,
    /// Its place under --max-connections, given back when it is forgotten.
    _slot: tokio::sync::OwnedSemaphorePermit,
}

/// The Socket.IO gateway of this instance.
pub struct Gateway {
    app: AppState,
    io: SocketIo,
    conns: Mutex<HashMap<Sid, Conn>>,
    /// Which socket wrote with which origin (to skip it in broadcasts).
    writers: Mutex<HashMap<Origin, Sid>>,
    /// One watcher per (space, document) loaded here, while its space has
    /// members on this instance.
    watchers: Mutex<HashMap<(SpaceRef, DocAddress), tokio::task::JoinHandle<()>>>,
    /// Users (or anonymous sockets) seen, for `yrelay_active_users`.
    seen: Mutex<HashMap<String, Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The token of a connecting socket: `auth.token`, else `Authorization: Bearer`.
fn connect_token(socket: &SocketRef, auth: &Option<Value>) -> Option<String> {
    auth.as_ref()
        .and_then(|a| a.get("token"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| {
            socket
                .req_parts()
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(|t| t.trim().to_owned())
        })
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
    let gateway = Arc::new(Gateway {
        app,
        io: io.clone(),
        conns: Mutex::new(HashMap::new()),
        writers: Mutex::new(HashMap::new()),
        watchers: Mutex::new(HashMap::new()),
        seen: Mutex::new(HashMap::new()),
    });
    tokio::spawn(housekeeping(Arc::downgrade(&gateway)));
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
                let token = connect_token(&socket, &auth);
                gw.app.auth.verify(token.as_deref()).map_err(|e| {
                    metrics::rejected("unauthorized");
                    format!("sign in required: {e}")
                })?;
                // Sockets count against --max-connections like WebSockets
                // and event streams do.
                let slot = gw
                    .app
                    .limits
                    .connection_slot()
                    .map_err(|_| "TOO_MANY_CONNECTIONS: this instance holds as many connections as it may; try again later".to_string())?;
                gw.connected(socket, auth, slot);
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
            let mut seen = lock(&gw.seen);
            seen.retain(|_, at| at.elapsed() < Duration::from_secs(60));
            metrics::active_users(seen.len());
        }
        let admitted: Vec<Sid> = lock(&gw.conns)
            .iter()
            .filter(|(_, c)| c.opened.elapsed() > Duration::from_secs(10))
            .map(|(sid, _)| *sid)
            .collect();
        for sid in admitted {
            if gw.io.get_socket(sid).is_none() {
                gw.forget(sid);
            }
        }
    }
}

impl Gateway {
    fn connected(
        self: Arc<Self>,
        socket: SocketRef,
        auth: Option<Value>,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) {
        let token = connect_token(&socket, &auth);
        let sub = self
            .app
            .auth
            .verify(token.as_deref())
            .ok()
            .flatten()
            .map(|c| c.sub);
        let transport = match socket.transport_type() {
            TransportType::Websocket => "socketio-websocket",
            TransportType::Polling => "socketio-polling",
        };
        metrics::connection_opened(transport);
        let origin = self.app.hub.new_origin();
        lock(&self.seen).insert(
            sub.clone().unwrap_or_else(|| socket.id.to_string()),
            Instant::now(),
        );
        lock(&self.writers).insert(origin, socket.id);
        lock(&self.conns).insert(
            socket.id,
            Conn {
                transport,
                opened: Instant::now(),
                token,
                sub,
                origin,
                rate: UpdateRate::new(self.app.limits.max_updates_per_sec),
                syncs: UpdateRate::new(self.app.limits.max_syncs_per_sec),
                awareness_rate: UpdateRate::new(self.app.limits.max_awareness_per_sec),
                docs: HashSet::new(),
                spaces: HashMap::new(),
                awareness: HashMap::new(),
                _slot: slot,
            },
        );
        self.route(&socket, "space:join", Gateway::join);
        self.route(&socket, "space:leave", Gateway::leave);
        self.route(&socket, "space:load-doc", Gateway::load_doc);
        self.route(&socket, "space:push-doc-update", Gateway::push_doc_update);
        self.route(
            &socket,
            "space:load-doc-timestamps",
            Gateway::load_doc_timestamps,
        );
        self.route(&socket, "space:delete-doc", Gateway::delete_doc);
        self.route(&socket, "space:join-awareness", Gateway::join_awareness);
        self.route(&socket, "space:leave-awareness", Gateway::leave_awareness);
        self.route(&socket, "space:load-awarenesses", Gateway::load_awarenesses);
        self.route(&socket, "space:update-awareness", Gateway::update_awareness);
        let gw = self.clone();
        socket.on_disconnect(move |socket: SocketRef| {
            let gw = gw.clone();
            async move { gw.forget(socket.id) }
        });
    }

    /// Drops what the gateway knows about a socket that has gone.
    fn forget(&self, sid: Sid) {
        let Some(conn) = lock(&self.conns).remove(&sid) else {
            return;
        };
        metrics::connection_closed(conn.transport);
        lock(&self.writers).remove(&conn.origin);
        for (addr, clients) in &conn.awareness {
            self.app.hub.forget_awareness_of(addr, clients, conn.origin);
        }
        for space in conn.spaces.keys() {
            self.stop_watchers_if_unused(space);
        }
    }

    /// Registers `handler` for `event`: its payload is a JSON object, its
    /// result the ack (`{data}` or `{error}`).
    fn route<F, Fut>(self: &Arc<Self>, socket: &SocketRef, event: &'static str, handler: F)
    where
        F: Fn(Arc<Gateway>, SocketRef, Value) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Reply> + Send + 'static,
    {
        let gw = self.clone();
        socket.on(
            event,
            move |socket: SocketRef, TryData(data): TryData<Value>, ack: AckSender| {
                let gw = gw.clone();
                let handler = handler.clone();
                async move {
                    let reply = match data {
                        Ok(data) if data.is_object() => handler(gw, socket.clone(), data).await,
                        _ => Err(bad_request(format!(
                            "{event} takes one JSON object as its payload"
                        ))),
                    };
                    let refused = reply
                        .as_ref()
                        .is_ok_and(|data| data.get("success") == Some(&Value::Bool(false)));
                    let body = match reply {
                        Ok(data) => json!({ "data": data }),
                        Err(error) => error,
                    };
                    let _ = ack.send(&body);
                    if refused {
                        let _ = socket.disconnect(); // a client too old for this server
                    }
                }
            },
        );
    }

    /// The space of an event, which the socket must have joined.
    fn member(&self, socket: &SocketRef, space: &SpaceRef) -> Result<Protocol, Value> {
        lock(&self.conns)
            .get(&socket.id)
            .and_then(|c| c.spaces.get(space).copied())
            .ok_or_else(|| {
                error(
                    403,
                    "NOT_IN_SPACE",
                    format!("join space {} first", space.space_id),
                    json!({ "spaceId": space.space_id }),
                )
            })
    }

    fn token(&self, socket: &SocketRef) -> Option<String> {
        lock(&self.conns)
            .get(&socket.id)
            .and_then(|c| c.token.clone())
    }

    /// May this socket use `space` at all (userspace ownership, grants)?
    fn check_space(&self, socket: &SocketRef, space: &SpaceRef) -> Result<(), Value> {
        let denied = || {
            error(
                403,
                "SPACE_ACCESS_DENIED",
                format!("no access to space {}", space.space_id),
                json!({ "spaceId": space.space_id }),
            )
        };
        if let Err(e) = yrelay_protocol::address::check_space_id(&space.space()) {
            return Err(bad_request(e.to_string()));
        }
        // The same decision as every other transport's: a userspace is
        // `@{user}`, owned by that user, and grants count for it too; a
        // grant of one document makes its space joinable (each document is
        // then checked on its own).
        self.app
            .auth
            .member(self.token(socket).as_deref(), &space.space())
            .map(|_| ())
            .map_err(|_| denied())
    }

    /// May this socket read `addr`?
    fn check_read(
        &self,
        socket: &SocketRef,
        addr: &DocAddress,
        space: &SpaceRef,
    ) -> Result<(), Value> {
        self.app
            .auth
            .doc(self.token(socket).as_deref(), addr)
            .map(|_| ())
            .map_err(|_| {
                metrics::rejected("unauthorized");
                error(
                    403,
                    "DOC_ACTION_DENIED",
                    format!("you may not read {addr}"),
                    json!({ "spaceId": space.space_id, "docId": addr.doc(), "action": "Doc.Read" }),
                )
            })
    }

    /// May this socket write `addr`?
    fn check_write(
        &self,
        socket: &SocketRef,
        addr: &DocAddress,
        space: &SpaceRef,
    ) -> Result<(), Value> {
        match self.app.auth.writer(self.token(socket).as_deref(), addr) {
            Ok(_) => Ok(()),
            Err(AuthError::ReadOnly(_) | AuthError::Denied(_)) => {
                metrics::rejected("read_only");
                Err(error(
                    403,
                    "DOC_ACTION_DENIED",
                    format!("you may not change {addr}"),
                    json!({ "spaceId": space.space_id, "docId": addr.doc(), "action": "Doc.Update" }),
                ))
            }
            Err(e) => Err(error(
                401,
                "AUTHENTICATION_REQUIRED",
                e.to_string(),
                json!({}),
            )),
        }
    }

    async fn join(self: Arc<Self>, socket: SocketRef, data: Value) -> Reply {
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
            Protocol::V026 => ("sync-026", "sync-025"),
        };
        socket.leave(join.space.room(drop));
        socket.join([join.space.room("sync"), join.space.room(keep)]);
        if let Some(conn) = lock(&self.conns).get_mut(&socket.id) {
            conn.spaces.insert(join.space, protocol);
        }
        Ok(json!({ "clientId": socket.id.to_string(), "success": true }))
    }

    async fn leave(self: Arc<Self>, socket: SocketRef, data: Value) -> Reply {
        let space: SpaceRef = parse(data)?;
        self.member(&socket, &space)?;
        socket.leave([
            space.room("sync"),
            space.room("sync-025"),
            space.room("sync-026"),
        ]);
        if let Some(conn) = lock(&self.conns).get_mut(&socket.id) {
            conn.spaces.remove(&space);
        }
        self.stop_watchers_if_unused(&space);
        Ok(json!({ "clientId": socket.id.to_string(), "success": true }))
    }

    async fn load_doc(self: Arc<Self>, socket: SocketRef, data: Value) -> Reply {
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

    async fn push_doc_update(self: Arc<Self>, socket: SocketRef, data: Value) -> Reply {
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
        let within_rate = lock(&self.conns)
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
        let writer = lock(&self.conns)
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

    async fn load_doc_timestamps(self: Arc<Self>, socket: SocketRef, data: Value) -> Reply {
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
        let claims = self
            .app
            .auth
            .verify(self.token(&socket).as_deref())
            .ok()
            .flatten();
        let readable = |doc: &str| {
            let Some(claims) = &claims else { return true };
            query
                .space
                .address(doc)
                .is_ok_and(|addr| claims.doc_mode(&addr).is_some())
        };
        Ok(Value::Object(
            docs.into_iter()
                .filter(|m| readable(&m.doc))
                .map(|m| (m.doc, Value::from(m.updated_at)))
                .collect(),
        ))
    }

    async fn delete_doc(self: Arc<Self>, socket: SocketRef, data: Value) -> Reply {
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
        self.app.hub.delete(&addr).await.map_err(internal)?;
        Ok(json!({ "success": true }))
    }

    async fn join_awareness(self: Arc<Self>, socket: SocketRef, data: Value) -> Reply {
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

    async fn leave_awareness(self: Arc<Self>, socket: SocketRef, data: Value) -> Reply {
        let (space, addr) = self.awareness_target(&socket, data)?;
        socket.leave(awareness_room(&space, &addr));
        let mine = lock(&self.conns)
            .get_mut(&socket.id)
            .and_then(|c| Some((c.awareness.remove(&addr)?, c.origin)));
        if let Some((clients, origin)) = mine {
            self.app.hub.forget_awareness_of(&addr, &clients, origin);
        }
        Ok(json!({ "clientId": socket.id.to_string(), "success": true }))
    }

    async fn load_awarenesses(self: Arc<Self>, socket: SocketRef, data: Value) -> Reply {
        let (space, addr) = self.awareness_target(&socket, data)?;
        let head = doc_event(&space, &addr);
        // The sockets here re-send theirs; the replica knows everyone's.
        let _ = socket
            .to(awareness_room(&space, &addr))
            .emit("space:collect-awareness", &head)
            .await;
        let mine = lock(&self.conns)
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

    async fn update_awareness(self: Arc<Self>, socket: SocketRef, data: Value) -> Reply {
        let raw = data
            .get("awarenessUpdate")
            .and_then(Value::as_str)
            .ok_or_else(|| bad_request("awarenessUpdate (base64) is required"))?;
        let raw = base64("awarenessUpdate", raw)?;
        let update =
            decode_awareness(&raw).map_err(|e| bad_request(format!("awarenessUpdate: {e}")))?;
        let (space, addr) = self.awareness_target(&socket, data)?;
        self.watch(&space, &addr).await;
        let within_rate = lock(&self.conns)
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
        let (origin, introduced) = lock(&self.conns)
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
        if let Some(conn) = lock(&self.conns).get_mut(&socket.id) {
            conn.awareness
                .entry(addr.clone())
                .or_default()
                .record(&update);
        }
        Ok(json!({}))
    }

    /// `{spaceType, spaceId, docId}` of an awareness event, for a member.
    fn awareness_target(
        &self,
        socket: &SocketRef,
        data: Value,
    ) -> Result<(SpaceRef, DocAddress), Value> {
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

    /// Starts the watcher of `addr` for `space` unless it runs.
    async fn watch(self: &Arc<Self>, space: &SpaceRef, addr: &DocAddress) {
        let key = (space.clone(), addr.clone());
        if lock(&self.watchers)
            .get(&key)
            .is_some_and(|task| !task.is_finished())
        {
            return;
        }
        let Ok(session) = self.app.hub.join(addr).await else {
            return; // the load itself reports the outage
        };
        let mut watchers = lock(&self.watchers);
        if watchers.get(&key).is_some_and(|task| !task.is_finished()) {
            return; // another event started one meanwhile
        }
        let task = tokio::spawn(relay(Arc::downgrade(self), space.clone(), session));
        watchers.insert(key, task);
    }

    /// Takes one sync request's worth of the socket's rate (429 past it).
    fn take_sync(&self, socket: &SocketRef, doc_ref: &Value) -> Result<(), Value> {
        let within = lock(&self.conns)
            .get_mut(&socket.id)
            .is_some_and(|c| c.syncs.take());
        if within {
            return Ok(());
        }
        metrics::rejected("sync_rate_limited");
        Err(error(
            429,
            "TOO_MANY_REQUESTS",
            format!(
                "more than {} sync requests per second",
                self.app.limits.max_syncs_per_sec
            ),
            doc_ref.clone(),
        ))
    }

    /// Counts `addr` among the documents the socket uses (429 past
    /// --max-docs-per-connection).
    fn take_doc(
        &self,
        socket: &SocketRef,
        addr: &DocAddress,
        doc_ref: &Value,
    ) -> Result<(), Value> {
        let max = self.app.limits.max_docs_per_connection;
        let admitted = lock(&self.conns).get_mut(&socket.id).is_some_and(|c| {
            c.docs.contains(addr) || (c.docs.len() < max && c.docs.insert(addr.clone()))
        });
        if admitted {
            return Ok(());
        }
        metrics::rejected("too_many_docs");
        Err(error(
            429,
            "TOO_MANY_DOCS",
            format!("a socket may use at most {max} documents"),
            doc_ref.clone(),
        ))
    }

    /// Stops the watchers of `space` when no socket here is a member any more.
    fn stop_watchers_if_unused(&self, space: &SpaceRef) {
        let used = lock(&self.conns)
            .values()
            .any(|c| c.spaces.contains_key(space));
        if !used {
            lock(&self.watchers).retain(|(s, _), task| {
                if s == space {
                    task.abort();
                }
                s != space
            });
        }
    }

    fn writer(&self, origin: Option<Origin>) -> Option<Sid> {
        origin.and_then(|o| lock(&self.writers).get(&o).copied())
    }
}

/// The answer to a client older than 0.25.0; the socket is disconnected
/// once this ack is sent.
fn too_old(socket: &SocketRef) -> Value {
    metrics::rejected("client_too_old");
    json!({ "clientId": socket.id.to_string(), "success": false })
}

fn internal(e: HubError) -> Value {
    error(500, "INTERNAL_SERVER_ERROR", e.to_string(), json!({}))
}

fn space_type(space: &SpaceRef) -> &'static str {
    match space.space_type {
        SpaceType::Workspace => "workspace",
        SpaceType::Userspace => "userspace",
    }
}

/// The `{spaceType, spaceId, docId}` a document's events start with.
fn doc_event(space: &SpaceRef, addr: &DocAddress) -> Value {
    json!({ "spaceType": space_type(space), "spaceId": space.space_id, "docId": addr.doc() })
}

fn awareness_room(space: &SpaceRef, addr: &DocAddress) -> String {
    space.room(&format!("{}:awareness", addr.doc()))
}

/// A watcher: the hub's updates of one document, broadcast to the space's
/// members on this instance (except to the socket that wrote each one).
async fn relay(gateway: std::sync::Weak<Gateway>, space: SpaceRef, mut session: Session) {
    let head = doc_event(&space, session.addr());
    let awareness = awareness_room(&space, session.addr());
    loop {
        let Ok(first) = session.next_event().await else {
            return; // closed (deleted, slow, shutting down): the next load restarts it
        };
        let mut pending = Some(first);
        while let Some(event) = pending.take() {
            let Some(gw) = gateway.upgrade() else { return };
            match event {
                DocEvent::Awareness { payload, origin } => {
                    let mut event = head.clone();
                    event["awarenessUpdate"] = STANDARD.encode(payload).into();
                    let name = "space:broadcast-awareness-update";
                    emit_to_room(&gw, awareness.clone(), gw.writer(origin), name, &event);
                }
                DocEvent::Update {
                    payload,
                    timestamp_ms,
                    origin,
                    editor,
                    ..
                } => {
                    // Everything already waiting from the same writer (and
                    // user) goes in one batch.
                    let mut batch = vec![payload];
                    let mut timestamp = timestamp_ms;
                    while let Some(event) = session.try_next_event() {
                        match event {
                            DocEvent::Update {
                                payload,
                                timestamp_ms,
                                origin: o,
                                editor: e,
                                ..
                            } if o == origin && e == editor => {
                                batch.push(payload);
                                timestamp = timestamp.max(timestamp_ms);
                            }
                            other => {
                                pending = Some(other);
                                break;
                            }
                        }
                    }
                    let writer = Writer { origin, editor };
                    broadcast(&gw, &space, &head, &batch, timestamp, writer).await;
                }
            }
        }
    }
}

/// Emits a batch of updates (from one writer) to the space's members: one
/// event per update to 0.25 clients, one (merged when several) to 0.26.
async fn broadcast(
    gw: &Gateway,
    space: &SpaceRef,
    head: &Value,
    batch: &[Arc<[u8]>],
    timestamp: i64,
    writer: Writer,
) {
    let sender = gw.writer(writer.origin);
    let editor = writer.editor.as_deref();
    for update in batch {
        let mut event = head.clone();
        event["update"] = STANDARD.encode(update).into();
        event["timestamp"] = timestamp.into();
        event["editor"] = editor.into();
        emit_to_room(
            gw,
            space.room("sync-025"),
            sender,
            "space:broadcast-doc-update",
            &event,
        );
    }
    let (updates, compressed) = if batch.len() > 1 {
        match merge_updates(batch.iter().map(|u| &u[..])) {
            Ok(merged) => (vec![STANDARD.encode(merged)], true),
            Err(_) => (batch.iter().map(|u| STANDARD.encode(u)).collect(), false),
        }
    } else {
        (batch.iter().map(|u| STANDARD.encode(u)).collect(), false)
    };
    metrics::broadcast(if compressed { "compressed" } else { "batch" }, 1);
    let mut event = head.clone();
    event["updates"] = updates.into();
    event["timestamp"] = timestamp.into();
    event["editor"] = editor.into();
    event["compressed"] = compressed.into();
    emit_to_room(
        gw,
        space.room("sync-026"),
        sender,
        "space:broadcast-doc-updates",
        &event,
    );
}

/// Emits to every socket of `room` but `sender`. A socket whose queue is
/// full is disconnected (it reconnects and loads again) rather than silently
/// missing an update.
fn emit_to_room(gw: &Gateway, room: String, sender: Option<Sid>, name: &str, event: &Value) {
    for socket in gw.io.to(room).sockets() {
        if Some(socket.id) == sender {
            continue;
        }
        if let Err(socketioxide::SendError::Socket(SocketError::InternalChannelFull)) =
            socket.emit(name, event)
        {
            metrics::slow_consumer_closed();
            tracing::info!(socket = %socket.id, "socket.io client too slow: disconnected to resync");
            let _ = socket.disconnect();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_pick_the_protocol() {
        assert_eq!(protocol_for("0.24.9").unwrap(), None);
        assert_eq!(protocol_for("0.25.0").unwrap(), Some(Protocol::V025));
        assert_eq!(protocol_for("0.25.7-beta.1").unwrap(), Some(Protocol::V025));
        assert_eq!(
            protocol_for("0.26.0-canary.3").unwrap(),
            Some(Protocol::V026)
        );
        assert_eq!(protocol_for("1.2.3").unwrap(), Some(Protocol::V026));
        assert!(protocol_for("latest").is_err());
    }

    #[test]
    fn legacy_doc_ids_normalise() {
        let space = SpaceRef {
            space_type: SpaceType::Workspace,
            space_id: "ws1".into(),
        };
        for id in ["page1", "ws:ws1:page1", "ws1:page1", "ws:ws1:page:page1"] {
            assert_eq!(space.address(id).unwrap().to_string(), "ws1/page1");
        }
        let mine = SpaceRef {
            space_type: SpaceType::Userspace,
            space_id: "ann".into(),
        };
        assert_eq!(mine.address("x").unwrap().to_string(), "@ann/x");
    }
}
