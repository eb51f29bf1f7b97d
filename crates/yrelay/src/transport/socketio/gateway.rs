//! The gateway of this instance: its sockets, who wrote what, the
//! watchers, and the access checks every event makes.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde_json::{Value, json};
use socketioxide::extract::{AckSender, SocketRef, TryData};
use socketioxide::socket::Sid;
use socketioxide::{SocketIo, TransportType};
use tokio::task::JoinHandle;
use yrelay_protocol::DocAddress;

use crate::auth::{AuthError, Claims, Credentials};
use crate::edge::UpdateRate;
use crate::hub::AwarenessClients;
use crate::metrics;
use crate::state::AppState;
use crate::vocab::Origin;

use super::batch::{Pending, unknown_event};
use super::broadcast::relay;
use super::wire::{Protocol, Reply, SioError, SpaceRef, bad_request, error};

/// What the gateway knows about one socket.
pub(super) struct Conn {
    /// `socketio-websocket` or `socketio-polling`.
    pub(super) transport: &'static str,
    pub(super) opened: Instant,
    /// What it presented at connect (asked about again after a revoke).
    pub(super) who: Credentials,
    /// Who it is and what it may open (`None`: auth is off).
    pub(super) claims: Option<Claims>,
    pub(super) sub: Option<String>,
    pub(super) origin: Origin,
    pub(super) rate: UpdateRate,
    /// Sync requests (load-doc) per second.
    pub(super) syncs: UpdateRate,
    /// Awareness updates per second.
    pub(super) awareness_rate: UpdateRate,
    /// The documents it loaded or wrote (at most --max-docs-per-connection).
    pub(super) docs: HashSet<DocAddress>,
    /// Joined spaces and the protocol each was joined with.
    pub(super) spaces: HashMap<SpaceRef, Protocol>,
    /// Its active subscriptions (batch protocol).
    pub(super) subscriptions: HashSet<(SpaceRef, DocAddress)>,
    /// The awareness clients this socket introduced, per document.
    pub(super) awareness: HashMap<DocAddress, AwarenessClients>,
    /// Its place under --max-connections, given back when it is forgotten.
    _slot: tokio::sync::OwnedSemaphorePermit,
}

/// The Socket.IO gateway of this instance.
pub struct Gateway {
    pub(super) app: AppState,
    pub(super) io: SocketIo,
    state: Mutex<State>,
}

/// Everything the gateway keeps, behind its one lock (never held across an
/// await).
#[derive(Default)]
pub(super) struct State {
    pub(super) conns: HashMap<Sid, Conn>,
    /// Which socket wrote with which origin (to skip it in broadcasts).
    pub(super) writers: HashMap<Origin, Sid>,
    /// One watcher per (space, document) loaded here, while its space has
    /// members on this instance.
    pub(super) watchers: HashMap<(SpaceRef, DocAddress), JoinHandle<()>>,
    /// One watcher of the space's events per space with batch members here
    /// (the invalidations of documents not watched here).
    pub(super) space_watchers: HashMap<SpaceRef, JoinHandle<()>>,
    /// The changes of each space waiting for its next invalidation.
    pub(super) invalidations: HashMap<SpaceRef, Pending>,
    /// Users (or anonymous sockets) seen, for `yrelay_active_users`.
    pub(super) seen: HashMap<String, Instant>,
}

/// What a connecting socket presents: `auth.token`, else `Authorization:
/// Bearer`; its cookies.
pub(super) fn connect_credentials(socket: &SocketRef, auth: &Option<Value>) -> Credentials {
    let headers = &socket.req_parts().headers;
    let token = auth
        .as_ref()
        .and_then(|a| a.get("token"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| {
            headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(|t| t.trim().to_owned())
        });
    Credentials {
        token,
        cookie: headers
            .get("cookie")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        ..Credentials::default()
    }
    .via("socketio")
}

impl Gateway {
    pub(super) fn new(app: AppState, io: SocketIo) -> Self {
        Self {
            app,
            io,
            state: Mutex::default(),
        }
    }

    /// The gateway's state, locked.
    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn connected(
        self: Arc<Self>,
        socket: SocketRef,
        (who, claims): (Credentials, Option<Claims>),
        slot: tokio::sync::OwnedSemaphorePermit,
    ) {
        let sub = claims.as_ref().map(|c| c.sub.clone());
        let transport = match socket.transport_type() {
            TransportType::Websocket => "socketio-websocket",
            TransportType::Polling => "socketio-polling",
        };
        metrics::connection_opened(transport);
        let origin = self.app.hub.new_origin();
        let mut state = self.state();
        let user = sub.clone().unwrap_or_else(|| socket.id.to_string());
        state.seen.insert(user, Instant::now());
        state.writers.insert(origin, socket.id);
        state.conns.insert(
            socket.id,
            Conn {
                transport,
                opened: Instant::now(),
                who,
                claims,
                sub,
                origin,
                rate: UpdateRate::new(self.app.limits.max_updates_per_sec),
                syncs: UpdateRate::new(self.app.limits.max_syncs_per_sec),
                awareness_rate: UpdateRate::new(self.app.limits.max_awareness_per_sec),
                docs: HashSet::new(),
                spaces: HashMap::new(),
                subscriptions: HashSet::new(),
                awareness: HashMap::new(),
                _slot: slot,
            },
        );
        drop(state);
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
        self.route(&socket, "space:join-batch", Gateway::join_batch);
        self.route(&socket, "space:leave-batch", Gateway::leave_batch);
        self.route(&socket, "space:doc-lifecycle", Gateway::doc_lifecycle);
        socket.on_fallback(unknown_event);
        let gw = self.clone();
        socket.on_disconnect(move |socket: SocketRef| {
            let gw = gw.clone();
            async move { gw.forget(socket.id) }
        });
    }

    /// Drops what the gateway knows about a socket that has gone.
    pub(super) fn forget(&self, sid: Sid) {
        let conn = {
            let mut state = self.state();
            let Some(conn) = state.conns.remove(&sid) else {
                return;
            };
            state.writers.remove(&conn.origin);
            conn
        };
        metrics::connection_closed(conn.transport);
        for (addr, clients) in &conn.awareness {
            self.app.hub.forget_awareness_of(addr, clients, conn.origin);
        }
        for space in conn.spaces.keys() {
            self.stop_watchers_if_unused(space);
        }
    }

    /// Registers `handler` for `event`: its payload is a JSON object, its
    /// result the ack (`{data}` or `{error}`).
    pub(super) fn route<F, Fut>(
        self: &Arc<Self>,
        socket: &SocketRef,
        event: &'static str,
        handler: F,
    ) where
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
                        Err(error) => error.to_ack(),
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
    pub(super) fn member(
        &self,
        socket: &SocketRef,
        space: &SpaceRef,
    ) -> Result<Protocol, SioError> {
        self.state()
            .conns
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

    /// The claims the socket connected with (`Ok(None)`: auth is off).
    pub(super) fn claims(&self, socket: &SocketRef) -> Result<Option<Claims>, AuthError> {
        self.state()
            .conns
            .get(&socket.id)
            .map(|c| c.claims.clone())
            .ok_or(AuthError::Missing)
    }

    /// May this socket use `space` at all (userspace ownership, grants)?
    pub(super) fn check_space(&self, socket: &SocketRef, space: &SpaceRef) -> Result<(), SioError> {
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
        self.claims(socket)
            .and_then(|claims| self.app.auth.member_permit(claims.as_ref(), &space.space()))
            .map(|_| ())
            .map_err(|_| denied())
    }

    /// May this socket read `addr`?
    pub(super) fn check_read(
        &self,
        socket: &SocketRef,
        addr: &DocAddress,
        space: &SpaceRef,
    ) -> Result<(), SioError> {
        self.claims(socket)
            .and_then(|claims| self.app.auth.doc_permit(claims.as_ref(), addr))
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
    pub(super) fn check_write(
        &self,
        socket: &SocketRef,
        addr: &DocAddress,
        space: &SpaceRef,
    ) -> Result<(), SioError> {
        let permit = self
            .claims(socket)
            .and_then(|claims| self.app.auth.doc_permit(claims.as_ref(), addr));
        match permit {
            Ok(permit) if permit.can_write() => Ok(()),
            Ok(_) | Err(AuthError::Denied(_) | AuthError::Revoked(_)) => {
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
}

impl Gateway {
    /// Starts the watcher of `addr` for `space` unless it runs.
    pub(super) async fn watch(self: &Arc<Self>, space: &SpaceRef, addr: &DocAddress) {
        let key = (space.clone(), addr.clone());
        if self
            .state()
            .watchers
            .get(&key)
            .is_some_and(|task| !task.is_finished())
        {
            return;
        }
        let Ok(session) = self.app.hub.join(addr).await else {
            return; // the load itself reports the outage
        };
        let session = session.via(super::TRANSPORT);
        let mut state = self.state();
        let watchers = &mut state.watchers;
        if watchers.get(&key).is_some_and(|task| !task.is_finished()) {
            return; // another event started one meanwhile
        }
        let task = tokio::spawn(relay(Arc::downgrade(self), space.clone(), session));
        watchers.insert(key, task);
    }

    /// Takes one sync request's worth of the socket's rate (429 past it).
    pub(super) fn take_sync(&self, socket: &SocketRef, doc_ref: &Value) -> Result<(), SioError> {
        let within = self
            .state()
            .conns
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
    pub(super) fn take_doc(
        &self,
        socket: &SocketRef,
        addr: &DocAddress,
        doc_ref: &Value,
    ) -> Result<(), SioError> {
        let max = self.app.limits.max_docs_per_connection;
        let admitted = self.state().conns.get_mut(&socket.id).is_some_and(|c| {
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
    pub(super) fn stop_watchers_if_unused(&self, space: &SpaceRef) {
        let mut state = self.state();
        if state.conns.values().any(|c| c.spaces.contains_key(space)) {
            return;
        }
        state.watchers.retain(|(s, _), task| {
            if s == space {
                task.abort();
            }
            s != space
        });
        if let Some(task) = state.space_watchers.remove(space) {
            task.abort();
        }
    }

    pub(super) fn writer(&self, origin: Option<Origin>) -> Option<Sid> {
        origin.and_then(|o| self.state().writers.get(&o).copied())
    }
}
