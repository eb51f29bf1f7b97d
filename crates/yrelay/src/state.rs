//! What every request handler can reach: the hub, the token checks, the
//! limits and the shutdown signal. Below the transports and the API, so
//! they need nothing from the server that wires them.

use std::sync::Arc;

use axum::http::StatusCode;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::auth::Auth;
use crate::edge::CallerRate;
use crate::http_error::ApiError;
use crate::hub::DocHub;
use crate::metrics;

/// Limits applied at the transport edge.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_message_size: usize,
    pub max_updates_per_sec: u32,
    pub max_syncs_per_sec: u32,
    pub max_awareness_per_sec: u32,
    pub max_docs_per_connection: usize,
    /// Calls per caller to the HTTP write endpoints.
    pub posts: Arc<CallerRate>,
    /// One permit per open connection (WebSocket or event stream).
    pub connections: Arc<Semaphore>,
}

impl Limits {
    /// A connection slot, held for as long as the connection is open; 503
    /// when the instance holds as many as it may.
    pub fn connection_slot(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.connections.clone().try_acquire_owned().map_err(|_| {
            metrics::rejected("too_many_connections");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "TOO_MANY_CONNECTIONS",
                "this instance holds as many connections as it may; try again later",
            )
        })
    }
}

/// What every request handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub hub: DocHub,
    pub auth: Arc<Auth>,
    pub limits: Limits,
    pub metrics: PrometheusHandle,
    /// The space of Hocuspocus names that are not `{space}/{doc}`.
    pub hocuspocus_space: Arc<str>,
    /// What client tokens are signed with (the y-sweet API), when yrelay
    /// has a secret; with a public key only it cannot sign.
    pub signing: Option<Arc<crate::auth::SigningKey>>,
    /// Whether this instance serves HTTPS/WSS (for URLs it hands out).
    pub tls: bool,
    /// Changes once when the server begins to shut down.
    pub shutdown: watch::Receiver<bool>,
}
