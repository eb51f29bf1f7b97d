//! yrelay-bench: load generator speaking the y-websocket protocol with yrs
//! clients. Works against any y-websocket server (the room path is given as
//! a URL template).
//!
//! Scenario `fanout`: one writer pushes numbered items into a Y.Array at a
//! fixed rate; N readers apply what they receive to their own documents and
//! record, per item, the time from send to receipt. Prints percentiles (HDR
//! histogram) and checks that every reader converged to the writer's state.

mod relay;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio_tungstenite::tungstenite::Message;
use yrelay_client::WsClient;
use yrelay_protocol::sync::{self, ClientMessage};
use yrelay_protocol::update::{apply_update, merge_updates};
use yrs::updates::encoder::Encode;
use yrs::{Array, Doc, ReadTxn, StateVector, Transact};

#[derive(Parser)]
#[command(
    name = "yrelay-bench",
    about = "Load generator for y-websocket servers"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// One writer, N readers of one document: write-to-receipt latency.
    Fanout(FanoutArgs),
    /// Serve the floor: a bare frame-forwarding WebSocket relay (no CRDT, no
    /// storage) to run the same scenarios against.
    Relay {
        #[arg(long, default_value = "127.0.0.1:4999")]
        listen: String,
    },
}

#[derive(clap::Args)]
struct FanoutArgs {
    /// WebSocket URL of the document; `{room}` is replaced by a fresh room
    /// name. Several comma-separated URLs (one per instance): the writer uses
    /// the first, readers are spread over all of them.
    #[arg(long, default_value = "ws://127.0.0.1:4040/v1/ws/bench/{room}")]
    url: String,
    #[arg(long, default_value_t = 50)]
    readers: usize,
    #[arg(long, default_value_t = 2000)]
    updates: usize,
    /// Updates per second sent by the writer.
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let outcome = match cli.scenario {
        Scenario::Fanout(args) => fanout(args).await,
        Scenario::Relay { listen } => relay::serve(&listen).await,
    };
    if let Err(e) = outcome {
        eprintln!("yrelay-bench: {e}");
        std::process::exit(1);
    }
}

/// Send times of the writer's items, in µs since the start.
struct SendTimes {
    start: Instant,
    sent: Vec<AtomicU64>,
}

async fn fanout(args: FanoutArgs) -> Result<(), String> {
    let room = format!("fanout-{}-{}", std::process::id(), nanos());
    let urls: Vec<String> = args
        .url
        .split(',')
        .map(|u| u.trim().replace("{room}", &room))
        .collect();
    let url = urls[0].clone();
    let times = Arc::new(SendTimes {
        start: Instant::now(),
        sent: (0..args.updates).map(|_| AtomicU64::new(0)).collect(),
    });

    eprintln!("connecting {} readers to {}", args.readers, urls.join(", "));
    let mut readers = Vec::with_capacity(args.readers);
    let (synced_tx, mut synced_rx) = tokio::sync::mpsc::channel(args.readers.max(1));
    for i in 0..args.readers {
        let (socket, _) = tokio_tungstenite::connect_async_with_config(
            &urls[i % urls.len()],
            Some(yrelay_client::config()),
            true,
        )
        .await
        .map_err(|e| format!("reader connect: {e}"))?;
        readers.push(tokio::spawn(read(
            socket,
            times.clone(),
            args.updates,
            synced_tx.clone(),
        )));
    }
    for _ in 0..args.readers {
        synced_rx
            .recv()
            .await
            .ok_or("a reader ended before syncing")?;
    }

    let writer = WsClient::connect(&url, Doc::new())
        .await
        .map_err(|e| e.to_string())?;
    writer
        .wait_synced(Duration::from_secs(30))
        .await
        .map_err(|e| e.to_string())?;
    let seq = writer.doc().get_or_insert_array("seq");
    eprintln!("writing {} updates at {}/s", args.updates, args.rate);
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate.max(1) as f64));
    for i in 0..args.updates {
        tick.tick().await;
        times.sent[i].store(times.start.elapsed().as_micros() as u64, Ordering::Relaxed);
        writer.edit(|txn| {
            seq.push_back(txn, i as i64);
        });
        if args.updates >= 10 && (i + 1) % (args.updates / 10) == 0 {
            eprintln!("  sent {}/{}", i + 1, args.updates);
        }
    }

    let mut histogram =
        Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).map_err(|e| e.to_string())?;
    let expected = merge_updates([writer.state().as_slice()]).map_err(|e| e.to_string())?;
    let mut diverged = 0;
    for reader in readers {
        let outcome = tokio::time::timeout(Duration::from_secs(120), reader)
            .await
            .map_err(|_| "a reader did not receive every update within 120 s")?
            .map_err(|e| e.to_string())??;
        histogram
            .add(&outcome.latencies)
            .map_err(|e| e.to_string())?;
        if outcome.state != expected {
            diverged += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    let result = serde_json::json!({
        "scenario": "fanout",
        "instances": urls.len(),
        "readers": args.readers,
        "updates": args.updates,
        "rate": args.rate,
        "deliveries": histogram.len(),
        "seconds": elapsed,
        "deliveries_per_second": histogram.len() as f64 / elapsed,
        "latency_ms": { "p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "max": histogram.max() as f64 / 1000.0 },
        "converged": diverged == 0,
    });
    if args.json {
        println!("{result}");
    } else {
        println!(
            "fanout: {} readers, {} updates at {}/s: {} deliveries in {:.2} s ({:.0}/s); latency ms p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}; converged: {}",
            args.readers,
            args.updates,
            args.rate,
            histogram.len(),
            elapsed,
            histogram.len() as f64 / elapsed,
            ms(0.5),
            ms(0.9),
            ms(0.99),
            histogram.max() as f64 / 1000.0,
            diverged == 0
        );
    }
    if diverged > 0 {
        return Err(format!("{diverged} readers diverged from the writer"));
    }
    Ok(())
}

fn nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0)
}

struct ReaderOutcome {
    latencies: Histogram<u64>,
    state: Vec<u8>,
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A reader: answers the server's SyncStep1, applies updates, and records
/// the latency of every item that became visible.
async fn read(
    socket: Socket,
    times: Arc<SendTimes>,
    updates: usize,
    synced: tokio::sync::mpsc::Sender<()>,
) -> Result<ReaderOutcome, String> {
    let (mut sink, mut stream) = socket.split();
    let doc = Doc::new();
    let seq = doc.get_or_insert_array("seq");
    let mut latencies =
        Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).map_err(|e| e.to_string())?;
    let sv = StateVector::default().encode_v1();
    sink.send(Message::Binary(sync::encode_sync_step1(&sv).into()))
        .await
        .map_err(|e| e.to_string())?;
    let mut seen = 0usize;
    while seen < updates {
        let frame = match stream.next().await {
            Some(Ok(Message::Binary(frame))) => frame,
            Some(Ok(Message::Close(frame))) => {
                return Err(format!("reader closed by server: {frame:?}"));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("reader connection ended".into()),
        };
        let now = times.start.elapsed().as_micros() as u64;
        for message in sync::decode_frame(&frame).map_err(|e| e.to_string())? {
            match message {
                ClientMessage::SyncStep1(_) => {
                    let empty = sync::encode_sync_step2(&[0, 0]);
                    sink.send(Message::Binary(empty.into()))
                        .await
                        .map_err(|e| e.to_string())?;
                }
                ClientMessage::SyncStep2(update) => {
                    apply_update(&doc, &update).map_err(|e| e.to_string())?;
                    let _ = synced.send(()).await;
                }
                ClientMessage::Update(update) => {
                    apply_update(&doc, &update).map_err(|e| e.to_string())?
                }
                _ => {}
            }
        }
        let visible = seq.len(&doc.transact()) as usize;
        for i in seen..visible.min(updates) {
            let sent = times.sent[i].load(Ordering::Relaxed);
            latencies
                .record(now.saturating_sub(sent).max(1))
                .map_err(|e| e.to_string())?;
        }
        seen = seen.max(visible);
    }
    let state = merge_updates([doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default())
        .as_slice()])
    .map_err(|e| e.to_string())?;
    Ok(ReaderOutcome { latencies, state })
}
