//! The Hocuspocus protocol over WebSocket: `GET /v1/hocuspocus`, for
//! `@hocuspocus/provider` 3.x and 4.x unmodified.
//!
//! One socket carries many documents, each framed with its name (its
//! routing key). A document is opened by the provider's token message: it
//! is checked like a token on any other transport, answered `authenticated`
//! (`read-write` or `readonly`) or `permission-denied` with the reason, and
//! what the provider sent for it before is then read in order (bounded, and
//! never decoded before the document is authorized). Each open document is
//! served by its own task ([`doc`]); a refused or failing document never
//! ends the others. Only what concerns the whole socket closes it, with a
//! close code and reason.
//!
//! A name `{space}/{doc}` is that document on every transport; any other
//! name is a document of the space `--hocuspocus-space`.

mod doc;

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use yrelay_protocol::DocAddress;
use yrelay_protocol::hocuspocus::{self, Frame, HocuspocusError, Message};
use yrelay_protocol::sync::ClientMessage;

use crate::auth::Access;
use crate::edge::{Credentials, UpdateRate};
use crate::hub::{CloseReason, HubError};
use crate::metrics;
use crate::state::AppState;

const TRANSPORT: &str = "hocuspocus";
const PING_EVERY: Duration = Duration::from_secs(30);
/// How long the end of a socket may wait for the peer.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Frames queued for the writer; past this, documents wait.
const OUTBOX: usize = 256;
/// Messages one open document may have waiting for its task.
const DOC_QUEUE: usize = 64;
/// Documents a socket may have asked for without a token yet, and what it
/// may send for them meanwhile (Hocuspocus's own bounds).
const MAX_PENDING_DOCS: usize = 100;
const MAX_PENDING_FRAMES: usize = 1_000;
const MAX_PENDING_BYTES: usize = 5 * 1024 * 1024;

/// How a document task (or the socket) ends.
#[derive(Debug)]
enum End {
    /// The document is done; the socket goes on.
    Detached,
    /// The whole socket closes with this code and reason.
    Socket(u16, String),
}

impl From<HubError> for End {
    fn from(e: HubError) -> Self {
        match e {
            HubError::ShuttingDown => End::Socket(1001, "server shutting down".into()),
            e => End::Socket(1013, e.to_string()),
        }
    }
}

impl From<CloseReason> for End {
    fn from(reason: CloseReason) -> Self {
        match reason {
            CloseReason::ShuttingDown => End::Socket(1001, "server shutting down".into()),
            CloseReason::SlowConsumer => {
                End::Socket(1013, "slow consumer: reconnect to resync".into())
            }
            CloseReason::Resync => {
                End::Socket(1013, "document reloaded: reconnect to resync".into())
            }
            CloseReason::Deleted => End::Detached,
        }
    }
}

/// `GET /v1/hocuspocus` (upgrade). Tokens come in each document's auth
/// message; a token on the upgrade itself (header, `?token=`) is used for
/// documents whose auth message carries none.
pub async fn upgrade(
    State(app): State<AppState>,
    credentials: Credentials,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            return super::websocket_required("Hocuspocus", rejection);
        }
    };
    let slot = match app.limits.connection_slot() {
        Ok(slot) => slot,
        Err(e) => return e.into_response(),
    };
    super::configure(ws, &app, credentials.subprotocol.clone()).on_upgrade(
        move |socket| async move {
            connection(app, credentials.via(TRANSPORT), socket).await;
            drop(slot);
        },
    )
}

/// A document key's state on this socket.
enum Key {
    /// Asked for, no token yet: its frames, undecoded.
    Pending(Vec<Vec<u8>>),
    /// Authorized: its task's queue (closed once the task stops reading:
    /// the provider detached, or the document ended).
    Open(mpsc::Sender<doc::Input>),
}

impl Key {
    fn open(&self) -> Option<&mpsc::Sender<doc::Input>> {
        match self {
            Key::Open(tx) if !tx.is_closed() => Some(tx),
            _ => None,
        }
    }
}

struct Conn {
    app: AppState,
    /// What the upgrade request presented (its token, if any, stands in
    /// for an auth message that carries none).
    who: Credentials,
    keys: HashMap<String, Key>,
    pending_frames: usize,
    pending_bytes: usize,
    tasks: JoinSet<(String, End)>,
    out: mpsc::Sender<WsMessage>,
    updates: UpdateRate,
    syncs: UpdateRate,
    awareness: UpdateRate,
}

async fn connection(app: AppState, who: Credentials, socket: WebSocket) {
    metrics::connection_opened(TRANSPORT);
    let (mut sink, mut stream) = socket.split();
    let (out, mut outgoing) = mpsc::channel::<WsMessage>(OUTBOX);
    // The writer; it gives the sink back for the close (a failed send
    // leaves the rest unsent: the peer closed, or is gone).
    let writer = tokio::spawn(async move {
        while let Some(message) = outgoing.recv().await {
            if sink.send(message).await.is_err() {
                break;
            }
        }
        sink
    });
    let limits = &app.limits;
    let mut conn = Conn {
        who,
        keys: HashMap::new(),
        pending_frames: 0,
        pending_bytes: 0,
        tasks: JoinSet::new(),
        out,
        updates: UpdateRate::new(limits.max_updates_per_sec),
        syncs: UpdateRate::new(limits.max_syncs_per_sec),
        awareness: UpdateRate::new(limits.max_awareness_per_sec),
        app: app.clone(),
    };
    let end = conn.serve(&mut stream).await;
    // Received = processed (DESIGN invariant 8): every open document's task
    // takes what it was given, makes its updates durable, and ends.
    conn.keys.clear();
    while conn.tasks.join_next().await.is_some() {}
    drop(conn);
    if let Ok(mut sink) = writer.await {
        // Our close frame, or the answer to the peer's (queued when it was
        // read), then the end of the socket; a peer that has gone cannot
        // hold this up for long.
        let close = async {
            if let End::Socket(code, reason) = end {
                if code != 1001 {
                    tracing::info!(code, %reason, "closing hocuspocus socket");
                }
                let frame = super::close_frame(code, &reason);
                let _ = sink.send(WsMessage::Close(Some(frame))).await;
            }
            let _ = sink.close().await;
        };
        let _ = tokio::time::timeout(CLOSE_GRACE, close).await;
    }
    metrics::connection_closed(TRANSPORT);
}

impl Conn {
    async fn serve(&mut self, stream: &mut futures_util::stream::SplitStream<WebSocket>) -> End {
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
        let mut heard = true;
        let mut shutdown = self.app.shutdown.clone();
        loop {
            tokio::select! {
                frame = stream.next() => {
                    heard = true;
                    let data = match frame {
                        Some(Ok(WsMessage::Binary(data))) => data,
                        Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                        Some(Ok(WsMessage::Text(_))) => {
                            metrics::rejected("text_frame");
                            return End::Socket(1003, "text frames are not part of the Hocuspocus protocol".into());
                        }
                        Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => return End::Detached,
                    };
                    if data.len() > self.app.limits.max_message_size {
                        metrics::rejected("too_big");
                        return End::Socket(1009, format!(
                            "message of {} bytes exceeds the limit of {} bytes",
                            data.len(),
                            self.app.limits.max_message_size
                        ));
                    }
                    if let Err(end) = self.frame(&data).await {
                        return end;
                    }
                }
                Some(done) = self.tasks.join_next() => {
                    let Ok((key, end)) = done else { continue };
                    if let End::Socket(..) = end {
                        return end;
                    }
                    self.forget_ended(&key); // unless opened again since
                }
                _ = ping.tick() => {
                    if !std::mem::take(&mut heard) {
                        return End::Socket(1013, "no answer to pings".into());
                    }
                    if self.out.send(WsMessage::Ping(Default::default())).await.is_err() {
                        return End::Detached;
                    }
                }
                // The writer ended (a write passed its deadline, or the peer
                // went): nothing more can be said, everything is released now.
                _ = self.out.closed() => return End::Detached,
                _ = shutdown.changed() => return End::Socket(1001, "server shutting down".into()),
            }
        }
    }

    async fn frame(&mut self, data: &[u8]) -> Result<(), End> {
        let (key, body) = match hocuspocus::split_frame(data) {
            Ok(Frame::Keepalive) => return Ok(()),
            Ok(Frame::Doc { name, body }) => (name, body),
            Err(e) => {
                metrics::rejected("malformed");
                return Err(End::Socket(1007, e.to_string()));
            }
        };
        self.forget_ended(&key); // the key may be opened again
        match self.keys.get(&key) {
            Some(Key::Open(_)) => {
                let message = match hocuspocus::decode_message(&key, body) {
                    Ok(message) => message,
                    Err(e) => return self.refuse_message(&key, e).await,
                };
                self.rate(&message)?;
                if let Message::Auth { token, .. } = &message {
                    // A token sent again (refreshed): checked again.
                    return self.authorize(&key, token.clone()).await;
                }
                if let Some(tx) = self.keys.get(&key).and_then(Key::open) {
                    // A task that ended meanwhile drops it: its end is on
                    // the way to `serve`.
                    let _ = tx.send(doc::Input::Message(message)).await;
                }
                Ok(())
            }
            _ if hocuspocus::is_auth(body) => match hocuspocus::decode_message(&key, body) {
                Ok(Message::Auth { token, .. }) => self.authorize(&key, token).await,
                Ok(_) => unreachable!("an auth message decodes as auth"),
                Err(e) => self.refuse_message(&key, e).await,
            },
            _ => self.queue(key, body),
        }
    }

    /// Keeps a frame of a document not authorized yet (bounded: past the
    /// bounds the socket is reset, as Hocuspocus does).
    fn queue(&mut self, key: String, body: &[u8]) -> Result<(), End> {
        let pending_docs = self
            .keys
            .values()
            .filter(|k| matches!(k, Key::Pending(_)))
            .count();
        if !self.keys.contains_key(&key) && pending_docs >= MAX_PENDING_DOCS {
            metrics::rejected("too_many_docs");
            return Err(End::Socket(
                4205,
                format!("more than {MAX_PENDING_DOCS} documents asked for without a token"),
            ));
        }
        if self.pending_frames >= MAX_PENDING_FRAMES
            || self.pending_bytes + body.len() > MAX_PENDING_BYTES
        {
            metrics::rejected("too_big");
            return Err(End::Socket(
                4205,
                format!(
                    "more than {MAX_PENDING_FRAMES} messages or {MAX_PENDING_BYTES} bytes sent before a token"
                ),
            ));
        }
        self.pending_frames += 1;
        self.pending_bytes += body.len();
        if let Key::Pending(frames) = self.keys.entry(key).or_insert(Key::Pending(Vec::new())) {
            frames.push(body.to_vec());
        }
        Ok(())
    }

    /// Checks `token` for the document `key` and opens it (or says why not).
    async fn authorize(&mut self, key: &str, token: String) -> Result<(), End> {
        let mut who = self.who.clone();
        if !token.is_empty() {
            who.token = Some(token);
        }
        let access = match self.address(key) {
            Ok(addr) => Access::open(&self.app.auth, who, &addr)
                .await
                .map(|access| (access, addr))
                .map_err(|e| e.to_string()),
            Err(reason) => Err(reason),
        };
        let (access, addr) = match access {
            Ok(granted) => granted,
            Err(reason) => {
                metrics::rejected("unauthorized");
                return self.deny(key, &reason).await;
            }
        };
        let writable = access.permit().can_write();
        if let Some(tx) = self.keys.get(key).and_then(Key::open) {
            // Already open: the refreshed token still grants it, maybe with
            // another mode.
            let _ = tx.send(doc::Input::Access(access)).await;
            return self.send(key, &hocuspocus::authenticated(!writable)).await;
        }
        let open = self
            .keys
            .values()
            .filter(|k| matches!(k, Key::Open(_)))
            .count();
        if open >= self.app.limits.max_docs_per_connection {
            metrics::rejected("too_many_docs");
            let max = self.app.limits.max_docs_per_connection;
            return self
                .deny(key, &format!("a socket may use at most {max} documents"))
                .await;
        }
        // The document loads in its task: a large one does not hold up the
        // socket's other documents; what comes for it meanwhile waits in
        // its queue.
        let (tx, rx) = mpsc::channel(DOC_QUEUE);
        let waiting = match self.keys.insert(key.to_owned(), Key::Open(tx.clone())) {
            Some(Key::Pending(frames)) => frames,
            _ => Vec::new(),
        };
        let outbox = doc::Outbox {
            key: key.to_owned(),
            out: self.out.clone(),
        };
        let (task_key, hub) = (key.to_owned(), self.app.hub.clone());
        self.tasks.spawn(async move {
            let editor = access.permit().sub.clone();
            let opened = doc::open(&hub, &addr, editor, writable, &outbox).await;
            let end = match opened {
                Ok(session) => doc::run(session, access, rx, outbox).await,
                Err(end) => end,
            };
            (task_key, end)
        });
        for body in waiting {
            self.pending_frames -= 1;
            self.pending_bytes -= body.len();
            match hocuspocus::decode_message(key, &body) {
                Ok(message) => {
                    self.rate(&message)?;
                    let _ = tx.send(doc::Input::Message(message)).await;
                }
                Err(e) => return self.refuse_message(key, e).await,
            }
        }
        Ok(())
    }

    /// The document a name stands for.
    fn address(&self, key: &str) -> Result<DocAddress, String> {
        let name = hocuspocus::document_name(key);
        let addr = if name.contains('/') {
            DocAddress::parse_path(name)
        } else {
            DocAddress::parse(&self.app.hocuspocus_space, name)
        };
        addr.map_err(|e| {
            format!("document name {name:?} cannot be mapped to a yrelay document: {e}")
        })
    }

    /// Refuses the document `key`: its queued frames go (an open document
    /// ends, once it has made what it was sent durable), the socket stays.
    async fn deny(&mut self, key: &str, reason: &str) -> Result<(), End> {
        self.forget(key);
        self.send(key, &hocuspocus::permission_denied(reason)).await
    }

    /// A message of `key` that cannot be read: that document ends with the
    /// reason (a Hocuspocus close message), the others go on.
    async fn refuse_message(&mut self, key: &str, e: HocuspocusError) -> Result<(), End> {
        metrics::rejected("malformed");
        self.forget(key);
        self.send(key, &hocuspocus::close(&e.to_string())).await
    }

    /// Forgets `key` if its document's task has ended (not a newer one).
    fn forget_ended(&mut self, key: &str) {
        if let Some(Key::Open(tx)) = self.keys.get(key)
            && tx.is_closed()
        {
            self.keys.remove(key);
        }
    }

    /// Drops what the socket holds for `key` (an open document's queue:
    /// its task takes what is in it and ends).
    fn forget(&mut self, key: &str) {
        if let Some(Key::Pending(frames)) = self.keys.remove(key) {
            self.pending_frames -= frames.len();
            self.pending_bytes -= frames.iter().map(Vec::len).sum::<usize>();
        }
    }

    async fn send(&self, key: &str, body: &[u8]) -> Result<(), End> {
        let frame = hocuspocus::frame(key, body);
        self.out
            .send(WsMessage::Binary(frame.into()))
            .await
            .map_err(|_| End::Detached)
    }

    /// The socket's rates, every document counted (past them: `1008`).
    fn rate(&mut self, message: &Message) -> Result<(), End> {
        let (within, what, per_sec) = match message {
            Message::Yjs(ClientMessage::Update(_) | ClientMessage::SyncStep2(_)) => (
                self.updates.take(),
                "updates",
                self.app.limits.max_updates_per_sec,
            ),
            Message::Yjs(ClientMessage::SyncStep1(_) | ClientMessage::QueryAwareness) => (
                self.syncs.take(),
                "sync requests",
                self.app.limits.max_syncs_per_sec,
            ),
            Message::Yjs(ClientMessage::Awareness { .. }) | Message::Stateless(_) => (
                self.awareness.take(),
                "awareness or stateless messages",
                self.app.limits.max_awareness_per_sec,
            ),
            _ => return Ok(()),
        };
        if within {
            return Ok(());
        }
        metrics::rejected("rate_limited");
        Err(End::Socket(
            1008,
            format!("more than {per_sec} {what} per second"),
        ))
    }
}
