//! The JSON error every HTTP endpoint answers with:
//! `{"error": {"code": "DOC_NOT_FOUND", "message": "..."}}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::auth::AuthError;
use crate::hub::HubError;
use crate::metrics;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}

impl From<HubError> for ApiError {
    fn from(e: HubError) -> Self {
        match e {
            HubError::Blocked => {
                metrics::rejected("blocked");
                ApiError::new(StatusCode::FORBIDDEN, "DOC_UPDATE_BLOCKED", e.to_string())
            }
            HubError::BadUpdate(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "BAD_UPDATE", e.to_string())
            }
            HubError::Deleted => ApiError::new(StatusCode::GONE, "DOC_DELETED", e.to_string()),
            HubError::Awareness(crate::hub::AwarenessRefusal::Foreign(_)) => {
                ApiError::new(StatusCode::FORBIDDEN, "AWARENESS_NOT_YOURS", e.to_string())
            }
            HubError::Awareness(_) => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TOO_MANY_AWARENESS_CLIENTS",
                e.to_string(),
            ),
            HubError::Unexportable(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "DOC_TOO_DEEP",
                e.to_string(),
            ),
            HubError::VersionNotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "VERSION_NOT_FOUND", e.to_string())
            }
            HubError::NotInHistory(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "AT_OUT_OF_RANGE", e.to_string())
            }
            e => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                e.to_string(),
            ),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        if let AuthError::Unavailable(_) = e {
            metrics::rejected("auth_unavailable");
            return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.code(), e.to_string());
        }
        metrics::rejected("unauthorized");
        let status = if e.is_unauthenticated() {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::FORBIDDEN
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}
