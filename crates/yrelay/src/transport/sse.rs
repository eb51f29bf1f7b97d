//! The SSE + HTTP POST transport, for networks where WebSockets fail and for
//! load balancers that send every request to a different instance: each
//! request is self-contained, and event ids are global log cursors, so a
//! stream resumes on any instance.
//!
//! - `GET  /v1/docs/{space}/{doc}/events?sv=`: `sync`, then `update` (id =
//!   cursor) and `awareness` events, `: ping` comments every 15 s.
//! - `POST /v1/docs/{space}/{doc}/updates`: one v1 update → `{cursor, timestamp}` once durable.
//! - `POST /v1/docs/{space}/{doc}/sync`: a state vector → `{update, stateVector}`.
//! - `POST /v1/docs/{space}/{doc}/awareness`: an awareness update → 204.

use std::convert::Infallible;
use std::str::FromStr;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::alphabet;
use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use futures_util::{Stream, StreamExt, stream};
use serde::Deserialize;
use yrelay_protocol::DocAddress;
use yrelay_protocol::sync::decode_awareness;
use yrelay_protocol::update::{check_update, decode_state_vector};
use yrs::StateVector;

use crate::http_error::ApiError;
use crate::hub::{DocEvent, HubError, Session};
use crate::log::LogCursor;
use crate::metrics;
use crate::server::AppState;

const TRANSPORT: &str = "sse";
const PING_EVERY: Duration = Duration::from_secs(15);

/// base64url with or without padding (state vectors in query strings).
const URL_SAFE_ANY: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
    metrics::rejected("bad_request");
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

impl From<HubError> for ApiError {
    fn from(e: HubError) -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            e.to_string(),
        )
    }
}

fn address(space: &str, doc: &str) -> Result<DocAddress, ApiError> {
    DocAddress::parse(space, doc).map_err(|e| {
        metrics::rejected("bad_doc_id");
        ApiError::new(StatusCode::BAD_REQUEST, "BAD_DOC_ID", e.to_string())
    })
}

/// The request body, within the size limit.
fn body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            metrics::rejected("too_big");
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "BODY_TOO_LARGE",
                rejection.body_text(),
            )
        } else {
            bad_request("BAD_BODY", rejection.body_text())
        }
    })
}

fn sync_json(update: &[u8], state_vector: &[u8]) -> serde_json::Value {
    serde_json::json!({ "update": STANDARD.encode(update), "stateVector": STANDARD.encode(state_vector) })
}

#[derive(Deserialize)]
pub struct EventsQuery {
    sv: Option<String>,
}

/// `GET /v1/docs/{space}/{doc}/events`
pub async fn events(
    State(app): State<AppState>,
    Path((space, doc)): Path<(String, String)>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let addr = address(&space, &doc)?;
    let sv = match query.sv.as_deref().filter(|s| !s.is_empty()) {
        Some(text) => {
            let bytes = URL_SAFE_ANY.decode(text).map_err(|e| {
                bad_request("BAD_STATE_VECTOR", format!("sv is not base64url: {e}"))
            })?;
            decode_state_vector(&bytes)
                .map_err(|_| bad_request("BAD_STATE_VECTOR", "sv is not a Yjs state vector"))?
        }
        None => StateVector::default(),
    };
    let resume_after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| LogCursor::from_str(v.trim()).ok());
    let session = app.hub.join(&addr).await?;
    metrics::connection_opened(TRANSPORT);

    // Resuming: exactly what the log holds after the cursor, if it still does.
    let replay = match resume_after {
        Some(after) => app
            .hub
            .log()
            .read(&addr, Some(after))
            .await
            .map_err(HubError::from)?,
        None => None,
    };
    let (first, last) = match replay {
        Some(entries) => {
            let last = entries.last().and_then(|e| e.cursor).or(resume_after);
            let events: Vec<Event> = entries
                .iter()
                .map(|e| update_event(&e.payload, e.cursor))
                .collect();
            (events, last)
        }
        None => {
            let cursor = session.cursor();
            let data = sync_json(&session.diff(&sv), &session.state_vector());
            let mut event = Event::default().event("sync").data(data.to_string());
            if let Some(c) = cursor {
                event = event.id(c.to_string());
            }
            (vec![event], cursor)
        }
    };
    let live = live_events(session, last);
    let stream = stream::iter(first.into_iter().map(Ok)).chain(live);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(PING_EVERY).text("ping"))
        .into_response())
}

fn update_event(payload: &[u8], cursor: Option<LogCursor>) -> Event {
    let event = Event::default()
        .event("update")
        .data(STANDARD.encode(payload));
    match cursor {
        Some(c) => event.id(c.to_string()),
        None => event,
    }
}

/// Counts the stream as a connection for as long as it is open.
struct OpenStream(Session);

impl Drop for OpenStream {
    fn drop(&mut self) {
        metrics::connection_closed(TRANSPORT);
    }
}

/// The session's events, skipping updates at or before `last` (already sent).
fn live_events(
    session: Session,
    last: Option<LogCursor>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold((OpenStream(session), last), |(mut open, last)| async move {
        loop {
            match open.0.next_event().await {
                Ok(DocEvent::Update {
                    payload, cursor, ..
                }) => {
                    if cursor.is_some() && cursor <= last {
                        continue;
                    }
                    let event = update_event(&payload, cursor);
                    return Some((Ok(event), (open, cursor.or(last))));
                }
                Ok(DocEvent::Awareness { payload }) => {
                    let event = Event::default()
                        .event("awareness")
                        .data(STANDARD.encode(&*payload));
                    return Some((Ok(event), (open, last)));
                }
                Err(_) => return None,
            }
        }
    })
}

/// `POST /v1/docs/{space}/{doc}/updates`
pub async fn post_update(
    State(app): State<AppState>,
    Path((space, doc)): Path<(String, String)>,
    payload: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let addr = address(&space, &doc)?;
    let payload = body(payload)?;
    let update = check_update(payload.to_vec()).map_err(|e| {
        metrics::rejected("bad_update");
        ApiError::new(StatusCode::BAD_REQUEST, "BAD_UPDATE", e.to_string())
    })?;
    let ack = app
        .hub
        .submit_update(&addr, update, None, TRANSPORT)
        .await?;
    Ok(Json(serde_json::json!({
        "cursor": ack.cursor.map(|c| c.to_string()),
        "timestamp": ack.timestamp_ms,
    })))
}

/// `POST /v1/docs/{space}/{doc}/sync`
pub async fn post_sync(
    State(app): State<AppState>,
    Path((space, doc)): Path<(String, String)>,
    payload: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let addr = address(&space, &doc)?;
    let payload = body(payload)?;
    let sv = decode_state_vector(&payload)
        .map_err(|_| bad_request("BAD_STATE_VECTOR", "body is not a Yjs state vector"))?;
    let session = app.hub.join(&addr).await?;
    Ok(Json(sync_json(&session.diff(&sv), &session.state_vector())))
}

/// `POST /v1/docs/{space}/{doc}/awareness`
pub async fn post_awareness(
    State(app): State<AppState>,
    Path((space, doc)): Path<(String, String)>,
    payload: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let addr = address(&space, &doc)?;
    let payload = body(payload)?;
    decode_awareness(&payload).map_err(|e| bad_request("BAD_AWARENESS", e.to_string()))?;
    app.hub.publish_awareness(&addr, payload.to_vec()).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
