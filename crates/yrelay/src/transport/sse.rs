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
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::{Stream, StreamExt, stream};
use tokio::sync::OwnedSemaphorePermit;
use yrelay_protocol::DocAddress;
use yrelay_protocol::sync::decode_awareness;
use yrelay_protocol::update::{check_update, decode_state_vector};

use crate::auth::{Access, AuthError, Permit};
use crate::edge::{
    Caller, Credentials, SvQuery, ack_json, address, bad_request, body, query_state_vector,
};
use crate::http_error::ApiError;
use crate::hub::{CloseReason, DocEvent, Session, Writer};
use crate::metrics;
use crate::state::AppState;
use crate::vocab::LogCursor;

const TRANSPORT: &str = "sse";
const PING_EVERY: Duration = Duration::from_secs(15);

fn sync_json(update: &[u8], state_vector: &[u8]) -> serde_json::Value {
    serde_json::json!({ "update": STANDARD.encode(update), "stateVector": STANDARD.encode(state_vector) })
}

/// `GET /v1/docs/{space}/{doc}/events`
pub async fn events(
    State(app): State<AppState>,
    Path((space, doc)): Path<(String, String)>,
    query_string: Result<Query<SvQuery>, QueryRejection>,
    credentials: Credentials,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let addr = address(&space, &doc)?;
    let access = Access::open(&app.auth, credentials.via(TRANSPORT), &addr).await?;
    let sv = query_state_vector(query_string)?;
    let slot = app.limits.connection_slot()?;
    let resume_after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| LogCursor::from_str(v.trim()).ok());
    let session = app
        .hub
        .join(&addr)
        .await?
        .via(TRANSPORT)
        .with_editor(access.permit().sub.clone());
    metrics::connection_opened(TRANSPORT);

    // Resuming: exactly what the log holds after the cursor, if it still
    // does. A cursor past what this replica has applied (from the future, or
    // from an instance ahead of this one) cannot be trusted to skip by:
    // a fresh sync instead (it skipped every update, for good).
    let resume_after =
        resume_after.filter(|after| session.cursor().is_some_and(|have| *after <= have));
    let replay = match resume_after {
        Some(after) => app.hub.replay(&addr, after).await?,
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
    let live = live_events(
        OpenStream {
            session,
            _slot: slot,
            access,
        },
        last,
    );
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

/// Counts the stream as a connection (and holds its slot) for as long as it
/// is open.
struct OpenStream {
    session: Session,
    _slot: OwnedSemaphorePermit,
    /// Its token expiring or revoked ends the stream with an `error` event.
    access: Access,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        metrics::connection_closed(TRANSPORT);
    }
}

/// The session's events, skipping updates at or before `last` (already sent).
/// A deleted document ends the stream with a `deleted` event, an expired
/// or revoked token with an `error` event.
fn live_events(
    open: OpenStream,
    last: Option<LogCursor>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold((Some(open), last), |(open, last)| async move {
        let mut open = open?;
        loop {
            let event = tokio::select! {
                event = open.session.next_event() => event,
                changed = open.access.changed() => {
                    let Err(e) = changed else { continue };
                    metrics::rejected(if e == AuthError::Expired { "token_expired" } else { "access_lost" });
                    let message = match &e {
                        AuthError::Expired => "the token has expired: refresh it and reconnect".into(),
                        e => e.to_string(),
                    };
                    let error = serde_json::json!({ "code": e.code(), "message": message });
                    let event = Event::default().event("error").data(error.to_string());
                    return Some((Ok(event), (None, last)));
                }
            };
            match event {
                Ok(DocEvent::Update(update)) => {
                    let cursor = update.cursor;
                    if cursor.is_some() && cursor <= last {
                        continue;
                    }
                    let event = update_event(&update.payload, cursor);
                    return Some((Ok(event), (Some(open), cursor.or(last))));
                }
                Ok(DocEvent::Awareness(awareness)) => {
                    let event = Event::default()
                        .event("awareness")
                        .data(STANDARD.encode(&*awareness.payload));
                    return Some((Ok(event), (Some(open), last)));
                }
                Ok(DocEvent::Stateless { .. }) => continue, // Hocuspocus's only
                Err(CloseReason::Deleted) => {
                    let event = Event::default().event("deleted").data("{}");
                    return Some((Ok(event), (None, last)));
                }
                Err(_) => return None,
            }
        }
    })
}

/// What every POST to a document starts with: the address, the caller's
/// permission (`write`: to write) and rate, and the body within its limit.
struct Post {
    addr: DocAddress,
    permit: Permit,
    caller: Caller,
    body: Bytes,
}

async fn admit(
    app: &AppState,
    (space, doc): (String, String),
    peer: ConnectInfo<SocketAddr>,
    credentials: &Credentials,
    payload: Result<Bytes, BytesRejection>,
    write: bool,
) -> Result<Post, ApiError> {
    let addr = address(&space, &doc)?;
    let credentials = credentials.clone().via(TRANSPORT);
    let permit = if write {
        app.auth.writer(&credentials, &addr).await?
    } else {
        app.auth.doc(&credentials, &addr).await?
    };
    let caller = Caller::new(permit.sub.clone(), peer);
    app.limits.posts.take(&caller)?;
    Ok(Post {
        addr,
        permit,
        caller,
        body: body(payload)?,
    })
}

/// `POST /v1/docs/{space}/{doc}/updates` (also the way to edit a document
/// from a server without a socket).
pub async fn post_update(
    State(app): State<AppState>,
    Path(path): Path<(String, String)>,
    peer: ConnectInfo<SocketAddr>,
    credentials: Credentials,
    payload: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Post {
        addr, permit, body, ..
    } = admit(&app, path, peer, &credentials, payload, true).await?;
    let update = check_update(body.to_vec()).map_err(|e| {
        metrics::rejected("bad_update");
        ApiError::new(StatusCode::BAD_REQUEST, "BAD_UPDATE", e.to_string())
    })?;
    let writer = Writer {
        origin: None,
        editor: permit.sub.map(Arc::from),
    };
    // Received = processed (DESIGN invariant 8): a client that goes away
    // mid-request cancels this handler, not the write it started.
    let hub = app.hub.clone();
    let submit = async move { hub.submit_update(&addr, update, writer, TRANSPORT).await };
    let ack = tokio::spawn(submit).await.map_err(|e| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", e.to_string())
    })??;
    Ok(Json(ack_json(&ack)))
}

/// `POST /v1/docs/{space}/{doc}/sync`
pub async fn post_sync(
    State(app): State<AppState>,
    Path(path): Path<(String, String)>,
    peer: ConnectInfo<SocketAddr>,
    credentials: Credentials,
    payload: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Post { addr, body, .. } = admit(&app, path, peer, &credentials, payload, false).await?;
    let sv = Some(&body[..])
        .filter(|p| !p.is_empty())
        .and_then(|p| decode_state_vector(p).ok())
        .ok_or_else(|| bad_request("BAD_STATE_VECTOR", "body is not a Yjs state vector"))?;
    let session = app.hub.join(&addr).await?;
    Ok(Json(sync_json(&session.diff(&sv), &session.state_vector())))
}

/// `POST /v1/docs/{space}/{doc}/awareness` (allowed read-only too). The
/// client ids it introduces belong to the caller (its token's subject, or
/// its address): other callers cannot overwrite or remove them.
pub async fn post_awareness(
    State(app): State<AppState>,
    Path(path): Path<(String, String)>,
    peer: ConnectInfo<SocketAddr>,
    credentials: Credentials,
    payload: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Post {
        addr, caller, body, ..
    } = admit(&app, path, peer, &credentials, payload, false).await?;
    let update =
        decode_awareness(&body).map_err(|e| bad_request("BAD_AWARENESS", e.to_string()))?;
    let origin = Some(caller.origin());
    app.hub
        .publish_awareness(&addr, body.to_vec(), &update, origin, &Default::default())
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /v1/docs/{space}/{doc}/stateless`: a string (UTF-8 body) for the
/// document's Hocuspocus connections on every instance, never stored. The
/// caller must be allowed to write the document.
pub async fn post_stateless(
    State(app): State<AppState>,
    Path(path): Path<(String, String)>,
    peer: ConnectInfo<SocketAddr>,
    credentials: Credentials,
    payload: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Post {
        addr, caller, body, ..
    } = admit(&app, path, peer, &credentials, payload, true).await?;
    if body.is_empty() {
        return Err(bad_request("BAD_BODY", "a stateless message is not empty"));
    }
    let text = String::from_utf8(body.to_vec())
        .map_err(|_| bad_request("BAD_BODY", "a stateless message is UTF-8 text"))?;
    app.hub
        .broadcast_stateless(&addr, text, Some(caller.origin()))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
