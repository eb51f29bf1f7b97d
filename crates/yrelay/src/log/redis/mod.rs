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

mod conn;
mod coordination;
mod entries;
mod fanout;
mod scripts;

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::join_all;
use tokio::sync::{Notify, mpsc};
use yrelay_protocol::DocAddress;

use self::conn::{Conn, Target, key, unavailable};
use self::entries::{entry_from, lock, origin_text};
use self::fanout::{Unsubscribe, fetcher, open_inbox, reader, ring};
use self::scripts::{APPEND, REGISTER, TRIM, UNLIST, eval};
use crate::clock::now_ms;
use crate::log::{
    Coordination, EntryKind, Log, LogCursor, LogEntry, LogError, Origin, Subscription,
};

pub(super) const FEED_BOUND: usize = 4096;
pub(super) const BLOCK: Duration = Duration::from_secs(2);
pub(super) const TIMEOUT: Duration = Duration::from_secs(5);
/// How long an append waits for its replicas (`--log-replicas`).
pub(super) const REPLICA_WAIT: Duration = Duration::from_secs(2);
pub(super) const BACKLOG_KEY: &str = "yrelay:{backlog}";
pub(super) const CLEARING_KEY: &str = "yrelay:{backlog}:clearing";
/// An inbox outlives its instance's last renewal by this long.
pub(super) const INBOX_TTL: Duration = Duration::from_secs(60);
pub(super) const INBOX_RENEW: Duration = Duration::from_secs(10);
/// A cap for an inbox nobody reads any more (its instance trims what it read).
pub(super) const INBOX_CAP: usize = 100_000;
/// Every followed document is read this often, rung or not.
pub(super) const SWEEP: Duration = Duration::from_secs(10);
/// Entries read per stream and request.
pub(super) const READ_COUNT: usize = 1024;

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
pub(super) struct Shared {
    inbox: String,
    feeds: Mutex<Feeds>,
    /// Documents rung and not yet read.
    rung: Mutex<HashSet<String>>,
    ring: Arc<Notify>,
}

#[derive(Default)]
pub(super) struct Feeds {
    next_id: u64,
    next_token: u64,
    /// The followed documents by name (`space/doc`).
    docs: HashMap<String, DocFeeds>,
}

pub(super) struct DocFeeds {
    addr: DocAddress,
    /// This instance's registration in the document's followers.
    token: String,
    subs: HashMap<u64, Feed>,
}

/// One subscription's stream positions and sender.
pub(super) struct Feed {
    log_last: LogCursor,
    aw_last: LogCursor,
    tx: mpsc::Sender<LogEntry>,
}

impl RedisLog {
    /// Connects to `setting`: one `redis://` URL (a cluster is detected), or
    /// several comma-separated seed URLs of a cluster. An append is
    /// acknowledged once `replicas` replicas of the node holding its
    /// document have it.
    pub async fn connect(setting: &str, replicas: usize, instance: u64) -> Result<Self, LogError> {
        let target = Target::detect(setting).await?;
        let mut conn = target.connect(TIMEOUT).await?;
        let reader_conn = target.connect(BLOCK + TIMEOUT).await?;
        let inbox = format!("yrelay:inbox:{{{instance:016x}}}");
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
            &[
                &key(addr, "subs"),
                &key(addr, "log"),
                &key(addr, "aw"),
                &key(addr, "trimmed"),
            ],
        )
        .arg(&self.shared.inbox)
        .arg(&token)
        .query_async(&mut conn)
        .await
        .map_err(unavailable)?;
        let position = |id: String| {
            LogCursor::from_str(&id).map_err(|_| {
                LogError::Unavailable(format!("redis answered a bad stream id {id:?}"))
            })
        };
        let (log_last, aw_last) = (position(log_last)?, position(aw_last)?);
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
                .filter_map(|e| entry_from(e.id.parse().ok()?, &e.map, EntryKind::Update))
                .collect(),
        ))
    }

    async fn trim(&self, addr: &DocAddress, upto: LogCursor) -> Result<(), LogError> {
        let min_id = LogCursor {
            ms: upto.ms,
            seq: upto.seq + 1,
        };
        // Trim and remember how far (never lowering it), in one step.
        let _: i64 = eval(TRIM, &[&key(addr, "log"), &key(addr, "trimmed")])
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
        let _: i64 = eval(UNLIST, &[BACKLOG_KEY, CLEARING_KEY])
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

    fn coordination(&self) -> &dyn Coordination {
        self
    }
}
