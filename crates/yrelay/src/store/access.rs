//! Revokes, kept for every instance to read (`POST /v1/access/revoke`).

use async_trait::async_trait;
use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Type};

use super::StoreError;
use super::sql::{Dialect, SqlStore, unavailable};
use crate::auth::{Revocation, Revoked};

#[async_trait]
pub trait Revokes {
    /// Records a revoke made at `at_ms`; its id.
    async fn revoke(&self, what: &Revocation, at_ms: i64) -> Result<i64, StoreError>;

    /// The revokes made at or after `since_ms`, by id.
    async fn revocations(&self, since_ms: i64) -> Result<Vec<Revoked>, StoreError>;

    /// Forgets the revokes made before `before_ms`.
    async fn prune_revocations(&self, before_ms: i64) -> Result<(), StoreError>;
}

#[derive(FromRow)]
struct Row {
    id: i64,
    sub: Option<String>,
    space: Option<String>,
    doc: Option<String>,
    at_ms: i64,
}

#[async_trait]
impl<D: Dialect> Revokes for SqlStore<D>
where
    for<'c> &'c mut <D::Db as Database>::Connection: Executor<'c, Database = D::Db>,
    <D::Db as Database>::Arguments: IntoArguments<D::Db>,
    for<'t> i64: Encode<'t, D::Db> + Type<D::Db>,
    for<'t> Option<&'t str>: Encode<'t, D::Db> + Type<D::Db>,
    for<'r> (i64,): FromRow<'r, <D::Db as Database>::Row>,
    for<'r> Row: FromRow<'r, <D::Db as Database>::Row>,
{
    async fn revoke(&self, what: &Revocation, at_ms: i64) -> Result<i64, StoreError> {
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO access_revocations (sub, space, doc, at_ms) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(what.sub.as_deref())
        .bind(what.space.as_deref())
        .bind(what.doc.as_deref())
        .bind(at_ms)
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(id)
    }

    async fn revocations(&self, since_ms: i64) -> Result<Vec<Revoked>, StoreError> {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, sub, space, doc, at_ms FROM access_revocations WHERE at_ms >= $1 ORDER BY id",
        )
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(rows
            .into_iter()
            .map(|r| Revoked {
                id: r.id,
                at_ms: r.at_ms,
                what: Revocation {
                    sub: r.sub,
                    space: r.space,
                    doc: r.doc,
                },
            })
            .collect())
    }

    async fn prune_revocations(&self, before_ms: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM access_revocations WHERE at_ms < $1")
            .bind(before_ms)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
