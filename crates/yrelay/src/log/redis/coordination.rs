//! The compactors' coordination: the backlog of documents the log holds
//! beyond the store, and the lease of each document.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use yrelay_protocol::DocAddress;

use super::conn::{key, unavailable};
use super::entries::last_id;
use super::scripts::{BACKLOG, CLAIM, RELEASE_LEASE, SETTLE, TAKE_LEASE, eval};
use super::{BACKLOG_KEY, CLEARING_KEY, RedisLog};
use crate::clock::now_ms;
use crate::log::{Coordination, LogCursor, LogError};

#[async_trait]
impl Coordination for RedisLog {
    async fn backlog(&self, limit: usize) -> Result<Vec<DocAddress>, LogError> {
        // Both sets, oldest first: a document being cleared by a compactor
        // that died stays listed (its lease keeps a live one to itself).
        let flat: Vec<String> = eval(BACKLOG, &[BACKLOG_KEY, CLEARING_KEY])
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
        let _: i64 = eval(CLAIM, &[BACKLOG_KEY, CLEARING_KEY])
            .arg(&name)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let last = last_id(&mut conn, &key(addr, "log")).await?;
        let persisted = persisted.map(|c| c.to_string());
        let owed = last != "0-0" && Some(&last) != persisted.as_ref();
        let _: i64 = eval(SETTLE, &[BACKLOG_KEY, CLEARING_KEY])
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
        let taken: i64 = eval(TAKE_LEASE, &[&key(addr, "lease")])
            .arg(holder)
            .arg(ttl.as_millis() as u64)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(taken == 1)
    }

    async fn release_lease(&self, addr: &DocAddress, holder: &str) -> Result<(), LogError> {
        let _: i64 = eval(RELEASE_LEASE, &[&key(addr, "lease")])
            .arg(holder)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
