//! A small y-websocket client on yrs: it keeps a `yrs::Doc` in sync with a
//! server, sends local edits, and tracks awareness. yrelay's tests and its
//! load generator use it next to the real JavaScript clients.
//!
//! Everything observable can be awaited (`wait_for`, `wait_synced`,
//! `closed`), so callers never sleep to wait for a condition.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use yrelay_protocol::sync::{self, ClientMessage};
use yrs::sync::Awareness;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, ReadTxn, StateVector, Transact, TransactionMut, Update};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect failed: {0}")]
    Connect(String),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("connection closed")]
    Closed,
}

/// How the server ended the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseInfo {
    /// `None` when the connection ended without a close frame.
    pub code: Option<u16>,
    pub reason: String,
}

/// The client's WebSocket settings. Small reads: tungstenite zero-fills its
/// whole read buffer (128 KiB by default) on every read attempt. No frame or
/// message limit: a client trusts its server, and the first sync of a large
/// document is one message as large as the document (tungstenite's default
/// 16 MiB frame limit refused a 20 MB document).
pub fn config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4096)
        .max_frame_size(None)
        .max_message_size(None)
}

/// What the connection task shares with the handle.
struct Shared {
    doc: Doc,
    awareness: Mutex<Awareness>,
    /// Bumped after every message received (and applied).
    changes: watch::Sender<u64>,
    synced: watch::Sender<bool>,
    closed: watch::Sender<Option<CloseInfo>>,
    permission_denied: Mutex<Option<String>>,
}

/// One connection of a y-websocket client. Dropping it closes the socket;
/// the `Doc` lives on and can connect again (offline edits then sync).
pub struct WsClient {
    shared: Arc<Shared>,
    out: mpsc::UnboundedSender<Message>,
    task: tokio::task::JoinHandle<()>,
}

impl WsClient {
    /// Connects `doc` to `url` (e.g. `ws://127.0.0.1:4040/v1/ws/space/doc`)
    /// and starts the sync handshake.
    pub async fn connect(url: &str, doc: Doc) -> Result<Self, ClientError> {
        let (socket, _) = tokio_tungstenite::connect_async_with_config(url, Some(config()), true)
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        let shared = Arc::new(Shared {
            awareness: Mutex::new(Awareness::new(doc.clone())),
            doc,
            changes: watch::channel(0).0,
            synced: watch::channel(false).0,
            closed: watch::channel(None).0,
            permission_denied: Mutex::new(None),
        });
        let (out, out_rx) = mpsc::unbounded_channel();
        let sv = shared.doc.transact().state_vector().encode_v1();
        let _ = out.send(Message::Binary(sync::encode_sync_step1(&sv).into()));
        let task = tokio::spawn(run(socket, shared.clone(), out.clone(), out_rx));
        Ok(Self { shared, out, task })
    }

    pub fn doc(&self) -> &Doc {
        &self.shared.doc
    }

    /// Edits the document and sends the change as one update.
    pub fn edit<F: FnOnce(&mut TransactionMut)>(&self, f: F) {
        let before = self.shared.doc.transact().state_vector();
        {
            let mut txn = self.shared.doc.transact_mut();
            f(&mut txn);
        }
        let update = self.shared.doc.transact().encode_diff_v1(&before);
        self.send_raw(sync::encode_update(&update));
    }

    /// Sends a frame as is (for tests of bad input).
    pub fn send_raw(&self, frame: Vec<u8>) {
        let _ = self.out.send(Message::Binary(frame.into()));
    }

    /// Sends a text frame (not part of the protocol; for tests).
    pub fn send_text(&self, text: &str) {
        let _ = self.out.send(Message::Text(text.into()));
    }

    /// Sets this client's awareness state and sends it.
    pub fn set_awareness(&self, state: &serde_json::Value) {
        let update = {
            let mut awareness = lock(&self.shared.awareness);
            awareness.set_local_state_raw(state.to_string());
            let id = awareness.client_id();
            awareness.update_with_clients([id])
        };
        if let Ok(update) = update {
            self.send_raw(sync::encode_awareness(&update.encode_v1()));
        }
    }

    /// Asks the server for every awareness state it knows.
    pub fn query_awareness(&self) {
        self.send_raw(vec![3]);
    }

    /// The awareness states this client knows of other clients, as JSON text.
    pub fn peers(&self) -> Vec<(u64, String)> {
        let awareness = lock(&self.shared.awareness);
        let me = awareness.client_id();
        let mut peers: Vec<_> = awareness
            .iter()
            .filter(|(id, _)| *id != me)
            .filter_map(|(id, s)| Some((id.get(), s.data?.to_string())))
            .collect();
        peers.sort();
        peers
    }

    /// The whole document as one v1 update.
    pub fn state(&self) -> Vec<u8> {
        self.shared
            .doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    /// The reason of an auth permission-denied message, if one came.
    pub fn permission_denied(&self) -> Option<String> {
        lock(&self.shared.permission_denied).clone()
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.borrow().is_some()
    }

    /// Waits until the server's SyncStep2 has been applied.
    pub async fn wait_synced(&self, timeout: Duration) -> Result<(), ClientError> {
        let mut synced = self.shared.synced.subscribe();
        tokio::time::timeout(timeout, synced.wait_for(|s| *s))
            .await
            .map_err(|_| ClientError::Timeout("sync"))?
            .map_err(|_| ClientError::Closed)?;
        Ok(())
    }

    /// Waits until `condition` holds for this client (checked after every
    /// received message).
    pub async fn wait_for<F>(
        &self,
        what: &'static str,
        timeout: Duration,
        mut condition: F,
    ) -> Result<(), ClientError>
    where
        F: FnMut(&WsClient) -> bool,
    {
        let mut changes = self.shared.changes.subscribe();
        let wait = async {
            loop {
                if condition(self) {
                    return Ok(());
                }
                if changes.changed().await.is_err() {
                    return Err(ClientError::Closed);
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| ClientError::Timeout(what))?
    }

    /// Waits until the connection ends and says how.
    pub async fn closed(&self, timeout: Duration) -> Result<CloseInfo, ClientError> {
        let mut closed = self.shared.closed.subscribe();
        let info = tokio::time::timeout(timeout, closed.wait_for(Option::is_some))
            .await
            .map_err(|_| ClientError::Timeout("close"))?
            .map_err(|_| ClientError::Closed)?;
        Ok(info.clone().unwrap_or(CloseInfo {
            code: None,
            reason: String::new(),
        }))
    }

    /// Closes the connection (normal closure) and waits for it to end.
    pub async fn close(self) {
        let _ = self.out.send(Message::Close(None));
        let _ =
            tokio::time::timeout(Duration::from_secs(5), self.closed(Duration::from_secs(5))).await;
        self.task.abort();
    }
}

impl Drop for WsClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn run(
    socket: Socket,
    shared: Arc<Shared>,
    out: mpsc::UnboundedSender<Message>,
    mut out_rx: mpsc::UnboundedReceiver<Message>,
) {
    let (mut sink, mut stream) = socket.split();
    let close = loop {
        tokio::select! {
            message = out_rx.recv() => {
                let Some(message) = message else { break None };
                if sink.send(message).await.is_err() {
                    break None;
                }
            }
            frame = stream.next() => match frame {
                Some(Ok(Message::Binary(data))) => {
                    receive(&shared, &out, &data);
                    shared.changes.send_modify(|n| *n += 1);
                }
                Some(Ok(Message::Close(frame))) => break frame,
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break None,
            }
        }
    };
    let info = match close {
        Some(CloseFrame { code, reason }) => CloseInfo {
            code: Some(code.into()),
            reason: reason.to_string(),
        },
        None => CloseInfo {
            code: None,
            reason: String::new(),
        },
    };
    shared.closed.send_replace(Some(info));
    shared.changes.send_modify(|n| *n += 1);
}

fn receive(shared: &Shared, out: &mpsc::UnboundedSender<Message>, data: &[u8]) {
    let Ok(messages) = sync::decode_frame(data) else {
        return;
    };
    for message in messages {
        match message {
            ClientMessage::SyncStep1(sv) => {
                let diff = shared.doc.transact().encode_diff_v1(&sv);
                let _ = out.send(Message::Binary(sync::encode_sync_step2(&diff).into()));
            }
            ClientMessage::SyncStep2(update) => {
                apply(&shared.doc, &update);
                shared.synced.send_replace(true);
            }
            ClientMessage::Update(update) => apply(&shared.doc, &update),
            ClientMessage::Awareness { update, .. } => {
                let _ = lock(&shared.awareness).apply_update(update);
            }
            ClientMessage::QueryAwareness | ClientMessage::SyncStatus(_) => {}
            ClientMessage::Auth(reason) => *lock(&shared.permission_denied) = reason,
        }
    }
}

fn apply(doc: &Doc, update: &[u8]) {
    if let Ok(update) = Update::decode_v1(update) {
        let _ = doc.transact_mut().apply_update(update);
    }
}
