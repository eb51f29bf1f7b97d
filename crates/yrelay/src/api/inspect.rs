//! What the inspector (and any admin tool) reads: spaces, pages of a
//! space's documents, and who is connected to a document with what
//! presence. Every endpoint here needs a token for every space, read-write
//! (an admin token); open (development) mode lets anyone in.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use serde::Deserialize;

use crate::auth::AuthError;
use crate::edge::{Credentials, address, bad_request, query};
use crate::http_error::ApiError;
use crate::state::AppState;

/// Entries per page when the request does not say.
const PAGE: i64 = 50;
/// The most a request may ask for.
const MAX_PAGE: i64 = 500;
/// The longest `q` and `from`, in characters (ids are at most 255 bytes).
const MAX_TEXT: usize = 255;

/// Refuses anyone but an admin (401 without a valid token, 403 with a
/// token that does not cover every space read-write).
pub async fn admin(app: &AppState, credentials: &Credentials) -> Result<(), ApiError> {
    if !app.auth.space(credentials, "*").await?.can_write() {
        return Err(AuthError::ReadOnly("every space".into()).into());
    }
    Ok(())
}

/// `?q=&from=&limit=`: a search (contains, any case), the last entry of the
/// previous page, and the page size (and the document list's `after`).
#[derive(Deserialize)]
pub struct PageQuery {
    pub after: Option<String>,
    #[serde(default)]
    pub q: String,
    #[serde(default)]
    pub from: String,
    pub limit: Option<i64>,
}

impl PageQuery {
    /// The page size, once `q` and `from` are known to fit.
    pub fn limit(&self) -> Result<i64, ApiError> {
        let long = |s: &str| s.chars().count() > MAX_TEXT;
        if long(&self.q) || long(&self.from) {
            return Err(bad_request(
                "BAD_QUERY",
                format!("q and from are at most {MAX_TEXT} characters"),
            ));
        }
        match self.limit.unwrap_or(PAGE) {
            n @ 1..=MAX_PAGE => Ok(n),
            _ => Err(bad_request(
                "BAD_QUERY",
                format!("limit must be 1 to {MAX_PAGE}"),
            )),
        }
    }
}

/// `GET /v1/spaces[?q=&from=&limit=]` → `{"spaces": [{"space", "docs",
/// "updatedAt"}], "next"}` (`next`: the `from` of the next page, `null` on
/// the last).
pub async fn spaces(
    State(app): State<AppState>,
    query_string: Result<Query<PageQuery>, QueryRejection>,
    credentials: Credentials,
) -> Result<Json<serde_json::Value>, ApiError> {
    admin(&app, &credentials).await?;
    let page = query(query_string)?;
    let limit = page.limit()?;
    let spaces = app.hub.spaces(&page.q, &page.from, limit).await?;
    let next = (spaces.len() as i64 == limit).then(|| spaces.last().map(|s| s.space.clone()));
    let spaces: Vec<_> = spaces
        .iter()
        .map(|s| serde_json::json!({ "space": s.space, "docs": s.docs, "updatedAt": s.updated_at }))
        .collect();
    Ok(Json(
        serde_json::json!({ "spaces": spaces, "next": next.flatten() }),
    ))
}

/// `GET /v1/docs/{space}/{doc}/connections` → this instance's connections
/// to the document (transport, user, since) with the awareness clients each
/// introduced, every presence state the document holds (with the instance
/// and connection that introduced it: other instances' connections show
/// there), and its state vector; `live: false` (and empty lists) when it is
/// not loaded here.
pub async fn connections(
    State(app): State<AppState>,
    Path((space, doc)): Path<(String, String)>,
    credentials: Credentials,
) -> Result<Json<serde_json::Value>, ApiError> {
    let addr = address(&space, &doc)?;
    admin(&app, &credentials).await?;
    let Some(view) = app.hub.live_view(&addr) else {
        return Ok(Json(serde_json::json!({
            "live": false, "connections": [], "presence": [], "stateVector": {}
        })));
    };
    let connections: Vec<_> = view
        .connections
        .iter()
        .map(|(id, seen)| {
            let clients: Vec<_> = view
                .presence
                .iter()
                .filter(|p| p.state.is_some())
                .filter(|p| {
                    p.origin
                        .is_some_and(|o| o.instance == view.instance && o.connection == *id)
                })
                .map(|p| p.client)
                .collect();
            serde_json::json!({
                "id": id.to_string(),
                "transport": seen.transport,
                "user": seen.user.as_deref(),
                "since": seen.since_ms,
                "clients": clients,
            })
        })
        .collect();
    let presence: Vec<_> = view
        .presence
        .iter()
        .filter_map(|p| {
            let state: serde_json::Value = serde_json::from_str(p.state.as_deref()?).ok()?;
            Some(serde_json::json!({
                "clientId": p.client,
                "clock": p.clock,
                "state": state,
                "updatedAt": p.updated_ms,
                "connection": p.origin.map(|o| o.connection.to_string()),
                "instance": p.origin.map(|o| instance_id(o.instance)),
            }))
        })
        .collect();
    let state_vector: serde_json::Map<_, _> = view
        .state_vector
        .iter()
        .map(|(client, clock)| (client.to_string(), (*clock).into()))
        .collect();
    Ok(Json(serde_json::json!({
        "live": true,
        "instance": instance_id(view.instance),
        "connections": connections,
        "presence": presence,
        "stateVector": state_vector,
    })))
}

fn instance_id(instance: u64) -> String {
    format!("{instance:016x}")
}
