//! The writers, one per transport and document, and what they were told.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use yrelay_client::WsClient;
use yrs::updates::decoder::Decode;
use yrs::{Doc, Map, ReadTxn, Transact, Update};

use super::{Rng, SETTLE, SPACE, keys_of};

/// Keys a writer wrote and which of them were acknowledged.
#[derive(Default)]
pub(super) struct Ledger {
    pub(super) acked: BTreeSet<String>,
    /// Written by y-websocket writers (owed without an acknowledgement).
    pub(super) owed: BTreeSet<String>,
}

pub(super) type Shared = Arc<Mutex<Ledger>>;

/// A writer's document and what it has not had acknowledged yet.
struct Outbox {
    doc: Doc,
    pending: Vec<(String, Vec<u8>)>,
}

impl Outbox {
    fn new(client: u64) -> Self {
        Self {
            doc: Doc::with_client_id(client),
            pending: Vec::new(),
        }
    }

    fn write(&mut self, key: String) {
        let map = self.doc.get_or_insert_map("chaos");
        let before = self.doc.transact().state_vector();
        map.insert(&mut self.doc.transact_mut(), key.clone(), 1);
        let update = self.doc.transact().encode_diff_v1(&before);
        self.pending.push((key, update));
    }

    /// Everything pending as one update.
    fn merged(&self) -> Vec<u8> {
        let updates = self
            .pending
            .iter()
            .filter_map(|(_, u)| Update::decode_v1(u).ok());
        yrs::updates::encoder::Encode::encode_v1(&Update::merge_updates(updates))
    }

    fn acked(&mut self, ledger: &Shared) {
        let mut l = ledger.lock().unwrap_or_else(|p| p.into_inner());
        for (key, _) in self.pending.drain(..) {
            l.acked.insert(key);
        }
    }
}

/// POSTs its outbox (merged) to a random instance until acknowledged.
pub(super) async fn post_writer(
    addrs: Vec<String>,
    doc: String,
    id: u64,
    until: Instant,
    ledger: Shared,
) {
    let mut rng = Rng(id * 7919 + 1);
    let mut out = Outbox::new(id);
    let mut n = 0;
    let settle = until + SETTLE;
    while Instant::now() < settle {
        if Instant::now() < until {
            n += 1;
            out.write(format!("post-{doc}-{n}"));
        } else if out.pending.is_empty() {
            return;
        }
        let addr = &addrs[rng.below(addrs.len() as u64) as usize];
        let path = format!("/v1/docs/{SPACE}/{doc}/updates");
        if post(addr, &path, &out.merged()).await == Some(200) {
            out.acked(&ledger);
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

/// One HTTP/1.1 POST; its status, or `None` when the connection failed.
async fn post(addr: &str, path: &str, body: &[u8]) -> Option<u16> {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.ok()?;
        stream.write_all(body).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        String::from_utf8_lossy(&response)
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .ok()
        .flatten()
}

/// Pushes its outbox over AFFiNE's Socket.IO protocol until acknowledged,
/// reconnecting (to a random instance) whenever the connection fails.
pub(super) async fn sio_writer(
    addrs: Vec<String>,
    doc: String,
    id: u64,
    until: Instant,
    ledger: Shared,
) {
    let mut rng = Rng(id * 104_729 + 3);
    let mut out = Outbox::new(id);
    let mut n = 0;
    let settle = until + SETTLE;
    while Instant::now() < settle {
        if Instant::now() >= until && out.pending.is_empty() {
            return;
        }
        let addr = &addrs[rng.below(addrs.len() as u64) as usize];
        let _ = sio_session(addr, &doc, &mut out, &mut n, until, &ledger).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One Socket.IO connection: join, then push (one at a time, acked) until
/// it fails or there is nothing left to do.
async fn sio_session(
    addr: &str,
    doc: &str,
    out: &mut Outbox,
    n: &mut u64,
    until: Instant,
    ledger: &Shared,
) -> Result<(), String> {
    let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
    let (socket, _) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .map_err(|_| "connect timed out")?
    .map_err(|e| e.to_string())?;
    let (mut sink, mut stream) = socket.split();
    let space = json!({ "spaceType": "workspace", "spaceId": SPACE });
    let mut ack = 0u64;
    let mut joined = false;
    let mut waiting: Option<u64> = None;
    loop {
        if joined && waiting.is_none() {
            if Instant::now() < until {
                *n += 1;
                out.write(format!("sio-{doc}-{n}"));
            } else if out.pending.is_empty() {
                return Ok(());
            }
            ack += 1;
            let mut push = space.clone();
            push["docId"] = json!(doc);
            push["update"] = json!(STANDARD.encode(out.merged()));
            let frame = format!("42{ack}{}", json!(["space:push-doc-update", push]));
            sink.send(Message::Text(frame.into()))
                .await
                .map_err(|e| e.to_string())?;
            waiting = Some(ack);
        }
        let next = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .map_err(|_| "no answer for 10 s")?;
        let text = match next {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Err("closed".into()),
            Some(Ok(_)) => continue,
        };
        let reply = match text.as_str() {
            t if t.starts_with('0') => Some("40".to_string()),
            t if t.starts_with("40") => {
                let mut join = space.clone();
                join["clientVersion"] = json!("0.26.0");
                Some(format!("420{}", json!(["space:join", join])))
            }
            "2" => Some("3".to_string()),
            t if t.starts_with("430") => {
                joined = true;
                None
            }
            t if t.starts_with("43") => {
                let (id, body) = t[2..].split_at(t[2..].find('[').unwrap_or(0));
                let answer: Value = serde_json::from_str(body).unwrap_or(Value::Null);
                if waiting.is_some_and(|w| id == w.to_string()) {
                    waiting = None;
                    if answer[0]["data"]["accepted"] == true {
                        out.acked(ledger);
                    } else {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                None
            }
            t if t.starts_with("41") || t.starts_with('1') => return Err("disconnected".into()),
            _ => None,
        };
        if let Some(reply) = reply {
            sink.send(Message::Text(reply.into()))
                .await
                .map_err(|e| e.to_string())?;
        }
    }
}

/// Edits over y-websocket, reconnecting whenever the connection ends (the
/// document syncs again on every connect). After the faults it stays
/// connected until the server serves everything it wrote.
pub(super) async fn ws_writer(
    addrs: Vec<String>,
    doc: String,
    id: u64,
    until: Instant,
    ledger: Shared,
) {
    let mut rng = Rng(id * 15_485_863 + 5);
    let ydoc = Doc::with_client_id(id);
    let map = ydoc.get_or_insert_map("chaos");
    let mut mine = BTreeSet::new();
    let settle = until + SETTLE;
    let mut n = 0;
    while Instant::now() < settle {
        let addr = &addrs[rng.below(addrs.len() as u64) as usize];
        let url = format!("ws://{addr}/v1/ws/{SPACE}/{doc}");
        let Ok(client) = WsClient::connect(&url, ydoc.clone()).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        while Instant::now() < until && !client.is_closed() {
            n += 1;
            let key = format!("ws-{doc}-{n}");
            client.edit(|txn| {
                map.insert(txn, key.clone(), 1);
            });
            mine.insert(key.clone());
            ledger
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .owed
                .insert(key);
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        if Instant::now() >= until && client.wait_synced(Duration::from_secs(10)).await.is_ok() {
            // Held until another instance serves all of it (or it closes).
            for _ in 0..50 {
                let served = get(&addrs[0], &format!("/v1/docs/{SPACE}/{doc}/update")).await;
                if served.is_some_and(|body| keys_of(&body).is_superset(&mine)) {
                    return;
                }
                if client.is_closed() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// One HTTP/1.1 GET answered 200: its body.
async fn get(addr: &str, path: &str) -> Option<Vec<u8>> {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let split = response.windows(4).position(|w| w == b"\r\n\r\n")?;
        response
            .starts_with(b"HTTP/1.1 200")
            .then(|| response[split + 4..].to_vec())
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .ok()
        .flatten()
}
