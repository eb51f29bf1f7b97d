//! Wire protocols. Each turns frames into hub calls and hub events into
//! frames; none holds CRDT logic or talks to the store or the log.

pub mod hocuspocus;
pub mod socketio;
pub mod sse;
pub mod ws;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::http_error::ApiError;
use crate::state::AppState;

/// Bytes tungstenite reads (and zero-fills first) per read attempt. Its
/// default, 128 KiB, is zeroed on every poll of the socket, which with one
/// poll per relayed message was a third of the server's CPU at 50 readers.
const READ_BUFFER: usize = 4096;

/// A sync at least this large is written only a few at a time per
/// instance ([`large_send`]).
const LARGE_SYNC: usize = 1 << 20;
/// How many large syncs are written at once per instance: each holds its
/// frame and the socket's copy of it until the peer has read it.
static LARGE_SENDS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// A turn to write a sync of `len` bytes: at once below [`LARGE_SYNC`],
/// else one of a few (so that 150 clients joining a 20 MB document at once
/// do not hold 150 copies; each write has its deadline, so a peer that
/// stops reading gives its turn up within it).
pub(crate) async fn large_send(len: usize) -> Option<tokio::sync::SemaphorePermit<'static>> {
    if len < LARGE_SYNC {
        return None;
    }
    LARGE_SENDS.acquire().await.ok()
}

/// A close frame; the reason cut to the 123 bytes a close frame can carry
/// (a longer one makes the frame invalid: the peer would see no code).
pub(crate) fn close_frame(code: u16, reason: &str) -> CloseFrame {
    const MAX: usize = 123;
    let mut reason = reason.to_owned();
    if reason.len() > MAX {
        let mut end = MAX - '…'.len_utf8();
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        reason.push('…');
    }
    CloseFrame {
        code,
        reason: reason.into(),
    }
}

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

#[cfg(test)]
mod tests {
    #[test]
    fn close_reasons_fit_a_close_frame() {
        let long = "é".repeat(100);
        let frame = super::close_frame(1008, &long);
        assert!(frame.reason.len() <= 123, "{}", frame.reason.len());
        assert!(frame.reason.ends_with('…'));
        assert_eq!(super::close_frame(1000, "bye").reason.as_str(), "bye");
    }
}
