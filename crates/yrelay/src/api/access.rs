//! `POST /v1/access/revoke`: takes access away from open connections on
//! every instance, and refuses the tokens it covers from then on.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;

use crate::auth::Revocation;
use crate::edge::{Credentials, bad_request, json_object};
use crate::http_error::ApiError;
use crate::state::AppState;

/// `POST /v1/access/revoke {"sub"?, "space"?, "doc"?}` (a token for every
/// space, read-write) → `{"id", "timestamp"}`. Applied here at once and by
/// every other instance within a second: the connections it covers are
/// closed, or asked about again when the app's callback let them in (and
/// then maybe made read-only); tokens it covers issued at or before it are
/// refused for `--revoke-retention-secs`.
pub async fn revoke(
    State(app): State<AppState>,
    credentials: Credentials,
    payload: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    super::inspect::admin(&app, &credentials).await?;
    let what: Revocation = json_object(
        payload,
        "{\"sub\"?: string, \"space\"?: string, \"doc\"?: string}",
    )?;
    if let Some(problem) = what.problem() {
        return Err(bad_request("BAD_REVOKE", problem));
    }
    let revoked = app.hub.revoke(what).await?;
    let answer = serde_json::json!({ "id": revoked.id, "timestamp": revoked.at_ms });
    app.auth.revoke(vec![revoked]);
    Ok(Json(answer))
}
