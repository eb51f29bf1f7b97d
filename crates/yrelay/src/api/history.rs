//! A document's history over HTTP: versions, the document at a moment
//! (`?at=` on the exports, in [`super::docs`]), who changed what, restore.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use yrelay_protocol::json::doc_from_update;

use crate::edge::{Credentials, ack_json, address, bad_request, json_object, query};
use crate::http_error::ApiError;
use crate::hub::{HubError, PastState, RestoreTarget, Writer};
use crate::state::AppState;
use crate::vocab::VersionMeta;

/// The header that says which moment an answer shows.
pub const AT_HEADER: &str = "yrelay-at";
/// The header that says whether it is exactly the moment asked for.
pub const EXACT_HEADER: &str = "yrelay-at-exact";

fn version_json(v: &VersionMeta) -> serde_json::Value {
    serde_json::json!({
        "id": v.id,
        "timestamp": v.timestamp_ms,
        "label": v.label,
        "editors": v.editors,
        "size": v.size,
    })
}

/// Milliseconds since the epoch from a query parameter.
pub fn millis(name: &str, text: &str) -> Result<i64, ApiError> {
    text.parse::<i64>().map_err(|_| {
        bad_request(
            "BAD_QUERY",
            format!("{name} must be milliseconds since the epoch"),
        )
    })
}

/// The headers of an answer that shows the document at a moment.
pub fn at_headers(past: &PastState) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(AT_HEADER, HeaderValue::from(past.timestamp_ms));
    headers.insert(
        EXACT_HEADER,
        HeaderValue::from_static(if past.exact { "true" } else { "false" }),
    );
    headers
}

/// `GET /v1/docs/{space}/{doc}/versions`: newest first.
pub async fn list(
    State(app): State<AppState>,
    Path((space, doc)): Path<(String, String)>,
    credentials: Credentials,
) -> Result<Json<serde_json::Value>, ApiError> {
    let addr = address(&space, &doc)?;
    app.auth.doc(&credentials, &addr).await?;
    let versions = app
        .hub
        .versions(&addr)
        .await?
        .ok_or_else(|| super::docs::not_found(&addr))?;
    Ok(Json(versions.iter().map(version_json).collect()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewVersion {
    label: Option<String>,
}

/// The longest label a version may carry, in bytes.
const MAX_LABEL: usize = 256;

/// `POST /v1/docs/{space}/{doc}/versions` `{"label"?}` → 201 `{"id", "timestamp"}`
pub async fn create(
    State(app): State<AppState>,
    Path((space, doc)): Path<(String, String)>,
    credentials: Credentials,
    payload: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let addr = address(&space, &doc)?;
    app.auth.writer(&credentials, &addr).await?;
    let new: NewVersion = json_object(payload, "{\"label\"?: string}")?;
    if new.label.as_ref().is_some_and(|l| l.len() > MAX_LABEL) {
        return Err(bad_request(
            "BAD_JSON",
            format!("label is longer than {MAX_LABEL} bytes"),
        ));
    }
    let version = app
        .hub
        .record_version(&addr, new.label.as_deref())
        .await?
        .ok_or_else(|| super::docs::not_found(&addr))?;
    let body = serde_json::json!({ "id": version.id, "timestamp": version.timestamp_ms });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `GET /v1/docs/{space}/{doc}/versions/{id}/update`
pub async fn version_update(
    State(app): State<AppState>,
    Path((space, doc, id)): Path<(String, String, String)>,
    credentials: Credentials,
) -> Result<Response, ApiError> {
    let (version, state) = version(&app, &space, &doc, &id, &credentials).await?;
    let at = PastState {
        state,
        timestamp_ms: version.timestamp_ms,
        exact: true,
    };
    Ok(update_response(at))
}

/// `GET /v1/docs/{space}/{doc}/versions/{id}/json`
pub async fn version_json_state(
    State(app): State<AppState>,
    Path((space, doc, id)): Path<(String, String, String)>,
    credentials: Credentials,
) -> Result<Response, ApiError> {
    let (version, state) = version(&app, &space, &doc, &id, &credentials).await?;
    json_response(PastState {
        state,
        timestamp_ms: version.timestamp_ms,
        exact: true,
    })
    .await
}

async fn version(
    app: &AppState,
    space: &str,
    doc: &str,
    id: &str,
    credentials: &Credentials,
) -> Result<(VersionMeta, Vec<u8>), ApiError> {
    let addr = address(space, doc)?;
    app.auth.doc(credentials, &addr).await?;
    let id = id.parse::<i64>().map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "VERSION_NOT_FOUND",
            format!("{id:?} is not a version id"),
        )
    })?;
    if !app.hub.exists(&addr).await? {
        return Err(super::docs::not_found(&addr));
    }
    Ok(app.hub.version(&addr, id).await?)
}

/// A past state as one v1 update, with the moment it shows.
pub fn update_response(past: PastState) -> Response {
    let headers = at_headers(&past);
    let content_type = [(header::CONTENT_TYPE, "application/octet-stream")];
    (headers, content_type, past.state).into_response()
}

/// A past state as JSON, with the moment it shows.
pub async fn json_response(past: PastState) -> Result<Response, ApiError> {
    let headers = at_headers(&past);
    let state = Arc::new(past.state);
    let json = tokio::task::spawn_blocking(move || {
        let doc = doc_from_update(&state).map_err(|e| e.to_string())?;
        yrelay_protocol::json::doc_to_json(&doc).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", e.to_string()))?
    .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "DOC_TOO_DEEP", e))?;
    Ok((headers, Json(json)).into_response())
}

#[derive(Deserialize)]
pub struct ChangesQuery {
    from: Option<String>,
    to: Option<String>,
}

/// `GET /v1/docs/{space}/{doc}/changes?from=MS&to=MS` → `[{"timestamp",
/// "editor", "bytes"}]`, oldest first, within the exact window.
pub async fn changes(
    State(app): State<AppState>,
    Path((space, doc)): Path<(String, String)>,
    query_string: Result<Query<ChangesQuery>, QueryRejection>,
    credentials: Credentials,
) -> Result<Json<serde_json::Value>, ApiError> {
    let addr = address(&space, &doc)?;
    app.auth.doc(&credentials, &addr).await?;
    let q = query(query_string)?;
    let from = q.from.as_deref().map(|t| millis("from", t)).transpose()?;
    let to = q.to.as_deref().map(|t| millis("to", t)).transpose()?;
    let (from, to) = (from.unwrap_or(i64::MIN), to.unwrap_or(i64::MAX));
    if from > to {
        return Err(bad_request("BAD_QUERY", "from must not be after to"));
    }
    if !app.hub.exists(&addr).await? {
        return Err(super::docs::not_found(&addr));
    }
    let changes = app.hub.changes(&addr, from, to).await?;
    Ok(Json(
        changes
            .iter()
            .map(|c| {
                serde_json::json!({
                    "timestamp": c.timestamp_ms,
                    "editor": c.editor,
                    "bytes": c.data.len(),
                })
            })
            .collect(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreBody {
    version: Option<i64>,
    at: Option<i64>,
}

/// `POST /v1/docs/{space}/{doc}/restore` `{"version": id}` or `{"at": MS}`
/// → `{"cursor", "timestamp", "version"}` (`version`: the one recorded of
/// the state before, to undo the restore).
pub async fn restore(
    State(app): State<AppState>,
    Path((space, doc)): Path<(String, String)>,
    credentials: Credentials,
    payload: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let addr = address(&space, &doc)?;
    let permit = app.auth.writer(&credentials, &addr).await?;
    let expected = "{\"version\": integer} or {\"at\": milliseconds}";
    let target = match json_object::<RestoreBody>(payload, expected)? {
        RestoreBody {
            version: Some(id),
            at: None,
        } => RestoreTarget::Version(id),
        RestoreBody {
            version: None,
            at: Some(at),
        } => RestoreTarget::At(at),
        _ => return Err(bad_request("BAD_JSON", format!("expected {expected}"))),
    };
    if app.hub.in_trash(&addr).await? {
        return Err(HubError::Deleted.into());
    }
    let writer = Writer {
        origin: None,
        editor: permit.sub.map(Arc::from),
    };
    let restored = app
        .hub
        .restore(&addr, target, writer)
        .await?
        .ok_or_else(|| super::docs::not_found(&addr))?;
    let mut answer = ack_json(&restored.ack);
    answer["version"] = restored.version.id.into();
    Ok(Json(answer))
}
