//! The words every layer shares: where a log entry sits (its cursor), who
//! sent it (its origin), and what a document's metadata shows. They live
//! below transports, hub, store and log alike, so none of these has to
//! reach into another for them.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::str::FromStr;

/// A new id for this instance (process), random: the origin of its
/// connections, its Redis inbox and its compactor leases all carry it.
/// (It was the start time shifted left and XORed with the process id: two
/// containers, each its own pid 1, started in the same millisecond got one
/// id, and each skipped the other's updates for its own connection numbers.)
pub fn new_instance_id() -> u64 {
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

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
    /// When it was moved to the trash, if it is there.
    pub trashed_at: Option<i64>,
}

/// A space as listed: how many documents it has (not in the trash) and
/// when the last of them changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpaceMeta {
    pub space: String,
    pub docs: i64,
    pub updated_at: i64,
}

/// A version of a document as listed: its full state is kept in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionMeta {
    pub id: i64,
    pub timestamp_ms: i64,
    pub label: Option<String>,
    /// Who wrote updates since the previous version.
    pub editors: Vec<String>,
    /// Bytes of its state.
    pub size: i64,
}

/// One update of a document's exact history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub timestamp_ms: i64,
    pub editor: Option<String>,
    pub data: Vec<u8>,
}

/// A webhook delivery as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryInfo {
    pub id: i64,
    pub target: String,
    pub space: String,
    pub doc: String,
    pub event: String,
    pub created_at: i64,
    pub attempts: i64,
    pub status: String,
    pub last_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two instances started in the same millisecond with the same process
    /// id (containers: pid 1) got one id from the old formula.
    #[test]
    fn instances_started_together_get_their_own_ids() {
        let ids: std::collections::HashSet<u64> = (0..1000).map(|_| new_instance_id()).collect();
        assert_eq!(ids.len(), 1000);
    }
}

/// A webhook a space registered for its own documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpaceHook {
    pub url: String,
    /// The key its deliveries are signed with.
    pub secret: Option<String>,
    /// Its bodies carry the document's JSON.
    pub include_json: bool,
}
