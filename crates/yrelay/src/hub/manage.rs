//! Document management for the REST API and the CLI: metadata, listing,
//! export, one-time import, block/rename and delete. Reads answer from the
//! live replica (so they include what the log holds and the store does not
//! have yet); changes to a document itself reach every instance as notices
//! through the log.

use std::sync::Arc;

use yrelay_protocol::DocAddress;
use yrelay_protocol::json::doc_to_json;
use yrs::{ReadTxn, StateVector, Transact};

use super::{Ack, DocHub, DocNotice, HubError, SpaceEvent};
use crate::auth::{Revocation, Revoked};
use crate::clock::now_ms;
use crate::log::{EntryKind, LogError, Subscription};
use crate::metrics;
use crate::store::{DocMeta, SpaceHook};
use crate::vocab::DeliveryInfo;
use crate::vocab::Origin;

impl DocHub {
    /// Metadata of a document the store holds.
    pub async fn meta(&self, addr: &DocAddress) -> Result<Option<DocMeta>, HubError> {
        Ok(self.inner.store.meta(addr).await?)
    }

    /// Documents of a space (changed after `after` ms, when given).
    pub async fn list(&self, space: &str, after: Option<i64>) -> Result<Vec<DocMeta>, HubError> {
        Ok(self.inner.store.list(space, after).await?)
    }

    /// The document as one v1 update (the diff against `sv`), or `None`
    /// when it was never written.
    pub async fn export_update(
        &self,
        addr: &DocAddress,
        sv: &StateVector,
    ) -> Result<Option<Vec<u8>>, HubError> {
        self.read_replica(addr, |doc| doc.transact().encode_diff_v1(sv))
            .await
    }

    /// What a peer with `sv` misses and the server's state vector (both v1),
    /// or `None` when the document was never written.
    pub async fn sync_state(
        &self,
        addr: &DocAddress,
        sv: &StateVector,
    ) -> Result<Option<(Vec<u8>, Vec<u8>)>, HubError> {
        use yrs::updates::encoder::Encode;
        self.read_replica(addr, |doc| {
            let txn = doc.transact();
            (txn.encode_diff_v1(sv), txn.state_vector().encode_v1())
        })
        .await
    }

    /// The document's root types as JSON, or `None` when it was never written.
    pub async fn export_json(
        &self,
        addr: &DocAddress,
    ) -> Result<Option<serde_json::Value>, HubError> {
        self.read_replica(addr, doc_to_json)
            .await?
            .transpose()
            .map_err(|e| HubError::Unexportable(e.to_string()))
    }

    /// `read` on the live replica of `addr` (loaded if needed), or `None`
    /// when the document was never written.
    pub(super) async fn read_replica<T>(
        &self,
        addr: &DocAddress,
        read: impl FnOnce(&yrs::Doc) -> T,
    ) -> Result<Option<T>, HubError> {
        let doc = self.live(addr).await?;
        // A document the store lists is served even when nothing in it is
        // visible (only deletions of items it never held): listed, it must
        // not answer 404 here.
        if doc.is_empty() && self.inner.store.meta(addr).await?.is_none() {
            return Ok(None);
        }
        let state = doc.lock();
        Ok(Some(read(state.awareness.doc())))
    }

    /// Creates a document from `update` (built from imported JSON), exactly
    /// once: `None` when the document already exists, here or in the store.
    pub async fn import(
        &self,
        addr: &DocAddress,
        update: Vec<u8>,
    ) -> Result<Option<Ack>, HubError> {
        let doc = self.live(addr).await?;
        if !doc.is_empty() {
            return Ok(None);
        }
        let now = now_ms();
        if !self.inner.store.create(addr, &update, now).await? {
            return Ok(None);
        }
        if update == yrs::Update::EMPTY_V1 {
            // Created empty: nothing to apply or to relay.
            tracing::info!(doc = %addr, "document created");
            self.announce(addr, SpaceEvent::Created, now, None);
            return Ok(Some(Ack {
                cursor: None,
                timestamp_ms: now,
            }));
        }
        let bytes = update.len();
        // Readable here at once (a CRDT merge: the log's copy of it, applied
        // by the tail task later, changes nothing).
        doc.apply_accepted(&update);
        // The store has it; the log carries it to every live replica.
        let entry = self
            .inner
            .log
            .append_update(addr, Arc::from(update), None, None)
            .await?;
        metrics::update_accepted("rest", bytes, 0.0);
        tracing::info!(doc = %addr, bytes, "document imported");
        self.announce(addr, SpaceEvent::Created, entry.timestamp_ms, None);
        Ok(Some(Ack {
            cursor: entry.cursor,
            timestamp_ms: entry.timestamp_ms,
        }))
    }

    /// Renames and/or blocks a document; `None` when the store does not
    /// hold it.
    pub async fn update_meta(
        &self,
        addr: &DocAddress,
        title: Option<&str>,
        blocked: Option<bool>,
    ) -> Result<Option<DocMeta>, HubError> {
        let meta = self.inner.store.update_meta(addr, title, blocked).await?;
        if let (Some(_), Some(title)) = (&meta, title) {
            self.announce(addr, SpaceEvent::Renamed, now_ms(), Some(title));
        }
        if let (Some(_), Some(blocked)) = (&meta, blocked) {
            self.notify(addr, DocNotice::Blocked(blocked)).await?;
            // Read your writes here; the notice reaches every instance
            // (this one too, a moment later) through the log.
            if let Some(doc) = self.inner.loaded(addr) {
                doc.lock().blocked = blocked;
            }
            tracing::info!(doc = %addr, blocked, "document blocked flag changed");
        }
        Ok(meta)
    }

    /// Moves a document to the trash (or, with `purge`, deletes it for
    /// good: its store rows, history and log); connected clients are
    /// disconnected on every instance. `false` when it did not exist.
    pub async fn delete(&self, addr: &DocAddress, purge: bool) -> Result<bool, HubError> {
        let store = &self.inner.store;
        if !purge && store.trash(addr, now_ms()).await? {
            self.notify(addr, DocNotice::Deleted).await?;
            tracing::info!(doc = %addr, "document moved to the trash");
            self.announce(addr, SpaceEvent::Deleted, now_ms(), None);
            return Ok(true);
        }
        // In the trash already, only in the log (the store away when it was
        // written), or purged: for good.
        if !purge && store.trashed_at(addr).await?.is_some() {
            return Ok(false);
        }
        let held = !self.live(addr).await?.is_empty();
        let stored = self.inner.store.delete(addr, now_ms()).await?;
        self.inner.log.delete(addr).await?;
        self.notify(addr, DocNotice::Deleted).await?;
        if held || stored {
            tracing::info!(doc = %addr, "document deleted");
            self.announce(addr, SpaceEvent::Deleted, now_ms(), None);
        }
        Ok(held || stored)
    }

    /// Takes a document out of the trash, with its history; `false` when it
    /// is not there.
    pub async fn undelete(&self, addr: &DocAddress) -> Result<bool, HubError> {
        if !self.inner.store.untrash(addr).await? {
            return Ok(false);
        }
        self.notify(addr, DocNotice::Undeleted).await?;
        tracing::info!(doc = %addr, "document taken out of the trash");
        self.announce(addr, SpaceEvent::Undeleted, now_ms(), None);
        Ok(true)
    }

    /// Webhook deliveries in `status` (`pending`, `sent`, `failed`), newest
    /// first.
    pub async fn webhook_deliveries(
        &self,
        status: &str,
        limit: i64,
    ) -> Result<Vec<DeliveryInfo>, HubError> {
        let deliveries = self.inner.store.deliveries(status, limit).await?;
        Ok(deliveries
            .into_iter()
            .map(|d| DeliveryInfo {
                id: d.id,
                target: d.target,
                space: d.space,
                doc: d.doc,
                event: d.event,
                created_at: d.created_at,
                attempts: d.attempts,
                status: d.status,
                last_error: d.last_error,
            })
            .collect())
    }

    /// The webhooks `space` registered: `(url, secret)`.
    pub async fn space_webhooks(&self, space: &str) -> Result<Vec<SpaceHook>, HubError> {
        Ok(self.inner.store.space_webhooks(space).await?)
    }

    /// Replaces the webhooks of `space`.
    pub async fn set_space_webhooks(
        &self,
        space: &str,
        hooks: &[SpaceHook],
    ) -> Result<(), HubError> {
        self.inner.store.set_space_webhooks(space, hooks).await?;
        tracing::info!(space, webhooks = hooks.len(), "space webhooks set");
        Ok(())
    }

    /// Records a revoke for every instance to read; the instance that made
    /// it applies it at once (`crate::auth::Auth::revoke`).
    pub async fn revoke(&self, what: Revocation) -> Result<Revoked, HubError> {
        let at_ms = now_ms();
        let id = self.inner.store.revoke(&what, at_ms).await?;
        tracing::info!(id, sub = ?what.sub, space = ?what.space, doc = ?what.doc, "access revoked");
        Ok(Revoked { id, at_ms, what })
    }

    /// Whether the document is in the trash.
    pub async fn in_trash(&self, addr: &DocAddress) -> Result<bool, HubError> {
        Ok(self.inner.store.trashed_at(addr).await?.is_some())
    }

    /// The documents of a space in the trash, most recently deleted first.
    pub async fn trash(&self, space: &str) -> Result<Vec<DocMeta>, HubError> {
        Ok(self.inner.store.trash_list(space).await?)
    }

    /// Subscribes to the events of a space (documents created, updated,
    /// renamed, deleted, on every instance).
    pub async fn space_events(&self, space: &str) -> Result<SpaceFeed, HubError> {
        let feed = DocAddress::space_feed(space)
            .map_err(|e| HubError::Log(LogError::Unavailable(e.to_string())))?;
        Ok(SpaceFeed(self.inner.log.subscribe(&feed).await?))
    }

    /// Tells the document's space (in the background: announcing never
    /// delays or fails the change itself).
    pub(super) fn announce(
        &self,
        addr: &DocAddress,
        event: SpaceEvent,
        timestamp_ms: i64,
        title: Option<&str>,
    ) {
        // Webhooks: every event but updates, which are debounced apart.
        if let Some(hooks) = &self.inner.config.hooks
            && event != SpaceEvent::Updated
        {
            hooks.event(addr, event.name(), timestamp_ms);
        }
        let Ok(feed) = DocAddress::space_feed(addr.space()) else {
            return;
        };
        let mut data = serde_json::json!({
            "type": event.name(),
            "doc": addr.doc(),
            "timestamp": timestamp_ms,
        });
        if let Some(title) = title {
            data["title"] = title.into();
        }
        let payload = serde_json::to_vec(&data).unwrap_or_default();
        let log = self.inner.log.clone();
        tokio::spawn(async move {
            let _ = log
                .publish(&feed, EntryKind::Notice, payload.into(), None)
                .await;
        });
    }

    async fn notify(&self, addr: &DocAddress, notice: DocNotice) -> Result<(), HubError> {
        self.notify_from(addr, notice, None).await
    }

    async fn notify_from(
        &self,
        addr: &DocAddress,
        notice: DocNotice,
        origin: Option<Origin>,
    ) -> Result<(), HubError> {
        let payload = serde_json::to_vec(&notice).unwrap_or_default();
        self.inner
            .log
            .publish(addr, EntryKind::Notice, payload.into(), origin)
            .await?;
        Ok(())
    }

    /// Sends a stateless message to the document's connections on every
    /// instance (but `origin`'s), if it is loaded anywhere; never stored.
    pub async fn broadcast_stateless(
        &self,
        addr: &DocAddress,
        payload: String,
        origin: Option<Origin>,
    ) -> Result<(), HubError> {
        self.notify_from(addr, DocNotice::Stateless(payload), origin)
            .await
    }
}

/// The events of one space, as they happen on any instance.
pub struct SpaceFeed(Subscription);

/// One event of a space: its name (`doc.created`, `doc.updated`,
/// `doc.renamed`, `doc.deleted`) and `{"doc", "timestamp", "title"?}`.
#[derive(Debug, Clone)]
pub struct SpaceNotice {
    pub name: String,
    pub data: serde_json::Value,
}

impl SpaceFeed {
    /// The next event; `None` once the feed has ended (the log broke: the
    /// listener subscribes again).
    pub async fn next(&mut self) -> Option<SpaceNotice> {
        loop {
            let entry = self.0.recv().await?;
            let Ok(mut data) = serde_json::from_slice::<serde_json::Value>(&entry.payload) else {
                continue;
            };
            let name = data
                .as_object_mut()
                .and_then(|o| o.remove("type"))
                .and_then(|t| t.as_str().map(str::to_owned));
            if let Some(name) = name {
                return Some(SpaceNotice { name, data });
            }
        }
    }
}
