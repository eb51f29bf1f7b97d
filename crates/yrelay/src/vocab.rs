//! The words every layer shares: where a log entry sits (its cursor), who
//! sent it (its origin), and what a document's metadata shows. They live
//! below transports, hub, store and log alike, so none of these has to
//! reach into another for them.

use std::fmt;
use std::str::FromStr;

/// A position in one document's log, ordered like Redis stream ids
/// (`{ms}-{seq}`), which is also how it is written on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogCursor {
    pub ms: u64,
    pub seq: u64,
}

impl fmt::Display for LogCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("not a log cursor (expected {{ms}}-{{seq}})")]
pub struct CursorParseError;

impl FromStr for LogCursor {
    type Err = CursorParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ms, seq) = s.split_once('-').ok_or(CursorParseError)?;
        Ok(Self {
            ms: ms.parse().map_err(|_| CursorParseError)?,
            seq: seq.parse().map_err(|_| CursorParseError)?,
        })
    }
}

/// Who sent an entry, so the sending connection is not echoed its own update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Origin {
    pub instance: u64,
    pub connection: u64,
}

/// What a listing or a metadata request shows of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocMeta {
    pub doc: String,
    pub title: Option<String>,
    pub blocked: bool,
    pub created_at: i64,
    pub updated_at: i64,
    pub size: i64,
}
