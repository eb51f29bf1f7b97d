//! A document's history in the store: versions (its full state at a
//! moment) and the exact history (every update of the window, with its time
//! and editor: the appended updates and those a compaction moved to
//! `doc_history`). Written by the compactor and the REST API, never on the
//! update path; loads never read it. And the trash: a deleted document
//! keeps everything until it is undeleted or purged.

use async_trait::async_trait;
use sqlx::{Connection, Database, Encode, Executor, FromRow, IntoArguments, Type};
use yrelay_protocol::DocAddress;

use super::sql::{Dialect, DocRow, META, SqlStore, unavailable};
use super::{StoreError, transaction};
use crate::vocab::{Change, DocMeta, VersionMeta};

/// A version to record.
#[derive(Debug, Clone, Copy)]
pub struct NewVersion<'a> {
    /// The document's full state (one v1 update).
    pub state: &'a [u8],
    pub timestamp_ms: i64,
    pub label: Option<&'a str>,
    /// Made by a compaction from the snapshot it just wrote: the version
    /// holds every update moved to the history so far, which may then be
    /// trimmed once the window has passed.
    pub compacted: bool,
    /// Recorded only if the newest version is at least this much older
    /// (milliseconds; automatic versions).
    pub unless_within_ms: Option<i64>,
}

/// What a prune removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub changes: u64,
    pub versions: u64,
}

/// Versions and exact history (see the module docs).
#[async_trait]
pub trait History {
    /// Records a version; `None` when [`NewVersion::unless_within_ms`] says
    /// a newer one exists.
    async fn add_version(
        &self,
        addr: &DocAddress,
        version: NewVersion<'_>,
    ) -> Result<Option<VersionMeta>, StoreError>;

    /// The versions of `addr`, newest first.
    async fn versions(&self, addr: &DocAddress) -> Result<Vec<VersionMeta>, StoreError>;

    /// One version and its state.
    async fn version(
        &self,
        addr: &DocAddress,
        id: i64,
    ) -> Result<Option<(VersionMeta, Vec<u8>)>, StoreError>;

    /// The newest version at or before `at` (ms), and its state.
    async fn version_at(
        &self,
        addr: &DocAddress,
        at: i64,
    ) -> Result<Option<(VersionMeta, Vec<u8>)>, StoreError>;

    /// The updates the store holds of `addr` written from `from` to `to`
    /// (ms, both included), oldest first.
    async fn changes(
        &self,
        addr: &DocAddress,
        from: i64,
        to: i64,
    ) -> Result<Vec<Change>, StoreError>;

    /// Drops the exact history written before `exact_before` that a version
    /// holds, and the versions older than `versions_before` (labelled ones
    /// only without `keep_labelled`) but the newest at or before
    /// `exact_before`, which the history after it builds on.
    async fn prune(
        &self,
        exact_before: i64,
        versions_before: i64,
        keep_labelled: bool,
    ) -> Result<Pruned, StoreError>;

    /// Moves a document to the trash at `at` (ms); `false` if it is not in
    /// the store or already there.
    async fn trash(&self, addr: &DocAddress, at: i64) -> Result<bool, StoreError>;

    /// Takes a document out of the trash; `false` if it is not there.
    async fn untrash(&self, addr: &DocAddress) -> Result<bool, StoreError>;

    /// When `addr` was moved to the trash, if it is there.
    async fn trashed_at(&self, addr: &DocAddress) -> Result<Option<i64>, StoreError>;

    /// The documents of a space in the trash, most recently deleted first.
    async fn trash_list(&self, space: &str) -> Result<Vec<DocMeta>, StoreError>;

    /// Documents in the trash since before `before` (ms), at most `limit`.
    async fn expired_trash(&self, before: i64, limit: i64) -> Result<Vec<DocAddress>, StoreError>;
}

#[derive(FromRow)]
struct VersionRow {
    id: i64,
    created_at: i64,
    label: Option<String>,
    editors: String,
    size: i64,
}

impl VersionRow {
    fn meta(self) -> VersionMeta {
        VersionMeta {
            id: self.id,
            timestamp_ms: self.created_at,
            label: self.label,
            editors: serde_json::from_str(&self.editors).unwrap_or_default(),
            size: self.size,
        }
    }
}

/// A version with its state.
#[derive(FromRow)]
struct StateRow {
    #[sqlx(flatten)]
    version: VersionRow,
    data: Vec<u8>,
}

impl StateRow {
    fn split(self) -> (VersionMeta, Vec<u8>) {
        (self.version.meta(), self.data)
    }
}

#[derive(FromRow)]
struct ChangeRow {
    created_at: i64,
    editor: Option<String>,
    data: Vec<u8>,
}

const VERSION: &str = "SELECT id, created_at, label, editors,
    CAST(octet_length(data) AS BIGINT) AS size, data FROM doc_versions";

/// The exact history of `$1` space, `$2` doc: moved and appended updates.
const EXACT: &str =
    "(SELECT created_at, editor, data FROM doc_history WHERE space = $1 AND doc = $2
     UNION ALL
     SELECT created_at, editor, data FROM doc_updates WHERE space = $1 AND doc = $2) h";

#[async_trait]
impl<D: Dialect> History for SqlStore<D>
where
    for<'c> &'c mut <D::Db as Database>::Connection: Executor<'c, Database = D::Db>,
    <D::Db as Database>::Arguments: IntoArguments<D::Db>,
    for<'t> &'t str: Encode<'t, D::Db> + Type<D::Db>,
    for<'t> &'t [u8]: Encode<'t, D::Db> + Type<D::Db>,
    for<'t> Option<&'t str>: Encode<'t, D::Db> + Type<D::Db>,
    for<'t> Option<i64>: Encode<'t, D::Db> + Type<D::Db>,
    for<'t> i64: Encode<'t, D::Db> + Type<D::Db>,
    for<'t> bool: Encode<'t, D::Db> + Type<D::Db>,
    for<'r> VersionRow: FromRow<'r, <D::Db as Database>::Row>,
    for<'r> StateRow: FromRow<'r, <D::Db as Database>::Row>,
    for<'r> ChangeRow: FromRow<'r, <D::Db as Database>::Row>,
    for<'r> (Option<i64>,): FromRow<'r, <D::Db as Database>::Row>,
    for<'r> (i64,): FromRow<'r, <D::Db as Database>::Row>,
    for<'r> (String,): FromRow<'r, <D::Db as Database>::Row>,
    for<'r> (Vec<u8>,): FromRow<'r, <D::Db as Database>::Row>,
    for<'r> DocRow: FromRow<'r, <D::Db as Database>::Row>,
    for<'r> (String, String): FromRow<'r, <D::Db as Database>::Row>,
{
    async fn add_version(
        &self,
        addr: &DocAddress,
        version: NewVersion<'_>,
    ) -> Result<Option<VersionMeta>, StoreError> {
        transaction(&self.pool, async |conn| {
            let mut tx = conn.begin_with(D::BEGIN_WRITE).await.map_err(unavailable)?;
            let (newest,): (Option<i64>,) = sqlx::query_as(
                "SELECT max(created_at) FROM doc_versions WHERE space = $1 AND doc = $2",
            )
            .bind(addr.space())
            .bind(addr.doc())
            .fetch_one(&mut *tx)
            .await
            .map_err(unavailable)?;
            if let (Some(newest), Some(within)) = (newest, version.unless_within_ms)
                && newest > version.timestamp_ms - within
            {
                return Ok(None);
            }
            let editors: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT DISTINCT editor FROM {EXACT}
                 WHERE editor IS NOT NULL AND created_at > $3 ORDER BY editor"
            )))
            .bind(addr.space())
            .bind(addr.doc())
            .bind(newest.unwrap_or(i64::MIN))
            .fetch_all(&mut *tx)
            .await
            .map_err(unavailable)?;
            let editors: Vec<String> = editors.into_iter().map(|(e,)| e).collect();
            let seq: Option<i64> = if version.compacted {
                let (seq,): (Option<i64>,) = sqlx::query_as(
                    "SELECT max(seq) FROM doc_history WHERE space = $1 AND doc = $2",
                )
                .bind(addr.space())
                .bind(addr.doc())
                .fetch_one(&mut *tx)
                .await
                .map_err(unavailable)?;
                Some(seq.unwrap_or(0))
            } else {
                None
            };
            let (id,): (i64,) = sqlx::query_as(
                "INSERT INTO doc_versions (space, doc, created_at, label, editors, data, history_seq)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            )
            .bind(addr.space())
            .bind(addr.doc())
            .bind(version.timestamp_ms)
            .bind(version.label)
            .bind(serde_json::to_string(&editors).unwrap_or_else(|_| "[]".into()).as_str())
            .bind(version.state)
            .bind(seq)
            .fetch_one(&mut *tx)
            .await
            .map_err(unavailable)?;
            tx.commit().await.map_err(unavailable)?;
            Ok(Some(VersionMeta {
                id,
                timestamp_ms: version.timestamp_ms,
                label: version.label.map(str::to_owned),
                editors,
                size: version.state.len() as i64,
            }))
        })
        .await
    }

    async fn versions(&self, addr: &DocAddress) -> Result<Vec<VersionMeta>, StoreError> {
        let rows = sqlx::query_as::<_, VersionRow>(
            "SELECT id, created_at, label, editors, CAST(octet_length(data) AS BIGINT) AS size
             FROM doc_versions WHERE space = $1 AND doc = $2 ORDER BY created_at DESC, id DESC",
        )
        .bind(addr.space())
        .bind(addr.doc())
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(rows.into_iter().map(VersionRow::meta).collect())
    }

    async fn version(
        &self,
        addr: &DocAddress,
        id: i64,
    ) -> Result<Option<(VersionMeta, Vec<u8>)>, StoreError> {
        let row = sqlx::query_as::<_, StateRow>(sqlx::AssertSqlSafe(format!(
            "{VERSION} WHERE space = $1 AND doc = $2 AND id = $3"
        )))
        .bind(addr.space())
        .bind(addr.doc())
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(row.map(StateRow::split))
    }

    async fn version_at(
        &self,
        addr: &DocAddress,
        at: i64,
    ) -> Result<Option<(VersionMeta, Vec<u8>)>, StoreError> {
        let row = sqlx::query_as::<_, StateRow>(sqlx::AssertSqlSafe(format!(
            "{VERSION} WHERE space = $1 AND doc = $2 AND created_at <= $3
             ORDER BY created_at DESC, id DESC LIMIT 1"
        )))
        .bind(addr.space())
        .bind(addr.doc())
        .bind(at)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(row.map(StateRow::split))
    }

    async fn changes(
        &self,
        addr: &DocAddress,
        from: i64,
        to: i64,
    ) -> Result<Vec<Change>, StoreError> {
        let rows = sqlx::query_as::<_, ChangeRow>(sqlx::AssertSqlSafe(format!(
            "SELECT created_at, editor, data FROM {EXACT}
             WHERE created_at >= $3 AND created_at <= $4 ORDER BY created_at"
        )))
        .bind(addr.space())
        .bind(addr.doc())
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(rows
            .into_iter()
            .map(|r| Change {
                timestamp_ms: r.created_at,
                editor: r.editor,
                data: r.data,
            })
            .collect())
    }

    async fn prune(
        &self,
        exact_before: i64,
        versions_before: i64,
        keep_labelled: bool,
    ) -> Result<Pruned, StoreError> {
        let changes: Vec<(i64,)> = sqlx::query_as(
            "DELETE FROM doc_history WHERE created_at < $1 AND seq <= (
               SELECT max(v.history_seq) FROM doc_versions v
               WHERE v.space = doc_history.space AND v.doc = doc_history.doc
                 AND v.created_at <= $1)
             RETURNING seq",
        )
        .bind(exact_before)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        let versions: Vec<(i64,)> = sqlx::query_as(
            "DELETE FROM doc_versions WHERE created_at < $1 AND (label IS NULL OR $2 = FALSE)
               AND id <> (SELECT max(w.id) FROM doc_versions w
                          WHERE w.space = doc_versions.space AND w.doc = doc_versions.doc
                            AND w.created_at <= $3)
             RETURNING id",
        )
        .bind(versions_before)
        .bind(keep_labelled)
        .bind(exact_before)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(Pruned {
            changes: changes.len() as u64,
            versions: versions.len() as u64,
        })
    }

    async fn trash(&self, addr: &DocAddress, at: i64) -> Result<bool, StoreError> {
        let moved: Option<(i64,)> = sqlx::query_as(
            "UPDATE docs SET trashed_at = $3
             WHERE space = $1 AND doc = $2 AND trashed_at IS NULL RETURNING size",
        )
        .bind(addr.space())
        .bind(addr.doc())
        .bind(at)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(moved.is_some())
    }

    async fn untrash(&self, addr: &DocAddress) -> Result<bool, StoreError> {
        let moved: Option<(i64,)> = sqlx::query_as(
            "UPDATE docs SET trashed_at = NULL
             WHERE space = $1 AND doc = $2 AND trashed_at IS NOT NULL RETURNING size",
        )
        .bind(addr.space())
        .bind(addr.doc())
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(moved.is_some())
    }

    async fn trashed_at(&self, addr: &DocAddress) -> Result<Option<i64>, StoreError> {
        let at: Option<(Option<i64>,)> =
            sqlx::query_as("SELECT trashed_at FROM docs WHERE space = $1 AND doc = $2")
                .bind(addr.space())
                .bind(addr.doc())
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?;
        Ok(at.and_then(|(at,)| at))
    }

    async fn trash_list(&self, space: &str) -> Result<Vec<DocMeta>, StoreError> {
        let rows = sqlx::query_as::<_, DocRow>(sqlx::AssertSqlSafe(format!(
            "{META} WHERE space = $1 AND trashed_at IS NOT NULL ORDER BY trashed_at DESC, doc"
        )))
        .bind(space)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(rows.into_iter().map(DocRow::meta).collect())
    }

    async fn expired_trash(&self, before: i64, limit: i64) -> Result<Vec<DocAddress>, StoreError> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT space, doc FROM docs WHERE trashed_at < $1 ORDER BY trashed_at LIMIT $2",
        )
        .bind(before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.into_iter()
            .map(|(s, d)| DocAddress::parse(&s, &d).map_err(|e| StoreError::Corrupt(e.to_string())))
            .collect()
    }
}
