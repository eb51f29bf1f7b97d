//! The embedded store: one SQLite file in WAL mode, `synchronous = FULL`
//! (an acknowledged update survives a power cut), written through sqlx.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use yrelay_protocol::DocAddress;

use super::sql::{Dialect, INSERT_UPDATE, MOVE_MERGED, SqlStore, UPSERT_DOC};
use super::{DocDelta, NewUpdate, StoreError};

pub struct Sqlite;

pub type SqliteStore = SqlStore<Sqlite>;

impl Dialect for Sqlite {
    type Db = sqlx::Sqlite;
    const NAME: &'static str = "sqlite";
    /// A SQLite transaction reads one snapshot already.
    const LOAD_SNAPSHOT: Option<&'static str> = None;
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";

    /// Row by row: SQLite statements cost no round trip.
    async fn append(
        conn: &mut SqliteConnection,
        batch: &[NewUpdate],
        deltas: &[DocDelta],
    ) -> Result<(), sqlx::Error> {
        for u in batch {
            sqlx::query(INSERT_UPDATE)
                .bind(u.addr.space())
                .bind(u.addr.doc())
                .bind(&*u.data)
                .bind(u.timestamp_ms)
                .bind(u.editor.as_deref())
                .execute(&mut *conn)
                .await?;
        }
        let sql = format!(
            "INSERT INTO docs (space, doc, created_at, updated_at, size, pending_updates, log_cursor)
             VALUES ($1, $2, $3, $4, $5, $6, $7) {UPSERT_DOC}"
        );
        for d in deltas {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(d.addr.space())
                .bind(d.addr.doc())
                .bind(d.first_ms)
                .bind(d.last_ms)
                .bind(d.bytes)
                .bind(d.updates)
                .bind(d.log_cursor.map(|c| c.to_string()))
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    /// SQLite has one writer at a time, so ids are in commit order and "up
    /// to the last merged id" is exactly the merged ones.
    async fn move_merged(
        conn: &mut SqliteConnection,
        addr: &DocAddress,
        merged: &[i64],
    ) -> Result<(), sqlx::Error> {
        for statement in MOVE_MERGED {
            let sql = format!("{statement} WHERE space = $1 AND doc = $2 AND id <= $3");
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(addr.space())
                .bind(addr.doc())
                .bind(merged.last().copied().unwrap_or(0))
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }
}

impl SqlStore<Sqlite> {
    /// Opens (creating if needed) the database file at `path` and migrates it.
    pub async fn open(path: &str) -> Result<Self, StoreError> {
        let unavailable = |e: sqlx::Error| StoreError::Unavailable(e.to_string());
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
        Ok(Self::new(pool, Arc::new(AtomicBool::new(true))))
    }
}
