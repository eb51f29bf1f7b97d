//! Scenario `presence`: C clients on one document, each changing its
//! awareness state `--rate` times a second (a cursor moving), as raw
//! y-websocket connections. `--observers` of them decode what they receive
//! and record, per state of another client, the time from its change (the
//! state carries its wall-clock µs) to its receipt; the others read and drop.
//! Reports the delivery latency, how many of the changes the observers saw
//! (a server that merges states per tick delivers only each client's latest
//! within a tick, so fewer than every change is normal), the connections the
//! server closed, and the server's CPU over the measured window.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;
use yrelay_protocol::sync::{ClientMessage, decode_frame, encode_awareness};
use yrs::sync::AwarenessUpdate;
use yrs::sync::awareness::AwarenessUpdateEntry;
use yrs::updates::encoder::Encode;

use crate::idle::proc_stats;

#[derive(clap::Args)]
pub struct PresenceArgs {
    #[arg(long, default_value = "ws://127.0.0.1:4040/v1/ws/bench/{room}")]
    url: String,
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Awareness changes per second per client.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Clients that measure what they receive.
    #[arg(long, default_value_t = 20)]
    observers: usize,
    /// Seconds measured, after every client is connected and has sent twice.
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// The server's pid: its CPU over the measured window is reported.
    #[arg(long)]
    server_pid: Option<u32>,
    #[arg(long)]
    json: bool,
}

struct Shared {
    latency: Mutex<Histogram<u64>>,
    /// States of other clients the observers received within the window.
    seen: AtomicU64,
    closed: AtomicU64,
    /// Measuring: states sent at or after this wall-clock µs count.
    from_us: AtomicU64,
    until_us: AtomicU64,
}

pub async fn run(args: PresenceArgs) -> Result<(), String> {
    let room = format!("presence-{}", crate::nanos());
    let url = args.url.replace("{room}", &room);
    let shared = Arc::new(Shared {
        latency: Mutex::new(crate::histogram()?),
        seen: AtomicU64::new(0),
        closed: AtomicU64::new(0),
        from_us: AtomicU64::new(i64::MAX as u64),
        until_us: AtomicU64::new(i64::MAX as u64),
    });
    eprintln!("presence: connecting {} clients", args.clients);
    let base_id = 1_000_000 + (crate::nanos() % 1_000_000) * 10_000;
    let mut sockets = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let (ws, _) =
            tokio_tungstenite::connect_async_with_config(&url, Some(yrelay_client::config()), true)
                .await
                .map_err(|e| format!("client {i}: {e}"))?;
        sockets.push(ws);
        if args.clients >= 10 && (i + 1) % (args.clients / 10) == 0 {
            eprintln!("  {}/{} connected", i + 1, args.clients);
        }
    }
    let period = Duration::from_secs_f64(1.0 / args.rate.max(0.001));
    let mut tasks = Vec::new();
    for (i, ws) in sockets.into_iter().enumerate() {
        let id = base_id + i as u64;
        let observer = i < args.observers;
        // Spread the clients' changes over the period.
        let phase = period.mul_f64(i as f64 / args.clients as f64);
        tasks.push(tokio::spawn(client(
            ws,
            id,
            observer,
            phase,
            period,
            shared.clone(),
        )));
    }
    // Warm up: every client has sent twice.
    tokio::time::sleep(period * 2 + Duration::from_secs(1)).await;
    let cpu_before = args.server_pid.map(proc_stats).transpose()?;
    let from = crate::wall_us() as u64;
    shared.from_us.store(from, Ordering::Relaxed);
    eprintln!("presence: measuring {} s", args.seconds);
    tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
    let cpu_after = args.server_pid.map(proc_stats).transpose()?;
    shared
        .until_us
        .store(crate::wall_us() as u64, Ordering::Relaxed);
    // What was sent in the window may still be on its way.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for t in &tasks {
        t.abort();
    }
    let cpu_percent = match (cpu_before, cpu_after) {
        (Some(b), Some(a)) => Some((a.cpu_seconds - b.cpu_seconds) / args.seconds * 100.0),
        _ => None,
    };
    let histogram = shared.latency.lock().await.clone();
    let observers = args.observers.min(args.clients);
    let changes = (args.clients.saturating_sub(1)) as f64 * args.rate * args.seconds;
    let seen = shared.seen.load(Ordering::Relaxed);
    let closed = shared.closed.load(Ordering::Relaxed);
    let result = serde_json::json!({
        "scenario": "presence",
        "clients": args.clients,
        "rate": args.rate,
        "observers": observers,
        "seconds": args.seconds,
        "latency_ms": crate::latency_json(&histogram),
        "states_seen_per_observer": seen as f64 / observers.max(1) as f64,
        "changes_per_observer": changes,
        "connections_closed": closed,
        "server_cpu_percent": cpu_percent,
    });
    if args.json {
        println!("{result}");
    } else {
        println!(
            "presence: {} clients × {}/s, {} observers, {} s: {}; states seen per observer {:.0} of {:.0} changes; {} connections closed by the server{}",
            args.clients,
            args.rate,
            observers,
            args.seconds,
            crate::latency_text(&histogram),
            seen as f64 / observers.max(1) as f64,
            changes,
            closed,
            cpu_percent
                .map(|c| format!("; server CPU {c:.0}% of a core"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

async fn client(
    ws: crate::join::RawSocket,
    id: u64,
    observer: bool,
    phase: Duration,
    period: Duration,
    shared: Arc<Shared>,
) {
    let (mut sink, mut stream) = ws.split();
    let send = async move {
        tokio::time::sleep(phase).await;
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for clock in 1u32.. {
            tick.tick().await;
            let t = crate::wall_us();
            let json = format!(
                r##"{{"t":{t},"user":{{"name":"user {id}","color":"#30bced"}},"cursor":{{"anchor":{clock},"head":{}}}}}"##,
                clock + 5
            );
            let update = AwarenessUpdate {
                clients: [(
                    yrs::ClientID::new(id),
                    AwarenessUpdateEntry {
                        clock,
                        json: json.into(),
                    },
                )]
                .into(),
            };
            let frame = encode_awareness(&update.encode_v1());
            if sink.send(Message::Binary(frame.into())).await.is_err() {
                return;
            }
        }
    };
    let receive = async {
        while let Some(message) = stream.next().await {
            let Ok(message) = message else { break };
            let Message::Binary(frame) = message else {
                if let Message::Close(_) = message {
                    break;
                }
                continue;
            };
            if observer {
                observe(&frame, id, &shared).await;
            }
        }
        shared.closed.fetch_add(1, Ordering::Relaxed);
    };
    tokio::select! {
        _ = send => {}
        _ = receive => {}
    }
}

/// Records the delay of every other client's state in an awareness frame.
async fn observe(frame: &[u8], own: u64, shared: &Shared) {
    let Ok(messages) = decode_frame(frame) else {
        return;
    };
    let now = crate::wall_us();
    let from = shared.from_us.load(Ordering::Relaxed) as i64;
    let until = shared.until_us.load(Ordering::Relaxed) as i64;
    let mut delays = Vec::new();
    for message in messages {
        let ClientMessage::Awareness { update, .. } = message else {
            continue;
        };
        for (client, entry) in &update.clients {
            if client.get() == own {
                continue;
            }
            let Some(t) = sent_at(&entry.json) else {
                continue;
            };
            if t >= from && t < until {
                delays.push((now - t).max(1) as u64);
            }
        }
    }
    if delays.is_empty() {
        return;
    }
    shared
        .seen
        .fetch_add(delays.len() as u64, Ordering::Relaxed);
    let mut histogram = shared.latency.lock().await;
    for d in delays {
        let _ = histogram.record(d);
    }
}

/// The `"t"` (wall-clock µs) a state was made at.
fn sent_at(json: &str) -> Option<i64> {
    let rest = json.strip_prefix(r#"{"t":"#)?;
    let end = rest.find(',')?;
    rest[..end].parse().ok()
}
