//! The reading side of a fan-out run: readers over every transport, in
//! this process or spread over child processes, and what each one measured.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;
use yrelay_protocol::sync::{self, ClientMessage};
use yrelay_protocol::update::{apply_update, merge_updates};
use yrs::any::Number;
use yrs::updates::encoder::Encode;
use yrs::{Any, Array, Doc, Out, ReadTxn, StateVector, Transact};

use crate::{ReadersArgs, Transport, histogram, hocuspocus, room_urls, sio, sse, wall_us};

/// Readers connected to a room and synced, each a task that ends once it
/// has every item.
pub(crate) struct Readers {
    tasks: Vec<tokio::task::JoinHandle<Result<ReaderOutcome, String>>>,
}

impl Readers {
    /// Connects readers `first..first + count` (round-robin over `urls`) and
    /// waits until each is synced.
    pub(crate) async fn connect(
        urls: &[String],
        over: Transport,
        first: usize,
        count: usize,
        updates: usize,
    ) -> Result<Self, String> {
        let mut tasks = Vec::with_capacity(count);
        let (synced_tx, mut synced_rx) = tokio::sync::mpsc::channel(count.max(1));
        for i in first..first + count {
            let url = &urls[i % urls.len()];
            let task = match over {
                Transport::Ws => {
                    let socket = connect(url).await?;
                    tokio::spawn(read(socket, updates, synced_tx.clone()))
                }
                Transport::Sse => {
                    let url = sse::events_url(url)?;
                    tokio::spawn(sse::read(url, updates, synced_tx.clone()))
                }
                Transport::Hocuspocus => {
                    tokio::spawn(hocuspocus::read(url.clone(), updates, synced_tx.clone()))
                }
                Transport::Socketio | Transport::SocketioBatch => {
                    let batch = over == Transport::SocketioBatch;
                    tokio::spawn(sio::read(url.clone(), batch, updates, synced_tx.clone()))
                }
            };
            tasks.push(task);
        }
        drop(synced_tx);
        for _ in 0..count {
            let synced = tokio::time::timeout(Duration::from_secs(60), synced_rx.recv()).await;
            if let Ok(Some(())) = synced {
                continue;
            }
            // A reader failed or hangs before syncing: say why if it ended.
            for task in tasks.into_iter().filter(|t| t.is_finished()) {
                if let Ok(Err(e)) = task.await {
                    return Err(format!("a reader failed before syncing: {e}"));
                }
            }
            return Err("a reader did not sync within 60 s".into());
        }
        Ok(Self { tasks })
    }

    /// Waits for every reader: their latencies, and each one's final state
    /// (its hash).
    pub(crate) async fn finish(self) -> Result<(Histogram<u64>, Vec<u64>), String> {
        let mut latencies = histogram()?;
        let mut states = Vec::new();
        for task in self.tasks {
            let outcome = tokio::time::timeout(Duration::from_secs(120), task)
                .await
                .map_err(|_| "a reader did not receive every update within 120 s")?
                .map_err(|e| e.to_string())??;
            latencies
                .add(&outcome.latencies)
                .map_err(|e| e.to_string())?;
            states.push(state_hash(&outcome.state));
        }
        Ok((latencies, states))
    }
}

pub(crate) fn state_hash(state: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    state.hash(&mut h);
    h.finish()
}

/// A share of the readers in a child process (`readers` subcommand).
pub(crate) struct ChildReaders {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl ChildReaders {
    pub(crate) async fn spawn(
        template: &str,
        room: &str,
        over: Transport,
        first: usize,
        count: usize,
        updates: usize,
    ) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = tokio::process::Command::new(exe)
            .arg("readers")
            .args(["--url", template, "--room", room])
            .args([
                "--first",
                &first.to_string(),
                "--readers",
                &count.to_string(),
            ])
            .args(["--updates", &updates.to_string()])
            .args(["--readers-over", over.name()])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("spawn a reader process: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        Ok(Self {
            child,
            lines: BufReader::new(stdout).lines(),
        })
    }

    pub(crate) async fn line(&mut self) -> Result<String, String> {
        self.lines
            .next_line()
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "a reader process ended early (see its error above)".to_string())
    }

    pub(crate) async fn finish(mut self) -> Result<(Histogram<u64>, Vec<u64>), String> {
        let line = self.line().await?;
        let _ = self.child.wait().await;
        let result: serde_json::Value = serde_json::from_str(&line).map_err(|e| e.to_string())?;
        let mut latencies = histogram()?;
        for pair in result["buckets"].as_array().ok_or("no buckets")? {
            let (value, count) = (pair[0].as_u64(), pair[1].as_u64());
            latencies
                .record_n(value.unwrap_or(1), count.unwrap_or(0))
                .map_err(|e| e.to_string())?;
        }
        let states = result["states"]
            .as_array()
            .ok_or("no states")?
            .iter()
            .filter_map(|s| s.as_str()?.parse().ok())
            .collect();
        Ok((latencies, states))
    }
}

/// `readers`: connect a share, say `synced`, then print the result.
pub(crate) async fn readers_process(args: ReadersArgs) -> Result<(), String> {
    let urls = room_urls(&args.url, &args.room);
    let readers = Readers::connect(
        &urls,
        args.readers_over,
        args.first,
        args.readers,
        args.updates,
    )
    .await?;
    println!("synced");
    let (latencies, states) = readers.finish().await?;
    let buckets: Vec<[u64; 2]> = latencies
        .iter_recorded()
        .map(|v| [v.value_iterated_to(), v.count_at_value()])
        .collect();
    let states: Vec<String> = states.iter().map(u64::to_string).collect();
    println!(
        "{}",
        serde_json::json!({ "buckets": buckets, "states": states })
    );
    Ok(())
}

pub(crate) struct ReaderOutcome {
    pub(crate) latencies: Histogram<u64>,
    pub(crate) state: Vec<u8>,
}

pub(crate) type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A reader's document and the latency of every item that became visible.
pub(crate) struct Tally {
    doc: Doc,
    seq: yrs::ArrayRef,
    pub(crate) latencies: Histogram<u64>,
    seen: usize,
    updates: usize,
}

impl Tally {
    pub(crate) fn new(updates: usize) -> Result<Self, String> {
        let doc = Doc::new();
        let seq = doc.get_or_insert_array("seq");
        Ok(Self {
            doc,
            seq,
            latencies: histogram()?,
            seen: 0,
            updates,
        })
    }

    pub(crate) fn done(&self) -> bool {
        self.seen >= self.updates
    }

    pub(crate) fn apply(&self, update: &[u8]) -> Result<(), String> {
        apply_update(&self.doc, update).map_err(|e| e.to_string())
    }

    /// Records the items that became visible, as received at `now`.
    pub(crate) fn record(&mut self, now: i64) -> Result<(), String> {
        let txn = self.doc.transact();
        let visible = self.seq.len(&txn) as usize;
        for i in self.seen..visible.min(self.updates) {
            let sent = match self.seq.get(&txn, i as u32) {
                Some(Out::Any(Any::Number(Number::Int(us)))) => us,
                Some(Out::Any(Any::Number(Number::Float(us)))) => us as i64,
                _ => return Err(format!("item {i} is not a send time")),
            };
            self.latencies
                .record(now.saturating_sub(sent).max(1) as u64)
                .map_err(|e| e.to_string())?;
        }
        self.seen = self.seen.max(visible);
        Ok(())
    }

    pub(crate) fn finish(self) -> Result<ReaderOutcome, String> {
        let state = merge_updates([self
            .doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default())
            .as_slice()])
        .map_err(|e| e.to_string())?;
        Ok(ReaderOutcome {
            latencies: self.latencies,
            state,
        })
    }
}

/// A WebSocket to `url` with yrelay-client's limits.
pub(crate) async fn connect(url: &str) -> Result<Socket, String> {
    let (socket, _) =
        tokio_tungstenite::connect_async_with_config(url, Some(yrelay_client::config()), true)
            .await
            .map_err(|e| format!("connect {url}: {e}"))?;
    Ok(socket)
}

/// The next message of a reader's WebSocket; the connection ending (closed
/// by the server, failed, gone) is an error.
pub(crate) fn message(
    next: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
) -> Result<Message, String> {
    match next {
        Some(Ok(Message::Close(frame))) => Err(format!("reader closed by server: {frame:?}")),
        Some(Ok(message)) => Ok(message),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("reader connection ended".into()),
    }
}

/// A WebSocket reader: answers the server's SyncStep1, applies updates.
pub(crate) async fn read(
    socket: Socket,
    updates: usize,
    synced: tokio::sync::mpsc::Sender<()>,
) -> Result<ReaderOutcome, String> {
    let (mut sink, mut stream) = socket.split();
    let mut tally = Tally::new(updates)?;
    let sv = StateVector::default().encode_v1();
    sink.send(Message::Binary(sync::encode_sync_step1(&sv).into()))
        .await
        .map_err(|e| e.to_string())?;
    while !tally.done() {
        let Message::Binary(frame) = message(stream.next().await)? else {
            continue;
        };
        let now = wall_us();
        for message in sync::decode_frame(&frame).map_err(|e| e.to_string())? {
            match message {
                ClientMessage::SyncStep1(_) => {
                    let empty = sync::encode_sync_step2(&[0, 0]);
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
        }
        tally.record(now)?;
    }
    tally.finish()
}
