//! The y-websocket protocol over WebSocket: `GET /v1/ws/{space}/{doc}`.
//!
//! Per connection, one task owns the socket and its [`Session`]: it reads
//! frames, writes hub events (one y-protocols message per frame), keeps up to
//! [`MAX_IN_FLIGHT`] updates in flight towards durability while it goes on
//! reading, and pings the peer. Every way a connection can end maps to a close
//! code here, in [`Close`].

use std::time::{Duration, Instant};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::stream::FuturesOrdered;
use futures_util::{SinkExt, StreamExt};
use yrelay_protocol::DocAddress;
use yrelay_protocol::sync::{self, ClientMessage, FrameError};
use yrelay_protocol::update::check_update;

use crate::auth::{Access, AuthError};
use crate::edge::{Credentials, UpdateRate};
use crate::http_error::ApiError;
use crate::hub::{CloseReason, DocEvent, HubError, Session};
use crate::metrics;
use crate::state::AppState;

const TRANSPORT: &str = "websocket";
/// Updates of one connection waiting for durability at once; past this the
/// connection stops reading until one is accepted (backpressure).
const MAX_IN_FLIGHT: usize = 64;
const PING_EVERY: Duration = Duration::from_secs(30);
/// How long a closing connection waits for the peer's close reply.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Close code when the document is deleted (4000-4999: application codes;
/// like HTTP 410 Gone).
const DELETED: u16 = 4410;

/// How (and why) the server ends a connection.
#[derive(Debug)]
enum Close {
    /// The peer vanished: nothing to send.
    Peer,
    /// The peer sent a close frame: it is answered (tungstenite queued the
    /// reply when it read the frame; flushing the socket sends it).
    PeerClosed,
    TooBig(String),
    Unsupported(String),
    Invalid(String),
    TryAgain(String),
    Policy(String),
    Deleted,
    GoingAway,
}

impl Close {
    fn frame(&self) -> Option<CloseFrame> {
        let (code, reason) = match self {
            Close::Peer | Close::PeerClosed => return None,
            Close::TooBig(r) => (1009, r.clone()),
            Close::Unsupported(r) => (1003, r.clone()),
            Close::Invalid(r) => (1007, r.clone()),
            Close::TryAgain(r) => (1013, r.clone()),
            Close::Policy(r) => (1008, r.clone()),
            Close::Deleted => (DELETED, "document deleted".into()),
            Close::GoingAway => (1001, "server shutting down".into()),
        };
        Some(super::close_frame(code, &reason))
    }
}

impl From<HubError> for Close {
    fn from(e: HubError) -> Self {
        match e {
            HubError::ShuttingDown => Close::GoingAway,
            HubError::BadUpdate(reason) => Close::Invalid(reason),
            HubError::Deleted => Close::Deleted,
            HubError::Awareness(refusal) => Close::Policy(refusal.to_string()),
            e => Close::TryAgain(e.to_string()),
        }
    }
}

impl From<CloseReason> for Close {
    fn from(reason: CloseReason) -> Self {
        match reason {
            CloseReason::SlowConsumer => {
                Close::TryAgain("slow consumer: reconnect to resync".into())
            }
            CloseReason::Resync => Close::TryAgain("document reloaded: reconnect to resync".into()),
            CloseReason::ShuttingDown => Close::GoingAway,
            CloseReason::Deleted => Close::Deleted,
        }
    }
}

/// `GET /v1/ws/{space}/{doc}` (upgrade). A refused token ends the upgraded
/// connection with 1008 and the reason (browsers cannot read an HTTP status
/// of a failed upgrade).
pub async fn upgrade(
    State(app): State<AppState>,
    Path((space, doc)): Path<(String, String)>,
    credentials: Credentials,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let addr = match DocAddress::parse(&space, &doc) {
        Ok(addr) => addr,
        Err(e) => {
            metrics::rejected("bad_doc_id");
            return ApiError::new(StatusCode::BAD_REQUEST, "BAD_DOC_ID", e.to_string())
                .into_response();
        }
    };
    let subprotocol = credentials.subprotocol.clone();
    let access = Access::open(&app.auth, credentials.via(TRANSPORT), &addr).await;
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            if let Err(e) = access {
                return ApiError::from(e).into_response();
            }
            return super::websocket_required("y-websocket", rejection);
        }
    };
    let slot = match app.limits.connection_slot() {
        Ok(slot) => slot,
        Err(e) => return e.into_response(),
    };
    super::configure(ws, &app, subprotocol).on_upgrade(move |socket| async move {
        connection(app, addr, access, socket).await;
        drop(slot);
    })
}

async fn connection(
    app: AppState,
    addr: DocAddress,
    access: Result<Access, AuthError>,
    mut socket: WebSocket,
) {
    metrics::connection_opened(TRANSPORT);
    let close = match access {
        Err(e) => {
            metrics::rejected("unauthorized");
            refused(e)
        }
        Ok(mut access) => match app.hub.join(&addr).await {
            Ok(session) => {
                let mut in_flight = InFlight::new();
                let mut session = session
                    .via(TRANSPORT)
                    .with_editor(access.permit().sub.clone());
                let close =
                    serve(&app, &mut session, &mut access, &mut socket, &mut in_flight).await;
                // Received = processed (DESIGN invariant 8): the updates this
                // connection delivered before it ended still become durable.
                settle(&session, in_flight).await;
                close
            }
            Err(e) => {
                tracing::warn!(doc = %addr, error = %e, "cannot open document");
                Close::from(e)
            }
        },
    };
    if matches!(close, Close::PeerClosed) {
        let _ = tokio::time::timeout(CLOSE_GRACE, socket.flush()).await;
    }
    if let Some(frame) = close.frame() {
        if !matches!(close, Close::GoingAway) {
            tracing::info!(doc = %addr, code = frame.code, reason = %frame.reason, "closing websocket");
        }
        if socket.send(Message::Close(Some(frame))).await.is_ok() {
            // Wait (briefly) for the peer's close reply, reading what it still
            // sends: closing the TCP socket with unread data would reset the
            // connection, and the peer would never see our close frame.
            let _ = tokio::time::timeout(CLOSE_GRACE, async {
                while let Some(Ok(message)) = socket.recv().await {
                    if matches!(message, Message::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        }
    }
    metrics::connection_closed(TRANSPORT);
}

async fn send(socket: &mut WebSocket, frame: Vec<u8>) -> Result<(), Close> {
    socket
        .send(Message::Binary(frame.into()))
        .await
        .map_err(|_| Close::Peer)
}

/// Waits for the updates still on their way to durability (at most
/// [`MAX_IN_FLIGHT`]); one that fails is logged: the peer has gone, or is
/// about to be closed, so nobody can be told.
async fn settle(session: &Session, mut in_flight: InFlight) {
    while let Some(settled) = in_flight.next().await {
        if let Settled::Update(Err(e)) = settled {
            tracing::warn!(doc = %session.addr(), error = %e, "update of a closing connection not accepted");
        }
    }
}

/// How a refused or lost access closes the connection: 1013 (try again
/// later) when it cannot be checked now, 1008 with the reason otherwise.
fn refused(e: AuthError) -> Close {
    match e {
        AuthError::Unavailable(_) => Close::TryAgain(e.to_string()),
        AuthError::Expired => {
            Close::Policy("the token has expired: refresh it and reconnect".into())
        }
        e => Close::Policy(e.to_string()),
    }
}

/// Serves the connection until it ends, with what `access` allows (its
/// token expiring or revoked ends it; a revoke may turn it read-only).
async fn serve(
    app: &AppState,
    session: &mut Session,
    access: &mut Access,
    socket: &mut WebSocket,
    in_flight: &mut InFlight,
) -> Close {
    // Our side of the handshake: our state vector, then who is here.
    if send(socket, sync::encode_sync_step1(&session.state_vector()))
        .await
        .is_err()
    {
        return Close::Peer;
    }
    if let Some(awareness) = session.awareness()
        && send(socket, sync::encode_awareness(&awareness))
            .await
            .is_err()
    {
        return Close::Peer;
    }
    let mut rate = UpdateRate::new(app.limits.max_updates_per_sec);
    let mut syncs = UpdateRate::new(app.limits.max_syncs_per_sec);
    let mut awareness_rate = UpdateRate::new(app.limits.max_awareness_per_sec);
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    let mut last_heard = Instant::now();
    let mut shutdown = app.shutdown.clone();
    let mut writable = access.permit().can_write();
    loop {
        tokio::select! {
            changed = access.changed() => match changed {
                Ok(permit) => {
                    tracing::info!(doc = %session.addr(), writable = permit.can_write(), "access changed by a revoke");
                    writable = permit.can_write();
                }
                Err(e) => {
                    metrics::rejected(if e == AuthError::Expired { "token_expired" } else { "access_lost" });
                    return refused(e);
                }
            },
            frame = socket.recv(), if in_flight.len() < MAX_IN_FLIGHT => {
                let frame = match frame {
                    Some(Ok(frame)) => frame,
                    Some(Err(_)) | None => return Close::Peer,
                };
                last_heard = Instant::now();
                let data = match frame {
                    Message::Binary(data) => data,
                    Message::Close(_) => return Close::PeerClosed,
                    Message::Ping(_) | Message::Pong(_) => continue,
                    Message::Text(_) => {
                        metrics::rejected("text_frame");
                        return Close::Unsupported("text frames are not part of the y-websocket protocol".into());
                    }
                };
                if data.len() > app.limits.max_message_size {
                    metrics::rejected("too_big");
                    return Close::TooBig(format!(
                        "message of {} bytes exceeds the limit of {} bytes",
                        data.len(),
                        app.limits.max_message_size
                    ));
                }
                let messages = match sync::decode_frame(&data) {
                    Ok(messages) => messages,
                    Err(e) => return reject_frame(e),
                };
                for message in messages {
                    if matches!(message, ClientMessage::Update(_) | ClientMessage::SyncStep2(_)) && !rate.take() {
                        metrics::rejected("rate_limited");
                        return Close::Policy(format!(
                            "more than {} updates per second",
                            app.limits.max_updates_per_sec
                        ));
                    }
                    // Each answer costs a diff of the whole document (or every
                    // awareness state): bounded like updates.
                    if matches!(message, ClientMessage::Awareness { .. }) && !awareness_rate.take() {
                        metrics::rejected("awareness_rate_limited");
                        return Close::Policy(format!(
                            "more than {} awareness updates per second",
                            app.limits.max_awareness_per_sec
                        ));
                    }
                    if matches!(message, ClientMessage::SyncStep1(_) | ClientMessage::QueryAwareness) && !syncs.take() {
                        metrics::rejected("sync_rate_limited");
                        return Close::Policy(format!(
                            "more than {} sync requests per second",
                            app.limits.max_syncs_per_sec
                        ));
                    }
                    if let Err(close) = handle(session, socket, message, writable, in_flight).await {
                        return close;
                    }
                }
            }
            Some(settled) = in_flight.next() => match settled {
                Settled::Update(Ok(_)) => {}
                Settled::SyncStatus(payload) => {
                    if send(socket, sync::encode_sync_status(&payload)).await.is_err() {
                        return Close::Peer;
                    }
                }
                Settled::Update(Err(HubError::Blocked)) => {
                    if send(socket, sync::encode_permission_denied("document is blocked")).await.is_err() {
                        return Close::Peer;
                    }
                }
                Settled::Update(Err(e)) => {
                    tracing::warn!(doc = %session.addr(), error = %e, "update not accepted");
                    return Close::from(e);
                }
            },
            event = session.next_event() => {
                let frame = match event {
                    Ok(DocEvent::Update(update)) => sync::encode_update(&update.payload),
                    Ok(DocEvent::Awareness(awareness)) => sync::encode_awareness(&awareness.payload),
                    Ok(DocEvent::Stateless { .. }) => continue, // not y-websocket's
                    Err(reason) => return reason.into(),
                };
                if send(socket, frame).await.is_err() {
                    return Close::Peer;
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > 2 * PING_EVERY {
                    return Close::TryAgain("no answer to pings".into());
                }
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    return Close::Peer;
                }
            }
            _ = shutdown.changed() => return Close::GoingAway,
        }
    }
}

fn reject_frame(e: FrameError) -> Close {
    match e {
        FrameError::UnknownType(_) | FrameError::UnknownSyncType(_) => {
            metrics::rejected("unknown_message");
            Close::Unsupported(e.to_string())
        }
        FrameError::Empty | FrameError::Malformed(_) | FrameError::LengthOverflow(_) => {
            metrics::rejected("malformed");
            Close::Invalid(e.to_string())
        }
    }
}

/// What comes out of [`InFlight`], in the order it went in.
enum Settled {
    Update(Result<crate::hub::Ack, HubError>),
    /// A y-sweet sync status: every update before it has settled.
    SyncStatus(Vec<u8>),
}

type InFlight =
    FuturesOrdered<std::pin::Pin<Box<dyn std::future::Future<Output = Settled> + Send>>>;

async fn handle(
    session: &mut Session,
    socket: &mut WebSocket,
    message: ClientMessage,
    writable: bool,
    in_flight: &mut InFlight,
) -> Result<(), Close> {
    match message {
        ClientMessage::SyncStep1(sv) => {
            let diff = session.diff(&sv);
            let _turn = super::large_send(diff.len()).await;
            send(socket, sync::encode_sync_step2(&diff)).await
        }
        ClientMessage::SyncStep2(update) | ClientMessage::Update(update) => {
            // Permission before decoding: a reader's update is never looked
            // into (but the empty one every client sends in its handshake).
            if !writable {
                if update == yrs::Update::EMPTY_V1 {
                    return Ok(());
                }
                metrics::rejected("read_only");
                return send(socket, sync::encode_permission_denied("read-only")).await;
            }
            let checked = check_update(update).map_err(|e| {
                metrics::rejected("bad_update");
                Close::Invalid(e.to_string())
            })?;
            let accepted = session.submit_update(checked, TRANSPORT);
            in_flight.push_back(Box::pin(async move { Settled::Update(accepted.await) }));
            Ok(())
        }
        // Answered in turn: once every update received before it is durable.
        ClientMessage::SyncStatus(payload) => {
            in_flight.push_back(Box::pin(std::future::ready(Settled::SyncStatus(payload))));
            Ok(())
        }
        // A refused awareness update (another connection's client id, or a
        // bound) is dropped and counted, the connection kept: a client that
        // reconnects while the server still holds its old connection reuses
        // its id, and must not be closed for it.
        ClientMessage::Awareness { raw, update } => {
            match session.submit_awareness(raw, &update).await {
                Ok(()) | Err(HubError::Awareness(_)) => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
        ClientMessage::QueryAwareness => match session.awareness() {
            Some(awareness) => send(socket, sync::encode_awareness(&awareness)).await,
            None => Ok(()),
        },
        ClientMessage::Auth(_) => Ok(()),
    }
}
