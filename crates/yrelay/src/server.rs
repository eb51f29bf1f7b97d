//! Wires the parts together and serves them: store, log, hub, compactor,
//! and the HTTP router with every transport.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Method, header};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::services::ServeDir;

use crate::auth::{Auth, Callback, KeyError, SigningKey};
use crate::compactor::{Compactor, CompactorConfig, HistoryConfig, watch_backlog};
use crate::deadline::DeadlineListener;
use crate::edge::CallerRate;
use crate::hooks::{HookConfig, Hooks};
use crate::http_serve;
use crate::hub::{AwarenessBounds, CloseReason, DocHub, HubConfig};
use crate::log::{self, Log, LogError};
use crate::settings::{JwtKey, Settings};
pub use crate::state::{AppState, Limits};
use crate::store::{self, Store, StoreError};
use crate::tls::{self, TlsError};
use crate::vocab::new_instance_id;
use crate::{api, metrics, transport};
use tower_http::timeout::RequestBodyTimeoutLayer;

/// Entries the in-process log keeps per live document for resuming by cursor.
const LOCAL_LOG_RETAIN: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("{0}")]
    Settings(String),
}

/// A bound, ready-to-run server.
pub struct Server {
    listener: TcpListener,
    app: AppState,
    shutdown: watch::Sender<bool>,
    config: Settings,
    /// The store and log the hub uses, for the compactor and the backlog.
    store: Arc<dyn Store>,
    log: Arc<dyn Log>,
    instance: u64,
    hooks: Arc<Hooks>,
}

impl Server {
    /// Opens the store (migrating it), the log, and binds the listener.
    pub async fn bind(config: Settings) -> Result<Self, ServerError> {
        let store = store::open_or_wait(&config.store).await?;
        let instance = new_instance_id();
        let log = log::open(&config.log, LOCAL_LOG_RETAIN, config.log_replicas, instance).await?;
        // Always on: a space may register webhooks at any time.
        let hooks = Hooks::new(
            HookConfig {
                targets: config.webhook.clone(),
                secret: config.webhook_secret.clone(),
                include_json: config.webhook_include_json,
                debounce: Duration::from_millis(config.webhook_debounce_ms),
                max_wait: Duration::from_millis(config.webhook_max_wait_ms),
                retry_for: Duration::from_secs(config.webhook_retry_hours.saturating_mul(3600)),
                instance,
            },
            store.clone(),
        );
        let hub = DocHub::new(
            store.clone(),
            log.clone(),
            HubConfig {
                durability: config.durability,
                idle_unload: config.idle_unload_secs,
                subscriber_queue: config.queue_bound,
                awareness: AwarenessBounds {
                    per_connection: config.max_awareness_clients,
                    per_doc: config.max_awareness_states,
                },
                instance,
                history_exact: config.history_exact_secs,
                hooks: Some(hooks.clone()),
            },
        );
        let reader = hub.clone();
        hooks.read_json_with(Box::new(move |addr| {
            let hub = reader.clone();
            Box::pin(async move { hub.export_json(&addr).await.ok().flatten() })
        }));
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Listen {
                    addr: config.listen,
                    source,
                })?;
        let mut auth = match &config.jwt() {
            None => Auth::open(),
            Some(JwtKey::Secret(secret)) => Auth::with_secret(secret),
            Some(JwtKey::PublicKey(path)) => Auth::with_public_key(path)?,
        }
        .keeping_revokes(config.revoke_retention_secs);
        if let Some(url) = &config.auth_webhook {
            reqwest::Url::parse(url)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .ok_or_else(|| {
                    ServerError::Settings(format!("--auth-webhook {url:?} is not an http(s) URL"))
                })?;
            auth = auth.asking(Callback::new(url.clone(), config.auth_cache_secs));
        }
        if let Some((cert, key)) = config.tls() {
            tls::acceptor(cert, key)?; // fail at start, not on the first client
        }
        let (shutdown, shutdown_rx) = watch::channel(false);
        let app = AppState {
            hub,
            auth: Arc::new(auth),
            limits: Limits {
                max_message_size: config.max_message_size,
                max_updates_per_sec: config.max_updates_per_sec,
                max_syncs_per_sec: config.max_syncs_per_sec,
                max_awareness_per_sec: config.max_awareness_per_sec,
                posts: Arc::new(CallerRate::new(config.max_posts_per_sec)),
                max_docs_per_connection: config.max_docs_per_connection,
                connections: Arc::new(Semaphore::new(config.max_connections)),
            },
            metrics: metrics::install(),
            hocuspocus_space: Arc::from(config.hocuspocus_space.as_str()),
            signing: match &config.jwt() {
                Some(JwtKey::Secret(secret)) => Some(Arc::new(SigningKey::Secret(secret.clone()))),
                _ => None,
            },
            tls: config.tls().is_some(),
            shutdown: shutdown_rx,
        };
        Ok(Self {
            listener,
            app,
            shutdown,
            config,
            store,
            log,
            instance,
            hooks,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen)
    }

    /// Serves until `signal` resolves, then closes every connection (1001).
    pub async fn run(
        self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let Server {
            listener,
            app,
            shutdown,
            config,
            store,
            log,
            instance,
            hooks,
        } = self;
        let addr = listener.local_addr().map_err(ServerError::Serve)?;
        let hub = app.hub.clone();
        let scheme = if config.tls().is_some() {
            "https"
        } else {
            "http"
        };
        tracing::info!(
            "yrelay listening on {scheme}://{addr} (store: {}, log: {}, durability: {}, instance {instance:016x})",
            config.store,
            log.name(),
            config.durability
        );
        if config.log_replicas > 0 {
            tracing::info!(
                "updates are acknowledged once {} Redis replica(s) have them",
                config.log_replicas
            );
        }
        if !log.is_durable() {
            tracing::info!(
                "the {} log is not durable: updates are acknowledged once the store has committed them",
                log.name()
            );
        }
        if let Some(url) = &config.auth_webhook {
            tracing::info!(callback = %url, cache_secs = config.auth_cache_secs, "auth: credentials that are not our tokens are checked by the app's callback");
        }
        match &config.jwt() {
            None if config.auth_webhook.is_some() => {}
            None => tracing::warn!(
                "auth is OFF: every request is allowed (development setup; set --jwt-secret, --jwt-public-key or --auth-webhook)"
            ),
            Some(JwtKey::Secret(_)) => tracing::info!("auth: HS256 tokens (--jwt-secret)"),
            Some(JwtKey::PublicKey(path)) => {
                tracing::info!("auth: tokens signed by the key in {}", path.display())
            }
        }
        // The compactor runs until the stop, then drains what it can.
        let compactor = (!config.no_compactor).then(|| {
            start_compactor(
                Compactor::new(
                    store.clone(),
                    log.clone(),
                    compactor_config(&config, instance),
                ),
                app.shutdown.clone(),
            )
        });
        if !config.webhook.is_empty() {
            tracing::info!(
                "webhooks: document events go to {}",
                config.webhook.join(", ")
            );
        }
        let hooks = tokio::spawn(hooks.run(app.shutdown.clone()));
        tokio::spawn(crate::revokes::follow(
            store.clone(),
            app.auth.clone(),
            config.revoke_retention_secs,
            app.shutdown.clone(),
        ));
        tokio::spawn(watch_backlog(
            store.clone(),
            log.clone(),
            BACKLOG_EVERY,
            app.shutdown.clone(),
        ));
        let inspector = match (config.inspect, app.auth.is_open()) {
            (_, false) => Some("an admin token: every space, read-write"),
            (true, true) => Some("no token needed: open mode"),
            (false, true) => None,
        };
        let mut router = router(app, &config.cors_origins, config.http_timeout_secs);
        match inspector {
            Some(access) => {
                tracing::info!("inspector at /inspect/ ({access})");
                router = router.merge(crate::inspect::routes());
            }
            None => tracing::info!("inspector off (open mode: --inspect serves it)"),
        }
        if let Some(dir) = &config.static_dir {
            tracing::info!("serving {} at /app/", dir.display());
            router = router.nest_service("/app", ServeDir::new(dir));
        }
        let stopping = async move {
            signal.await;
            tracing::info!("shutting down: closing connections");
            let _ = shutdown.send(true);
            hub.close_all(CloseReason::ShuttingDown);
        };
        if let Some((cert, key)) = config.tls() {
            let listener = tls::TlsListener::new(listener, tls::acceptor(cert, key)?)
                .map_err(ServerError::Serve)?;
            let listener = DeadlineListener::new(
                listener,
                config.write_timeout_secs,
                config.http_timeout_secs,
            );
            let _ = http_serve::serve(listener, router, config.http_timeout_secs, stopping).await;
        } else {
            // Small frames must leave at once: no Nagle delay on any connection.
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let listener = DeadlineListener::new(
                listener,
                config.write_timeout_secs,
                config.http_timeout_secs,
            );
            let _ = http_serve::serve(listener, router, config.http_timeout_secs, stopping).await;
        }
        // Updates waiting for quiet go to the outbox before the stop.
        let _ = hooks.await;
        if let Some((compactor, running)) = compactor {
            stop_compactor(&compactor, running).await;
        }
        tracing::info!("yrelay stopped");
        Ok(())
    }
}

/// How often every instance measures the log's backlog (the gauge).
const BACKLOG_EVERY: Duration = Duration::from_secs(2);
/// How long a graceful stop spends moving the backlog to the store.
const STOP_DRAIN: Duration = Duration::from_secs(10);

/// Runs `compactor` until `shutdown` changes.
fn start_compactor(
    compactor: Compactor,
    shutdown: watch::Receiver<bool>,
) -> (Arc<Compactor>, tokio::task::JoinHandle<()>) {
    let compactor = Arc::new(compactor);
    let running = tokio::spawn({
        let compactor = compactor.clone();
        async move { compactor.run(shutdown).await }
    });
    (compactor, running)
}

/// Lets a stopped compactor's round end (it holds the leases of what it
/// works on; a round failing on the store ends within `STOP_DRAIN`), then
/// moves what it can of the log's backlog to the store.
async fn stop_compactor(compactor: &Compactor, running: tokio::task::JoinHandle<()>) {
    if tokio::time::timeout(STOP_DRAIN, running).await.is_err() {
        tracing::warn!("the compactor's last round did not end in time");
    }
    compactor.drain(STOP_DRAIN).await;
}

/// How often the compactor looks for work: at most every second, more often
/// when documents are to be compacted sooner.
pub fn compactor_config(config: &Settings, instance: u64) -> CompactorConfig {
    CompactorConfig {
        min_updates: config.compact_min_updates,
        idle: config.compact_idle_secs,
        poll: Duration::from_secs(1).min(config.compact_idle_secs.max(Duration::from_millis(100))),
        log_retention: config.log_retention_secs,
        instance,
        history: HistoryConfig {
            interval: config.history_interval_secs,
            exact: config.history_exact_secs,
            retention: config.history_retention_secs,
            keep_labelled: config.history_keep_labelled,
            trash_retention: config.trash_retention_secs,
        },
    }
}

/// `yrelay worker`: the compactor alone, until `signal` resolves.
pub async fn run_worker(
    config: Settings,
    signal: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let store = store::open_or_wait(&config.store).await?;
    let instance = new_instance_id();
    let log = log::open(&config.log, LOCAL_LOG_RETAIN, 0, instance).await?;
    tracing::info!(
        "yrelay worker compacting (store: {}, log: {})",
        config.store,
        log.name()
    );
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(watch_backlog(
        store.clone(),
        log.clone(),
        BACKLOG_EVERY,
        stopped.clone(),
    ));
    let (compactor, running) = start_compactor(
        Compactor::new(store, log, compactor_config(&config, instance)),
        stopped,
    );
    signal.await;
    let _ = stop.send(true);
    stop_compactor(&compactor, running).await;
    tracing::info!("yrelay worker stopped");
    Ok(())
}

fn router(app: AppState, cors_origins: &[String], body_timeout: Duration) -> Router {
    let body_limit = DefaultBodyLimit::max(app.limits.max_message_size);
    let router = Router::new()
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics))
        .route("/v1/openapi.json", get(api::openapi))
        .route("/v1/spaces", get(api::inspect::spaces))
        .route("/v1/spaces/{space}/docs", get(api::docs::list))
        .route("/v1/spaces/{space}/events", get(api::docs::space_events))
        .route(
            "/v1/docs/{space}/{doc}",
            get(api::docs::meta)
                .patch(api::docs::patch)
                .delete(api::docs::delete),
        )
        .route(
            "/v1/docs/{space}/{doc}/update",
            get(api::docs::export_update),
        )
        .route("/v1/docs/{space}/{doc}/json", get(api::docs::export_json))
        .route(
            "/v1/docs/{space}/{doc}/connections",
            get(api::inspect::connections),
        )
        .route("/v1/docs/{space}/{doc}/import", post(api::docs::import))
        .route(
            "/v1/docs/{space}/{doc}/versions",
            get(api::history::list).post(api::history::create),
        )
        .route(
            "/v1/docs/{space}/{doc}/versions/{id}/json",
            get(api::history::version_json_state),
        )
        .route(
            "/v1/docs/{space}/{doc}/versions/{id}/update",
            get(api::history::version_update),
        )
        .route("/v1/docs/{space}/{doc}/changes", get(api::history::changes))
        .route(
            "/v1/docs/{space}/{doc}/restore",
            post(api::history::restore),
        )
        .route("/v1/docs/{space}/{doc}/undelete", post(api::docs::undelete))
        .route("/v1/spaces/{space}/trash", get(api::docs::trash))
        .route("/v1/webhooks/deliveries", get(api::webhooks::deliveries))
        .route("/v1/access/revoke", post(api::access::revoke))
        .route(
            "/v1/spaces/{space}/webhooks",
            get(api::webhooks::space_list).put(api::webhooks::space_set),
        )
        .route("/v1/ws/{space}/{doc}", get(transport::ws::upgrade))
        .route("/v1/hocuspocus", get(transport::hocuspocus::upgrade))
        .route("/v1/docs/{space}/{doc}/events", get(transport::sse::events))
        .route(
            "/v1/docs/{space}/{doc}/updates",
            post(transport::sse::post_update),
        )
        .route(
            "/v1/docs/{space}/{doc}/sync",
            post(transport::sse::post_sync),
        )
        .route(
            "/v1/docs/{space}/{doc}/awareness",
            post(transport::sse::post_awareness),
        )
        .route(
            "/v1/docs/{space}/{doc}/stateless",
            post(transport::sse::post_stateless),
        )
        .route(
            "/v1/ysweet/{space}/check_store",
            post(api::ysweet::check_store),
        )
        .route("/v1/ysweet/{space}/doc/new", post(api::ysweet::new_doc))
        .route(
            "/v1/ysweet/{space}/doc/{doc}/auth",
            post(api::ysweet::auth_doc),
        )
        .route(
            "/v1/ysweet/{space}/doc/{doc}/as-update",
            get(api::docs::export_update),
        )
        .route(
            "/v1/ysweet/{space}/doc/{doc}/update",
            post(transport::sse::post_update),
        )
        .layer(body_limit)
        // A body whose next part takes longer than this ends the request.
        .layer(RequestBodyTimeoutLayer::new(body_timeout))
        .fallback(api::not_found)
        .with_state(app.clone())
        .layer(transport::socketio::layer(app.clone()))
        .layer(axum::middleware::from_fn_with_state(
            app,
            transport::socketio::refuse_handshakes_when_full,
        ));
    match cors(cors_origins) {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// CORS for the configured origins (`*` for any); `None` when none is set.
fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| o.parse().ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("last-event-id"),
            ])
            .max_age(Duration::from_secs(3600)),
    )
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
