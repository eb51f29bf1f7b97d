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
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use yrelay_protocol::DocAddress;
use yrelay_protocol::sync::{self, ClientMessage, FrameError};
use yrelay_protocol::update::check_update;

use crate::http_error::ApiError;
use crate::hub::{CloseReason, DocEvent, HubError, Session};
use crate::metrics;
use crate::server::AppState;

const TRANSPORT: &str = "websocket";
/// Updates of one connection waiting for durability at once; past this the
/// connection stops reading until one is accepted (backpressure).
const MAX_IN_FLIGHT: usize = 64;
const PING_EVERY: Duration = Duration::from_secs(30);

/// How (and why) the server ends a connection.
#[derive(Debug)]
enum Close {
    /// The peer closed or vanished: nothing to send.
    Peer,
    TooBig(String),
    Unsupported(String),
    Invalid(String),
    TryAgain(String),
    GoingAway,
}

impl Close {
    fn frame(&self) -> Option<CloseFrame> {
        let (code, reason) = match self {
            Close::Peer => return None,
            Close::TooBig(r) => (1009, r.clone()),
            Close::Unsupported(r) => (1003, r.clone()),
            Close::Invalid(r) => (1007, r.clone()),
            Close::TryAgain(r) => (1013, r.clone()),
            Close::GoingAway => (1001, "server shutting down".into()),
        };
        Some(CloseFrame {
            code,
            reason: reason.into(),
        })
    }
}

impl From<HubError> for Close {
    fn from(e: HubError) -> Self {
        match e {
            HubError::ShuttingDown => Close::GoingAway,
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
        }
    }
}

/// `GET /v1/ws/{space}/{doc}` (upgrade).
pub async fn upgrade(
    State(app): State<AppState>,
    Path((space, doc)): Path<(String, String)>,
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
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            let message = format!("this endpoint speaks the y-websocket protocol: {rejection}");
            return ApiError::new(StatusCode::UPGRADE_REQUIRED, "WEBSOCKET_REQUIRED", message)
                .into_response();
        }
    };
    let limit = app.limits.max_message_size;
    // The socket accepts up to twice the limit so that a message just over it
    // gets a clean 1009 from us rather than a torn connection.
    ws.max_message_size(limit.saturating_mul(2))
        .max_frame_size(limit.saturating_mul(2))
        .on_upgrade(move |socket| connection(app, addr, socket))
}

async fn connection(app: AppState, addr: DocAddress, mut socket: WebSocket) {
    metrics::connection_opened(TRANSPORT);
    let close = match app.hub.join(&addr).await {
        Ok(session) => serve(&app, session, &mut socket).await,
        Err(e) => {
            tracing::warn!(doc = %addr, error = %e, "cannot open document");
            Close::from(e)
        }
    };
    if let Some(frame) = close.frame() {
        if !matches!(close, Close::GoingAway) {
            tracing::info!(doc = %addr, code = frame.code, reason = %frame.reason, "closing websocket");
        }
        let _ = socket.send(Message::Close(Some(frame))).await;
    }
    metrics::connection_closed(TRANSPORT);
}

async fn send(socket: &mut WebSocket, frame: Vec<u8>) -> Result<(), Close> {
    socket
        .send(Message::Binary(frame.into()))
        .await
        .map_err(|_| Close::Peer)
}

async fn serve(app: &AppState, mut session: Session, socket: &mut WebSocket) -> Close {
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
    let mut in_flight = FuturesOrdered::new();
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    let mut last_heard = Instant::now();
    let mut shutdown = app.shutdown.clone();
    loop {
        tokio::select! {
            frame = socket.recv(), if in_flight.len() < MAX_IN_FLIGHT => {
                let frame = match frame {
                    Some(Ok(frame)) => frame,
                    Some(Err(_)) | None => return Close::Peer,
                };
                last_heard = Instant::now();
                let data = match frame {
                    Message::Binary(data) => data,
                    Message::Close(_) => return Close::Peer,
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
                    if let Err(close) = handle(&mut session, socket, message, &mut in_flight).await {
                        return close;
                    }
                }
            }
            Some(accepted) = in_flight.next() => {
                if let Err(e) = accepted {
                    tracing::warn!(doc = %session.addr(), error = %e, "update not accepted");
                    return Close::from(e);
                }
            }
            event = session.next_event() => {
                let frame = match event {
                    Ok(DocEvent::Update { payload, .. }) => sync::encode_update(&payload),
                    Ok(DocEvent::Awareness { payload }) => sync::encode_awareness(&payload),
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
        FrameError::Empty | FrameError::Malformed(_) => {
            metrics::rejected("malformed");
            Close::Invalid(e.to_string())
        }
    }
}

type InFlight = FuturesOrdered<
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<crate::hub::Ack, HubError>> + Send>>,
>;

async fn handle(
    session: &mut Session,
    socket: &mut WebSocket,
    message: ClientMessage,
    in_flight: &mut InFlight,
) -> Result<(), Close> {
    match message {
        ClientMessage::SyncStep1(sv) => {
            send(socket, sync::encode_sync_step2(&session.diff(&sv))).await
        }
        ClientMessage::SyncStep2(update) | ClientMessage::Update(update) => {
            let checked = check_update(update).map_err(|e| {
                metrics::rejected("bad_update");
                Close::Invalid(e.to_string())
            })?;
            in_flight.push_back(Box::pin(session.submit_update(checked, TRANSPORT)));
            Ok(())
        }
        ClientMessage::Awareness { raw, update } => {
            Ok(session.submit_awareness(raw, &update).await?)
        }
        ClientMessage::QueryAwareness => match session.awareness() {
            Some(awareness) => send(socket, sync::encode_awareness(&awareness)).await,
            None => Ok(()),
        },
        ClientMessage::Auth(_) => Ok(()),
    }
}
