//! Wire protocols. Each turns frames into hub calls and hub events into
//! frames; none holds CRDT logic or talks to the store or the log.

pub mod hocuspocus;
pub mod socketio;
pub mod sse;
pub mod ws;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::http_error::ApiError;
use crate::state::AppState;

/// Bytes tungstenite reads (and zero-fills first) per read attempt. Its
/// default, 128 KiB, is zeroed on every poll of the socket, which with one
/// poll per relayed message was a third of the server's CPU at 50 readers.
const READ_BUFFER: usize = 4096;

/// `426 WEBSOCKET_REQUIRED` for a plain request to a WebSocket endpoint.
pub(crate) fn websocket_required(protocol: &str, rejection: WebSocketUpgradeRejection) -> Response {
    let message = format!("this endpoint speaks the {protocol} protocol: {rejection}");
    ApiError::new(StatusCode::UPGRADE_REQUIRED, "WEBSOCKET_REQUIRED", message).into_response()
}

/// An upgrade with the limits every WebSocket endpoint has, echoing the
/// token's subprotocol if it came in one. The socket accepts up to twice
/// the message limit so that a message just over it gets a clean 1009
/// from us rather than a torn connection.
pub(crate) fn configure(
    mut ws: WebSocketUpgrade,
    app: &AppState,
    subprotocol: Option<String>,
) -> WebSocketUpgrade {
    if let Some(protocol) = subprotocol {
        ws = ws.protocols([protocol]);
    }
    let limit = app.limits.max_message_size.saturating_mul(2);
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .read_buffer_size(READ_BUFFER)
}
