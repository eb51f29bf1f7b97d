//! Fan-out: each instance blocks on its inbox; a rung document's streams
//! are read from each feed's position and delivered.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use redis::streams::StreamReadReply;
use tokio::sync::Notify;
use yrelay_protocol::DocAddress;

use super::conn::{Conn, key, unavailable};
use super::entries::{entry_from, field, lock};
use super::scripts::{FORGET, eval};
use super::{BLOCK, INBOX_CAP, INBOX_RENEW, INBOX_TTL, READ_COUNT, SWEEP, Shared};
use crate::clock::now_ms;
use crate::log::{EntryKind, LogEntry, LogError};
use crate::vocab::LogCursor;

impl Shared {
    pub(super) fn rang(&self, name: String) {
        lock(&self.rung).insert(name);
        self.ring.notify_one();
    }
}

/// Rings a follower's inbox; forgets the follower when its inbox is gone.
pub(super) async fn ring(
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
pub(super) async fn open_inbox(conn: &mut Conn, inbox: &str) -> Result<String, LogError> {
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

pub(super) struct Unsubscribe {
    pub(super) shared: Weak<Shared>,
    pub(super) conn: Conn,
    pub(super) name: String,
    pub(super) id: u64,
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
pub(super) async fn reader(
    mut blocking: Conn,
    mut conn: Conn,
    shared: Weak<Shared>,
    mut position: String,
) {
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
                // The inbox is made sure of, but read on from where this
                // left off: the feeds register again at once, and the bells
                // their appends ring meanwhile must not be skipped (a bell
                // skipped was caught by the sweep only, and by then the
                // entry could be trimmed from the log: a replica missed it).
                // Stream ids grow with time, so a new inbox reads on too.
                if open_inbox(&mut conn, &inbox).await.is_ok() {
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
pub(super) async fn fetcher(conn: Conn, shared: Weak<Shared>, ring: Arc<Notify>) {
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
                let (mut log_from, mut aw_from) = (first.log_last, first.aw_last);
                for feed in subs {
                    log_from = log_from.min(feed.log_last);
                    aw_from = aw_from.min(feed.aw_last);
                }
                (doc.addr.clone(), log_from, aw_from)
            };
            let mut conn = conn.clone();
            let log = &log;
            Some(async move {
                let (addr, log_from, aw_from) = positions;
                match read_streams(&mut conn, &addr, log_from, aw_from).await {
                    Ok(Some(entries)) => deliver(log, &name, entries),
                    Ok(None) => {
                        // Trimmed before this instance fetched it (a bell
                        // lost, the sweep late): the store has it.
                        tracing::warn!(doc = %addr, "redis log trimmed past a feed's position; feeds will resume by cursor");
                        if let Some(doc) = lock(&log.feeds).docs.get_mut(&name) {
                            doc.subs.clear();
                        }
                    }
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
/// positions (all of them, in requests of [`READ_COUNT`]); `None` when the
/// update stream was trimmed past `log_from` (entries after it may be gone).
pub(super) async fn read_streams(
    conn: &mut Conn,
    addr: &DocAddress,
    mut log_from: LogCursor,
    mut aw_from: LogCursor,
) -> Result<Option<Vec<(EntryKind, LogCursor, LogEntry)>>, redis::RedisError> {
    let (log_key, aw_key) = (key(addr, "log"), key(addr, "aw"));
    let mut out = Vec::new();
    let mut first = true;
    loop {
        let mut read = redis::pipe();
        read.cmd("GET").arg(key(addr, "trimmed"));
        read.cmd("XREAD")
            .arg("COUNT")
            .arg(READ_COUNT)
            .arg("STREAMS")
            .arg(&log_key)
            .arg(&aw_key)
            .arg(log_from.to_string())
            .arg(aw_from.to_string());
        let (trimmed, reply): (Option<String>, Option<StreamReadReply>) =
            read.query_async(conn).await?;
        let trimmed = trimmed.and_then(|t| t.parse::<LogCursor>().ok());
        if first && trimmed.is_some_and(|t| t > log_from) {
            return Ok(None);
        }
        first = false;
        let mut more = false;
        for stream in reply.map(|r| r.keys).unwrap_or_default() {
            let (kind, from) = if stream.key == log_key {
                (EntryKind::Update, &mut log_from)
            } else {
                (EntryKind::Awareness, &mut aw_from)
            };
            more |= stream.ids.len() >= READ_COUNT;
            for e in &stream.ids {
                let Ok(id) = e.id.parse::<LogCursor>() else {
                    tracing::warn!(id = %e.id, doc = %addr, "redis answered a bad stream id; entry skipped");
                    continue;
                };
                *from = id;
                if let Some(entry) = entry_from(id, &e.map, kind.clone()) {
                    out.push((kind.clone(), id, entry));
                }
            }
        }
        if !more {
            return Ok(Some(out));
        }
    }
}

/// Sends each feed of `name` the entries past its positions; a feed that is
/// full or closed ends (its owner resumes by cursor).
pub(super) fn deliver(shared: &Shared, name: &str, entries: Vec<(EntryKind, LogCursor, LogEntry)>) {
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
            if *last >= *id {
                continue;
            }
            *last = *id;
            if feed.tx.try_send(entry.clone()).is_err() {
                return false;
            }
        }
        true
    });
}

pub(super) fn end_all_feeds(shared: &Weak<Shared>) {
    if let Some(shared) = shared.upgrade() {
        for doc in lock(&shared.feeds).docs.values_mut() {
            doc.subs.clear();
        }
    }
}
