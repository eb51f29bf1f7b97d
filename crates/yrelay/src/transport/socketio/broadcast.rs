//! Broadcasts: a watcher per document relays the hub's events to the rooms.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;
use socketioxide::SocketError;
use socketioxide::socket::Sid;
use yrelay_protocol::DocAddress;
use yrelay_protocol::update::merge_updates;

use crate::hub::{CloseReason, DocEvent, Session, Writer};
use crate::metrics;

use super::gateway::Gateway;
use super::wire::{SpaceRef, awareness_room, doc_event, subscribers_room};

/// A watcher: the hub's updates of one document, broadcast to the space's
/// members on this instance (except to the socket that wrote each one).
pub(super) async fn relay(
    gateway: std::sync::Weak<Gateway>,
    space: SpaceRef,
    mut session: Session,
) {
    let head = doc_event(&space, session.addr());
    let awareness = awareness_room(&space, session.addr());
    loop {
        let first = match session.next_event().await {
            Ok(event) => event,
            Err(CloseReason::Deleted) => {
                if let Some(gw) = gateway.upgrade() {
                    gw.end_subscriptions_of(&space, session.addr());
                }
                return;
            }
            // Slow or shutting down: the next load restarts it.
            Err(_) => return,
        };
        let mut pending = Some(first);
        while let Some(event) = pending.take() {
            let Some(gw) = gateway.upgrade() else { return };
            match event {
                DocEvent::Awareness(update) => {
                    let mut event = head.clone();
                    event["awarenessUpdate"] = STANDARD.encode(&update.payload).into();
                    let name = "space:broadcast-awareness-update";
                    let sender = gw.writer(update.origin);
                    emit_to_room(&gw, awareness.clone(), sender, name, &event);
                }
                DocEvent::Update(first) => {
                    let (origin, editor) = (first.origin, first.editor.clone());
                    // Everything already waiting from the same writer (and
                    // user) goes in one batch.
                    let mut batch = vec![first.payload.clone()];
                    let mut timestamp = first.timestamp_ms;
                    while let Some(event) = session.try_next_event() {
                        match event {
                            DocEvent::Update(next)
                                if next.origin == origin && next.editor == editor =>
                            {
                                batch.push(next.payload.clone());
                                timestamp = timestamp.max(next.timestamp_ms);
                            }
                            other => {
                                pending = Some(other);
                                break;
                            }
                        }
                    }
                    let writer = Writer { origin, editor };
                    broadcast(
                        &gw,
                        &space,
                        session.addr(),
                        &head,
                        &batch,
                        timestamp,
                        writer,
                    )
                    .await;
                }
                DocEvent::Stateless { .. } => {} // Hocuspocus's only
            }
        }
    }
}

/// Emits a batch of updates (from one writer) to the space's members: one
/// event per update to 0.25 clients, one (merged when several) to 0.26 and
/// to the document's subscribers, and an invalidation of the space to its
/// batch members.
pub(super) async fn broadcast(
    gw: &Arc<Gateway>,
    space: &SpaceRef,
    addr: &DocAddress,
    head: &Value,
    batch: &[Arc<[u8]>],
    timestamp: i64,
    writer: Writer,
) {
    let sender = gw.writer(writer.origin);
    let editor = writer.editor.as_deref();
    for update in batch {
        let mut event = head.clone();
        event["update"] = STANDARD.encode(update).into();
        event["timestamp"] = timestamp.into();
        event["editor"] = editor.into();
        emit_to_room(
            gw,
            space.room("sync-025"),
            sender,
            "space:broadcast-doc-update",
            &event,
        );
    }
    let (updates, compressed) = if batch.len() > 1 {
        match merge_updates(batch.iter().map(|u| &u[..])) {
            Ok(merged) => (vec![STANDARD.encode(merged)], true),
            Err(_) => (batch.iter().map(|u| STANDARD.encode(u)).collect(), false),
        }
    } else {
        (batch.iter().map(|u| STANDARD.encode(u)).collect(), false)
    };
    metrics::broadcast(if compressed { "compressed" } else { "batch" }, 1);
    let mut event = head.clone();
    event["updates"] = updates.into();
    event["timestamp"] = timestamp.into();
    event["editor"] = editor.into();
    event["compressed"] = compressed.into();
    emit_to_room(
        gw,
        space.room("sync-026"),
        sender,
        "space:broadcast-doc-updates",
        &event,
    );
    let name = "space:broadcast-doc-updates";
    emit_to_room(gw, subscribers_room(space, addr), sender, name, &event);
    gw.invalidate(space, sender, timestamp);
}

/// Emits to every socket of `room` but `sender`. A socket whose queue is
/// full is disconnected (it reconnects and loads again) rather than silently
/// missing an update.
pub(super) fn emit_to_room(
    gw: &Gateway,
    room: String,
    sender: Option<Sid>,
    name: &str,
    event: &Value,
) {
    for socket in gw.io.to(room).sockets() {
        if Some(socket.id) == sender {
            continue;
        }
        if let Err(socketioxide::SendError::Socket(SocketError::InternalChannelFull)) =
            socket.emit(name, event)
        {
            metrics::slow_consumer_closed();
            tracing::info!(socket = %socket.id, "socket.io client too slow: disconnected to resync");
            let _ = socket.disconnect();
        }
    }
}
