//! Socket.IO readers for the fan-out: AFFiNE's `space:*` protocol on
//! yrelay's `/socket.io/` (Engine.IO v4, WebSocket transport only). A reader
//! joins the space as a 0.26 client (or, `batch`, as a 0.27.5 client with
//! `space:join-batch` subscribing to the document), loads the document, then
//! applies every `space:broadcast-doc-updates` for it. Only the few packet kinds this
//! needs are spoken (open, connect, ping/pong, event, ack); a general client
//! crate would bring an HTTP client and a second WebSocket stack for the
//! polling transport the bench never uses.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::{ReaderOutcome, Tally, wall_us};

/// Where a y-websocket URL of yrelay (`ws://H/v1/ws/S/D`) is on Socket.IO:
/// the endpoint, the space and the document.
pub fn target(ws_url: &str) -> Result<(String, String, String), String> {
    let rest = ws_url
        .strip_prefix("ws://")
        .ok_or("Socket.IO readers need a ws:// URL of yrelay (no TLS in the bench)")?;
    let (host, path) = rest.split_once('/').ok_or("no path in the URL")?;
    let (space, doc) = path
        .strip_prefix("v1/ws/")
        .and_then(|p| p.split_once('/'))
        .ok_or("Socket.IO readers need yrelay's /v1/ws/{space}/{doc} URLs")?;
    Ok((
        format!("ws://{host}/socket.io/?EIO=4&transport=websocket"),
        space.to_string(),
        doc.to_string(),
    ))
}

fn emit(ack: u32, event: &str, payload: Value) -> Message {
    Message::Text(format!("42{ack}{}", json!([event, payload])).into())
}

/// Reads broadcasts until every item arrived.
pub async fn read(
    ws_url: String,
    batch: bool,
    updates: usize,
    synced: tokio::sync::mpsc::Sender<()>,
) -> Result<ReaderOutcome, String> {
    let (endpoint, space, doc) = target(&ws_url)?;
    let (mut sink, mut stream) = super::connect(&endpoint).await?.split();
    let mut tally = Tally::new(updates)?;
    let space_ref = json!({ "spaceType": "workspace", "spaceId": space });
    let decode = |text: &str| STANDARD.decode(text).map_err(|e| e.to_string());
    let mut last = String::new();
    let (started, mut synced_once) = (std::time::Instant::now(), false);
    while !tally.done() {
        let next = tokio::time::timeout(std::time::Duration::from_secs(30), stream.next());
        let Ok(next) = next.await else {
            return Err(format!("nothing from the server for 30 s after {last:?}"));
        };
        if !synced_once && started.elapsed() > std::time::Duration::from_secs(30) {
            return Err(format!("not synced after 30 s; last packet {last:?}"));
        }
        let Message::Text(text) = super::message(next)? else {
            continue;
        };
        let now = wall_us();
        if text.as_str() != "2" {
            last = text.chars().take(120).collect();
        }
        let reply = match text.as_str() {
            // Engine.IO open, then Socket.IO connect to the main namespace.
            t if t.starts_with('0') => Some(Message::Text("40".into())),
            t if t.starts_with("40") && batch => {
                let mut entry = space_ref.clone();
                entry["docId"] = json!(doc);
                let join = json!({ "spaces": [entry], "clientVersion": "0.27.5" });
                Some(emit(0, "space:join-batch", join))
            }
            t if t.starts_with("40") => {
                let mut join = space_ref.clone();
                join["clientVersion"] = json!("0.26.0");
                Some(emit(0, "space:join", join))
            }
            t if t.starts_with("44") => return Err(format!("connect refused: {t}")),
            // Disconnected (a real client reconnects and loads the doc again).
            t if t.starts_with("41") || t.starts_with('1') => {
                return Err(format!("disconnected by the server ({t})"));
            }
            "2" => Some(Message::Text("3".into())),
            t if t.starts_with("430") => {
                let mut load = space_ref.clone();
                load["docId"] = json!(doc);
                Some(emit(1, "space:load-doc", load))
            }
            t if t.starts_with("431") => {
                // The document, or DOC_NOT_FOUND before its first update.
                let ack: Value = serde_json::from_str(&t[3..]).map_err(|e| e.to_string())?;
                if let Some(missing) = ack[0]["data"]["missing"].as_str() {
                    tally.apply(&decode(missing)?)?;
                }
                let _ = synced.send(()).await;
                synced_once = true;
                None
            }
            t if t.starts_with("42") => {
                let event: Value = serde_json::from_str(&t[2..]).map_err(|e| e.to_string())?;
                if event[0] == "space:broadcast-doc-updates" && event[1]["docId"] == doc.as_str() {
                    for update in event[1]["updates"].as_array().into_iter().flatten() {
                        tally.apply(&decode(update.as_str().unwrap_or_default())?)?;
                    }
                    tally.record(now)?;
                }
                None
            }
            _ => None,
        };
        if let Some(reply) = reply {
            sink.send(reply).await.map_err(|e| e.to_string())?;
        }
    }
    tally.finish()
}
