//! Webhooks over HTTP: what the outbox holds (`GET /v1/webhooks/deliveries`)
//! and the webhooks a space registers for itself.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use serde::Deserialize;

use crate::auth::AuthError;
use crate::edge::{Credentials, bad_request, json_object, query, space};
use crate::http_error::ApiError;
use crate::state::AppState;
use crate::vocab::SpaceHook;

#[derive(Deserialize)]
pub struct DeliveriesQuery {
    status: Option<String>,
}

/// How many deliveries one answer lists, newest first.
const LISTED: i64 = 100;

/// `GET /v1/webhooks/deliveries?status=pending|sent|failed` (default
/// `failed`): what is stuck and why. Needs a token for every space.
pub async fn deliveries(
    State(app): State<AppState>,
    query_string: Result<Query<DeliveriesQuery>, QueryRejection>,
    credentials: Credentials,
) -> Result<Json<serde_json::Value>, ApiError> {
    app.auth.space(&credentials, "*").await?;
    let status = query(query_string)?
        .status
        .unwrap_or_else(|| "failed".into());
    if !["pending", "sent", "failed"].contains(&status.as_str()) {
        return Err(bad_request(
            "BAD_QUERY",
            "status must be pending, sent or failed",
        ));
    }
    let deliveries = app.hub.webhook_deliveries(&status, LISTED).await?;
    Ok(Json(
        deliveries
            .iter()
            .map(|d| {
                serde_json::json!({
                    "id": d.id,
                    "target": d.target,
                    "space": d.space,
                    "doc": d.doc,
                    "event": d.event,
                    "createdAt": d.created_at,
                    "attempts": d.attempts,
                    "status": d.status,
                    "lastError": d.last_error,
                })
            })
            .collect(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Webhook {
    url: String,
    secret: Option<String>,
    /// `["json"]`: each body carries the document's JSON.
    #[serde(default)]
    include: Vec<Include>,
}

#[derive(Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Include {
    Json,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpaceWebhooks {
    webhooks: Vec<Webhook>,
}

/// How many webhooks a space may register.
const MAX_SPACE_WEBHOOKS: usize = 10;

fn listed(hooks: &[SpaceHook]) -> serde_json::Value {
    let hooks: Vec<_> = hooks
        .iter()
        .map(|h| {
            let include: &[&str] = if h.include_json { &["json"] } else { &[] };
            serde_json::json!({ "url": h.url, "signed": h.secret.is_some(), "include": include })
        })
        .collect();
    serde_json::json!({ "webhooks": hooks })
}

/// Write access to the whole space.
async fn space_writer(
    app: &AppState,
    credentials: &Credentials,
    space_id: &str,
) -> Result<(), ApiError> {
    space(space_id)?;
    let permit = app.auth.space(credentials, space_id).await?;
    if !permit.can_write() {
        return Err(AuthError::ReadOnly(format!("space {space_id}")).into());
    }
    Ok(())
}

/// `GET /v1/spaces/{space}/webhooks` → `{"webhooks": [{"url", "signed"}]}`.
pub async fn space_list(
    State(app): State<AppState>,
    Path(space_id): Path<String>,
    credentials: Credentials,
) -> Result<Json<serde_json::Value>, ApiError> {
    space_writer(&app, &credentials, &space_id).await?;
    Ok(Json(listed(&app.hub.space_webhooks(&space_id).await?)))
}

/// `PUT /v1/spaces/{space}/webhooks` `{"webhooks": [{"url", "secret"?}]}`:
/// the space's documents' events go there too (besides `--webhook`).
pub async fn space_set(
    State(app): State<AppState>,
    Path(space_id): Path<String>,
    credentials: Credentials,
    payload: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    space_writer(&app, &credentials, &space_id).await?;
    let set: SpaceWebhooks = json_object(
        payload,
        "{\"webhooks\": [{\"url\": \"https://...\", \"secret\"?: string, \"include\"?: [\"json\"]}]}",
    )?;
    if set.webhooks.len() > MAX_SPACE_WEBHOOKS {
        return Err(bad_request(
            "BAD_JSON",
            format!("a space may register at most {MAX_SPACE_WEBHOOKS} webhooks"),
        ));
    }
    let mut hooks = Vec::new();
    for hook in set.webhooks {
        let url = reqwest::Url::parse(&hook.url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .filter(|_| hook.url.len() <= 2048)
            .ok_or_else(|| {
                bad_request("BAD_JSON", format!("{:?} is not an http(s) URL", hook.url))
            })?;
        if hooks.iter().any(|h: &SpaceHook| h.url == url.as_str()) {
            return Err(bad_request("BAD_JSON", format!("{url} is listed twice")));
        }
        hooks.push(SpaceHook {
            url: url.to_string(),
            secret: hook.secret.filter(|s| !s.is_empty()),
            include_json: hook.include.contains(&Include::Json),
        });
    }
    app.hub.set_space_webhooks(&space_id, &hooks).await?;
    Ok(Json(listed(&hooks)))
}
