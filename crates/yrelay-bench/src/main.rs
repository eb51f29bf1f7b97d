//! yrelay-bench: load generator speaking the y-websocket protocol with yrs
//! clients. Works against any y-websocket server (the room path is given as
//! a URL template).
//!
//! Scenario `fanout`: one writer pushes items (each its send time, wall-clock
//! µs) into a Y.Array at a fixed rate; N readers apply what they receive to
//! their own documents and record, per item, the time from send to receipt.
//! Prints percentiles (HDR histogram) and checks that every reader converged
//! to the writer's state. `--processes P` spreads the readers over P
//! processes on this machine (the send time travels in the item, so any
//! process can measure it), so one process's CPU is never the limit.
//! `many-docs` runs that on D documents at once; `idle` holds C connections
//! and reads the server's memory and CPU from /proc; `relay` serves the
//! floor (a bare frame-forwarding relay) to compare against.

mod acks;
mod chaos;
mod join;
mod relay;
mod sio;
mod sse;

use std::hash::{DefaultHasher, Hash, Hasher};
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;
use yrelay_client::WsClient;
use yrelay_protocol::sync::{self, ClientMessage};
use yrelay_protocol::update::{apply_update, merge_updates};
use yrs::any::Number;
use yrs::updates::encoder::Encode;
use yrs::{Any, Array, Doc, Out, ReadTxn, StateVector, Transact};

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
    /// D documents x K clients each (one writer, K-1 readers), all at once:
    /// aggregate updates/s and latency.
    ManyDocs(ManyDocsArgs),
    /// Acknowledged updates/s and ack latency through yrelay's POST endpoint
    /// (durable acks; use with --durability store to measure the store).
    Acks(acks::AcksArgs),
    /// Connect-to-synced time of new clients on a document with many stored
    /// updates (cold with --settle and a short --idle-unload-secs).
    Join(join::JoinArgs),
    /// Faults at random (killed instances, Redis restarts, PostgreSQL
    /// stopped, a full disk) under writers on every transport; checks that
    /// nothing acknowledged is lost.
    Chaos(chaos::ChaosArgs),
    /// C idle connections over D documents: the server's RSS and idle CPU
    /// (read from /proc of --server-pid).
    Idle(IdleArgs),
    /// A share of a fan-out's readers, run by `fanout --processes` in a
    /// process of its own (prints `synced`, then its result as JSON).
    #[command(hide = true)]
    Readers(ReadersArgs),
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
    /// Processes to spread the readers over (this one included).
    #[arg(long, default_value_t = 1)]
    processes: usize,
    /// How readers receive: y-websocket, yrelay's SSE event stream, or
    /// AFFiNE's Socket.IO protocol (the writer always uses y-websocket).
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    readers_over: Transport,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ReadersArgs {
    #[arg(long)]
    url: String,
    #[arg(long)]
    room: String,
    /// Index of this share's first reader (readers go round-robin over the
    /// URLs by index).
    #[arg(long)]
    first: usize,
    #[arg(long)]
    readers: usize,
    #[arg(long)]
    updates: usize,
    #[arg(long, value_enum)]
    readers_over: Transport,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Transport {
    Ws,
    Sse,
    /// AFFiNE's legacy protocol (a 0.26 client, `space:join`).
    Socketio,
    /// AFFiNE's batch protocol (a 0.27.5 client, `space:join-batch`).
    SocketioBatch,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Sse => "sse",
            Transport::Socketio => "socketio",
            Transport::SocketioBatch => "socketio-batch",
        }
    }
}

#[derive(clap::Args)]
struct ManyDocsArgs {
    /// WebSocket URL template; `{room}` is replaced by each document's name.
    #[arg(long, default_value = "ws://127.0.0.1:4040/v1/ws/bench/{room}")]
    url: String,
    #[arg(long, default_value_t = 100)]
    docs: usize,
    /// Clients per document (one writes, the others read).
    #[arg(long, default_value_t = 5)]
    clients: usize,
    /// Updates per document.
    #[arg(long, default_value_t = 200)]
    updates: usize,
    /// Updates per second per document.
    #[arg(long, default_value_t = 20)]
    rate: u64,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct IdleArgs {
    #[arg(long, default_value = "ws://127.0.0.1:4040/v1/ws/bench/{room}")]
    url: String,
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    #[arg(long, default_value_t = 100)]
    docs: usize,
    /// The server's process id (its memory and CPU are read from /proc).
    #[arg(long)]
    server_pid: u32,
    /// Seconds to hold the connections idle while measuring CPU.
    #[arg(long, default_value_t = 10.0)]
    hold: f64,
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let outcome = match cli.scenario {
        Scenario::Fanout(args) => fanout(args).await,
        Scenario::ManyDocs(args) => many_docs(args).await,
        Scenario::Idle(args) => idle(args).await,
        Scenario::Acks(args) => acks::run(args).await,
        Scenario::Join(args) => join::run(args).await,
        Scenario::Chaos(args) => chaos::run(args).await,
        Scenario::Readers(args) => readers_process(args).await,
        Scenario::Relay { listen } => relay::serve(&listen).await,
    };
    if let Err(e) = outcome {
        eprintln!("yrelay-bench: {e}");
        std::process::exit(1);
    }
}

/// What one room's run measured.
struct RoomOutcome {
    latencies: Histogram<u64>,
    diverged: usize,
}

/// Readers connected to a room and synced, each a task that ends once it
/// has every item.
struct Readers {
    tasks: Vec<tokio::task::JoinHandle<Result<ReaderOutcome, String>>>,
}

impl Readers {
    /// Connects readers `first..first + count` (round-robin over `urls`) and
    /// waits until each is synced.
    async fn connect(
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
                    let (socket, _) = tokio_tungstenite::connect_async_with_config(
                        url,
                        Some(yrelay_client::config()),
                        true,
                    )
                    .await
                    .map_err(|e| format!("reader connect: {e}"))?;
                    tokio::spawn(read(socket, updates, synced_tx.clone()))
                }
                Transport::Sse => {
                    let url = sse::events_url(url)?;
                    tokio::spawn(sse::read(url, updates, synced_tx.clone()))
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
    async fn finish(self) -> Result<(Histogram<u64>, Vec<u64>), String> {
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

fn state_hash(state: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    state.hash(&mut h);
    h.finish()
}

/// Wall-clock µs: the send time the writer puts in each item and readers in
/// any process subtract from their receipt time.
fn wall_us() -> i64 {
    since_epoch().as_micros() as i64
}

/// Wall-clock time since the Unix epoch (zero if the clock is before it).
fn since_epoch() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// A share of the readers in a child process (`readers` subcommand).
struct ChildReaders {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl ChildReaders {
    async fn spawn(
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

    async fn line(&mut self) -> Result<String, String> {
        self.lines
            .next_line()
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "a reader process ended early (see its error above)".to_string())
    }

    async fn finish(mut self) -> Result<(Histogram<u64>, Vec<u64>), String> {
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
async fn readers_process(args: ReadersArgs) -> Result<(), String> {
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

fn room_urls(template: &str, room: &str) -> Vec<String> {
    template
        .split(',')
        .map(|u| u.trim().replace("{room}", room))
        .collect()
}

/// One writer and `readers` readers (spread over `processes` processes) on
/// one room: the writer sends `updates` items at `rate`/s; readers record
/// send-to-receipt latency per item.
#[allow(clippy::too_many_arguments)]
async fn run_room(
    template: &str,
    readers: usize,
    over: Transport,
    updates: usize,
    rate: u64,
    processes: usize,
    progress: bool,
) -> Result<RoomOutcome, String> {
    let room = format!("bench-{}-{}", std::process::id(), nanos());
    let urls = room_urls(template, &room);
    // Shares: this process takes the first, children the rest.
    let processes = processes.clamp(1, readers.max(1));
    let share = |p: usize| readers * (p + 1) / processes - readers * p / processes;
    let mut children = Vec::new();
    for p in 1..processes {
        let first = readers * p / processes;
        let mut child =
            ChildReaders::spawn(template, &room, over, first, share(p), updates).await?;
        let said = child.line().await?;
        if said != "synced" {
            return Err(format!("a reader process said {said:?}"));
        }
        children.push(child);
    }
    let local = Readers::connect(&urls, over, 0, share(0), updates).await?;
    let writer = WsClient::connect(&urls[0], Doc::new())
        .await
        .map_err(|e| e.to_string())?;
    writer
        .wait_synced(Duration::from_secs(30))
        .await
        .map_err(|e| e.to_string())?;
    let seq = writer.doc().get_or_insert_array("seq");
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
    for i in 0..updates {
        tick.tick().await;
        writer.edit(|txn| {
            seq.push_back(txn, wall_us());
        });
        if progress && updates >= 10 && (i + 1) % (updates / 10) == 0 {
            eprintln!("  sent {}/{}", i + 1, updates);
        }
    }
    let expected = merge_updates([writer.state().as_slice()]).map_err(|e| e.to_string())?;
    let expected = state_hash(&expected);
    let (mut latencies, mut states) = local.finish().await?;
    for child in children {
        let (h, s) = child.finish().await?;
        latencies.add(&h).map_err(|e| e.to_string())?;
        states.extend(s);
    }
    if states.len() != readers {
        return Err(format!("{} of {readers} readers reported", states.len()));
    }
    Ok(RoomOutcome {
        latencies,
        diverged: states.iter().filter(|s| **s != expected).count(),
    })
}

fn histogram() -> Result<Histogram<u64>, String> {
    Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).map_err(|e| e.to_string())
}

fn latency_json(h: &Histogram<u64>) -> serde_json::Value {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    serde_json::json!({ "p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "max": h.max() as f64 / 1000.0 })
}

fn latency_text(h: &Histogram<u64>) -> String {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    format!(
        "latency ms p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        h.max() as f64 / 1000.0
    )
}

async fn fanout(args: FanoutArgs) -> Result<(), String> {
    let instances = args.url.split(',').count();
    eprintln!(
        "fanout: {} {} readers over {instances} instance(s) and {} process(es), {} updates at {}/s",
        args.readers,
        args.readers_over.name(),
        args.processes,
        args.updates,
        args.rate
    );
    let started = Instant::now();
    let outcome = run_room(
        &args.url,
        args.readers,
        args.readers_over,
        args.updates,
        args.rate,
        args.processes,
        true,
    )
    .await?;
    let elapsed = started.elapsed().as_secs_f64();
    let h = &outcome.latencies;
    let result = serde_json::json!({
        "scenario": "fanout",
        "instances": instances,
        "processes": args.processes,
        "readers_over": args.readers_over.name(),
        "readers": args.readers,
        "updates": args.updates,
        "rate": args.rate,
        "deliveries": h.len(),
        "seconds": elapsed,
        "deliveries_per_second": h.len() as f64 / elapsed,
        "latency_ms": latency_json(h),
        "converged": outcome.diverged == 0,
    });
    if args.json {
        println!("{result}");
    } else {
        println!(
            "fanout: {} readers, {} updates at {}/s: {} deliveries in {:.2} s ({:.0}/s); {}; converged: {}",
            args.readers,
            args.updates,
            args.rate,
            h.len(),
            elapsed,
            h.len() as f64 / elapsed,
            latency_text(h),
            outcome.diverged == 0
        );
    }
    if outcome.diverged > 0 {
        return Err(format!(
            "{} readers diverged from the writer",
            outcome.diverged
        ));
    }
    Ok(())
}

/// D documents, each with one writer and K-1 readers, all at once.
async fn many_docs(args: ManyDocsArgs) -> Result<(), String> {
    eprintln!(
        "many-docs: {} docs x {} clients, {} updates per doc at {}/s each",
        args.docs, args.clients, args.updates, args.rate
    );
    let started = Instant::now();
    let rooms: Vec<_> = (0..args.docs)
        .map(|_| {
            let url = args.url.clone();
            let (readers, updates, rate) =
                (args.clients.saturating_sub(1), args.updates, args.rate);
            tokio::spawn(async move {
                run_room(&url, readers, Transport::Ws, updates, rate, 1, false).await
            })
        })
        .collect();
    let mut latencies = histogram()?;
    let mut diverged = 0;
    for (i, room) in rooms.into_iter().enumerate() {
        let outcome = room.await.map_err(|e| e.to_string())??;
        latencies
            .add(&outcome.latencies)
            .map_err(|e| e.to_string())?;
        diverged += outcome.diverged;
        if args.docs >= 10 && (i + 1) % (args.docs / 10) == 0 {
            eprintln!("  {}/{} docs done", i + 1, args.docs);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let updates = args.docs * args.updates;
    let result = serde_json::json!({
        "scenario": "many-docs",
        "docs": args.docs,
        "clients_per_doc": args.clients,
        "updates": updates,
        "seconds": elapsed,
        "updates_per_second": updates as f64 / elapsed,
        "deliveries_per_second": latencies.len() as f64 / elapsed,
        "latency_ms": latency_json(&latencies),
        "converged": diverged == 0,
    });
    if args.json {
        println!("{result}");
    } else {
        println!(
            "many-docs: {} docs x {} clients: {updates} updates in {elapsed:.2} s ({:.0}/s, {:.0} deliveries/s); {}; converged: {}",
            args.docs,
            args.clients,
            updates as f64 / elapsed,
            latencies.len() as f64 / elapsed,
            latency_text(&latencies),
            diverged == 0
        );
    }
    if diverged > 0 {
        return Err(format!("{diverged} readers diverged"));
    }
    Ok(())
}

/// C idle connections over D documents; the server's memory and CPU (from
/// /proc of `--server-pid`) once they are all synced and again after `hold`.
async fn idle(args: IdleArgs) -> Result<(), String> {
    let before = proc_stats(args.server_pid)?;
    eprintln!(
        "idle: opening {} connections over {} docs",
        args.connections, args.docs
    );
    let run = nanos();
    let mut clients = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let url = args
            .url
            .replace("{room}", &format!("idle-{run}-{}", i % args.docs.max(1)));
        let client = WsClient::connect(&url, Doc::new())
            .await
            .map_err(|e| e.to_string())?;
        client
            .wait_synced(Duration::from_secs(30))
            .await
            .map_err(|e| e.to_string())?;
        clients.push(client);
        if args.connections >= 10 && (i + 1) % (args.connections / 10) == 0 {
            eprintln!("  {}/{} connected", i + 1, args.connections);
        }
    }
    let synced = proc_stats(args.server_pid)?;
    tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
    let held = proc_stats(args.server_pid)?;
    let cpu = (held.cpu_seconds - synced.cpu_seconds) / args.hold.max(0.001);
    let result = serde_json::json!({
        "scenario": "idle",
        "connections": args.connections,
        "docs": args.docs,
        "rss_mb_before": before.rss_kb as f64 / 1024.0,
        "rss_mb": held.rss_kb as f64 / 1024.0,
        "rss_kb_per_connection": (held.rss_kb.saturating_sub(before.rss_kb)) as f64 / args.connections.max(1) as f64,
        "idle_cpu_percent": cpu * 100.0,
    });
    if args.json {
        println!("{result}");
    } else {
        println!(
            "idle: {} connections over {} docs: server RSS {:.1} MB (from {:.1} MB; {:.1} KB per connection); CPU while idle for {:.0} s: {:.1}%",
            args.connections,
            args.docs,
            held.rss_kb as f64 / 1024.0,
            before.rss_kb as f64 / 1024.0,
            result["rss_kb_per_connection"].as_f64().unwrap_or(0.0),
            args.hold,
            cpu * 100.0
        );
    }
    drop(clients);
    Ok(())
}

struct ProcStats {
    rss_kb: u64,
    cpu_seconds: f64,
}

/// Resident memory and CPU time used so far, from /proc/PID.
fn proc_stats(pid: u32) -> Result<ProcStats, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or("no VmRSS")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    // Fields after the command name (which may hold spaces) : utime is the 14th field overall.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    Ok(ProcStats {
        rss_kb,
        cpu_seconds: ticks / 100.0,
    })
}

fn nanos() -> u64 {
    since_epoch().subsec_nanos() as u64
}

struct ReaderOutcome {
    latencies: Histogram<u64>,
    state: Vec<u8>,
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A reader's document and the latency of every item that became visible.
struct Tally {
    doc: Doc,
    seq: yrs::ArrayRef,
    latencies: Histogram<u64>,
    seen: usize,
    updates: usize,
}

impl Tally {
    fn new(updates: usize) -> Result<Self, String> {
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

    fn done(&self) -> bool {
        self.seen >= self.updates
    }

    fn apply(&self, update: &[u8]) -> Result<(), String> {
        apply_update(&self.doc, update).map_err(|e| e.to_string())
    }

    /// Records the items that became visible, as received at `now`.
    fn record(&mut self, now: i64) -> Result<(), String> {
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

    fn finish(self) -> Result<ReaderOutcome, String> {
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

/// The next message of a reader's WebSocket; the connection ending (closed
/// by the server, failed, gone) is an error.
fn message(
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
async fn read(
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
