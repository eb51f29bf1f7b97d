//! The settings of `yrelay serve`, each declared once below: its flag, its
//! `YRELAY_*` environment variable, its TOML key (the field's name), its
//! default, how it is checked and what it means. The README's table is made
//! from these declarations (a test keeps it so).
//!
//! Flags win over the environment, the environment over the optional TOML
//! file, the file over the defaults. The file's values are parsed and
//! checked by the same parsers as flags: they are handed to clap as flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::builder::{BoolishValueParser, RangedU64ValueParser};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Command, FromArgMatches};

use crate::hub::Durability;

pub const DEFAULT_STORE: &str = "sqlite://./yrelay-data/yrelay.db";

/// Every setting of `yrelay serve` (and `yrelay worker`).
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// address to serve on
    #[arg(long, env = "YRELAY_LISTEN", default_value = "127.0.0.1:4040")]
    pub listen: SocketAddr,
    /// where documents are stored: `sqlite://PATH` or `postgres://USER@HOST:PORT/DB`
    #[arg(long, env = "YRELAY_STORE", default_value = DEFAULT_STORE)]
    pub store: String,
    /// the update log: `local` (in-process) or `redis://HOST:PORT` (shared by every instance)
    #[arg(long, env = "YRELAY_LOG", default_value = "local")]
    pub log: String,
    /// ack once the log has an update (`log`) or once the store committed it (`store`); with the in-process log the store commit is always the ack
    #[arg(long, env = "YRELAY_DURABILITY", value_enum, default_value = "log")]
    pub durability: Durability,
    /// with a Redis log: ack an update only once this many Redis replicas have it (`WAIT`, up to 2 s; then the update is not acknowledged)
    #[arg(long, env = "YRELAY_LOG_REPLICAS", default_value = "0")]
    pub log_replicas: usize,
    /// largest accepted message or body, in bytes, on every transport
    #[arg(long, env = "YRELAY_MAX_MESSAGE_SIZE", default_value = "33554432", value_parser = positive())]
    pub max_message_size: usize,
    /// outbound messages queued per connection before it is closed as too slow (`1013`)
    #[arg(long, env = "YRELAY_QUEUE_BOUND", default_value = "1024", value_parser = positive())]
    pub queue_bound: usize,
    /// seconds a document without connections stays in memory
    #[arg(long, env = "YRELAY_IDLE_UNLOAD_SECS", default_value = "30", value_parser = seconds)]
    pub idle_unload_secs: Duration,
    /// do not compact in this process
    #[arg(long, env = "YRELAY_NO_COMPACTOR", default_value = "false", num_args = 0..=1,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub no_compactor: bool,
    /// compact a document once it has this many appended updates
    #[arg(long, env = "YRELAY_COMPACT_MIN_UPDATES", default_value = "500")]
    pub compact_min_updates: i64,
    /// compact a document with fewer updates once it has been quiet this long (seconds)
    #[arg(long, env = "YRELAY_COMPACT_IDLE_SECS", default_value = "10", value_parser = seconds)]
    pub compact_idle_secs: Duration,
    /// seconds persisted updates stay in the shared log, so event streams resume by cursor
    #[arg(long, env = "YRELAY_LOG_RETENTION_SECS", default_value = "60", value_parser = seconds)]
    pub log_retention_secs: Duration,
    /// a compaction records a document's version at most this often (seconds); `POST .../versions` records one at once
    #[arg(long, env = "YRELAY_HISTORY_INTERVAL_SECS", default_value = "600", value_parser = seconds)]
    pub history_interval_secs: Duration,
    /// every update is kept with its time and editor this long (seconds): `?at=` is exact within it, as of a version beyond
    #[arg(long, env = "YRELAY_HISTORY_EXACT_SECS", default_value = "86400", value_parser = positive_seconds)]
    pub history_exact_secs: Duration,
    /// versions are kept this long (seconds; the newest before the exact window always)
    #[arg(long, env = "YRELAY_HISTORY_RETENTION_SECS", default_value = "2592000", value_parser = positive_seconds)]
    pub history_retention_secs: Duration,
    /// keep labelled versions past `--history-retention-secs`
    #[arg(long, env = "YRELAY_HISTORY_KEEP_LABELLED", default_value = "false", num_args = 0..=1,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub history_keep_labelled: bool,
    /// a deleted document stays in the trash this long (seconds; `POST .../undelete` brings it back), then it is purged
    #[arg(long, env = "YRELAY_TRASH_RETENTION_SECS", default_value = "2592000", value_parser = positive_seconds)]
    pub trash_retention_secs: Duration,
    /// POST every document event to this URL (repeatable, or comma-separated): signed, at least once, in order per document
    #[arg(long, env = "YRELAY_WEBHOOK", value_delimiter = ',')]
    pub webhook: Vec<String>,
    /// the HMAC-SHA256 key of each webhook's `Yrelay-Signature` header
    #[arg(long, env = "YRELAY_WEBHOOK_SECRET")]
    pub webhook_secret: Option<String>,
    /// `--webhook` bodies carry the document's JSON (as `"json"`, up to 1 MiB)
    #[arg(long, env = "YRELAY_WEBHOOK_INCLUDE_JSON")]
    pub webhook_include_json: bool,
    /// `doc.updated` is sent once a document has been quiet this long (ms)
    #[arg(long, env = "YRELAY_WEBHOOK_DEBOUNCE_MS", default_value = "2000")]
    pub webhook_debounce_ms: u64,
    /// ... and at least this often while edits go on (ms)
    #[arg(long, env = "YRELAY_WEBHOOK_MAX_WAIT_MS", default_value = "10000")]
    pub webhook_max_wait_ms: u64,
    /// a webhook delivery that keeps failing is retried (exponential backoff, at most hourly) this long, then given up
    #[arg(long, env = "YRELAY_WEBHOOK_RETRY_HOURS", default_value = "24")]
    pub webhook_retry_hours: u64,
    /// serve the inspector at `/inspect/` without tokens (development); with a JWT key it is always served, and shows nothing without an admin token
    #[arg(long, env = "YRELAY_INSPECT", default_value = "false", num_args = 0..=1,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub inspect: bool,
    /// serve this directory's files at `/app/` (a demo or your own front end)
    #[arg(long, env = "YRELAY_STATIC_DIR")]
    pub static_dir: Option<PathBuf>,
    /// origins allowed to call the HTTP API from a browser (comma-separated, or `*`)
    #[arg(long, env = "YRELAY_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// verify HS256 tokens with this secret (no key at all: every request is allowed)
    #[arg(long, env = "YRELAY_JWT_SECRET", conflicts_with = "jwt_public_key")]
    pub jwt_secret: Option<String>,
    /// verify RS/PS/ES/EdDSA tokens with this PEM public key
    #[arg(long, env = "YRELAY_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// ask this URL who a token or cookie that is not one of yrelay's JWTs belongs to (POST; see Hooks)
    #[arg(long, env = "YRELAY_AUTH_WEBHOOK")]
    pub auth_webhook: Option<String>,
    /// the auth callback's answers (also refusals) are reused this long (s)
    #[arg(long, env = "YRELAY_AUTH_CACHE_SECS", default_value = "60")]
    pub auth_cache_secs: u64,
    /// a revoke refuses the tokens it covers (issued before it) this long (s): longer than your tokens live
    #[arg(long, env = "YRELAY_REVOKE_RETENTION_SECS", default_value = "86400")]
    pub revoke_retention_secs: u64,
    /// serve HTTPS/WSS with this PEM certificate chain (with `--tls-key`)
    #[arg(long, env = "YRELAY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// the PEM private key of `--tls-cert`
    #[arg(long, env = "YRELAY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// connections this instance holds at once, every transport counted (WebSockets, event streams, Socket.IO sockets); past it new ones get `503`
    #[arg(long, env = "YRELAY_MAX_CONNECTIONS", default_value = "50000", value_parser = positive())]
    pub max_connections: usize,
    /// updates per second one WebSocket or Socket.IO socket may send (bursts of twice that); past it: `1008`, Socket.IO `TOO_MANY_REQUESTS`
    #[arg(long, env = "YRELAY_MAX_UPDATES_PER_SEC", default_value = "500", value_parser = positive_u32())]
    pub max_updates_per_sec: u32,
    /// HTTP calls per second one caller may make to `POST .../updates`, `.../sync` and `.../awareness` (bursts of twice that), counted per token subject, or per client address without a token; past it: `429 TOO_MANY_REQUESTS`. Behind a proxy every anonymous caller shares its address
    #[arg(long, env = "YRELAY_MAX_POSTS_PER_SEC", default_value = "1000", value_parser = positive_u32())]
    pub max_posts_per_sec: u32,
    /// sync requests per second per connection — SyncStep1 and queryAwareness on a WebSocket (past it: `1008`), `space:load-doc` on Socket.IO (past it: `TOO_MANY_REQUESTS`); bursts of twice that. Each answer costs a diff of the whole document
    #[arg(long, env = "YRELAY_MAX_SYNCS_PER_SEC", default_value = "20", value_parser = positive_u32())]
    pub max_syncs_per_sec: u32,
    /// documents one Socket.IO socket may load or write (past it: `TOO_MANY_DOCS`); loading an id that does not exist keeps nothing loaded
    #[arg(long, env = "YRELAY_MAX_DOCS_PER_CONNECTION", default_value = "10000", value_parser = positive())]
    pub max_docs_per_connection: usize,
    /// awareness updates per second one connection may send (bursts of twice that); past it: `1008` on a WebSocket, `TOO_MANY_REQUESTS` on Socket.IO
    #[arg(long, env = "YRELAY_MAX_AWARENESS_PER_SEC", default_value = "60", value_parser = positive_u32())]
    pub max_awareness_per_sec: u32,
    /// awareness client ids one connection may announce (a client has one; more cover reconnects that kept their old id)
    #[arg(long, env = "YRELAY_MAX_AWARENESS_CLIENTS", default_value = "8", value_parser = positive())]
    pub max_awareness_clients: usize,
    /// awareness states one document may hold (people present at once); past it new ones are refused
    #[arg(long, env = "YRELAY_MAX_AWARENESS_STATES", default_value = "1000", value_parser = positive())]
    pub max_awareness_states: usize,
    /// seconds a client may take to send a request's headers (also a connection's first bytes), between two parts of a request body, or stay idle between requests; HTTP/2 connections are pinged every 30 s and closed when a ping goes unanswered for 20 s
    #[arg(long, env = "YRELAY_HTTP_TIMEOUT_SECS", default_value = "10", value_parser = positive_seconds)]
    pub http_timeout_secs: Duration,
    /// the space of Hocuspocus documents whose name is not `{space}/{doc}` (a name `notes` is `{this}/notes`)
    #[arg(long, env = "YRELAY_HOCUSPOCUS_SPACE", default_value = "hocuspocus", value_parser = space_id)]
    pub hocuspocus_space: String,
    /// seconds a write to a client (any transport) may make no progress before the connection is closed and everything it held released
    #[arg(long, env = "YRELAY_WRITE_TIMEOUT_SECS", default_value = "20", value_parser = positive_seconds)]
    pub write_timeout_secs: Duration,
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
    #[error("config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

fn space_id(s: &str) -> Result<String, String> {
    yrelay_protocol::address::check_space_id(s).map_err(|e| e.to_string())?;
    Ok(s.to_owned())
}

fn positive() -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::new().range(1..)
}

fn positive_u32() -> RangedU64ValueParser<u32> {
    RangedU64ValueParser::new().range(1..=u64::from(u32::MAX))
}

fn seconds(text: &str) -> Result<Duration, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    Duration::try_from_secs_f64(value)
        .map_err(|_| "must be a non-negative number of seconds".to_owned())
}

fn positive_seconds(text: &str) -> Result<Duration, String> {
    match seconds(text)? {
        d if d.is_zero() => Err("must be more than 0 seconds".into()),
        d => Ok(d),
    }
}

impl Settings {
    /// How tokens are checked (clap keeps the two keys apart).
    pub fn jwt(&self) -> Option<JwtKey> {
        match (&self.jwt_secret, &self.jwt_public_key) {
            (Some(secret), _) => Some(JwtKey::Secret(secret.clone())),
            (None, Some(path)) => Some(JwtKey::PublicKey(path.clone())),
            (None, None) => None,
        }
    }

    /// Certificate chain and key (clap requires both or neither).
    pub fn tls(&self) -> Option<(&Path, &Path)> {
        Some((self.tls_cert.as_deref()?, self.tls_key.as_deref()?))
    }

    fn command() -> Command {
        Settings::augment_args(Command::new("yrelay serve"))
    }

    /// The settings with the TOML file at `path` under the flags and the
    /// environment `matches` were parsed from: each setting given neither
    /// way is taken from the file, and everything is parsed again.
    pub fn with_file(path: &Path, matches: &ArgMatches) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let file: toml::Table = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source,
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.into(),
            message,
        };
        let command = Self::command().no_binary_name(true);
        if let Some(key) = file
            .keys()
            .find(|key| !command.get_arguments().any(|a| a.get_id() == key.as_str()))
        {
            return Err(invalid(format!("unknown setting `{key}`")));
        }
        let mut argv = Vec::new();
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            let flag = format!("--{}", arg.get_long().unwrap_or(id));
            let given = matches!(
                matches.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            );
            if given {
                let raw = matches.get_raw(id).into_iter().flatten();
                argv.extend(raw.map(|v| format!("{flag}={}", v.to_string_lossy())));
            } else if let Some(value) = file.get(id) {
                let values = match value {
                    toml::Value::Array(items) => items.clone(),
                    other => vec![other.clone()],
                };
                for value in values {
                    let text = match value {
                        toml::Value::String(s) => s,
                        toml::Value::Integer(n) => n.to_string(),
                        toml::Value::Float(x) => x.to_string(),
                        toml::Value::Boolean(b) => b.to_string(),
                        _ => return Err(invalid(format!("`{id}` is not a string or number"))),
                    };
                    argv.push(format!("{flag}={text}"));
                }
            }
        }
        let matches = command
            .try_get_matches_from(argv)
            .map_err(|e| invalid(e.to_string().trim().to_owned()))?;
        Self::from_arg_matches(&matches).map_err(|e| invalid(e.to_string()))
    }

    /// The settings as the README's table (flag, variable, key, default,
    /// meaning).
    pub fn markdown_table() -> String {
        let mut table = String::from(
            "| flag | environment | TOML key | default | meaning |\n|---|---|---|---|---|\n",
        );
        for arg in Self::command().get_arguments() {
            let id = arg.get_id().as_str();
            let env = arg
                .get_env()
                .map(|e| e.to_string_lossy())
                .unwrap_or_default();
            let default: Vec<_> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy())
                .collect();
            let default = match default.join(",").as_str() {
                "" => "none".to_owned(),
                "false" => "off".to_owned(),
                d => format!("`{d}`"),
            };
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            table += &format!(
                "| `--{}` | `{env}` | `{id}` | {default} | {help} |\n",
                arg.get_long().unwrap_or(id)
            );
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cli, Command as Sub};
    use clap::{CommandFactory, FromArgMatches};

    /// `yrelay serve ARGS`, resolved as `main` does.
    fn serve(args: &[&str]) -> Result<Settings, ConfigError> {
        let argv = ["yrelay", "serve"].iter().chain(args);
        let matches = Cli::command().try_get_matches_from(argv).unwrap();
        let cli = Cli::from_arg_matches(&matches).unwrap();
        let Sub::Serve(serve) = cli.command else {
            unreachable!()
        };
        serve.resolve(matches.subcommand().unwrap().1)
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("yrelay.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:5000\"\nqueue_bound = 7\ndurability = \"store\"\n\
             cors_origins = [\"http://a\", \"http://b\"]\nno_compactor = true\n\
             idle_unload_secs = 0.5\n",
        )
        .unwrap();
        let c = serve(&["--config", path.to_str().unwrap(), "--queue-bound", "9"]).unwrap();
        assert_eq!(c.listen.port(), 5000);
        assert_eq!(c.queue_bound, 9);
        assert_eq!(c.durability, Durability::Store);
        assert_eq!(c.store, DEFAULT_STORE);
        assert_eq!(c.cors_origins, ["http://a", "http://b"]);
        assert!(c.no_compactor);
        assert_eq!(c.idle_unload_secs, Duration::from_millis(500));
    }

    #[test]
    fn file_values_are_checked_like_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("yrelay.toml");
        std::fs::write(&path, "max_connections = 0\n").unwrap();
        let err = serve(&["--config", path.to_str().unwrap()]).unwrap_err();
        assert!(err.to_string().contains("max-connections"), "{err}");
        let flag = ["yrelay", "serve", "--write-timeout-secs", "0"];
        assert!(Cli::command().try_get_matches_from(flag).is_err());
    }

    #[test]
    fn unknown_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("yrelay.toml");
        std::fs::write(&path, "lisen = \"x\"\n").unwrap();
        let err = serve(&["--config", path.to_str().unwrap()]).unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
    }

    /// The README's table is the declarations above (run with
    /// `UPDATE_README=1` to rewrite it).
    #[test]
    fn the_readme_lists_every_setting_as_declared() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
        let readme = std::fs::read_to_string(path).unwrap();
        let (begin, end) = ("<!-- settings -->\n", "<!-- /settings -->");
        let start = readme.find(begin).expect("README has a settings marker") + begin.len();
        let stop = readme.find(end).expect("README has a settings end marker");
        let table = Settings::markdown_table();
        if readme[start..stop] != table {
            if std::env::var_os("UPDATE_README").is_some() {
                let updated = format!("{}{table}{}", &readme[..start], &readme[stop..]);
                std::fs::write(path, updated).unwrap();
            } else {
                panic!("README's settings table is out of date; expected:\n{table}");
            }
        }
    }
}
