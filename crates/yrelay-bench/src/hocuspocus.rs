//! Hocuspocus readers and writer for the fan-out: `@hocuspocus/provider`'s
//! protocol, on yrelay's `/v1/hocuspocus` or on a Hocuspocus server. A
//! reader sends its (empty) token and its SyncStep1 for the document, then
//! applies what comes under its name; the writer sends its edits as
//! updates under the name.

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use yrelay_protocol::hocuspocus::{self, Frame};
use yrelay_protocol::sync::{self, ClientMessage};
use yrs::StateVector;
use yrs::updates::encoder::Encode;

use super::{ReaderOutcome, Socket, Tally, connect, message, wall_us};

/// The endpoint and the document's name of a URL: yrelay's
/// `ws://H/v1/ws/S/D` is `ws://H/v1/hocuspocus` and `S/D`; any other
/// `ws://H/NAME` (a Hocuspocus server) is `ws://H/` and `NAME`.
pub fn target(ws_url: &str) -> Result<(String, String), String> {
    if let Some((base, name)) = ws_url.split_once("/v1/ws/") {
        return Ok((format!("{base}/v1/hocuspocus"), name.to_string()));
    }
    let rest = ws_url
        .strip_prefix("ws://")
        .ok_or("Hocuspocus URLs are ws://HOST/NAME (no TLS in the bench)")?;
    let (host, name) = rest.split_once('/').ok_or("no document name in the URL")?;
    Ok((format!("ws://{host}/"), name.to_string()))
}

type Sink = futures_util::stream::SplitSink<Socket, Message>;
type Stream = futures_util::stream::SplitStream<Socket>;

/// Connects to the document of `url` and sends its token and SyncStep1.
async fn open(url: &str) -> Result<(Sink, Stream, String), String> {
    let (endpoint, name) = target(url)?;
    let (mut sink, stream) = connect(&endpoint).await?.split();
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
    Ok((sink, stream, name))
}

/// A writer over Hocuspocus: its own document, each edit sent as an update.
pub struct Writer {
    sink: Sink,
    name: String,
    doc: yrs::Doc,
    _reader: tokio::task::JoinHandle<()>,
}

impl Writer {
    /// Connects, sends its token and SyncStep1, and waits for the server's
    /// SyncStep2 (what there is); what comes later is read and dropped.
    pub async fn connect(url: &str) -> Result<Self, String> {
        let (sink, mut stream, name) = open(url).await?;
        let doc = crate::writer::yjs_doc();
        loop {
            let Message::Binary(data) = message(stream.next().await)? else {
                continue;
            };
            let Ok(Frame::Doc { name: key, body }) = hocuspocus::split_frame(&data) else {
                continue;
            };
            if let Ok(hocuspocus::Message::Yjs(ClientMessage::SyncStep2(update))) =
                hocuspocus::decode_message(&key, body)
            {
                yrelay_protocol::update::apply_update(&doc, &update).map_err(|e| e.to_string())?;
                break;
            }
        }
        let _reader = tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
        Ok(Self {
            sink,
            name,
            doc,
            _reader,
        })
    }

    /// Pushes `value` into the Y.Array `seq` and sends the update.
    pub async fn push(&mut self, value: i64) -> Result<(), String> {
        use yrs::{Array, ReadTxn, Transact};
        let seq = self.doc.get_or_insert_array("seq");
        let update = {
            let mut txn = self.doc.transact_mut();
            let before = txn.state_vector();
            seq.push_back(&mut txn, value);
            txn.encode_diff_v1(&before)
        };
        let frame = hocuspocus::frame(&self.name, &sync::encode_update(&update));
        self.sink
            .send(Message::Binary(frame.into()))
            .await
            .map_err(|e| e.to_string())
    }

    /// The writer's whole state (v1).
    pub fn state(&self) -> Vec<u8> {
        use yrs::{ReadTxn, Transact};
        self.doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default())
    }
}

/// Reads until every item arrived.
pub async fn read(
    ws_url: String,
    updates: usize,
    synced: tokio::sync::mpsc::Sender<()>,
) -> Result<ReaderOutcome, String> {
    let (mut sink, mut stream, name) = open(&ws_url).await?;
    let mut tally = Tally::new(updates)?;
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
