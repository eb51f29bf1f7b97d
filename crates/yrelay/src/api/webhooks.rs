//! What the webhook outbox holds: `GET /v1/webhooks/deliveries`.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::Deserialize;

use crate::edge::{Credentials, bad_request, query};
use crate::http_error::ApiError;
use crate::state::AppState;

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
    app.auth.space(credentials.token(), "*")?;
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
