//! The embedded store: one SQLite file in WAL mode, `synchronous = FULL`
//! (an acknowledged update survives a power cut), written through sqlx.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, Row, SqlitePool};
use yrelay_protocol::DocAddress;

use super::{DocMeta, NewUpdate, Store, StoreError, StoredDoc, doc_deltas, transaction};
use crate::vocab::LogCursor;

pub struct SqliteStore {
    pool: SqlitePool,
}

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn meta_from_row(row: &SqliteRow) -> Result<DocMeta, sqlx::Error> {
    Ok(DocMeta {
        doc: row.try_get("doc")?,
        title: row.try_get("title")?,
        blocked: row.try_get("blocked")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        size: row.try_get("size")?,
    })
}

const META_COLUMNS: &str = "doc, title, blocked, created_at, updated_at, size";

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path` and migrates it.
    pub async fn open(path: &str) -> Result<Self, StoreError> {
        if let Some(dir) = Path::new(path)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(unavailable)?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(unavailable)?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migration failed: {e}")))?;
        Ok(Self { pool })
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    async fn load(&self, addr: &DocAddress) -> Result<Option<StoredDoc>, StoreError> {
        transaction(&self.pool, async |conn| {
            let mut tx = conn.begin().await.map_err(unavailable)?;
            let row = sqlx::query(
                "SELECT doc, title, blocked, created_at, updated_at, size, log_cursor
                 FROM docs WHERE space = ? AND doc = ?",
            )
            .bind(addr.space())
            .bind(addr.doc())
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable)?;
            let Some(row) = row else { return Ok(None) };
            let meta = meta_from_row(&row).map_err(unavailable)?;
            let log_cursor = row
                .try_get::<Option<String>, _>("log_cursor")
                .map_err(unavailable)?
                .map(|c| LogCursor::from_str(&c))
                .transpose()
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let snapshot: Option<Vec<u8>> =
                sqlx::query_scalar("SELECT data FROM doc_snapshots WHERE space = ? AND doc = ?")
                    .bind(addr.space())
                    .bind(addr.doc())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(unavailable)?;
            let updates = sqlx::query_as::<_, (i64, Vec<u8>)>(
                "SELECT id, data FROM doc_updates WHERE space = ? AND doc = ? ORDER BY id",
            )
            .bind(addr.space())
            .bind(addr.doc())
            .fetch_all(&mut *tx)
            .await
            .map_err(unavailable)?;
            tx.commit().await.map_err(unavailable)?;
            Ok(Some(StoredDoc {
                snapshot,
                updates,
                log_cursor,
                meta,
            }))
        })
        .await
    }

    async fn append(&self, batch: &[NewUpdate]) -> Result<(), StoreError> {
        transaction(&self.pool, async |conn| {
            let mut tx = conn.begin().await.map_err(unavailable)?;
            for u in batch {
                sqlx::query(
                    "INSERT INTO doc_updates (space, doc, data, created_at) VALUES (?, ?, ?, ?)",
                )
                .bind(u.addr.space())
                .bind(u.addr.doc())
                .bind(&*u.data)
                .bind(u.timestamp_ms)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            }
            for d in doc_deltas(batch) {
                sqlx::query(
                    "INSERT INTO docs (space, doc, created_at, updated_at, size, pending_updates, log_cursor)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (space, doc) DO UPDATE SET
                       updated_at = max(updated_at, excluded.updated_at),
                       size = size + excluded.size,
                       pending_updates = pending_updates + excluded.pending_updates,
                       log_cursor = coalesce(excluded.log_cursor, log_cursor)",
                )
                .bind(d.addr.space())
                .bind(d.addr.doc())
                .bind(d.first_ms)
                .bind(d.last_ms)
                .bind(d.bytes)
                .bind(d.updates)
                .bind(d.log_cursor.map(|c| c.to_string()))
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            }
            tx.commit().await.map_err(unavailable)
        })
        .await
    }

    async fn compact(
        &self,
        addr: &DocAddress,
        snapshot: &[u8],
        merged: &[i64],
    ) -> Result<(), StoreError> {
        // SQLite has one writer at a time, so ids are in commit order and
        // "up to the last merged id" is exactly the merged ones.
        let upto = merged.last().copied().unwrap_or(0);
        transaction(&self.pool, async |conn| {
            let mut tx = conn.begin().await.map_err(unavailable)?;
            sqlx::query("DELETE FROM doc_updates WHERE space = ? AND doc = ? AND id <= ?")
                .bind(addr.space())
                .bind(addr.doc())
                .bind(upto)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            sqlx::query(
                "INSERT INTO doc_snapshots (space, doc, data) VALUES (?, ?, ?)
                 ON CONFLICT (space, doc) DO UPDATE SET data = excluded.data",
            )
            .bind(addr.space())
            .bind(addr.doc())
            .bind(snapshot)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
            sqlx::query(
                "UPDATE docs SET
                   pending_updates = (SELECT count(*) FROM doc_updates WHERE space = ?1 AND doc = ?2),
                   size = ?3 + (SELECT coalesce(sum(length(data)), 0) FROM doc_updates WHERE space = ?1 AND doc = ?2)
                 WHERE space = ?1 AND doc = ?2",
            )
            .bind(addr.space())
            .bind(addr.doc())
            .bind(snapshot.len() as i64)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
            tx.commit().await.map_err(unavailable)
        })
        .await
    }

    async fn log_cursor(&self, addr: &DocAddress) -> Result<Option<LogCursor>, StoreError> {
        let cursor: Option<Option<String>> =
            sqlx::query_scalar("SELECT log_cursor FROM docs WHERE space = ? AND doc = ?")
                .bind(addr.space())
                .bind(addr.doc())
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?;
        cursor
            .flatten()
            .map(|c| LogCursor::from_str(&c))
            .transpose()
            .map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    async fn meta(&self, addr: &DocAddress) -> Result<Option<DocMeta>, StoreError> {
        let sql = format!("SELECT {META_COLUMNS} FROM docs WHERE space = ? AND doc = ?");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(addr.space())
            .bind(addr.doc())
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.as_ref()
            .map(meta_from_row)
            .transpose()
            .map_err(unavailable)
    }

    async fn list(&self, space: &str, after: Option<i64>) -> Result<Vec<DocMeta>, StoreError> {
        let sql = format!(
            "SELECT {META_COLUMNS} FROM docs WHERE space = ? AND updated_at > ? ORDER BY updated_at, doc"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(space)
            .bind(after.unwrap_or(i64::MIN))
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter()
            .map(meta_from_row)
            .collect::<Result<_, _>>()
            .map_err(unavailable)
    }

    async fn compaction_candidates(
        &self,
        min_pending: i64,
        idle_before: i64,
        limit: i64,
    ) -> Result<Vec<DocAddress>, StoreError> {
        let rows = sqlx::query_as::<_, (String, String)>(
            "SELECT space, doc FROM docs
             WHERE pending_updates > 0 AND (pending_updates >= ? OR updated_at < ?)
             ORDER BY pending_updates DESC LIMIT ?",
        )
        .bind(min_pending)
        .bind(idle_before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.into_iter()
            .map(|(s, d)| DocAddress::parse(&s, &d).map_err(|e| StoreError::Corrupt(e.to_string())))
            .collect()
    }

    async fn create(
        &self,
        addr: &DocAddress,
        snapshot: &[u8],
        timestamp_ms: i64,
    ) -> Result<bool, StoreError> {
        transaction(&self.pool, async |conn| {
            let mut tx = conn.begin().await.map_err(unavailable)?;
            let created = sqlx::query(
                "INSERT INTO docs (space, doc, created_at, updated_at, size) VALUES (?1, ?2, ?3, ?3, ?4)
                 ON CONFLICT (space, doc) DO NOTHING",
            )
            .bind(addr.space())
            .bind(addr.doc())
            .bind(timestamp_ms)
            .bind(snapshot.len() as i64)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?
            .rows_affected()
                > 0;
            if created {
                sqlx::query("INSERT INTO doc_snapshots (space, doc, data) VALUES (?1, ?2, ?3)")
                    .bind(addr.space())
                    .bind(addr.doc())
                    .bind(snapshot)
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
            }
            tx.commit().await.map_err(unavailable)?;
            Ok(created)
        })
        .await
    }

    async fn update_meta(
        &self,
        addr: &DocAddress,
        title: Option<&str>,
        blocked: Option<bool>,
    ) -> Result<Option<DocMeta>, StoreError> {
        let sql = format!(
            "UPDATE docs SET title = coalesce(?3, title), blocked = coalesce(?4, blocked)
             WHERE space = ?1 AND doc = ?2 RETURNING {META_COLUMNS}"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(addr.space())
            .bind(addr.doc())
            .bind(title)
            .bind(blocked)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.as_ref()
            .map(meta_from_row)
            .transpose()
            .map_err(unavailable)
    }

    async fn delete(&self, addr: &DocAddress, timestamp_ms: i64) -> Result<bool, StoreError> {
        transaction(&self.pool, async |conn| {
            let mut tx = conn.begin().await.map_err(unavailable)?;
            for table in ["doc_updates", "doc_snapshots"] {
                let sql = format!("DELETE FROM {table} WHERE space = ? AND doc = ?");
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(addr.space())
                    .bind(addr.doc())
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
            }
            let deleted = sqlx::query("DELETE FROM docs WHERE space = ? AND doc = ?")
                .bind(addr.space())
                .bind(addr.doc())
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?
                .rows_affected();
            sqlx::query(
                "INSERT INTO doc_tombstones (space, doc, deleted_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (space, doc) DO UPDATE SET deleted_at = excluded.deleted_at",
            )
            .bind(addr.space())
            .bind(addr.doc())
            .bind(timestamp_ms)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
            tx.commit().await.map_err(unavailable)?;
            Ok(deleted > 0)
        })
        .await
    }

    async fn deleted_at(&self, addr: &DocAddress) -> Result<Option<i64>, StoreError> {
        sqlx::query_scalar("SELECT deleted_at FROM doc_tombstones WHERE space = ?1 AND doc = ?2")
            .bind(addr.space())
            .bind(addr.doc())
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
