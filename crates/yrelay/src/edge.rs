//! What every HTTP endpoint does at the edge, in one place: parse the
//! document address, the body, a state vector and the caller's token, and
//! turn each failure into the documented JSON error.

use std::collections::HashMap;
use std::convert::Infallible;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use yrelay_protocol::update::decode_state_vector;
use yrelay_protocol::{AddressError, DocAddress};
use yrs::StateVector;

pub use crate::auth::Credentials;
use crate::http_error::ApiError;
use crate::hub::Ack;
use crate::metrics;
use crate::vocab::Origin;

/// base64url with or without padding (state vectors in query strings).
const URL_SAFE_ANY: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The WebSocket subprotocol prefix that carries a token (`yauth-<jwt>`):
/// browsers cannot set headers on a WebSocket.
pub const TOKEN_SUBPROTOCOL: &str = "yauth-";

pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
    metrics::rejected("bad_request");
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

fn bad_id(e: AddressError) -> ApiError {
    metrics::rejected("bad_doc_id");
    ApiError::new(StatusCode::BAD_REQUEST, "BAD_DOC_ID", e.to_string())
}

/// A `{space}/{doc}` from the path, or 400 `BAD_DOC_ID`.
pub fn address(space: &str, doc: &str) -> Result<DocAddress, ApiError> {
    DocAddress::parse(space, doc).map_err(bad_id)
}

/// A space id from the path, or 400 `BAD_DOC_ID`.
pub fn space(space: &str) -> Result<(), ApiError> {
    yrelay_protocol::address::check_space_id(space).map_err(bad_id)
}

/// The request body, within the size limit (413 `BODY_TOO_LARGE` past it).
pub fn body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
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

/// A body that is a JSON object of shape `T` (not an array, which serde
/// would also take for a struct), or 400 `BAD_JSON` saying `expected`.
pub fn json_object<T: serde::de::DeserializeOwned>(
    payload: Result<Bytes, BytesRejection>,
    expected: &str,
) -> Result<T, ApiError> {
    let payload = body(payload)?;
    serde_json::from_slice::<serde_json::Value>(&payload)
        .ok()
        .filter(serde_json::Value::is_object)
        .and_then(|v| serde_json::from_value::<T>(v).ok())
        .ok_or_else(|| bad_request("BAD_JSON", format!("expected a JSON object {expected}")))
}

/// What the writer of an accepted update is told: `{"cursor", "timestamp"}`.
pub fn ack_json(ack: &Ack) -> serde_json::Value {
    serde_json::json!({
        "cursor": ack.cursor.map(|c| c.to_string()),
        "timestamp": ack.timestamp_ms,
    })
}

/// The query string, or 400 `BAD_QUERY` (as JSON, like every error).
pub fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query
        .map(|Query(q)| q)
        .map_err(|rejection| bad_request("BAD_QUERY", rejection.body_text()))
}

/// The query string of the endpoints that answer with a diff (`sv=`).
#[derive(serde::Deserialize)]
pub struct SvQuery {
    sv: Option<String>,
}

/// The optional base64url state vector of an `sv=` query string.
pub fn query_state_vector(
    query_string: Result<Query<SvQuery>, QueryRejection>,
) -> Result<StateVector, ApiError> {
    state_vector(query(query_string)?.sv.as_deref())
}

/// An optional base64url state vector (`sv=`): empty or absent is the
/// empty state vector.
pub fn state_vector(sv: Option<&str>) -> Result<StateVector, ApiError> {
    match sv.filter(|s| !s.is_empty()) {
        Some(text) => {
            let bytes = URL_SAFE_ANY.decode(text).map_err(|e| {
                bad_request("BAD_STATE_VECTOR", format!("sv is not base64url: {e}"))
            })?;
            decode_state_vector(&bytes)
                .map_err(|_| bad_request("BAD_STATE_VECTOR", "sv is not a Yjs state vector"))
        }
        None => Ok(StateVector::default()),
    }
}

/// What a request presents: its token — `Authorization: Bearer`, then
/// `?token=`, then a `yauth-<jwt>` WebSocket subprotocol (which the upgrade
/// must echo) — and its cookies.
impl<S: Send + Sync> FromRequestParts<S> for Credentials {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        let cookie = parts
            .headers
            .get(header::COOKIE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bearer = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or(v.strip_prefix("bearer ")))
            .map(|t| t.trim().to_owned());
        let query = || {
            Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
                .ok()
                .and_then(|Query(mut q)| q.remove("token"))
        };
        if let Some(token) = bearer.or_else(query) {
            return Ok(Self {
                token: Some(token),
                cookie,
                ..Self::default()
            });
        }
        let subprotocol = parts
            .headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .find(|p| p.starts_with(TOKEN_SUBPROTOCOL))
            .map(str::to_owned);
        Ok(Self {
            token: subprotocol
                .as_deref()
                .map(|p| p[TOKEN_SUBPROTOCOL.len()..].to_owned()),
            cookie,
            subprotocol,
            ..Self::default()
        })
    }
}

/// A per-connection rate limit (`--max-updates-per-sec`,
/// `--max-syncs-per-sec`): a token bucket of `per_sec` a second, bursts of
/// twice that.
pub struct UpdateRate {
    per_sec: f64,
    tokens: f64,
    last: Instant,
}

impl UpdateRate {
    pub fn new(per_sec: u32) -> Self {
        let per_sec = f64::from(per_sec);
        Self {
            per_sec,
            tokens: 2.0 * per_sec,
            last: Instant::now(),
        }
    }

    /// Takes one update's worth; false when the bucket is empty.
    pub fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.per_sec;
        self.tokens = (self.tokens + refill).min(2.0 * self.per_sec);
        self.last = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// Who makes an HTTP call, for per-caller limits: the token's subject, or
/// the client's address when there is none.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Caller {
    Subject(String),
    Address(IpAddr),
}

impl Caller {
    pub fn new(subject: Option<String>, ConnectInfo(peer): ConnectInfo<SocketAddr>) -> Self {
        match subject {
            Some(sub) => Self::Subject(sub),
            None => Self::Address(peer.ip()),
        }
    }

    /// The identity its awareness states are bound to, the same on every
    /// instance (calls have no connection of their own).
    pub fn origin(&self) -> Origin {
        let mut hasher = std::hash::DefaultHasher::new();
        self.hash(&mut hasher);
        Origin {
            instance: u64::MAX,
            connection: hasher.finish(),
        }
    }
}

/// Calls per second per caller (`--max-posts-per-sec`, bursts of twice
/// that), with the callers not seen lately dropped as more arrive.
#[derive(Debug)]
pub struct CallerRate {
    limiter: DefaultKeyedRateLimiter<Caller>,
    per_sec: u32,
    /// Callers held before the next sweep of idle ones.
    sweep_at: AtomicUsize,
}

/// Callers held before the first sweep.
const CALLERS_SWEPT_FROM: usize = 10_000;

impl CallerRate {
    pub fn new(per_sec: u32) -> Self {
        let rate = NonZeroU32::new(per_sec).unwrap_or(NonZeroU32::MIN);
        let burst = rate.saturating_mul(NonZeroU32::new(2).expect("2 is not 0"));
        Self {
            limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            per_sec,
            sweep_at: AtomicUsize::new(CALLERS_SWEPT_FROM),
        }
    }

    /// Counts one call of `caller`; 429 `TOO_MANY_REQUESTS` past the rate.
    pub fn take(&self, caller: &Caller) -> Result<(), ApiError> {
        let held = self.limiter.len();
        if held >= self.sweep_at.load(Ordering::Relaxed) {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
            let next = (2 * self.limiter.len()).max(CALLERS_SWEPT_FROM);
            self.sweep_at.store(next, Ordering::Relaxed);
        }
        self.limiter.check_key(caller).map_err(|_| {
            metrics::rejected("posts_rate_limited");
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TOO_MANY_REQUESTS",
                format!(
                    "more than {} calls per second from one caller (--max-posts-per-sec)",
                    self.per_sec
                ),
            )
        })
    }
}
