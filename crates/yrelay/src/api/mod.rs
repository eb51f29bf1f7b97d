//! The REST API: operational endpoints (liveness, readiness, metrics, the
//! OpenAPI document) here, documents in [`docs`].

pub mod access;
pub mod docs;
pub mod history;
pub mod inspect;
pub mod webhooks;
pub mod ysweet;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::http_error::ApiError;
use crate::hub::Unready;
use crate::state::AppState;

/// `GET /healthz`: the process runs.
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: store and log are reachable.
pub async fn readyz(State(app): State<AppState>) -> Response {
    match app.hub.readiness().await {
        Ok((store, log)) => {
            Json(serde_json::json!({ "status": "ready", "store": store, "log": log }))
                .into_response()
        }
        Err(Unready::Store(e)) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "STORE_UNAVAILABLE", e).into_response()
        }
        Err(Unready::Log(e)) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "LOG_UNAVAILABLE", e).into_response()
        }
    }
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics(State(app): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}

/// Any other path.
pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such endpoint")
}

/// `GET /v1/openapi.json`: the OpenAPI 3 description of the HTTP API.
pub async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
        .into_response()
}
