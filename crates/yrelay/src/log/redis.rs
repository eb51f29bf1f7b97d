//! The Redis Streams log of scaled-out deployments.
//!
//! Keys are hash-tagged per document so that all of a document's keys share
//! a Redis Cluster slot:
//! - `yrelay:{space/doc}:log`: the update stream (`XADD` ids are the cursors);
//! - `yrelay:{space/doc}:aw`: awareness and notices (field `k` = `a`/`n`),
//!   a stream capped at a few entries (relayed, never persisted);
//! - `yrelay:{space/doc}:trimmed`: the highest cursor trimmed away;
//! - `yrelay:{space/doc}:lease`: the compactor lease.
//!
//! `yrelay:backlog` (a sorted set by first-append time) lists documents whose
//! log holds updates the store may not have.
//!
//! One reader task per process serves every subscription with batched
//! blocking `XREAD`s on its own connection (response timeout longer than the
//! block). A new subscription wakes it through the process's own wake stream.
//! When Redis fails, every feed ends; the hub resumes by cursor.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::streams::StreamReadReply;
use redis::{AsyncConnectionConfig, Value};
use tokio::sync::mpsc;
use yrelay_protocol::DocAddress;

use super::{EntryKind, Log, LogCursor, LogEntry, LogError, Origin, Subscription};
use crate::clock::now_ms;

const FEED_BOUND: usize = 4096;
const BLOCK: Duration = Duration::from_secs(2);
const BACKLOG_KEY: &str = "yrelay:backlog";

fn key(addr: &DocAddress, part: &str) -> String {
    format!("yrelay:{{{addr}}}:{part}")
}

fn unavailable(e: redis::RedisError) -> LogError {
    LogError::Unavailable(e.to_string())
}

pub struct RedisLog {
    conn: ConnectionManager,
    feeds: Arc<Mutex<Feeds>>,
    wake_key: String,
}

#[derive(Default)]
struct Feeds {
    next_id: u64,
    /// Subscription id → its document, stream positions and sender.
    subs: HashMap<u64, Feed>,
}

struct Feed {
    addr: DocAddress,
    log_last: String,
    aw_last: String,
    tx: mpsc::Sender<LogEntry>,
}

impl RedisLog {
    pub async fn connect(url: &str) -> Result<Self, LogError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(5)));
        let conn = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(unavailable)?;
        let wake_key = format!("yrelay:wake:{}:{}", std::process::id(), now_ms());
        let feeds = Arc::new(Mutex::new(Feeds::default()));
        tokio::spawn(reader(client, feeds.clone(), wake_key.clone()));
        Ok(Self {
            conn,
            feeds,
            wake_key,
        })
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }
}

fn lock(feeds: &Mutex<Feeds>) -> std::sync::MutexGuard<'_, Feeds> {
    feeds.lock().unwrap_or_else(|p| p.into_inner())
}

fn origin_text(origin: Option<Origin>) -> String {
    origin
        .map(|o| format!("{}:{}", o.instance, o.connection))
        .unwrap_or_default()
}

fn parse_origin(text: &str) -> Option<Origin> {
    let (instance, connection) = text.split_once(':')?;
    Some(Origin {
        instance: instance.parse().ok()?,
        connection: connection.parse().ok()?,
    })
}

fn field<'a>(map: &'a HashMap<String, Value>, name: &str) -> Option<&'a [u8]> {
    match map.get(name)? {
        Value::BulkString(bytes) => Some(bytes),
        _ => None,
    }
}

fn entry_from(id: &str, map: &HashMap<String, Value>, kind: EntryKind) -> Option<LogEntry> {
    let cursor = LogCursor::from_str(id).ok()?;
    let kind = match field(map, "k") {
        Some(b"n") => EntryKind::Notice,
        _ => kind,
    };
    let payload: Arc<[u8]> = field(map, "p")?.into();
    let origin = field(map, "o")
        .and_then(|o| std::str::from_utf8(o).ok())
        .and_then(parse_origin);
    Some(LogEntry {
        cursor: (kind == EntryKind::Update).then_some(cursor),
        kind,
        origin,
        payload,
        timestamp_ms: cursor.ms as i64,
    })
}

/// The id of a stream's newest entry (`0-0` when empty).
async fn last_id(conn: &mut ConnectionManager, stream: &str) -> Result<String, LogError> {
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

#[async_trait]
impl Log for RedisLog {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn is_durable(&self) -> bool {
        true
    }

    async fn append_update(
        &self,
        addr: &DocAddress,
        update: Arc<[u8]>,
        origin: Option<Origin>,
    ) -> Result<LogEntry, LogError> {
        let mut conn = self.conn();
        let id: String = redis::cmd("XADD")
            .arg(key(addr, "log"))
            .arg("*")
            .arg("p")
            .arg(&*update)
            .arg("o")
            .arg(origin_text(origin))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        // Owed to the store from now on (NX: keep the oldest time).
        let _: () = redis::cmd("ZADD")
            .arg(BACKLOG_KEY)
            .arg("NX")
            .arg(now_ms())
            .arg(addr.to_string())
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let cursor = LogCursor::from_str(&id).map_err(|e| LogError::Unavailable(e.to_string()))?;
        Ok(LogEntry {
            cursor: Some(cursor),
            kind: EntryKind::Update,
            origin,
            payload: update,
            timestamp_ms: cursor.ms as i64,
        })
    }

    async fn publish(
        &self,
        addr: &DocAddress,
        kind: EntryKind,
        payload: Arc<[u8]>,
        origin: Option<Origin>,
    ) -> Result<(), LogError> {
        let _: String = redis::cmd("XADD")
            .arg(key(addr, "aw"))
            .arg("MAXLEN")
            .arg("~")
            .arg(64)
            .arg("*")
            .arg("p")
            .arg(&*payload)
            .arg("o")
            .arg(origin_text(origin))
            .arg("k")
            .arg(if kind == EntryKind::Notice { "n" } else { "a" })
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn subscribe(&self, addr: &DocAddress) -> Result<Subscription, LogError> {
        let mut conn = self.conn();
        let log_last = last_id(&mut conn, &key(addr, "log")).await?;
        let aw_last = last_id(&mut conn, &key(addr, "aw")).await?;
        let (tx, rx) = mpsc::channel(FEED_BOUND);
        let id = {
            let mut feeds = lock(&self.feeds);
            let id = feeds.next_id;
            feeds.next_id += 1;
            feeds.subs.insert(
                id,
                Feed {
                    addr: addr.clone(),
                    log_last,
                    aw_last,
                    tx,
                },
            );
            id
        };
        let _: Result<String, _> = redis::cmd("XADD")
            .arg(&self.wake_key)
            .arg("MAXLEN")
            .arg(8)
            .arg("*")
            .arg("w")
            .arg(1)
            .query_async(&mut conn)
            .await;
        let guard = Unsubscribe {
            feeds: Arc::downgrade(&self.feeds),
            id,
        };
        Ok(Subscription::new(rx, Box::new(guard)))
    }

    async fn read(
        &self,
        addr: &DocAddress,
        after: Option<LogCursor>,
    ) -> Result<Option<Vec<LogEntry>>, LogError> {
        let mut conn = self.conn();
        if let Some(after) = after {
            let trimmed: Option<String> = redis::cmd("GET")
                .arg(key(addr, "trimmed"))
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            let trimmed = trimmed.and_then(|t| LogCursor::from_str(&t).ok());
            if trimmed.is_some_and(|t| after < t) {
                return Ok(None);
            }
        }
        let start = after.map(|c| format!("({c}")).unwrap_or_else(|| "-".into());
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(key(addr, "log"))
            .arg(start)
            .arg("+")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(Some(
            reply
                .ids
                .iter()
                .filter_map(|e| entry_from(&e.id, &e.map, EntryKind::Update))
                .collect(),
        ))
    }

    async fn trim(&self, addr: &DocAddress, upto: LogCursor) -> Result<(), LogError> {
        let mut conn = self.conn();
        let min_id = LogCursor {
            ms: upto.ms,
            seq: upto.seq + 1,
        };
        let _: i64 = redis::cmd("XTRIM")
            .arg(key(addr, "log"))
            .arg("MINID")
            .arg(min_id.to_string())
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        // Remember how far we trimmed (never lower it).
        let script = "local c = redis.call('GET', KEYS[1])
            if not c then redis.call('SET', KEYS[1], ARGV[1]) return 1 end
            local cm, cs = string.match(c, '(%d+)-(%d+)')
            local nm, ns = string.match(ARGV[1], '(%d+)-(%d+)')
            if tonumber(nm) > tonumber(cm) or (tonumber(nm) == tonumber(cm) and tonumber(ns) > tonumber(cs)) then
              redis.call('SET', KEYS[1], ARGV[1]) end
            return 1";
        let _: i64 = redis::cmd("EVAL")
            .arg(script)
            .arg(1)
            .arg(key(addr, "trimmed"))
            .arg(upto.to_string())
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn delete(&self, addr: &DocAddress) -> Result<(), LogError> {
        let mut conn = self.conn();
        let _: i64 = redis::cmd("DEL")
            .arg(key(addr, "log"))
            .arg(key(addr, "aw"))
            .arg(key(addr, "trimmed"))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let _: i64 = redis::cmd("ZREM")
            .arg(BACKLOG_KEY)
            .arg(addr.to_string())
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), LogError> {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn backlog(&self, limit: usize) -> Result<Vec<DocAddress>, LogError> {
        let members: Vec<String> = redis::cmd("ZRANGE")
            .arg(BACKLOG_KEY)
            .arg(0)
            .arg(limit.saturating_sub(1))
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(members
            .iter()
            .filter_map(|m| DocAddress::parse_path(m).ok())
            .collect())
    }

    async fn clear_backlog(
        &self,
        addr: &DocAddress,
        persisted: Option<LogCursor>,
    ) -> Result<(), LogError> {
        // Atomic: an append after the store's cursor keeps the document listed.
        let script = "local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
            if #last == 0 or last[1][1] == ARGV[2] then return redis.call('ZREM', KEYS[2], ARGV[1]) end
            return 0";
        let _: i64 = redis::cmd("EVAL")
            .arg(script)
            .arg(2)
            .arg(key(addr, "log"))
            .arg(BACKLOG_KEY)
            .arg(addr.to_string())
            .arg(persisted.map(|c| c.to_string()).unwrap_or_default())
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn try_lease(
        &self,
        addr: &DocAddress,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, LogError> {
        let script = "local h = redis.call('GET', KEYS[1])
            if h == ARGV[1] or not h then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
            return 0";
        let taken: i64 = redis::cmd("EVAL")
            .arg(script)
            .arg(1)
            .arg(key(addr, "lease"))
            .arg(holder)
            .arg(ttl.as_millis() as u64)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(taken == 1)
    }

    async fn release_lease(&self, addr: &DocAddress, holder: &str) -> Result<(), LogError> {
        let script = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";
        let _: i64 = redis::cmd("EVAL")
            .arg(script)
            .arg(1)
            .arg(key(addr, "lease"))
            .arg(holder)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

struct Unsubscribe {
    feeds: std::sync::Weak<Mutex<Feeds>>,
    id: u64,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        if let Some(feeds) = self.feeds.upgrade() {
            lock(&feeds).subs.remove(&self.id);
        }
    }
}

/// The process's blocking reader: one `XREAD` over every subscribed stream.
async fn reader(client: redis::Client, feeds: Arc<Mutex<Feeds>>, wake_key: String) {
    let mut wake_last = "$".to_string();
    let mut conn: Option<MultiplexedConnection> = None;
    loop {
        if Arc::strong_count(&feeds) == 1 {
            return; // the log was dropped
        }
        let connection = match conn.as_mut() {
            Some(c) => c,
            None => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(5)))
                    .set_response_timeout(Some(BLOCK + Duration::from_secs(5)));
                match client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                {
                    Ok(c) => conn.insert(c),
                    Err(e) => {
                        tracing::warn!(error = %e, "redis log reader cannot connect; retrying");
                        end_all_feeds(&feeds);
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        continue;
                    }
                }
            }
        };
        // Streams and positions to read, one position per stream (the lowest).
        let mut streams: Vec<(String, String)> = vec![(wake_key.clone(), wake_last.clone())];
        {
            let f = lock(&feeds);
            let mut positions: HashMap<String, String> = HashMap::new();
            for feed in f.subs.values() {
                for (k, last) in [
                    (key(&feed.addr, "log"), &feed.log_last),
                    (key(&feed.addr, "aw"), &feed.aw_last),
                ] {
                    let slot = positions.entry(k).or_insert_with(|| last.clone());
                    if cursor_lt(last, slot) {
                        *slot = last.clone();
                    }
                }
            }
            streams.extend(positions);
        }
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(1024)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS");
        for (k, _) in &streams {
            cmd.arg(k);
        }
        for (_, id) in &streams {
            cmd.arg(id);
        }
        let reply: Result<Option<StreamReadReply>, _> = cmd.query_async(connection).await;
        let reply = match reply {
            Ok(Some(reply)) => reply,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "redis log read failed; feeds will resume by cursor");
                conn = None;
                end_all_feeds(&feeds);
                continue;
            }
        };
        let mut f = lock(&feeds);
        for stream in reply.keys {
            if stream.key == wake_key {
                if let Some(last) = stream.ids.last() {
                    wake_last = last.id.clone();
                }
                continue;
            }
            let is_log = stream.key.ends_with(":log");
            let kind = if is_log {
                EntryKind::Update
            } else {
                EntryKind::Awareness
            };
            let mut dead = Vec::new();
            for (sub_id, feed) in f.subs.iter_mut() {
                let feed_key = key(&feed.addr, if is_log { "log" } else { "aw" });
                if feed_key != stream.key {
                    continue;
                }
                let last = if is_log {
                    &mut feed.log_last
                } else {
                    &mut feed.aw_last
                };
                for e in &stream.ids {
                    if !cursor_lt(last, &e.id) {
                        continue;
                    }
                    *last = e.id.clone();
                    if let Some(entry) = entry_from(&e.id, &e.map, kind.clone())
                        && feed.tx.try_send(entry).is_err()
                    {
                        dead.push(*sub_id);
                        break;
                    }
                }
            }
            for id in dead {
                f.subs.remove(&id); // a full or closed feed ends; its owner resumes
            }
        }
    }
}

/// `a < b` for stream ids (`0-0` smallest).
fn cursor_lt(a: &str, b: &str) -> bool {
    match (LogCursor::from_str(a), LogCursor::from_str(b)) {
        (Ok(a), Ok(b)) => a < b,
        _ => false,
    }
}

fn end_all_feeds(feeds: &Mutex<Feeds>) {
    lock(feeds).subs.clear();
}
