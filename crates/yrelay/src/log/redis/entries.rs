//! Log entries as Redis stream fields, and stream ids.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use redis::Value;

use super::conn::{Conn, unavailable};
use crate::log::{EntryKind, LogCursor, LogEntry, LogError, Origin};

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn origin_text(origin: Option<Origin>) -> String {
    origin
        .map(|o| format!("{}:{}", o.instance, o.connection))
        .unwrap_or_default()
}

pub(super) fn parse_origin(text: &str) -> Option<Origin> {
    let (instance, connection) = text.split_once(':')?;
    Some(Origin {
        instance: instance.parse().ok()?,
        connection: connection.parse().ok()?,
    })
}

pub(super) fn field<'a>(map: &'a HashMap<String, Value>, name: &str) -> Option<&'a [u8]> {
    match map.get(name)? {
        Value::BulkString(bytes) => Some(bytes),
        _ => None,
    }
}

pub(super) fn entry_from(
    cursor: LogCursor,
    map: &HashMap<String, Value>,
    kind: EntryKind,
) -> Option<LogEntry> {
    let kind = match field(map, "k") {
        Some(b"n") => EntryKind::Notice,
        _ => kind,
    };
    let payload: Arc<[u8]> = field(map, "p")?.into();
    let origin = field(map, "o")
        .and_then(|o| std::str::from_utf8(o).ok())
        .and_then(parse_origin);
    let editor = field(map, "e")
        .and_then(|e| std::str::from_utf8(e).ok())
        .map(Arc::from);
    Some(LogEntry {
        cursor: (kind == EntryKind::Update).then_some(cursor),
        kind,
        origin,
        editor,
        payload,
        timestamp_ms: cursor.ms as i64,
    })
}

/// The id of a stream's newest entry (`0-0` when empty).
pub(super) async fn last_id(conn: &mut Conn, stream: &str) -> Result<String, LogError> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await
        .map_err(unavailable)?;
    Ok(reply
        .ids
        .first()
        .map(|e| e.id.clone())
        .unwrap_or_else(|| "0-0".into()))
}
