//! The command line: the subcommands and their arguments (the server's
//! settings are in [`crate::settings`]).

use std::path::PathBuf;

use clap::{ArgMatches, Args, Parser, Subcommand};

pub use crate::settings::{ConfigError, DEFAULT_STORE, JwtKey, Settings};

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
        /// The document as it was at this time (ms since the epoch).
        #[arg(long)]
        at: Option<i64>,
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
    /// Move a document to the trash (with --purge: delete it and its history for good).
    Delete {
        /// {space}/{doc}
        doc: String,
        #[arg(long)]
        purge: bool,
    },
    /// Take a document out of the trash, with its history.
    Undelete {
        /// {space}/{doc}
        doc: String,
    },
    /// List a document's versions, newest first (JSON lines).
    Versions {
        /// {space}/{doc}
        doc: String,
    },
    /// Restore a document to a version or a moment (recording a version of
    /// its current state first, to undo it).
    Restore {
        /// {space}/{doc}
        doc: String,
        /// The version's id.
        #[arg(long, conflicts_with = "at", required_unless_present = "at")]
        version: Option<i64>,
        /// The moment (ms since the epoch).
        #[arg(long)]
        at: Option<i64>,
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

/// `yrelay serve` and `yrelay worker`: the settings, and where else to
/// read them from.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML file with any of these settings (flags and environment win).
    #[arg(long, env = "YRELAY_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub settings: Settings,
}

impl ServeArgs {
    /// The settings: flags, then environment, then the TOML file, then
    /// defaults. `matches` are the subcommand's, to tell which settings were
    /// given.
    pub fn resolve(self, matches: &ArgMatches) -> Result<Settings, ConfigError> {
        match &self.config {
            Some(path) => Settings::with_file(path, matches),
            None => Ok(self.settings),
        }
    }
}
