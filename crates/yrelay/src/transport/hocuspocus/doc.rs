//! One document of a Hocuspocus socket, once authorized: a task that owns
//! its hub [`Session`], takes the document's messages in order, keeps its
//! updates in flight towards durability, and answers each with a sync
//! status once it is durable.

use axum::extract::ws::Message as WsMessage;
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use tokio::sync::mpsc;
use yrelay_protocol::DocAddress;
use yrelay_protocol::hocuspocus::{self, Message};
use yrelay_protocol::sync::{self, ClientMessage};
use yrelay_protocol::update::check_update;

use super::{End, TRANSPORT};
use crate::auth::{Access, AuthError};
use crate::hub::{Ack, CloseReason, DocEvent, DocHub, HubError, Session};
use crate::metrics;

/// Updates of one document waiting for durability at once; past this the
/// document's messages wait (and, its queue full, the socket's reading).
const MAX_IN_FLIGHT: usize = 64;

type InFlight =
    FuturesOrdered<std::pin::Pin<Box<dyn Future<Output = Result<Ack, HubError>> + Send>>>;

/// What the connection hands a document task.
pub(super) enum Input {
    Message(Message),
    /// The provider's token was sent again (and checked): what it grants.
    Access(Access),
}

/// What a document task sends under its key.
pub(super) struct Outbox {
    pub(super) key: String,
    pub(super) out: mpsc::Sender<WsMessage>,
}

impl Outbox {
    /// Sends `body` under the document's key; `Err` when the socket's
    /// writer is gone.
    pub(super) async fn send(&self, body: &[u8]) -> Result<(), End> {
        let frame = hocuspocus::frame(&self.key, body);
        self.out
            .send(WsMessage::Binary(frame.into()))
            .await
            .map_err(|_| End::Detached)
    }

    /// Ends this document (not the socket) with `reason`.
    async fn close(&self, reason: &str) -> End {
        let _ = self.send(&hocuspocus::close(reason)).await;
        End::Detached
    }
}

/// Loads the document and tells the provider it is in (`authenticated`,
/// with its scope), or why it cannot be.
pub(super) async fn open(
    hub: &DocHub,
    addr: &DocAddress,
    editor: Option<String>,
    writable: bool,
    outbox: &Outbox,
) -> Result<Session, End> {
    match hub.join(addr).await {
        Ok(session) => {
            outbox.send(&hocuspocus::authenticated(!writable)).await?;
            Ok(session.via(TRANSPORT).with_editor(editor))
        }
        Err(HubError::Deleted) => {
            let _ = outbox
                .send(&hocuspocus::permission_denied("document deleted"))
                .await;
            Err(End::Detached)
        }
        Err(e) => {
            tracing::warn!(doc = %addr, error = %e, "cannot open document");
            Err(End::from(e))
        }
    }
}

/// Serves one document until the socket goes (`messages` ends), the
/// provider detaches, or the hub ends the session; what the provider sent
/// before that still becomes durable.
pub(super) async fn run(
    mut session: Session,
    access: Access,
    mut messages: mpsc::Receiver<Input>,
    outbox: Outbox,
) -> End {
    let mut in_flight = InFlight::new();
    let end = serve(&mut session, access, &mut messages, &outbox, &mut in_flight).await;
    drop(messages);
    while let Some(accepted) = in_flight.next().await {
        if let Err(e) = accepted {
            tracing::warn!(doc = %session.addr(), error = %e, "update of a closing hocuspocus document not accepted");
        }
    }
    end
}

/// Serves the document with what the provider's token grants (a token sent
/// again renews it; expiry and revokes end or downgrade it).
async fn serve(
    session: &mut Session,
    mut access: Access,
    messages: &mut mpsc::Receiver<Input>,
    outbox: &Outbox,
    in_flight: &mut InFlight,
) -> End {
    // Who is here, as Hocuspocus says it when a document opens.
    if let Some(awareness) = session.awareness()
        && let Err(end) = outbox.send(&sync::encode_awareness(&awareness)).await
    {
        return end;
    }
    let mut writable = access.permit().can_write();
    loop {
        tokio::select! {
            changed = access.changed() => match changed {
                Ok(permit) => {
                    writable = permit.can_write();
                    if let Err(end) = outbox.send(&hocuspocus::authenticated(!writable)).await {
                        return end;
                    }
                }
                Err(e) => {
                    metrics::rejected(if e == AuthError::Expired { "token_expired" } else { "access_lost" });
                    let reason = match e {
                        AuthError::Expired => "the token has expired: send a fresh one".into(),
                        e => e.to_string(),
                    };
                    let _ = outbox.send(&hocuspocus::permission_denied(&reason)).await;
                    return End::Detached;
                }
            },
            message = messages.recv(), if in_flight.len() < MAX_IN_FLIGHT => {
                let message = match message {
                    Some(Input::Message(message)) => message,
                    Some(Input::Access(renewed)) => {
                        access = renewed;
                        writable = access.permit().can_write();
                        continue;
                    }
                    None => return End::Detached,
                };
                if let Err(end) = handle(session, writable, message, outbox, in_flight).await {
                    return end;
                }
            }
            Some(accepted) = in_flight.next() => {
                let answer = match accepted {
                    Ok(_) => outbox.send(&hocuspocus::sync_status(true)).await,
                    Err(HubError::Blocked) => {
                        let _ = outbox.send(&hocuspocus::sync_status(false)).await;
                        outbox.send(&hocuspocus::permission_denied("document is blocked")).await
                    }
                    Err(HubError::BadUpdate(reason)) => {
                        return outbox.close(&format!("invalid update: {reason}")).await;
                    }
                    Err(HubError::Deleted) => return outbox.close("document deleted").await,
                    Err(e) => {
                        tracing::warn!(doc = %session.addr(), error = %e, "hocuspocus update not accepted");
                        return End::from(e);
                    }
                };
                if let Err(end) = answer {
                    return end;
                }
            }
            event = session.next_event() => {
                let body = match event {
                    Ok(DocEvent::Update(update)) => sync::encode_update(&update.payload),
                    Ok(DocEvent::Awareness(awareness)) => sync::encode_awareness(&awareness.payload),
                    Ok(DocEvent::Stateless { payload }) => hocuspocus::stateless(&payload),
                    Err(CloseReason::Deleted) => return outbox.close("document deleted").await,
                    Err(reason) => return End::from(reason),
                };
                if let Err(end) = outbox.send(&body).await {
                    return end;
                }
            }
        }
    }
}

async fn handle(
    session: &mut Session,
    writable: bool,
    message: Message,
    outbox: &Outbox,
    in_flight: &mut InFlight,
) -> Result<(), End> {
    match message {
        // Their state vector: what they miss, then ours, so that they answer
        // with what we miss (a SyncStep2 the provider waits to see saved).
        Message::Yjs(ClientMessage::SyncStep1(sv)) => {
            outbox
                .send(&sync::encode_sync_step2(&session.diff(&sv)))
                .await?;
            outbox
                .send(&sync::encode_sync_step1(&session.state_vector()))
                .await
        }
        Message::Yjs(ClientMessage::SyncStep2(update) | ClientMessage::Update(update)) => {
            // Permission before decoding: a reader's update is never looked
            // into; only the empty one (nothing to save) counts as saved.
            if !writable {
                if update != yrs::Update::EMPTY_V1 {
                    metrics::rejected("read_only");
                }
                let saved = update == yrs::Update::EMPTY_V1;
                return outbox.send(&hocuspocus::sync_status(saved)).await;
            }
            match check_update(update) {
                Ok(checked) => {
                    in_flight.push_back(Box::pin(session.submit_update(checked, TRANSPORT)));
                    Ok(())
                }
                Err(e) => {
                    metrics::rejected("bad_update");
                    Err(outbox.close(&format!("invalid update: {e}")).await)
                }
            }
        }
        // Relayed to everyone else, and echoed: Hocuspocus echoes awareness
        // to its sender, and providers count it as a sign of life.
        Message::Yjs(ClientMessage::Awareness { raw, update }) => {
            match session.submit_awareness(raw.clone(), &update).await {
                Ok(()) => outbox.send(&sync::encode_awareness(&raw)).await,
                Err(HubError::Awareness(refusal)) => {
                    tracing::debug!(doc = %session.addr(), %refusal, "hocuspocus awareness refused");
                    Ok(())
                }
                Err(e) => Err(End::from(e)),
            }
        }
        Message::Yjs(ClientMessage::QueryAwareness) => match session.awareness() {
            Some(awareness) => outbox.send(&sync::encode_awareness(&awareness)).await,
            None => Ok(()),
        },
        // Not part of the Hocuspocus protocol (its auth message is its own).
        Message::Yjs(ClientMessage::Auth(_) | ClientMessage::SyncStatus(_)) => Ok(()),
        // A token sent again (its refresh) is checked by the connection.
        Message::Auth { .. } => Ok(()),
        // To the document's other connections, on every instance.
        Message::Stateless(payload) => session.submit_stateless(payload).await.map_err(End::from),
        Message::Close => Err(outbox.close("provider_initiated").await),
    }
}
