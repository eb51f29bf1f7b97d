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
//! floor (a bare frame-forwarding relay) to compare against; `cdf` draws the
//! latency distributions of several runs (`--json`) side by side in an SVG.

mod acks;
mod cdf;
mod chaos;
mod hocuspocus;
mod http;
mod idle;
mod join;
mod memory;
mod presence;
mod readers;
mod relay;
mod sio;
mod sse;
mod webhooks;
mod writer;

use idle::idle;
pub(crate) use readers::*;
use writer::Writer;

use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use yrelay_protocol::update::merge_updates;

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
    /// Webhook deliveries per second one instance makes, and their delay
    /// (the bench is the receiver).
    Webhooks(webhooks::WebhooksArgs),
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
    /// C clients on one document changing their awareness state: delivery
    /// latency of presence and the server's CPU.
    Presence(presence::PresenceArgs),
    /// What one loaded document costs the server (RSS per encoded byte).
    Memory(memory::MemoryArgs),
    /// Draws the latency CDFs of several runs (their `--json`) in one SVG.
    Cdf(cdf::CdfArgs),
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
    /// How the writer sends: y-websocket, or the Hocuspocus protocol (then
    /// the URL may also be a Hocuspocus server's, `ws://HOST/{room}`).
    #[arg(long, value_enum, default_value_t = WriterOver::Ws)]
    writer_over: WriterOver,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// Also draw the latency distribution (CDF, log scale) into this SVG.
    #[arg(long)]
    svg: Option<std::path::PathBuf>,
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
enum WriterOver {
    Ws,
    Hocuspocus,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Transport {
    Ws,
    Sse,
    /// AFFiNE's legacy protocol (a 0.26 client, `space:join`).
    Socketio,
    /// AFFiNE's batch protocol (a 0.27.5 client, `space:join-batch`).
    SocketioBatch,
    /// `@hocuspocus/provider`'s protocol on `/v1/hocuspocus`.
    Hocuspocus,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Sse => "sse",
            Transport::Socketio => "socketio",
            Transport::SocketioBatch => "socketio-batch",
            Transport::Hocuspocus => "hocuspocus",
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
        Scenario::Memory(args) => memory::run(args).await,
        Scenario::Cdf(args) => cdf::run(args),
        Scenario::Presence(args) => presence::run(args).await,
        Scenario::Webhooks(args) => webhooks::run(args).await,
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
    writer_over: WriterOver,
    updates: usize,
    rate: u64,
    processes: usize,
    progress: bool,
    start: Option<Start>,
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
    let mut writer = Writer::connect(&urls[0], writer_over).await?;
    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    if let Some(start) = start {
        start.barrier.wait().await;
        tokio::time::sleep(period.mul_f64(start.phase)).await;
    }
    let mut tick = tokio::time::interval(period);
    for i in 0..updates {
        tick.tick().await;
        writer.push(wall_us()).await?;
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

/// Rooms that start writing together, once every one is connected, each
/// `phase` (0..1) of a period after the others.
struct Start {
    barrier: std::sync::Arc<tokio::sync::Barrier>,
    phase: f64,
}

fn histogram() -> Result<Histogram<u64>, String> {
    Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).map_err(|e| e.to_string())
}

fn latency_json(h: &Histogram<u64>) -> serde_json::Value {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    serde_json::json!({
        "p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "max": h.max() as f64 / 1000.0,
        "cdf": cdf::points(h),
    })
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
        args.writer_over,
        args.updates,
        args.rate,
        args.processes,
        true,
        None,
    )
    .await?;
    let elapsed = started.elapsed().as_secs_f64();
    let h = &outcome.latencies;
    let result = serde_json::json!({
        "scenario": "fanout",
        "instances": instances,
        "processes": args.processes,
        "readers_over": args.readers_over.name(),
        "writer_over": match args.writer_over {
            WriterOver::Ws => "ws",
            WriterOver::Hocuspocus => "hocuspocus",
        },
        "readers": args.readers,
        "updates": args.updates,
        "rate": args.rate,
        "deliveries": h.len(),
        "seconds": elapsed,
        "deliveries_per_second": h.len() as f64 / elapsed,
        "latency_ms": latency_json(h),
        "converged": outcome.diverged == 0,
    });
    if let Some(svg) = &args.svg {
        let title = format!("fan-out: {} readers, {} updates/s", args.readers, args.rate);
        cdf::draw(svg, &title, &[("this run".into(), cdf::points(h))])?;
    }
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
    // Every room connects first; then they write, spread over the period.
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(args.docs + 1));
    let rooms: Vec<_> = (0..args.docs)
        .map(|i| {
            let url = args.url.clone();
            let (readers, updates, rate) =
                (args.clients.saturating_sub(1), args.updates, args.rate);
            let start = Start {
                barrier: barrier.clone(),
                phase: i as f64 / args.docs as f64,
            };
            tokio::spawn(async move {
                run_room(
                    &url,
                    readers,
                    Transport::Ws,
                    WriterOver::Ws,
                    updates,
                    rate,
                    1,
                    false,
                    Some(start),
                )
                .await
            })
        })
        .collect();
    barrier.wait().await;
    eprintln!(
        "  {} docs connected in {:.1} s; writing",
        args.docs,
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
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

fn nanos() -> u64 {
    since_epoch().subsec_nanos() as u64
}
