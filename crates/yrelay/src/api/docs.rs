//! The document REST API: list, metadata, export (update or JSON), one-time
//! JSON import, rename/block, delete. Server-side edits go through
//! `POST /v1/docs/{space}/{doc}/updates` (the SSE transport's endpoint).

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde::Deserialize;
use yrelay_protocol::DocAddress;
use yrelay_protocol::json::{doc_from_update, json_to_update};
use yrs::{ReadTxn, StateVector, Transact};

use super::history::{self, millis};
use super::inspect::PageQuery;
use crate::edge::{
    Credentials, ack_json, address, bad_request, body, json_object, query, space, state_vector,
};
use crate::http_error::ApiError;
use crate::state::AppState;
use crate::vocab::DocMeta;

fn meta_json(meta: &DocMeta) -> serde_json::Value {
    serde_json::json!({
        "doc": meta.doc,
        "title": meta.title,
        "blocked": meta.blocked,
        "createdAt": meta.created_at,
        "updatedAt": meta.updated_at,
        "size": meta.size,
    })
}

pub(super) fn not_found(addr: &DocAddress) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "DOC_NOT_FOUND",
        format!("document {addr} does not exist"),
    )
}

/// `GET /v1/spaces/{space}/docs[?after=ms]`: every document, in change
/// order; with `?q=`, `?from=` or `?limit=`, a page in id order (documents
/// whose id or title contains `q`, after `from`, at most `limit`, default
/// 50; the next page starts from the last id), each with `connections`,
/// its connections on this instance now.
pub async fn list(
    State(app): State<AppState>,
    Path(space_id): Path<String>,
    query_string: Result<Query<PageQuery>, QueryRejection>,
    credentials: Credentials,
) -> Result<Json<serde_json::Value>, ApiError> {
    space(&space_id)?;
    app.auth.space(&credentials, &space_id).await?;
    let page = query(query_string)?;
    if !page.q.is_empty() || !page.from.is_empty() || page.limit.is_some() {
        let docs = app
            .hub
            .page(&space_id, &page.q, &page.from, page.limit()?)
            .await?;
        let live = app.hub.live_counts(&space_id);
        let entry = |meta: &DocMeta| {
            let mut entry = meta_json(meta);
            entry["connections"] = live.get(&meta.doc).copied().unwrap_or(0).into();
            entry
        };
        return Ok(Json(docs.iter().map(entry).collect()));
    }
    let after =
        match page.after.as_deref() {
            Some(text) => Some(text.parse::<i64>().map_err(|_| {
                bad_request("BAD_QUERY", "after must be milliseconds since the epoch")
            })?),
            None => None,
        };
    let docs = app.hub.list(&space_id, after).await?;
    Ok(Json(docs.iter().map(meta_json).collect()))
}

/// `GET /v1/docs/{space}/{doc}`
pub async fn meta(
    State(app): State<AppState>,
    Path((space, doc)): Path<(String, String)>,
    credentials: Credentials,
) -> Result<Json<serde_json::Value>, ApiError> {
    let addr = address(&space, &doc)?;
    app.auth.doc(&credentials, &addr).await?;
    let meta = app.hub.meta(&addr).await?.ok_or_else(|| not_found(&addr))?;
    Ok(Json(meta_json(&meta)))
}

/// The query string of the exports: a diff against `sv`, the document at
/// `at` (ms), or both.
#[derive(Deserialize)]
pub struct ExportQuery {
    sv: Option<String>,
    at: Option<String>,
}

/// `GET /v1/docs/{space}/{doc}/update[?sv=][&at=]`: the document (or the
/// diff against `sv`) as one v1 update, now or as it was at `at`.
pub async fn export_update(
    State(app): State<AppState>,
    Path((space, doc)): Path<(String, String)>,
    query_string: Result<Query<ExportQuery>, QueryRejection>,
    credentials: Credentials,
) -> Result<Response, ApiError> {
    let addr = address(&space, &doc)?;
    app.auth.doc(&credentials, &addr).await?;
    let q = query(query_string)?;
    let sv = state_vector(q.sv.as_deref())?;
    if let Some(at) = q.at.as_deref() {
        let at = millis("at", at)?;
        if !app.hub.exists(&addr).await? {
            return Err(not_found(&addr));
        }
        let mut past = app.hub.state_at(&addr, at).await?;
        if sv != StateVector::default() {
            past.state = tokio::task::spawn_blocking(move || {
                doc_from_update(&past.state).map(|d| d.transact().encode_diff_v1(&sv))
            })
            .await
            .map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", e.to_string())
            })?
            .map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", e.to_string())
            })?;
        }
        return Ok(history::update_response(past));
    }
    let update = app
        .hub
        .export_update(&addr, &sv)
        .await?
        .ok_or_else(|| not_found(&addr))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], update).into_response())
}

#[derive(Deserialize)]
pub struct AtQuery {
    at: Option<String>,
}

/// `GET /v1/docs/{space}/{doc}/json[?at=]`
pub async fn export_json(
    State(app): State<AppState>,
    Path((space, doc)): Path<(String, String)>,
    query_string: Result<Query<AtQuery>, QueryRejection>,
    credentials: Credentials,
) -> Result<Response, ApiError> {
    let addr = address(&space, &doc)?;
    app.auth.doc(&credentials, &addr).await?;
    if let Some(at) = query(query_string)?.at.as_deref() {
        let at = millis("at", at)?;
        if !app.hub.exists(&addr).await? {
            return Err(not_found(&addr));
        }
        let past = app.hub.state_at(&addr, at).await?;
        return history::json_response(past).await;
    }
    let json = app
        .hub
        .export_json(&addr)
        .await?
        .ok_or_else(|| not_found(&addr))?;
    Ok(Json(json).into_response())
}

#[derive(Deserialize)]
pub struct ImportQuery {
    root: Option<String>,
}

/// `POST /v1/docs/{space}/{doc}/import[?root=]`: creates the document from
/// plain JSON, exactly once (409 when it exists).
pub async fn import(
    State(app): State<AppState>,
    Path((space, doc)): Path<(String, String)>,
    query_string: Result<Query<ImportQuery>, QueryRejection>,
    credentials: Credentials,
    payload: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let addr = address(&space, &doc)?;
    app.auth.writer(&credentials, &addr).await?;
    let payload = body(payload)?;
    let root = query(query_string)?.root.unwrap_or_else(|| "root".into());
    if root.is_empty() {
        return Err(bad_request("BAD_QUERY", "root must not be empty"));
    }
    let value: serde_json::Value = serde_json::from_slice(&payload)
        .map_err(|e| bad_request("BAD_JSON", format!("the body is not JSON: {e}")))?;
    let update =
        json_to_update(&root, value).map_err(|e| bad_request("BAD_JSON", e.to_string()))?;
    match app.hub.import(&addr, update).await? {
        Some(ack) => Ok((StatusCode::CREATED, Json(ack_json(&ack))).into_response()),
        None => Err(ApiError::new(
            StatusCode::CONFLICT,
            "DOC_EXISTS",
            format!("document {addr} already exists; import creates new documents only"),
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaPatch {
    title: Option<String>,
    blocked: Option<bool>,
}

/// `PATCH /v1/docs/{space}/{doc}` `{"title"?, "blocked"?}`
pub async fn patch(
    State(app): State<AppState>,
    Path((space, doc)): Path<(String, String)>,
    credentials: Credentials,
    payload: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let addr = address(&space, &doc)?;
    app.auth.writer(&credentials, &addr).await?;
    let patch: MetaPatch = json_object(payload, "{\"title\"?: string, \"blocked\"?: boolean}")?;
    let meta = app
        .hub
        .update_meta(&addr, patch.title.as_deref(), patch.blocked)
        .await?
        .ok_or_else(|| not_found(&addr))?;
    Ok(Json(meta_json(&meta)))
}

#[derive(Deserialize)]
pub struct DeleteQuery {
    purge: Option<bool>,
}

/// `DELETE /v1/docs/{space}/{doc}[?purge=true]`: to the trash, or for good.
pub async fn delete(
    State(app): State<AppState>,
    Path((space, doc)): Path<(String, String)>,
    query_string: Result<Query<DeleteQuery>, QueryRejection>,
    credentials: Credentials,
) -> Result<Response, ApiError> {
    let addr = address(&space, &doc)?;
    app.auth.writer(&credentials, &addr).await?;
    let purge = query(query_string)?.purge.unwrap_or(false);
    if app.hub.delete(&addr, purge).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(not_found(&addr))
    }
}

/// `POST /v1/docs/{space}/{doc}/undelete`: out of the trash, with its history.
pub async fn undelete(
    State(app): State<AppState>,
    Path((space, doc)): Path<(String, String)>,
    credentials: Credentials,
) -> Result<Json<serde_json::Value>, ApiError> {
    let addr = address(&space, &doc)?;
    app.auth.writer(&credentials, &addr).await?;
    if !app.hub.undelete(&addr).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_IN_TRASH",
            format!("document {addr} is not in the trash"),
        ));
    }
    let meta = app.hub.meta(&addr).await?.ok_or_else(|| not_found(&addr))?;
    Ok(Json(meta_json(&meta)))
}

/// `GET /v1/spaces/{space}/trash`: most recently deleted first.
pub async fn trash(
    State(app): State<AppState>,
    Path(space_id): Path<String>,
    credentials: Credentials,
) -> Result<Json<serde_json::Value>, ApiError> {
    space(&space_id)?;
    app.auth.space(&credentials, &space_id).await?;
    let docs = app.hub.trash(&space_id).await?;
    Ok(Json(
        docs.iter()
            .map(|meta| {
                let mut json = meta_json(meta);
                json["deletedAt"] = meta.trashed_at.into();
                json
            })
            .collect(),
    ))
}

/// `GET /v1/spaces/{space}/events`: Server-Sent Events `doc.created`,
/// `doc.updated` (at most once a second per document and instance),
/// `doc.renamed`, `doc.deleted`, `doc.undeleted`, with JSON data `{"doc", "timestamp",
/// "title"?}`, from every instance.
pub async fn space_events(
    State(app): State<AppState>,
    Path(space_id): Path<String>,
    credentials: Credentials,
) -> Result<Response, ApiError> {
    space(&space_id)?;
    app.auth.space(&credentials, &space_id).await?;
    let slot = app.limits.connection_slot()?;
    let feed = app.hub.space_events(&space_id).await?;
    let events = stream::unfold((feed, slot), |(mut feed, slot)| async move {
        let notice = feed.next().await?;
        let event = Event::default()
            .event(notice.name)
            .data(notice.data.to_string());
        Some((Ok::<_, Infallible>(event), (feed, slot)))
    });
    Ok(Sse::new(events)
        .keep_alive(
            KeepAlive::new()
                .interval(Duration::from_secs(15))
                .text("ping"),
        )
        .into_response())
}
