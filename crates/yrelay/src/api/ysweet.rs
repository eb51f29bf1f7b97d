//! The y-sweet server API under `/v1/ysweet/{space}/`, so that
//! `new DocumentManager('ys://TOKEN@host:4040/v1/ysweet/{space}')` from
//! `@y-sweet/sdk` works unchanged: `check_store`, `doc/new`,
//! `doc/{docId}/auth` (a client token for `YSweetProvider`), and per
//! document `as-update` and `update` (the documents API's own handlers,
//! routed in `server.rs`). The connection string's token is a yrelay token
//! with access to the space (no token with auth off).

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};
use yrelay_protocol::DocAddress;

use crate::auth::{self, Grant, Mode};
use crate::edge::{Credentials, address, bad_request, body, space};
use crate::http_error::ApiError;
use crate::state::AppState;
use crate::vocab::new_instance_id;

/// How long a client token lives unless asked otherwise (y-sweet's default).
const TOKEN_SECS: u64 = 3600;
/// The longest a client token may be asked to live.
const MAX_TOKEN_SECS: u64 = 7 * 24 * 3600;

/// A JSON body of the wrong shape: 400 `BAD_JSON`.
fn json_body<T: for<'de> Deserialize<'de>>(
    payload: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let payload = body(payload)?;
    let payload = if payload.is_empty() {
        Bytes::from_static(b"{}")
    } else {
        payload
    };
    serde_json::from_slice(&payload).map_err(|e| bad_request("BAD_JSON", e.to_string()))
}

/// `POST check_store`: `{ok: true}`, or `{ok: false, error}` when the store
/// or the log does not answer.
pub async fn check_store(
    State(app): State<AppState>,
    Path(space_id): Path<String>,
    credentials: Credentials,
) -> Result<Json<Value>, ApiError> {
    space(&space_id)?;
    app.auth.member(&credentials, &space_id).await?;
    Ok(Json(match app.hub.readiness().await {
        Ok(_) => json!({ "ok": true }),
        Err(e) => json!({ "ok": false, "error": e.to_string() }),
    }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewDoc {
    doc_id: Option<String>,
}

/// `POST doc/new {docId?}` → `{docId}`: creates the document (empty) unless
/// it exists; without an id, a new random one.
pub async fn new_doc(
    State(app): State<AppState>,
    Path(space_id): Path<String>,
    credentials: Credentials,
    payload: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let request: NewDoc = json_body(payload)?;
    let doc = request
        .doc_id
        .unwrap_or_else(|| format!("{:016x}{:016x}", new_instance_id(), new_instance_id()));
    let addr = address(&space_id, &doc)?;
    app.auth.writer(&credentials, &addr).await?;
    app.hub
        .import(&addr, yrs::Update::EMPTY_V1.to_vec())
        .await?;
    Ok(Json(json!({ "docId": doc })))
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum Authorization {
    Full,
    ReadOnly,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthDoc {
    authorization: Option<Authorization>,
    user_id: Option<String>,
    valid_for_seconds: Option<u64>,
}

/// `POST doc/{docId}/auth {authorization?, userId?, validForSeconds?}` →
/// a client token: `url` (the provider appends the doc id: yrelay's
/// WebSocket endpoint of the document), `baseUrl` (its `as-update` and
/// `update`), `docId`, `token` (minted by yrelay for this document and
/// mode; none with auth off) and `authorization`.
pub async fn auth_doc(
    State(app): State<AppState>,
    Path((space_id, doc)): Path<(String, String)>,
    headers: HeaderMap,
    credentials: Credentials,
    payload: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let request: AuthDoc = json_body(payload)?;
    let addr = address(&space_id, &doc)?;
    let wanted = request.authorization.unwrap_or(Authorization::Full);
    // A full token needs write access (the same 403 as elsewhere).
    let permit = match wanted {
        Authorization::Full => app.auth.writer(&credentials, &addr).await?,
        Authorization::ReadOnly => app.auth.doc(&credentials, &addr).await?,
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .ok_or_else(|| {
            bad_request(
                "BAD_REQUEST",
                "a Host header is needed to build the client token's URLs",
            )
        })?;
    let (ws, http) = if app.tls {
        ("wss", "https")
    } else {
        ("ws", "http")
    };
    let mut token = json!({
        "url": format!("{ws}://{host}/v1/ws/{space_id}"),
        "baseUrl": format!("{http}://{host}/v1/ysweet/{space_id}/doc/{doc}"),
        "docId": doc,
        "authorization": if wanted == Authorization::Full { "full" } else { "read-only" },
    });
    if let Some(minted) = mint(&app, &addr, wanted, request, permit.sub)? {
        token["token"] = minted.into();
    }
    Ok(Json(token))
}

/// A token for one document and mode, or `None` with auth off.
fn mint(
    app: &AppState,
    addr: &DocAddress,
    wanted: Authorization,
    request: AuthDoc,
    caller: Option<String>,
) -> Result<Option<String>, ApiError> {
    if app.auth.is_open() {
        return Ok(None);
    }
    let Some(key) = &app.signing else {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "CANNOT_MINT",
            "yrelay verifies tokens with a public key only and cannot sign client tokens: \
             mint them in your backend (claims: sub, exp, access: [{space, doc, mode}])",
        ));
    };
    let secs = request.valid_for_seconds.unwrap_or(TOKEN_SECS);
    if secs == 0 || secs > MAX_TOKEN_SECS {
        return Err(bad_request(
            "BAD_JSON",
            format!("validForSeconds must be 1 to {MAX_TOKEN_SECS}"),
        ));
    }
    let mode = if wanted == Authorization::Full {
        Mode::Rw
    } else {
        Mode::Ro
    };
    let grant = Grant {
        space: addr.space().to_owned(),
        doc: addr.doc().to_owned(),
        mode,
    };
    let sub = request
        .user_id
        .or(caller)
        .unwrap_or_else(|| "y-sweet".into());
    auth::mint(key, &sub, vec![grant], secs as i64)
        .map(Some)
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "CANNOT_MINT",
                e.to_string(),
            )
        })
}
