//! The Redis Streams log of scaled-out deployments, on one Redis server or a
//! Redis Cluster (detected from the server, or named by several seed URLs).
//!
//! Keys are hash-tagged per document, so all of a document's keys share a
//! cluster slot and the scripts that touch several of them stay atomic:
//! - `yrelay:{space/doc}:log`: the update stream (`XADD` ids are the cursors;
//!   fields `p` payload, `o` origin `instance:connection`, `e` editor);
//! - `yrelay:{space/doc}:aw`: awareness and notices (field `k` = `a`/`n`),
//!   a stream capped at a few entries (relayed, never persisted);
//! - `yrelay:{space/doc}:trimmed`: the highest cursor trimmed away;
//! - `yrelay:{space/doc}:lease`: the compactor lease;
//! - `yrelay:{space/doc}:subs`: the inboxes of the instances that follow the
//!   document (inbox → registration token).
//!
//! Fan-out. A multi-key `XREAD` over every followed document would need all
//! of them in one hash slot, which a cluster cannot give. Instead each
//! instance blocks on one stream of its own, its inbox `yrelay:inbox:{id}`,
//! on its own connection (response timeout longer than the block), however
//! many documents it follows. An append adds the entry and reads the
//! followers in one script, then rings each follower's inbox with the
//! document's name (this instance's own bell is rung in-process). A rung
//! instance reads the document's streams from its feeds' positions, so a
//! bell that comes late, twice or for an entry already read loses and
//! repeats nothing; every followed document is also read every 10 s, so a
//! bell that is lost only delays. An inbox expires a minute after its
//! instance stops renewing it; an append that finds a follower's inbox gone
//! (and its registration older than that) forgets the follower.
//!
//! `yrelay:{backlog}` (a sorted set by first-append time) lists documents
//! whose log may hold updates the store does not have;
//! `yrelay:{backlog}:clearing` holds the ones a compactor is taking off it.
//!
//! When Redis fails, every feed ends; the hub resumes by cursor.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::str::FromStr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::future::join_all;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::streams::StreamReadReply;
use redis::{Cmd, RedisFuture, Value};
use tokio::sync::{Notify, mpsc};
use yrelay_protocol::DocAddress;

use super::{EntryKind, Log, LogCursor, LogEntry, LogError, Origin, Subscription};
use crate::clock::now_ms;

const FEED_BOUND: usize = 4096;
const BLOCK: Duration = Duration::from_secs(2);
const TIMEOUT: Duration = Duration::from_secs(5);
/// How long an append waits for its replicas (`--log-replicas`).
const REPLICA_WAIT: Duration = Duration::from_secs(2);
const BACKLOG_KEY: &str = "yrelay:{backlog}";
const CLEARING_KEY: &str = "yrelay:{backlog}:clearing";
/// An inbox outlives its instance's last renewal by this long.
const INBOX_TTL: Duration = Duration::from_secs(60);
const INBOX_RENEW: Duration = Duration::from_secs(10);
/// A cap for an inbox nobody reads any more (its instance trims what it read).
const INBOX_CAP: usize = 100_000;
/// Every followed document is read this often, rung or not.
const SWEEP: Duration = Duration::from_secs(10);
/// Entries read per stream and request.
const READ_COUNT: usize = 1024;

/// Adds an entry to `KEYS[1]` (`XADD` arguments in `ARGV`) and returns its id
/// with the document's followers (`KEYS[2]`, field/value pairs).
const APPEND: &str =
    "return {redis.call('XADD', KEYS[1], unpack(ARGV)), redis.call('HGETALL', KEYS[2])}";
/// Registers an inbox (`ARGV[1]`, token `ARGV[2]`) as a follower of a
/// document (`KEYS[1]`) and returns the ids of the newest entries of its
/// update and awareness streams (`KEYS[2]`, `KEYS[3]`; `0-0` when empty).
const REGISTER: &str = "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
    local function last(stream)
        local newest = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
        return newest and newest[1] or '0-0'
    end
    return {last(KEYS[2]), last(KEYS[3])}";
/// Deletes a registration if it is still the given one.
const FORGET: &str = "if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end return 0";

/// `EVAL script` with its keys; the caller adds the arguments. (Keys first:
/// a cluster routes the script by them, and they must share a slot.)
fn eval(script: &str, keys: &[&str]) -> Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(script).arg(keys.len()).arg(keys);
    cmd
}

fn key(addr: &DocAddress, part: &str) -> String {
    format!("yrelay:{{{addr}}}:{part}")
}

fn unavailable(e: redis::RedisError) -> LogError {
    LogError::Unavailable(e.to_string())
}

/// A connection to one Redis server or to a cluster (which routes each
/// command to the node of its key's slot).
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    /// Runs a keyless command (such as `WAIT`) on the node that holds `key`;
    /// a cluster client would send it to every primary.
    async fn on_node_of(&mut self, key: &str, cmd: Cmd) -> redis::RedisResult<Value> {
        use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => {
                let node = Route::with_key(key, SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(node));
                c.route_command(cmd, routing).await
            }
        }
    }
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Where the log lives: the seed URLs and whether they form a cluster.
struct Target {
    seeds: Vec<String>,
    cluster: bool,
}

impl Target {
    async fn detect(setting: &str) -> Result<Self, LogError> {
        let seeds: Vec<String> = setting.split(',').map(|s| s.trim().to_string()).collect();
        if seeds.len() > 1 {
            return Ok(Self {
                seeds,
                cluster: true,
            });
        }
        let client = redis::Client::open(seeds[0].as_str()).map_err(unavailable)?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(unavailable)?;
        let info: String = redis::cmd("INFO")
            .arg("cluster")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(Self {
            seeds,
            cluster: info.contains("cluster_enabled:1"),
        })
    }

    /// A connection whose requests time out after `response_timeout`.
    async fn connect(&self, response_timeout: Duration) -> Result<Conn, LogError> {
        if self.cluster {
            let client = ClusterClient::builder(self.seeds.clone())
                .connection_timeout(TIMEOUT)
                .response_timeout(response_timeout)
                .build()
                .map_err(unavailable)?;
            let conn = client.get_async_connection().await.map_err(unavailable)?;
            return Ok(Conn::Cluster(conn));
        }
        let client = redis::Client::open(self.seeds[0].as_str()).map_err(unavailable)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(response_timeout));
        let conn = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(unavailable)?;
        Ok(Conn::Single(conn))
    }
}

pub struct RedisLog {
    conn: Conn,
    shared: Arc<Shared>,
    /// Replicas that must have an update before it is acknowledged.
    replicas: usize,
    /// The connection updates are appended on: with replicas, one of its
    /// own, since a `WAIT` holds up everything sent after it on its
    /// connection (a lagging replica must not stall reads and fan-out).
    appends: Conn,
}

/// What the log, its reader and fetcher tasks and the subscriptions share.
struct Shared {
    inbox: String,
    feeds: Mutex<Feeds>,
    /// Documents rung and not yet read.
    rung: Mutex<HashSet<String>>,
    ring: Arc<Notify>,
}

#[derive(Default)]
struct Feeds {
    next_id: u64,
    next_token: u64,
    /// The followed documents by name (`space/doc`).
    docs: HashMap<String, DocFeeds>,
}

struct DocFeeds {
    addr: DocAddress,
    /// This instance's registration in the document's followers.
    token: String,
    subs: HashMap<u64, Feed>,
}

/// One subscription's stream positions and sender.
struct Feed {
    log_last: String,
    aw_last: String,
    tx: mpsc::Sender<LogEntry>,
}

impl RedisLog {
    /// Connects to `setting`: one `redis://` URL (a cluster is detected), or
    /// several comma-separated seed URLs of a cluster. An append is
    /// acknowledged once `replicas` replicas of the node holding its
    /// document have it.
    pub async fn connect(setting: &str, replicas: usize) -> Result<Self, LogError> {
        let target = Target::detect(setting).await?;
        let mut conn = target.connect(TIMEOUT).await?;
        let reader_conn = target.connect(BLOCK + TIMEOUT).await?;
        let id = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let inbox = format!("yrelay:inbox:{{{id:016x}}}");
        let start = open_inbox(&mut conn, &inbox).await?;
        let shared = Arc::new(Shared {
            inbox,
            feeds: Mutex::new(Feeds::default()),
            rung: Mutex::new(HashSet::new()),
            ring: Arc::new(Notify::new()),
        });
        tokio::spawn(reader(
            reader_conn,
            conn.clone(),
            Arc::downgrade(&shared),
            start,
        ));
        tokio::spawn(fetcher(
            conn.clone(),
            Arc::downgrade(&shared),
            shared.ring.clone(),
        ));
        tracing::info!(cluster = target.cluster, inbox = %shared.inbox, "redis log connected");
        let appends = if replicas > 0 {
            target.connect(TIMEOUT).await?
        } else {
            conn.clone()
        };
        Ok(Self {
            conn,
            shared,
            replicas,
            appends,
        })
    }

    /// Waits until the replicas of the node holding `addr` have every write
    /// sent so far on the appends' connection (`WAIT`).
    async fn replicated(&self, addr: &DocAddress) -> Result<(), LogError> {
        if self.replicas == 0 {
            return Ok(());
        }
        let mut wait = redis::cmd("WAIT");
        wait.arg(self.replicas).arg(REPLICA_WAIT.as_millis() as u64);
        let have = self
            .appends
            .clone()
            .on_node_of(&key(addr, "log"), wait)
            .await
            .map_err(unavailable)?;
        let have: usize =
            redis::from_redis_value(have).map_err(|e| LogError::Unavailable(e.to_string()))?;
        if have < self.replicas {
            return Err(LogError::Unavailable(format!(
                "{have} of {} Redis replicas had the update within {:?}",
                self.replicas, REPLICA_WAIT
            )));
        }
        Ok(())
    }

    fn conn(&self) -> Conn {
        self.conn.clone()
    }

    /// Adds an entry to one of the document's streams (`XADD` arguments
    /// after the key) on `conn`; returns its id and the document's followers.
    async fn add(
        mut conn: Conn,
        addr: &DocAddress,
        stream: &str,
        xadd: &[&[u8]],
    ) -> Result<(String, Vec<String>), LogError> {
        let mut cmd = eval(APPEND, &[&key(addr, stream), &key(addr, "subs")]);
        for arg in xadd {
            cmd.arg(*arg);
        }
        cmd.query_async(&mut conn).await.map_err(unavailable)
    }

    /// Rings the followers' inboxes (`followers`: inbox/token pairs).
    async fn ring_followers(&self, addr: &DocAddress, followers: &[String]) {
        let rings = followers.chunks_exact(2).map(|pair| {
            let (inbox, token) = (&pair[0], &pair[1]);
            let mut conn = self.conn();
            async move {
                if *inbox == self.shared.inbox {
                    self.shared.rang(addr.to_string());
                    return;
                }
                if let Err(e) = ring(&mut conn, addr, inbox, token).await {
                    // The entry is in the log: the follower reads it with
                    // its next bell, or resumes by cursor if its Redis failed.
                    tracing::warn!(error = %e, %inbox, "redis log could not ring a follower");
                }
            }
        });
        join_all(rings).await;
    }
}

impl Shared {
    fn rang(&self, name: String) {
        lock(&self.rung).insert(name);
        self.ring.notify_one();
    }
}

/// Rings a follower's inbox; forgets the follower when its inbox is gone.
async fn ring(
    conn: &mut Conn,
    addr: &DocAddress,
    inbox: &str,
    token: &str,
) -> Result<(), redis::RedisError> {
    let added: Option<String> = redis::cmd("XADD")
        .arg(inbox)
        .arg("NOMKSTREAM")
        .arg("MAXLEN")
        .arg("~")
        .arg(INBOX_CAP)
        .arg("*")
        .arg("d")
        .arg(addr.to_string())
        .query_async(conn)
        .await?;
    let registered_ms = token
        .split_once('-')
        .and_then(|(ms, _)| ms.parse::<i64>().ok())
        .unwrap_or(0);
    // A fresh registration may come before its inbox: a feed ended by a
    // failed read subscribes again while its instance re-opens the inbox
    // (see `reader`).
    if added.is_none() && now_ms() - registered_ms > INBOX_TTL.as_millis() as i64 {
        let _: i64 = eval(FORGET, &[&key(addr, "subs")])
            .arg(inbox)
            .arg(token)
            .query_async(conn)
            .await?;
    }
    Ok(())
}

/// Creates (or keeps) the inbox, renews its expiry, and returns the id from
/// which to read it.
async fn open_inbox(conn: &mut Conn, inbox: &str) -> Result<String, LogError> {
    let id: String = redis::cmd("XADD")
        .arg(inbox)
        .arg("MAXLEN")
        .arg("~")
        .arg(INBOX_CAP)
        .arg("*")
        .arg("h")
        .arg(1)
        .query_async(conn)
        .await
        .map_err(unavailable)?;
    let _: i64 = redis::cmd("PEXPIRE")
        .arg(inbox)
        .arg(INBOX_TTL.as_millis() as u64)
        .query_async(conn)
        .await
        .map_err(unavailable)?;
    Ok(id)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
async fn last_id(conn: &mut Conn, stream: &str) -> Result<String, LogError> {
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
        editor: Option<Arc<str>>,
    ) -> Result<LogEntry, LogError> {
        let origin_text = origin_text(origin);
        let mut xadd: Vec<&[u8]> = vec![b"*", b"p", &update, b"o", origin_text.as_bytes()];
        if let Some(editor) = &editor {
            xadd.extend([&b"e"[..], editor.as_bytes()]);
        }
        let (id, followers) = Self::add(self.appends.clone(), addr, "log", &xadd).await?;
        // Owed to the store from now on (NX: keep the oldest time); after
        // the append, so a compactor clearing the document sees the append
        // (and before the WAIT, which covers it too on a single server).
        let mut conn = self.appends.clone();
        let mut zadd = redis::cmd("ZADD");
        zadd.arg(BACKLOG_KEY)
            .arg("NX")
            .arg(now_ms())
            .arg(addr.to_string());
        let owed = zadd.query_async::<()>(&mut conn);
        let (owed, replicated, ()) = tokio::join!(
            owed,
            self.replicated(addr),
            self.ring_followers(addr, &followers)
        );
        owed.map_err(unavailable)?;
        replicated?;
        let cursor = LogCursor::from_str(&id).map_err(|e| LogError::Unavailable(e.to_string()))?;
        Ok(LogEntry {
            cursor: Some(cursor),
            kind: EntryKind::Update,
            origin,
            editor,
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
        let origin_text = origin_text(origin);
        let k: &[u8] = if kind == EntryKind::Notice {
            b"n"
        } else {
            b"a"
        };
        let args: [&[u8]; 10] = [
            b"MAXLEN",
            b"~",
            b"64",
            b"*",
            b"p",
            &payload,
            b"o",
            origin_text.as_bytes(),
            b"k",
            k,
        ];
        let (_, followers) = Self::add(self.conn(), addr, "aw", &args).await?;
        self.ring_followers(addr, &followers).await;
        Ok(())
    }

    async fn subscribe(&self, addr: &DocAddress) -> Result<Subscription, LogError> {
        let mut conn = self.conn();
        // The inbox exists: opened at start and renewed by the reader, which
        // re-opens it and ends every feed (so they register again) if Redis
        // lost it; an append that rings a registration whose inbox is
        // missing forgets it.
        let token = {
            let mut feeds = lock(&self.shared.feeds);
            feeds.next_token += 1;
            format!("{}-{}", now_ms(), feeds.next_token)
        };
        // Registered before the positions are read, in one step: every entry
        // after them rings this instance.
        let (log_last, aw_last): (String, String) = eval(
            REGISTER,
            &[&key(addr, "subs"), &key(addr, "log"), &key(addr, "aw")],
        )
        .arg(&self.shared.inbox)
        .arg(&token)
        .query_async(&mut conn)
        .await
        .map_err(unavailable)?;
        let (tx, rx) = mpsc::channel(FEED_BOUND);
        let name = addr.to_string();
        let id = {
            let mut feeds = lock(&self.shared.feeds);
            let id = feeds.next_id;
            feeds.next_id += 1;
            let doc = feeds.docs.entry(name.clone()).or_insert_with(|| DocFeeds {
                addr: addr.clone(),
                token: token.clone(),
                subs: HashMap::new(),
            });
            doc.token = token;
            doc.subs.insert(
                id,
                Feed {
                    log_last,
                    aw_last,
                    tx,
                },
            );
            id
        };
        let guard = Unsubscribe {
            shared: Arc::downgrade(&self.shared),
            conn,
            name,
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
        let min_id = LogCursor {
            ms: upto.ms,
            seq: upto.seq + 1,
        };
        // Trim and remember how far (never lowering it), in one step.
        let script = "redis.call('XTRIM', KEYS[1], 'MINID', ARGV[2])
            local c = redis.call('GET', KEYS[2])
            if not c then redis.call('SET', KEYS[2], ARGV[1]) return 1 end
            local cm, cs = string.match(c, '(%d+)-(%d+)')
            local nm, ns = string.match(ARGV[1], '(%d+)-(%d+)')
            if tonumber(nm) > tonumber(cm) or (tonumber(nm) == tonumber(cm) and tonumber(ns) > tonumber(cs)) then
              redis.call('SET', KEYS[2], ARGV[1]) end
            return 1";
        let _: i64 = eval(script, &[&key(addr, "log"), &key(addr, "trimmed")])
            .arg(upto.to_string())
            .arg(min_id.to_string())
            .query_async(&mut self.conn())
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
        let script =
            "redis.call('ZREM', KEYS[1], ARGV[1]) return redis.call('ZREM', KEYS[2], ARGV[1])";
        let _: i64 = eval(script, &[BACKLOG_KEY, CLEARING_KEY])
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
        // Both sets, oldest first: a document being cleared by a compactor
        // that died stays listed (its lease keeps a live one to itself).
        let script = "local a = redis.call('ZRANGE', KEYS[1], 0, ARGV[1], 'WITHSCORES')
            local b = redis.call('ZRANGE', KEYS[2], 0, ARGV[1], 'WITHSCORES')
            for i = 1, #b do a[#a + 1] = b[i] end
            return a";
        let flat: Vec<String> = eval(script, &[BACKLOG_KEY, CLEARING_KEY])
            .arg(limit.saturating_sub(1))
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let mut pairs: Vec<(&str, f64)> = flat
            .chunks_exact(2)
            .map(|p| (p[0].as_str(), p[1].parse().unwrap_or(0.0)))
            .collect();
        pairs.sort_by(|a, b| a.1.total_cmp(&b.1));
        let mut seen = HashSet::new();
        Ok(pairs
            .into_iter()
            .filter(|(m, _)| seen.insert(*m))
            .filter_map(|(m, _)| DocAddress::parse_path(m).ok())
            .take(limit)
            .collect())
    }

    async fn clear_backlog(
        &self,
        addr: &DocAddress,
        persisted: Option<LogCursor>,
    ) -> Result<(), LogError> {
        // The log and the backlog are in different slots, so this takes
        // three steps, each atomic: move the document to `clearing`; see
        // whether its log holds more than the store; move it back if so,
        // else drop it. An append after the first step re-lists it itself;
        // one before the second is seen there; a compactor dying in between
        // leaves it in `clearing`, which is still listed.
        let name = addr.to_string();
        let mut conn = self.conn();
        let claim = "local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
            if s then redis.call('ZREM', KEYS[1], ARGV[1]) redis.call('ZADD', KEYS[2], s, ARGV[1]) end
            return 1";
        let _: i64 = eval(claim, &[BACKLOG_KEY, CLEARING_KEY])
            .arg(&name)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let last = last_id(&mut conn, &key(addr, "log")).await?;
        let persisted = persisted.map(|c| c.to_string());
        let owed = last != "0-0" && Some(&last) != persisted.as_ref();
        let settle = "local s = redis.call('ZSCORE', KEYS[2], ARGV[1])
            redis.call('ZREM', KEYS[2], ARGV[1])
            if ARGV[2] == '1' then redis.call('ZADD', KEYS[1], 'NX', s or ARGV[3], ARGV[1]) end
            return 1";
        let _: i64 = eval(settle, &[BACKLOG_KEY, CLEARING_KEY])
            .arg(&name)
            .arg(if owed { "1" } else { "0" })
            .arg(now_ms())
            .query_async(&mut conn)
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
        let taken: i64 = eval(script, &[&key(addr, "lease")])
            .arg(holder)
            .arg(ttl.as_millis() as u64)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(taken == 1)
    }

    async fn release_lease(&self, addr: &DocAddress, holder: &str) -> Result<(), LogError> {
        let script = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";
        let _: i64 = eval(script, &[&key(addr, "lease")])
            .arg(holder)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

struct Unsubscribe {
    shared: Weak<Shared>,
    conn: Conn,
    name: String,
    id: u64,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let forget = {
            let mut feeds = lock(&shared.feeds);
            let Some(doc) = feeds.docs.get_mut(&self.name) else {
                return;
            };
            doc.subs.remove(&self.id);
            if !doc.subs.is_empty() {
                return;
            }
            let doc = feeds.docs.remove(&self.name).expect("present");
            (doc.addr, doc.token)
        };
        // The last feed of the document here: stop following it (unless a
        // newer subscription registered again meanwhile).
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut conn = self.conn.clone();
        let inbox = shared.inbox.clone();
        runtime.spawn(async move {
            let (addr, token) = forget;
            let _: Result<i64, _> = eval(FORGET, &[&key(&addr, "subs")])
                .arg(inbox)
                .arg(token)
                .query_async(&mut conn)
                .await;
        });
    }
}

/// Blocks on the instance's inbox and hands the documents rung to the
/// fetcher; renews the inbox.
async fn reader(mut blocking: Conn, mut conn: Conn, shared: Weak<Shared>, mut position: String) {
    let mut renewed = Instant::now();
    let (mut trimmed, mut trimmed_at) = (position.clone(), Instant::now());
    loop {
        let Some(log) = shared.upgrade() else {
            return; // the log was dropped
        };
        let inbox = log.inbox.clone();
        drop(log);
        if renewed.elapsed() >= INBOX_RENEW {
            let kept: Result<i64, _> = redis::cmd("PEXPIRE")
                .arg(&inbox)
                .arg(INBOX_TTL.as_millis() as u64)
                .query_async(&mut conn)
                .await;
            if let Ok(kept) = kept {
                renewed = Instant::now();
                if kept == 0 {
                    // Redis lost it (restarted empty, or this process stalled
                    // past its lifetime): bells may be lost, and appends
                    // forgot the registrations they rang. The inbox first,
                    // then every feed subscribes (registers) again.
                    tracing::warn!(%inbox, "redis log inbox was gone; feeds will resume by cursor");
                    if let Ok(start) = open_inbox(&mut conn, &inbox).await {
                        position = start;
                    }
                    end_all_feeds(&shared);
                }
            }
        }
        let reply: Result<Option<StreamReadReply>, _> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&inbox)
            .arg(&position)
            .query_async(&mut blocking)
            .await;
        let reply = match reply {
            Ok(Some(reply)) => reply,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "redis log read failed; feeds will resume by cursor");
                end_all_feeds(&shared);
                tokio::time::sleep(Duration::from_millis(250)).await;
                if let Ok(start) = open_inbox(&mut conn, &inbox).await {
                    position = start;
                    renewed = Instant::now();
                }
                continue;
            }
        };
        let Some(log) = shared.upgrade() else {
            return;
        };
        let mut rang = false;
        for e in reply.keys.iter().flat_map(|s| &s.ids) {
            position = e.id.clone();
            if let Some(name) = field(&e.map, "d").and_then(|d| std::str::from_utf8(d).ok()) {
                lock(&log.rung).insert(name.to_string());
                rang = true;
            }
        }
        if rang {
            log.ring.notify_one();
        }
        drop(log);
        // Drop what was read (rarely: one request per read-everything).
        if position != trimmed && trimmed_at.elapsed() >= Duration::from_secs(1) {
            let _: Result<i64, _> = redis::cmd("XTRIM")
                .arg(&inbox)
                .arg("MINID")
                .arg(&position)
                .query_async(&mut conn)
                .await;
            (trimmed, trimmed_at) = (position.clone(), Instant::now());
        }
    }
}

/// Reads the rung documents' streams and feeds the subscriptions.
async fn fetcher(conn: Conn, shared: Weak<Shared>, ring: Arc<Notify>) {
    let mut swept = Instant::now();
    loop {
        let Some(log) = shared.upgrade() else {
            return;
        };
        if swept.elapsed() >= SWEEP {
            // Bells are the fast path; this bounds how late an entry whose
            // bell was lost (a failed ring, an overfull inbox) arrives.
            let followed: Vec<String> = lock(&log.feeds).docs.keys().cloned().collect();
            lock(&log.rung).extend(followed);
            swept = Instant::now();
        }
        let rung: Vec<String> = lock(&log.rung).drain().collect();
        if rung.is_empty() {
            drop(log);
            // Wakes when rung (a ring while busy leaves a permit), or now
            // and then to notice the log was dropped.
            let _ = tokio::time::timeout(BLOCK, ring.notified()).await;
            continue;
        }
        let reads = rung.into_iter().filter_map(|name| {
            let positions = {
                let feeds = lock(&log.feeds);
                let doc = feeds.docs.get(&name)?;
                let mut subs = doc.subs.values();
                let first = subs.next()?;
                let (mut log_from, mut aw_from) = (first.log_last.clone(), first.aw_last.clone());
                for feed in subs {
                    if cursor_lt(&feed.log_last, &log_from) {
                        log_from = feed.log_last.clone();
                    }
                    if cursor_lt(&feed.aw_last, &aw_from) {
                        aw_from = feed.aw_last.clone();
                    }
                }
                (doc.addr.clone(), log_from, aw_from)
            };
            let mut conn = conn.clone();
            let log = &log;
            Some(async move {
                let (addr, log_from, aw_from) = positions;
                match read_streams(&mut conn, &addr, log_from, aw_from).await {
                    Ok(entries) => deliver(log, &name, entries),
                    Err(e) => {
                        tracing::warn!(error = %e, doc = %addr, "redis log read failed; feeds will resume by cursor");
                        if let Some(doc) = lock(&log.feeds).docs.get_mut(&name) {
                            doc.subs.clear();
                        }
                    }
                }
            })
        });
        join_all(reads).await;
    }
}

/// The entries of a document's log and awareness streams after the given
/// positions (all of them, in requests of [`READ_COUNT`]).
async fn read_streams(
    conn: &mut Conn,
    addr: &DocAddress,
    mut log_from: String,
    mut aw_from: String,
) -> Result<Vec<(EntryKind, String, LogEntry)>, redis::RedisError> {
    let (log_key, aw_key) = (key(addr, "log"), key(addr, "aw"));
    let mut out = Vec::new();
    loop {
        let reply: Option<StreamReadReply> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(READ_COUNT)
            .arg("STREAMS")
            .arg(&log_key)
            .arg(&aw_key)
            .arg(&log_from)
            .arg(&aw_from)
            .query_async(conn)
            .await?;
        let mut more = false;
        for stream in reply.map(|r| r.keys).unwrap_or_default() {
            let (kind, from) = if stream.key == log_key {
                (EntryKind::Update, &mut log_from)
            } else {
                (EntryKind::Awareness, &mut aw_from)
            };
            more |= stream.ids.len() >= READ_COUNT;
            for e in &stream.ids {
                *from = e.id.clone();
                if let Some(entry) = entry_from(&e.id, &e.map, kind.clone()) {
                    out.push((kind.clone(), e.id.clone(), entry));
                }
            }
        }
        if !more {
            return Ok(out);
        }
    }
}

/// Sends each feed of `name` the entries past its positions; a feed that is
/// full or closed ends (its owner resumes by cursor).
fn deliver(shared: &Shared, name: &str, entries: Vec<(EntryKind, String, LogEntry)>) {
    let mut feeds = lock(&shared.feeds);
    let Some(doc) = feeds.docs.get_mut(name) else {
        return;
    };
    doc.subs.retain(|_, feed| {
        for (kind, id, entry) in &entries {
            let last = if *kind == EntryKind::Update {
                &mut feed.log_last
            } else {
                &mut feed.aw_last
            };
            if !cursor_lt(last, id) {
                continue;
            }
            *last = id.clone();
            if feed.tx.try_send(entry.clone()).is_err() {
                return false;
            }
        }
        true
    });
}

/// `a < b` for stream ids (`0-0` smallest).
fn cursor_lt(a: &str, b: &str) -> bool {
    match (LogCursor::from_str(a), LogCursor::from_str(b)) {
        (Ok(a), Ok(b)) => a < b,
        _ => false,
    }
}

fn end_all_feeds(shared: &Weak<Shared>) {
    if let Some(shared) = shared.upgrade() {
        for doc in lock(&shared.feeds).docs.values_mut() {
            doc.subs.clear();
        }
    }
}
