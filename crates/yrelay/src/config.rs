//! Configuration: command-line flags (each with a `YRELAY_*` environment
//! fallback), then an optional TOML file, then defaults that serve a laptop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use crate::hub::Durability;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:4040";
pub const DEFAULT_STORE: &str = "sqlite://./yrelay-data/yrelay.db";
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 32 * 1024 * 1024;
pub const DEFAULT_MAX_CONNECTIONS: usize = 50_000;
pub const DEFAULT_MAX_UPDATES_PER_SEC: u32 = 500;

#[derive(Debug, Parser)]
#[command(
    name = "yrelay",
    version,
    about = "Real-time sync server for Yjs documents"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the sync protocols (and compact in the background).
    Serve(ServeArgs),
    /// Compact only: move the log into the store and compact snapshots (scaled-out deployments).
    Worker(ServeArgs),
    /// Create or upgrade the store schema, then exit.
    Migrate(StoreArgs),
    /// Mint a token for development (signed with --jwt-secret or --jwt-private-key).
    Token(TokenArgs),
    /// Manage documents in a store (the REST API's operations, without a server).
    Doc(DocArgs),
    /// How many updates the log holds that the store does not have yet (exits 1 while any).
    Backlog(BacklogArgs),
}

#[derive(Debug, Args)]
pub struct BacklogArgs {
    /// Store URL: sqlite://PATH or postgres://USER@HOST:PORT/DB.
    #[arg(long, env = "YRELAY_STORE")]
    pub store: Option<String>,
    /// The shared log (redis://...).
    #[arg(long, env = "YRELAY_LOG")]
    pub log: Option<String>,
}

#[derive(Debug, Args)]
pub struct DocArgs {
    /// Store URL: sqlite://PATH or postgres://USER@HOST:PORT/DB.
    #[arg(long, env = "YRELAY_STORE", global = true)]
    pub store: Option<String>,
    /// The shared log (redis://...) when instances use one, so that changes reach them.
    #[arg(long, env = "YRELAY_LOG", global = true)]
    pub log: Option<String>,
    #[command(subcommand)]
    pub action: DocAction,
}

#[derive(Debug, Subcommand)]
pub enum DocAction {
    /// List the documents of a space (JSON lines).
    List {
        space: String,
        /// Only documents changed after this time (ms since the epoch).
        #[arg(long)]
        after: Option<i64>,
    },
    /// Write a document to stdout: its root types as JSON, or as one Yjs v1 update.
    Export {
        /// {space}/{doc}
        doc: String,
        #[arg(long, value_enum, default_value = "json")]
        format: ExportFormat,
    },
    /// Create a document from a JSON file (objects → Y.Map, arrays → Y.Array), once.
    Import {
        /// {space}/{doc}
        doc: String,
        /// The JSON file ("-" for stdin).
        file: PathBuf,
        /// The root map the JSON's entries go into.
        #[arg(long, default_value = "root")]
        root: String,
    },
    /// Delete a document and its history.
    Delete {
        /// {space}/{doc}
        doc: String,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ExportFormat {
    Json,
    Update,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The user id (`sub`); their userspace is `@USER`.
    #[arg(long)]
    pub sub: String,
    /// Grant access to this space (omit for the user's own space only).
    #[arg(long)]
    pub space: Option<String>,
    /// Only this document of --space (default: every document, "*").
    #[arg(long, requires = "space")]
    pub doc: Option<String>,
    /// Read-only access.
    #[arg(long)]
    pub read_only: bool,
    /// Lifetime, e.g. 90s, 30m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: u64,
    /// HS256 secret (the server's --jwt-secret).
    #[arg(long, env = "YRELAY_JWT_SECRET", conflicts_with = "jwt_private_key")]
    pub jwt_secret: Option<String>,
    /// PEM private key (RSA → RS256, EC P-256 → ES256, Ed25519 → EdDSA).
    #[arg(long, env = "YRELAY_JWT_PRIVATE_KEY")]
    pub jwt_private_key: Option<PathBuf>,
}

/// Seconds from `90s`, `30m`, `1h`, `7d` or a plain number of seconds.
fn parse_ttl(text: &str) -> Result<u64, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 30m, 1h or 7d"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("unknown unit {unit:?} (use s, m, h or d)")),
    };
    Ok(n * scale)
}

#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Store URL: sqlite://PATH or postgres://USER@HOST:PORT/DB.
    #[arg(long, env = "YRELAY_STORE")]
    pub store: Option<String>,
}

#[derive(Debug, Args, Default)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "YRELAY_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Store URL: sqlite://PATH or postgres://USER@HOST:PORT/DB.
    #[arg(long, env = "YRELAY_STORE")]
    pub store: Option<String>,
    /// Log: "local" (in-process, embedded mode) or redis://HOST:PORT (shared by every instance).
    #[arg(long, env = "YRELAY_LOG")]
    pub log: Option<String>,
    /// When an update counts as accepted: once the log has it, or once the store has committed it.
    #[arg(long, env = "YRELAY_DURABILITY", value_enum)]
    pub durability: Option<Durability>,
    /// With a Redis log: acknowledge an update only once this many Redis replicas have it (WAIT), so a failover cannot lose it.
    #[arg(long, env = "YRELAY_LOG_REPLICAS")]
    pub log_replicas: Option<usize>,
    /// TOML file with any of these settings (flags and environment win).
    #[arg(long, env = "YRELAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Largest accepted message or body, in bytes.
    #[arg(long, env = "YRELAY_MAX_MESSAGE_SIZE")]
    pub max_message_size: Option<usize>,
    /// Outbound messages queued per connection before it is closed as too slow (1013).
    #[arg(long, env = "YRELAY_QUEUE_BOUND")]
    pub queue_bound: Option<usize>,
    /// Seconds a document with no connection stays in memory.
    #[arg(long, env = "YRELAY_IDLE_UNLOAD_SECS")]
    pub idle_unload_secs: Option<f64>,
    /// Do not compact in this process.
    #[arg(long, env = "YRELAY_NO_COMPACTOR")]
    pub no_compactor: bool,
    /// Compact a document once it has this many appended updates.
    #[arg(long, env = "YRELAY_COMPACT_MIN_UPDATES")]
    pub compact_min_updates: Option<i64>,
    /// Compact a document with fewer updates once it has been quiet this long (seconds).
    #[arg(long, env = "YRELAY_COMPACT_IDLE_SECS")]
    pub compact_idle_secs: Option<f64>,
    /// Keep persisted updates in the shared log this long (seconds) so event streams resume by cursor.
    #[arg(long, env = "YRELAY_LOG_RETENTION_SECS")]
    pub log_retention_secs: Option<f64>,
    /// Serve the files of this directory at /app/ (e.g. a demo or your own front end).
    #[arg(long, env = "YRELAY_STATIC_DIR")]
    pub static_dir: Option<PathBuf>,
    /// Origins allowed to call the HTTP API from a browser (comma-separated, or "*").
    #[arg(long, env = "YRELAY_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Option<Vec<String>>,
    /// Verify HS256 tokens with this secret (no key at all: every request is allowed).
    #[arg(long, env = "YRELAY_JWT_SECRET", conflicts_with = "jwt_public_key")]
    pub jwt_secret: Option<String>,
    /// Verify RS256/ES256/EdDSA tokens with this PEM public key.
    #[arg(long, env = "YRELAY_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// Serve HTTPS/WSS with this PEM certificate chain (needs --tls-key).
    #[arg(long, env = "YRELAY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "YRELAY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Most connections (WebSockets and event streams) this instance holds; past it new ones get 503.
    #[arg(long, env = "YRELAY_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Updates per second one WebSocket connection may send (bursts of twice that); past it: 1008.
    #[arg(long, env = "YRELAY_MAX_UPDATES_PER_SEC")]
    pub max_updates_per_sec: Option<u32>,
    /// Seconds a write to a client may make no progress before its connection is closed.
    #[arg(long, env = "YRELAY_WRITE_TIMEOUT_SECS")]
    pub write_timeout_secs: Option<f64>,
    /// Sync requests (SyncStep1, queryAwareness, Socket.IO load-doc) per second one connection may send (bursts of twice that).
    #[arg(long, env = "YRELAY_MAX_SYNCS_PER_SEC")]
    pub max_syncs_per_sec: Option<u32>,
    /// Documents one Socket.IO socket may load or write.
    #[arg(long, env = "YRELAY_MAX_DOCS_PER_CONNECTION")]
    pub max_docs_per_connection: Option<usize>,
    /// Seconds a client may take to send a request's headers, between two parts of its body, or idle between requests.
    #[arg(long, env = "YRELAY_HTTP_TIMEOUT_SECS")]
    pub http_timeout_secs: Option<f64>,
}

/// The optional TOML file: the same settings, snake_case.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    store: Option<String>,
    log: Option<String>,
    durability: Option<Durability>,
    log_replicas: Option<usize>,
    max_message_size: Option<usize>,
    queue_bound: Option<usize>,
    idle_unload_secs: Option<f64>,
    no_compactor: Option<bool>,
    compact_min_updates: Option<i64>,
    compact_idle_secs: Option<f64>,
    log_retention_secs: Option<f64>,
    cors_origins: Option<Vec<String>>,
    static_dir: Option<PathBuf>,
    jwt_secret: Option<String>,
    jwt_public_key: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    max_connections: Option<usize>,
    max_updates_per_sec: Option<u32>,
    write_timeout_secs: Option<f64>,
    max_syncs_per_sec: Option<u32>,
    max_docs_per_connection: Option<usize>,
    http_timeout_secs: Option<f64>,
}

/// Resolved settings of `yrelay serve`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub store: String,
    pub log: String,
    pub durability: Durability,
    /// Redis replicas that must have an update before it is acknowledged.
    pub log_replicas: usize,
    pub max_message_size: usize,
    pub queue_bound: usize,
    pub idle_unload: Duration,
    pub compactor: bool,
    pub compact_min_updates: i64,
    pub compact_idle: Duration,
    pub log_retention: Duration,
    /// Empty: no cross-origin access.
    pub cors_origins: Vec<String>,
    pub static_dir: Option<PathBuf>,
    pub jwt: Option<JwtKey>,
    /// Certificate chain and key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
    pub max_connections: usize,
    pub max_updates_per_sec: u32,
    /// How long a write to a client may make no progress.
    pub write_timeout: Duration,
    pub max_syncs_per_sec: u32,
    pub max_docs_per_connection: usize,
    /// How long a client may take over a request's headers or between two
    /// parts of its body, or stay idle between requests.
    pub http_timeout: Duration,
}

/// How tokens are verified.
#[derive(Debug, Clone)]
pub enum JwtKey {
    Secret(String),
    PublicKey(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

fn seconds(name: &str, value: f64) -> Result<Duration, ConfigError> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        ConfigError::Invalid(format!("{name} must be a non-negative number of seconds"))
    })
}

impl ServeArgs {
    pub fn resolve(self) -> Result<ServerConfig, ConfigError> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parse {
                    path: path.clone(),
                    source,
                })?
            }
            None => FileConfig::default(),
        };
        let config = ServerConfig {
            listen: self
                .listen
                .or(file.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default")),
            store: self
                .store
                .or(file.store)
                .unwrap_or_else(|| DEFAULT_STORE.into()),
            log: self.log.or(file.log).unwrap_or_else(|| "local".into()),
            durability: self
                .durability
                .or(file.durability)
                .unwrap_or(Durability::Log),
            log_replicas: self.log_replicas.or(file.log_replicas).unwrap_or(0),
            max_message_size: self
                .max_message_size
                .or(file.max_message_size)
                .unwrap_or(DEFAULT_MAX_MESSAGE_SIZE),
            queue_bound: self.queue_bound.or(file.queue_bound).unwrap_or(1024),
            idle_unload: seconds(
                "idle_unload_secs",
                self.idle_unload_secs
                    .or(file.idle_unload_secs)
                    .unwrap_or(30.0),
            )?,
            compactor: !(self.no_compactor || file.no_compactor.unwrap_or(false)),
            compact_min_updates: self
                .compact_min_updates
                .or(file.compact_min_updates)
                .unwrap_or(500),
            compact_idle: seconds(
                "compact_idle_secs",
                self.compact_idle_secs
                    .or(file.compact_idle_secs)
                    .unwrap_or(10.0),
            )?,
            log_retention: seconds(
                "log_retention_secs",
                self.log_retention_secs
                    .or(file.log_retention_secs)
                    .unwrap_or(60.0),
            )?,
            cors_origins: self.cors_origins.or(file.cors_origins).unwrap_or_default(),
            static_dir: self.static_dir.or(file.static_dir),
            jwt: match (
                self.jwt_secret.or(file.jwt_secret),
                self.jwt_public_key.or(file.jwt_public_key),
            ) {
                (Some(_), Some(_)) => {
                    return Err(ConfigError::Invalid(
                        "set jwt_secret or jwt_public_key, not both".into(),
                    ));
                }
                (Some(secret), None) => Some(JwtKey::Secret(secret)),
                (None, Some(path)) => Some(JwtKey::PublicKey(path)),
                (None, None) => None,
            },
            tls: match (
                self.tls_cert.or(file.tls_cert),
                self.tls_key.or(file.tls_key),
            ) {
                (Some(cert), Some(key)) => Some((cert, key)),
                (None, None) => None,
                _ => {
                    return Err(ConfigError::Invalid(
                        "tls_cert and tls_key go together".into(),
                    ));
                }
            },
            max_connections: self
                .max_connections
                .or(file.max_connections)
                .unwrap_or(DEFAULT_MAX_CONNECTIONS),
            max_updates_per_sec: self
                .max_updates_per_sec
                .or(file.max_updates_per_sec)
                .unwrap_or(DEFAULT_MAX_UPDATES_PER_SEC),
            write_timeout: seconds(
                "write_timeout_secs",
                self.write_timeout_secs
                    .or(file.write_timeout_secs)
                    .unwrap_or(20.0),
            )?,
            max_syncs_per_sec: self
                .max_syncs_per_sec
                .or(file.max_syncs_per_sec)
                .unwrap_or(20),
            max_docs_per_connection: self
                .max_docs_per_connection
                .or(file.max_docs_per_connection)
                .unwrap_or(10_000),
            http_timeout: seconds(
                "http_timeout_secs",
                self.http_timeout_secs
                    .or(file.http_timeout_secs)
                    .unwrap_or(10.0),
            )?,
        };
        if config.queue_bound == 0
            || config.max_message_size == 0
            || config.max_connections == 0
            || config.max_updates_per_sec == 0
            || config.write_timeout.is_zero()
            || config.http_timeout.is_zero()
            || config.max_syncs_per_sec == 0
            || config.max_docs_per_connection == 0
        {
            return Err(ConfigError::Invalid(
                "queue_bound, max_message_size, max_connections, max_updates_per_sec, write_timeout_secs, http_timeout_secs, max_syncs_per_sec and max_docs_per_connection must be positive".into(),
            ));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("yrelay.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:5000\"\nqueue_bound = 7\ndurability = \"store\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            queue_bound: Some(9),
            ..Default::default()
        };
        let c = args.resolve().unwrap();
        assert_eq!(c.listen.port(), 5000);
        assert_eq!(c.queue_bound, 9);
        assert_eq!(c.durability, Durability::Store);
        assert_eq!(c.store, DEFAULT_STORE);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("yrelay.toml");
        std::fs::write(&path, "lisen = \"x\"\n").unwrap();
        let err = ServeArgs {
            config: Some(path),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
    }
}
