//! Hocuspocus readers for the fan-out: `@hocuspocus/provider`'s protocol on
//! yrelay's `/v1/hocuspocus`. A reader sends its (empty) token and its
//! SyncStep1 for the document, then applies what comes under its name.

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use yrelay_protocol::hocuspocus::{self, Frame};
use yrelay_protocol::sync::{self, ClientMessage};
use yrs::StateVector;
use yrs::updates::encoder::Encode;

use super::{ReaderOutcome, Tally, message, wall_us};

/// Where a y-websocket URL of yrelay (`ws://H/v1/ws/S/D`) is for Hocuspocus:
/// the endpoint and the document's name (`S/D`).
pub fn target(ws_url: &str) -> Result<(String, String), String> {
    let (base, name) = ws_url
        .split_once("/v1/ws/")
        .ok_or("Hocuspocus readers need yrelay's /v1/ws/{space}/{doc} URLs")?;
    Ok((format!("{base}/v1/hocuspocus"), name.to_string()))
}

/// Reads until every item arrived.
pub async fn read(
    ws_url: String,
    updates: usize,
    synced: tokio::sync::mpsc::Sender<()>,
) -> Result<ReaderOutcome, String> {
    let (endpoint, name) = target(&ws_url)?;
    let (socket, _) = tokio_tungstenite::connect_async_with_config(
        &endpoint,
        Some(yrelay_client::config()),
        true,
    )
    .await
    .map_err(|e| format!("reader connect: {e}"))?;
    let (mut sink, mut stream) = socket.split();
    let mut tally = Tally::new(updates)?;
    let sv = StateVector::default().encode_v1();
    for body in [
        hocuspocus::token("", "yrelay-bench"),
        sync::encode_sync_step1(&sv),
    ] {
        let frame = hocuspocus::frame(&name, &body);
        sink.send(Message::Binary(frame.into()))
            .await
            .map_err(|e| e.to_string())?;
    }
    while !tally.done() {
        let Message::Binary(data) = message(stream.next().await)? else {
            continue;
        };
        let now = wall_us();
        let Frame::Doc { name: key, body } =
            hocuspocus::split_frame(&data).map_err(|e| e.to_string())?
        else {
            continue;
        };
        let Ok(hocuspocus::Message::Yjs(m)) = hocuspocus::decode_message(&key, body) else {
            continue; // authenticated, sync status, ...
        };
        match m {
            ClientMessage::SyncStep1(_) => {
                let empty = hocuspocus::frame(&name, &sync::encode_sync_step2(&[0, 0]));
                sink.send(Message::Binary(empty.into()))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            ClientMessage::SyncStep2(update) => {
                tally.apply(&update)?;
                let _ = synced.send(()).await;
            }
            ClientMessage::Update(update) => tally.apply(&update)?,
            _ => {}
        }
        tally.record(now)?;
    }
    tally.finish()
}
