//! The PostgreSQL store of scaled-out deployments (same schema as SQLite).

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use yrelay_protocol::DocAddress;

use super::sql::{Dialect, MOVE_MERGED, SqlStore, UPSERT_DOC};
use super::{DocDelta, NewUpdate, StoreError};

pub struct Postgres;

pub type PostgresStore = SqlStore<Postgres>;

impl Dialect for Postgres {
    type Db = sqlx::Postgres;
    const NAME: &'static str = "postgres";
    /// Under READ COMMITTED each statement sees its own snapshot, and a
    /// compaction committing between them gave the old snapshot without the
    /// updates it merged.
    const LOAD_SNAPSHOT: Option<&'static str> =
        Some("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY");
    /// Row locks and READ COMMITTED: a plain transaction writes.
    const BEGIN_WRITE: &'static str = "BEGIN";

    /// One statement per table for the whole batch (arrays + UNNEST): round
    /// trips, not rows, are what a commit costs.
    async fn append(
        conn: &mut PgConnection,
        batch: &[NewUpdate],
        deltas: &[DocDelta],
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO doc_updates (space, doc, data, created_at, editor)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::bytea[], $4::bigint[], $5::text[])",
        )
        .bind(batch.iter().map(|u| u.addr.space()).collect::<Vec<_>>())
        .bind(batch.iter().map(|u| u.addr.doc()).collect::<Vec<_>>())
        .bind(batch.iter().map(|u| &*u.data).collect::<Vec<_>>())
        .bind(batch.iter().map(|u| u.timestamp_ms).collect::<Vec<_>>())
        .bind(
            batch
                .iter()
                .map(|u| u.editor.as_deref())
                .collect::<Vec<_>>(),
        )
        .execute(&mut *conn)
        .await?;
        let sql = format!(
            "INSERT INTO docs (space, doc, created_at, updated_at, size, pending_updates, log_cursor)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[],
                                  $5::bigint[], $6::bigint[], $7::text[]) {UPSERT_DOC}"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(deltas.iter().map(|d| d.addr.space()).collect::<Vec<_>>())
            .bind(deltas.iter().map(|d| d.addr.doc()).collect::<Vec<_>>())
            .bind(deltas.iter().map(|d| d.first_ms).collect::<Vec<_>>())
            .bind(deltas.iter().map(|d| d.last_ms).collect::<Vec<_>>())
            .bind(deltas.iter().map(|d| d.bytes).collect::<Vec<_>>())
            .bind(deltas.iter().map(|d| d.updates).collect::<Vec<_>>())
            .bind(
                deltas
                    .iter()
                    .map(|d| d.log_cursor.map(|c| c.to_string()))
                    .collect::<Vec<_>>(),
            )
            .execute(conn)
            .await?;
        Ok(())
    }

    /// PostgreSQL allots ids at insert, not at commit: a transaction that
    /// committed after the merged updates were read may hold a lower id.
    async fn move_merged(
        conn: &mut PgConnection,
        addr: &DocAddress,
        merged: &[i64],
    ) -> Result<(), sqlx::Error> {
        for statement in MOVE_MERGED {
            let sql = format!("{statement} WHERE space = $1 AND doc = $2 AND id = ANY($3)");
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(addr.space())
                .bind(addr.doc())
                .bind(merged)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }
}

impl SqlStore<Postgres> {
    /// Connects to `url` and migrates the schema, or fails.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let (pool, migrated) = lazy(url)?;
        migrate(&pool).await?;
        migrated.store(true, Ordering::Release);
        Ok(Self::new(pool, migrated))
    }

    /// Like [`PostgresStore::open`], but an unreachable server does not stop
    /// the start (DESIGN invariant 5): the schema is migrated in the
    /// background once it answers, and until then every call fails as
    /// unavailable (and `/readyz` says so).
    pub async fn open_or_wait(url: &str) -> Result<Self, StoreError> {
        let (pool, migrated) = lazy(url)?;
        match migrate(&pool).await {
            Ok(()) => migrated.store(true, Ordering::Release),
            Err(e) => {
                tracing::warn!(error = %e, "PostgreSQL is unreachable: starting without it; the schema is migrated once it answers");
                let (pool, migrated) = (pool.clone(), migrated.clone());
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
        Ok(Self::new(pool, migrated))
    }
}

/// A pool that connects on first use (a bad URL still fails here).
fn lazy(url: &str) -> Result<(PgPool, Arc<AtomicBool>), StoreError> {
    let options =
        PgConnectOptions::from_str(url).map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options);
    Ok((pool, Arc::new(AtomicBool::new(false))))
}

/// How often a start without PostgreSQL tries the migration again.
const MIGRATE_RETRY: Duration = Duration::from_secs(1);

async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    sqlx::migrate!("./migrations/postgres")
        .run(pool)
        .await
        .map_err(|e| StoreError::Unavailable(format!("migration failed: {e}")))
}
