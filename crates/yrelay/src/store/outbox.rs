//! The webhook outbox: every delivery is written here before it is
//! attempted, claimed by one instance at a time (a lease), and settled as
//! sent, to be retried, or given up. A target's deliveries of one document
//! are attempted in order, one at a time.

use async_trait::async_trait;
use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Type};

use super::StoreError;
use super::sql::{Dialect, SqlStore, unavailable};
pub use crate::vocab::SpaceHook;

/// A delivery to write.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub target: String,
    /// The key it is signed with.
    pub secret: Option<String>,
    pub space: String,
    pub doc: String,
    pub event: String,
    pub body: String,
    pub created_at: i64,
}

/// A delivery as claimed or listed.
#[derive(Debug, Clone, FromRow)]
pub struct Delivery {
    pub id: i64,
    pub target: String,
    pub secret: Option<String>,
    pub space: String,
    pub doc: String,
    pub event: String,
    pub body: String,
    pub created_at: i64,
    pub attempts: i64,
    pub status: String,
    pub last_error: Option<String>,
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub enum Attempted {
    Sent,
    /// Failed; attempted again at `next_at` (ms).
    Retry {
        next_at: i64,
        error: String,
    },
    /// Failed for the last time.
    GivenUp {
        error: String,
    },
}

#[async_trait]
pub trait Outbox {
    /// Writes deliveries, due at once.
    async fn enqueue(&self, deliveries: &[NewDelivery]) -> Result<(), StoreError>;

    /// Takes up to `limit` due deliveries for `lease_ms`: the oldest pending
    /// one of each target and document, unless another holds it.
    async fn claim(&self, now: i64, lease_ms: i64, limit: i64)
    -> Result<Vec<Delivery>, StoreError>;

    /// Records how the attempts of deliveries ended (`(id, how)`), in one
    /// transaction.
    async fn settle(&self, attempts: &[(i64, Attempted)]) -> Result<(), StoreError>;

    /// How many deliveries are pending (due or backing off).
    async fn pending(&self) -> Result<i64, StoreError>;

    /// Deliveries in `status` (`pending`, `sent`, `failed`), newest first.
    async fn deliveries(&self, status: &str, limit: i64) -> Result<Vec<Delivery>, StoreError>;

    /// The webhooks `space` registered.
    async fn space_webhooks(&self, space: &str) -> Result<Vec<SpaceHook>, StoreError>;

    /// Replaces the webhooks of `space`.
    async fn set_space_webhooks(&self, space: &str, hooks: &[SpaceHook]) -> Result<(), StoreError>;
}

const COLUMNS: &str =
    "id, target, secret, space, doc, event, body, created_at, attempts, status, last_error";

#[async_trait]
impl<D: Dialect> Outbox for SqlStore<D>
where
    for<'c> &'c mut <D::Db as Database>::Connection: Executor<'c, Database = D::Db>,
    <D::Db as Database>::Arguments: IntoArguments<D::Db>,
    for<'t> &'t str: Encode<'t, D::Db> + Type<D::Db>,
    for<'t> i64: Encode<'t, D::Db> + Type<D::Db>,
    for<'t> Option<i64>: Encode<'t, D::Db> + Type<D::Db>,
    for<'t> Option<&'t str>: Encode<'t, D::Db> + Type<D::Db>,
    for<'r> Delivery: FromRow<'r, <D::Db as Database>::Row>,
    for<'r> (i64,): FromRow<'r, <D::Db as Database>::Row>,
    for<'t> bool: Encode<'t, D::Db> + Type<D::Db>,
    for<'r> (String, Option<String>, bool): FromRow<'r, <D::Db as Database>::Row>,
{
    async fn enqueue(&self, deliveries: &[NewDelivery]) -> Result<(), StoreError> {
        super::transaction(&self.pool, async |conn| {
            use sqlx::Connection;
            let mut tx = conn.begin_with(D::BEGIN_WRITE).await.map_err(unavailable)?;
            for d in deliveries {
                sqlx::query(
                    "INSERT INTO webhook_deliveries (target, space, doc, event, body, created_at, next_at, secret)
                     VALUES ($1, $2, $3, $4, $5, $6, $6, $7)",
                )
                .bind(d.target.as_str())
                .bind(d.space.as_str())
                .bind(d.doc.as_str())
                .bind(d.event.as_str())
                .bind(d.body.as_str())
                .bind(d.created_at)
                .bind(d.secret.as_deref())
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            }
            tx.commit().await.map_err(unavailable)
        })
        .await
    }

    async fn claim(
        &self,
        now: i64,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<Delivery>, StoreError> {
        // The outer lease check is re-read under the row lock, so two
        // instances claiming at once never both take one delivery.
        let sql = format!(
            "UPDATE webhook_deliveries SET lease_until = $2
             WHERE (lease_until IS NULL OR lease_until < $1) AND id IN (
               SELECT d.id FROM webhook_deliveries d
               WHERE d.status = 'pending' AND d.next_at <= $1
                 AND (d.lease_until IS NULL OR d.lease_until < $1)
                 AND NOT EXISTS (
                   SELECT 1 FROM webhook_deliveries e
                   WHERE e.status = 'pending' AND e.target = d.target
                     AND e.space = d.space AND e.doc = d.doc AND e.id < d.id)
               ORDER BY d.id LIMIT $3)
             RETURNING {COLUMNS}"
        );
        let mut claimed = sqlx::query_as::<_, Delivery>(sqlx::AssertSqlSafe(sql))
            .bind(now)
            .bind(now + lease_ms)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        claimed.sort_by_key(|d| d.id);
        Ok(claimed)
    }

    async fn settle(&self, attempts: &[(i64, Attempted)]) -> Result<(), StoreError> {
        super::transaction(&self.pool, async |conn| {
            use sqlx::Connection;
            let mut tx = conn.begin_with(D::BEGIN_WRITE).await.map_err(unavailable)?;
            for (id, attempted) in attempts {
                let (status, next_at, error) = match attempted {
                    Attempted::Sent => ("sent", None, None),
                    Attempted::Retry { next_at, error } => ("pending", Some(*next_at), Some(error)),
                    Attempted::GivenUp { error } => ("failed", None, Some(error)),
                };
                sqlx::query(
                    "UPDATE webhook_deliveries SET status = $2, attempts = attempts + 1,
                       next_at = coalesce($3, next_at), last_error = $4, lease_until = NULL
                     WHERE id = $1",
                )
                .bind(*id)
                .bind(status)
                .bind(next_at)
                .bind(error.map(String::as_str))
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            }
            tx.commit().await.map_err(unavailable)
        })
        .await
    }

    async fn pending(&self) -> Result<i64, StoreError> {
        let (n,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'")
                .fetch_one(&self.pool)
                .await
                .map_err(unavailable)?;
        Ok(n)
    }

    async fn deliveries(&self, status: &str, limit: i64) -> Result<Vec<Delivery>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM webhook_deliveries WHERE status = $1 ORDER BY id DESC LIMIT $2"
        );
        sqlx::query_as::<_, Delivery>(sqlx::AssertSqlSafe(sql))
            .bind(status)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)
    }

    async fn space_webhooks(&self, space: &str) -> Result<Vec<SpaceHook>, StoreError> {
        let rows: Vec<(String, Option<String>, bool)> = sqlx::query_as(
            "SELECT url, secret, include_json FROM space_webhooks WHERE space = $1 ORDER BY url",
        )
        .bind(space)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(rows
            .into_iter()
            .map(|(url, secret, include_json)| SpaceHook {
                url,
                secret,
                include_json,
            })
            .collect())
    }

    async fn set_space_webhooks(&self, space: &str, hooks: &[SpaceHook]) -> Result<(), StoreError> {
        super::transaction(&self.pool, async |conn| {
            use sqlx::Connection;
            let mut tx = conn.begin_with(D::BEGIN_WRITE).await.map_err(unavailable)?;
            sqlx::query("DELETE FROM space_webhooks WHERE space = $1")
                .bind(space)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            for hook in hooks {
                sqlx::query(
                    "INSERT INTO space_webhooks (space, url, secret, include_json) VALUES ($1, $2, $3, $4)",
                )
                .bind(space)
                .bind(hook.url.as_str())
                .bind(hook.secret.as_deref())
                .bind(hook.include_json)
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
            }
            tx.commit().await.map_err(unavailable)
        })
        .await
    }
}
