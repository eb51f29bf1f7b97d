//! The PostgreSQL store of scaled-out deployments (same schema as SQLite).

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{Connection, PgPool, Row};
use yrelay_protocol::DocAddress;

use super::{DocMeta, NewUpdate, Store, StoreError, StoredDoc, doc_deltas, transaction};
use crate::vocab::LogCursor;

pub struct PostgresStore {
    pool: PgPool,
    /// Set once the schema is migrated (at once, or in the background when
    /// PostgreSQL was unreachable at start).
    migrated: Arc<AtomicBool>,
}

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn meta_from_row(row: &PgRow) -> Result<DocMeta, sqlx::Error> {
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

impl PostgresStore {
    /// Connects to `url` and migrates the schema, or fails.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let store = Self::lazy(url)?;
        migrate(&store.pool).await?;
        store.migrated.store(true, Ordering::Release);
        Ok(store)
    }

    /// Like [`PostgresStore::open`], but an unreachable server does not stop
    /// the start (DESIGN invariant 5): the schema is migrated in the
    /// background once it answers, and until then every call fails as
    /// unavailable (and `/readyz` says so).
    pub async fn open_or_wait(url: &str) -> Result<Self, StoreError> {
        let store = Self::lazy(url)?;
        match migrate(&store.pool).await {
            Ok(()) => store.migrated.store(true, Ordering::Release),
            Err(e) => {
                tracing::warn!(error = %e, "PostgreSQL is unreachable: starting without it; the schema is migrated once it answers");
                let (pool, migrated) = (store.pool.clone(), store.migrated.clone());
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(MIGRATE_RETRY).await;
                        if migrate(&pool).await.is_ok() {
                            migrated.store(true, Ordering::Release);
                            tracing::info!("PostgreSQL answers: schema migrated");
                            return;
                        }
                    }
                });
            }
        }
        Ok(store)
    }

    /// A pool that connects on first use (a bad URL still fails here).
    fn lazy(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url).map_err(unavailable)?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(options);
        Ok(Self {
            pool,
            migrated: Arc::new(AtomicBool::new(false)),
        })
    }
}

/// How often a start without PostgreSQL tries the migration again.
const MIGRATE_RETRY: Duration = Duration::from_secs(1);

async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    sqlx::migrate!("./migrations/postgres")
        .run(pool)
        .await
        .map_err(|e| StoreError::Unavailable(format!("migration failed: {e}")))
}

#[async_trait]
impl Store for PostgresStore {
    fn name(&self) -> &'static str {
        "postgres"
    }

    async fn load(&self, addr: &DocAddress) -> Result<Option<StoredDoc>, StoreError> {
        transaction(&self.pool, async |conn| {
            let mut tx = conn.begin().await.map_err(unavailable)?;
            // One snapshot for the three reads (DESIGN invariant 11): under READ
            // COMMITTED each statement sees its own, and a compaction committing
            // between them gave the old snapshot without the updates it merged.
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            let row = sqlx::query(
                "SELECT doc, title, blocked, created_at, updated_at, size, log_cursor
                 FROM docs WHERE space = $1 AND doc = $2",
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
                sqlx::query_scalar("SELECT data FROM doc_snapshots WHERE space = $1 AND doc = $2")
                    .bind(addr.space())
                    .bind(addr.doc())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(unavailable)?;
            let updates = sqlx::query_as::<_, (i64, Vec<u8>)>(
                "SELECT id, data FROM doc_updates WHERE space = $1 AND doc = $2 ORDER BY id",
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
        // One statement per table for the whole batch (arrays + UNNEST):
        // round trips, not rows, are what a commit costs.
        let spaces: Vec<&str> = batch.iter().map(|u| u.addr.space()).collect();
        let docs: Vec<&str> = batch.iter().map(|u| u.addr.doc()).collect();
        let data: Vec<&[u8]> = batch.iter().map(|u| &*u.data).collect();
        let times: Vec<i64> = batch.iter().map(|u| u.timestamp_ms).collect();
        let deltas = doc_deltas(batch);
        transaction(&self.pool, async |conn| {
            let mut tx = conn.begin().await.map_err(unavailable)?;
            sqlx::query(
                "INSERT INTO doc_updates (space, doc, data, created_at)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::bytea[], $4::bigint[])",
            )
            .bind(&spaces)
            .bind(&docs)
            .bind(&data)
            .bind(&times)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
            sqlx::query(
                "INSERT INTO docs (space, doc, created_at, updated_at, size, pending_updates, log_cursor)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], $7::text[])
                 ON CONFLICT (space, doc) DO UPDATE SET
                   updated_at = GREATEST(docs.updated_at, excluded.updated_at),
                   size = docs.size + excluded.size,
                   pending_updates = docs.pending_updates + excluded.pending_updates,
                   log_cursor = coalesce(excluded.log_cursor, docs.log_cursor)",
            )
            .bind(deltas.iter().map(|d| d.addr.space()).collect::<Vec<_>>())
            .bind(deltas.iter().map(|d| d.addr.doc()).collect::<Vec<_>>())
            .bind(deltas.iter().map(|d| d.first_ms).collect::<Vec<_>>())
            .bind(deltas.iter().map(|d| d.last_ms).collect::<Vec<_>>())
            .bind(deltas.iter().map(|d| d.bytes).collect::<Vec<_>>())
            .bind(deltas.iter().map(|d| d.updates).collect::<Vec<_>>())
            .bind(deltas.iter().map(|d| d.log_cursor.map(|c| c.to_string())).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
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
        transaction(&self.pool, async |conn| {
            let mut tx = conn.begin().await.map_err(unavailable)?;
            sqlx::query("DELETE FROM doc_updates WHERE space = $1 AND doc = $2 AND id = ANY($3)")
                .bind(addr.space())
                .bind(addr.doc())
                .bind(merged)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            sqlx::query(
                "INSERT INTO doc_snapshots (space, doc, data) VALUES ($1, $2, $3)
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
                   pending_updates = (SELECT count(*) FROM doc_updates WHERE space = $1 AND doc = $2),
                   size = $3 + (SELECT coalesce(sum(octet_length(data)), 0)::BIGINT FROM doc_updates WHERE space = $1 AND doc = $2)
                 WHERE space = $1 AND doc = $2",
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
            sqlx::query_scalar("SELECT log_cursor FROM docs WHERE space = $1 AND doc = $2")
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
        let sql = format!("SELECT {META_COLUMNS} FROM docs WHERE space = $1 AND doc = $2");
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
            "SELECT {META_COLUMNS} FROM docs WHERE space = $1 AND updated_at > $2 ORDER BY updated_at, doc"
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
             WHERE pending_updates > 0 AND (pending_updates >= $1 OR updated_at < $2)
             ORDER BY pending_updates DESC LIMIT $3",
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
                "INSERT INTO docs (space, doc, created_at, updated_at, size) VALUES ($1, $2, $3, $3, $4)
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
                sqlx::query("INSERT INTO doc_snapshots (space, doc, data) VALUES ($1, $2, $3)")
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
            "UPDATE docs SET title = coalesce($3, title), blocked = coalesce($4, blocked)
             WHERE space = $1 AND doc = $2 RETURNING {META_COLUMNS}"
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
                let sql = format!("DELETE FROM {table} WHERE space = $1 AND doc = $2");
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(addr.space())
                    .bind(addr.doc())
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
            }
            let deleted = sqlx::query("DELETE FROM docs WHERE space = $1 AND doc = $2")
                .bind(addr.space())
                .bind(addr.doc())
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?
                .rows_affected();
            sqlx::query(
                "INSERT INTO doc_tombstones (space, doc, deleted_at) VALUES ($1, $2, $3)
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
        sqlx::query_scalar("SELECT deleted_at FROM doc_tombstones WHERE space = $1 AND doc = $2")
            .bind(addr.space())
            .bind(addr.doc())
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        if !self.migrated.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable(
                "PostgreSQL was unreachable at start: the schema is not migrated yet".into(),
            ));
        }
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
