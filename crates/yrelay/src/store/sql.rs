//! The store's queries, written once for SQLite and PostgreSQL alike (both
//! read `$n` placeholders). What the two dialects must do differently — the
//! batch insert, which merged updates a compaction deletes, how a load reads
//! one snapshot — is a [`Dialect`].

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use sqlx::{Connection, Database, Encode, Executor, FromRow, IntoArguments, Pool, Type};
use yrelay_protocol::DocAddress;

use super::{
    DocDelta, DocMeta, NewUpdate, SpaceMeta, Store, StoreError, StoredDoc, doc_deltas, transaction,
};
use crate::vocab::LogCursor;

/// Where SQLite and PostgreSQL must differ.
pub trait Dialect: Send + Sync + 'static {
    type Db: Database;
    /// The store's name in logs and `/readyz`.
    const NAME: &'static str;
    /// Run first in a load's transaction, so that its three reads see one
    /// snapshot of the database (DESIGN invariant 11).
    const LOAD_SNAPSHOT: Option<&'static str>;
    /// Begins a transaction that writes: it takes the write lock at once
    /// (SQLite: a transaction begun as a reader cannot become a writer once
    /// another has committed since its read — "database is locked" at once,
    /// whatever the busy timeout — while one begun IMMEDIATE waits its turn).
    const BEGIN_WRITE: &'static str;

    /// Inserts the batch's updates and adds `deltas` to their documents'
    /// metadata (statement: [`UPSERT_DOC`]).
    fn append<'a>(
        conn: &'a mut <Self::Db as Database>::Connection,
        batch: &'a [NewUpdate],
        deltas: &'a [DocDelta],
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'a;

    /// Moves exactly the appended updates `merged` (ascending ids) of `addr`
    /// to its history (statements: [`MOVE_MERGED`]).
    fn move_merged<'a>(
        conn: &'a mut <Self::Db as Database>::Connection,
        addr: &'a DocAddress,
        merged: &'a [i64],
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'a;
}

/// Inserts one appended update: `$1` space, `$2` doc, `$3` data, `$4` time,
/// `$5` editor.
pub const INSERT_UPDATE: &str =
    "INSERT INTO doc_updates (space, doc, data, created_at, editor) VALUES ($1, $2, $3, $4, $5)";

/// What an append adds to a document's row that already exists; follows an
/// `INSERT INTO docs (space, doc, created_at, updated_at, size,
/// pending_updates, log_cursor) ...` of the dialect's choosing.
pub const UPSERT_DOC: &str = "ON CONFLICT (space, doc) DO UPDATE SET
       updated_at = CASE WHEN excluded.updated_at > docs.updated_at
                         THEN excluded.updated_at ELSE docs.updated_at END,
       size = docs.size + excluded.size,
       pending_updates = docs.pending_updates + excluded.pending_updates,
       log_cursor = coalesce(excluded.log_cursor, docs.log_cursor)";

/// Moves merged updates to the history, then deletes them; each statement
/// ends with the dialect's `WHERE` on `$1` space, `$2` doc, `$3` merged.
pub const MOVE_MERGED: [&str; 2] = [
    "INSERT INTO doc_history (space, doc, data, created_at, editor)
     SELECT space, doc, data, created_at, editor FROM doc_updates",
    "DELETE FROM doc_updates",
];

/// A `docs` row ([`DocRow`]): add a `WHERE`.
pub(super) const META: &str =
    "SELECT doc, title, blocked, created_at, updated_at, size, log_cursor, trashed_at FROM docs";

/// A `docs` row as read.
#[derive(FromRow)]
pub(super) struct DocRow {
    doc: String,
    title: Option<String>,
    blocked: bool,
    created_at: i64,
    updated_at: i64,
    size: i64,
    log_cursor: Option<String>,
    trashed_at: Option<i64>,
}

impl DocRow {
    pub(super) fn meta(self) -> DocMeta {
        DocMeta {
            doc: self.doc,
            title: self.title,
            blocked: self.blocked,
            created_at: self.created_at,
            updated_at: self.updated_at,
            size: self.size,
            trashed_at: self.trashed_at,
        }
    }
}

/// A `LIKE` pattern (escape `\\`) for "contains `search`", lower case.
fn contains(search: &str) -> String {
    let mut pattern = String::from("%");
    for c in search.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

fn cursor(text: Option<String>) -> Result<Option<LogCursor>, StoreError> {
    text.map(|c| LogCursor::from_str(&c))
        .transpose()
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// A [`Store`] on a SQL database of dialect `D`.
pub struct SqlStore<D: Dialect> {
    pub(super) pool: Pool<D::Db>,
    /// Set once the schema is migrated (a PostgreSQL store may start before
    /// its server answers; until then every call fails as unavailable).
    migrated: Arc<AtomicBool>,
}

impl<D: Dialect> SqlStore<D> {
    pub(super) fn new(pool: Pool<D::Db>, migrated: Arc<AtomicBool>) -> Self {
        Self { pool, migrated }
    }
}

#[async_trait]
impl<D: Dialect> Store for SqlStore<D>
where
    Self: super::History + super::Outbox + super::Revokes,
    for<'c> &'c mut <D::Db as Database>::Connection: Executor<'c, Database = D::Db>,
    <D::Db as Database>::Arguments: IntoArguments<D::Db>,
    for<'t> &'t str: Encode<'t, D::Db> + Type<D::Db>,
    for<'t> &'t [u8]: Encode<'t, D::Db> + Type<D::Db>,
    for<'t> Option<&'t str>: Encode<'t, D::Db> + Type<D::Db>,
    for<'t> i64: Encode<'t, D::Db> + Type<D::Db>,
    for<'t> Option<bool>: Encode<'t, D::Db> + Type<D::Db>,
    for<'r> DocRow: FromRow<'r, <D::Db as Database>::Row>,
    for<'r> (i64, Vec<u8>): FromRow<'r, <D::Db as Database>::Row>,
    for<'r> (String, String): FromRow<'r, <D::Db as Database>::Row>,
    for<'r> (String, i64, i64): FromRow<'r, <D::Db as Database>::Row>,
    for<'r> (Vec<u8>,): FromRow<'r, <D::Db as Database>::Row>,
    for<'r> (i64,): FromRow<'r, <D::Db as Database>::Row>,
    for<'r> (Option<String>,): FromRow<'r, <D::Db as Database>::Row>,
{
    fn name(&self) -> &'static str {
        D::NAME
    }

    async fn load(&self, addr: &DocAddress) -> Result<Option<StoredDoc>, StoreError> {
        transaction(&self.pool, async |conn| {
            let mut tx = conn.begin().await.map_err(unavailable)?;
            if let Some(sql) = D::LOAD_SNAPSHOT {
                sqlx::query(sql)
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
            }
            let row = sqlx::query_as::<_, DocRow>(sqlx::AssertSqlSafe(format!(
                "{META} WHERE space = $1 AND doc = $2"
            )))
            .bind(addr.space())
            .bind(addr.doc())
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable)?;
            let Some(mut row) = row else { return Ok(None) };
            let log_cursor = cursor(row.log_cursor.take())?;
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
                meta: row.meta(),
            }))
        })
        .await
    }

    async fn append(&self, batch: &[NewUpdate]) -> Result<(), StoreError> {
        let deltas = doc_deltas(batch);
        transaction(&self.pool, async |conn| {
            let mut tx = conn.begin_with(D::BEGIN_WRITE).await.map_err(unavailable)?;
            D::append(&mut tx, batch, &deltas)
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
            let mut tx = conn.begin_with(D::BEGIN_WRITE).await.map_err(unavailable)?;
            D::move_merged(&mut tx, addr, merged)
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
                   size = $3 + (SELECT CAST(coalesce(sum(octet_length(data)), 0) AS BIGINT)
                                FROM doc_updates WHERE space = $1 AND doc = $2)
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
        let text: Option<Option<String>> =
            sqlx::query_scalar("SELECT log_cursor FROM docs WHERE space = $1 AND doc = $2")
                .bind(addr.space())
                .bind(addr.doc())
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?;
        cursor(text.flatten())
    }

    async fn meta(&self, addr: &DocAddress) -> Result<Option<DocMeta>, StoreError> {
        let row = sqlx::query_as::<_, DocRow>(sqlx::AssertSqlSafe(format!(
            "{META} WHERE space = $1 AND doc = $2 AND trashed_at IS NULL"
        )))
        .bind(addr.space())
        .bind(addr.doc())
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(row.map(DocRow::meta))
    }

    async fn list(&self, space: &str, after: Option<i64>) -> Result<Vec<DocMeta>, StoreError> {
        let rows = sqlx::query_as::<_, DocRow>(sqlx::AssertSqlSafe(format!(
            "{META} WHERE space = $1 AND updated_at > $2 AND trashed_at IS NULL
             ORDER BY updated_at, doc"
        )))
        .bind(space)
        .bind(after.unwrap_or(i64::MIN))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(rows.into_iter().map(DocRow::meta).collect())
    }

    async fn page(
        &self,
        space: &str,
        search: &str,
        from: &str,
        limit: i64,
    ) -> Result<Vec<DocMeta>, StoreError> {
        let pattern = contains(search);
        let rows = sqlx::query_as::<_, DocRow>(sqlx::AssertSqlSafe(format!(
            "{META} WHERE space = $1 AND doc > $2 AND trashed_at IS NULL
               AND (LOWER(doc) LIKE $3 ESCAPE '\\' OR LOWER(COALESCE(title, '')) LIKE $3 ESCAPE '\\')
             ORDER BY doc LIMIT $4"
        )))
        .bind(space)
        .bind(from)
        .bind(pattern.as_str())
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(rows.into_iter().map(DocRow::meta).collect())
    }

    async fn spaces(
        &self,
        search: &str,
        from: &str,
        limit: i64,
    ) -> Result<Vec<SpaceMeta>, StoreError> {
        let pattern = contains(search);
        let rows = sqlx::query_as::<_, (String, i64, i64)>(
            "SELECT space, COUNT(*), MAX(updated_at) FROM docs
             WHERE space > $1 AND trashed_at IS NULL AND LOWER(space) LIKE $2 ESCAPE '\\'
             GROUP BY space ORDER BY space LIMIT $3",
        )
        .bind(from)
        .bind(pattern.as_str())
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        let space = |(space, docs, updated_at)| SpaceMeta {
            space,
            docs,
            updated_at,
        };
        Ok(rows.into_iter().map(space).collect())
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
            let mut tx = conn.begin_with(D::BEGIN_WRITE).await.map_err(unavailable)?;
            let created: Option<i64> = sqlx::query_scalar(
                "INSERT INTO docs (space, doc, created_at, updated_at, size) VALUES ($1, $2, $3, $3, $4)
                 ON CONFLICT (space, doc) DO NOTHING RETURNING size",
            )
            .bind(addr.space())
            .bind(addr.doc())
            .bind(timestamp_ms)
            .bind(snapshot.len() as i64)
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable)?;
            if created.is_some() {
                // The imported state is the document's first version: its
                // history builds on it.
                sqlx::query("INSERT INTO doc_snapshots (space, doc, data) VALUES ($1, $2, $3)")
                    .bind(addr.space())
                    .bind(addr.doc())
                    .bind(snapshot)
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
                sqlx::query(
                    "INSERT INTO doc_versions (space, doc, data, created_at, label, history_seq)
                     VALUES ($1, $2, $3, $4, 'imported', 0)",
                )
                .bind(addr.space())
                .bind(addr.doc())
                .bind(snapshot)
                .bind(timestamp_ms)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            }
            tx.commit().await.map_err(unavailable)?;
            Ok(created.is_some())
        })
        .await
    }

    async fn update_meta(
        &self,
        addr: &DocAddress,
        title: Option<&str>,
        blocked: Option<bool>,
    ) -> Result<Option<DocMeta>, StoreError> {
        let row = sqlx::query_as::<_, DocRow>(
            "UPDATE docs SET title = coalesce($3, title), blocked = coalesce($4, blocked)
             WHERE space = $1 AND doc = $2 AND trashed_at IS NULL
             RETURNING doc, title, blocked, created_at, updated_at, size, log_cursor, trashed_at",
        )
        .bind(addr.space())
        .bind(addr.doc())
        .bind(title)
        .bind(blocked)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(row.map(DocRow::meta))
    }

    async fn delete(&self, addr: &DocAddress, timestamp_ms: i64) -> Result<bool, StoreError> {
        transaction(&self.pool, async |conn| {
            let mut tx = conn.begin_with(D::BEGIN_WRITE).await.map_err(unavailable)?;
            for table in [
                "doc_updates",
                "doc_snapshots",
                "doc_history",
                "doc_versions",
            ] {
                let sql = format!("DELETE FROM {table} WHERE space = $1 AND doc = $2");
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(addr.space())
                    .bind(addr.doc())
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
            }
            let deleted: Option<i64> =
                sqlx::query_scalar("DELETE FROM docs WHERE space = $1 AND doc = $2 RETURNING size")
                    .bind(addr.space())
                    .bind(addr.doc())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(unavailable)?;
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
            Ok(deleted.is_some())
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
            return Err(StoreError::Unavailable(format!(
                "{} was unreachable at start: the schema is not migrated yet",
                D::NAME
            )));
        }
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
