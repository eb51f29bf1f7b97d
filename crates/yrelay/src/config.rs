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
}

/// The optional TOML file: the same settings, snake_case.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    store: Option<String>,
    log: Option<String>,
    durability: Option<Durability>,
    max_message_size: Option<usize>,
    queue_bound: Option<usize>,
    idle_unload_secs: Option<f64>,
    no_compactor: Option<bool>,
    compact_min_updates: Option<i64>,
    compact_idle_secs: Option<f64>,
    log_retention_secs: Option<f64>,
    cors_origins: Option<Vec<String>>,
    static_dir: Option<PathBuf>,
}

/// Resolved settings of `yrelay serve`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub store: String,
    pub log: String,
    pub durability: Durability,
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
        };
        if config.queue_bound == 0 || config.max_message_size == 0 {
            return Err(ConfigError::Invalid(
                "queue_bound and max_message_size must be positive".into(),
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
