//! Scenario `webhooks`: how fast one yrelay instance delivers document
//! events to a receiver, and how late. The bench is the receiver (a plain
//! HTTP/1.1 server answering 204) and the source of events: for each of D
//! documents an import (`doc.created`) then R renames (`doc.renamed`, not
//! debounced: one delivery each), from 16 connections at once. Start yrelay
//! with `--webhook http://<--receiver>/hook`.
//!
//! With `--no-receiver` nothing listens: the events stay pending in the
//! outbox (retried with backoff), for measuring acks with a backlog.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

#[derive(clap::Args)]
pub struct WebhooksArgs {
    /// The yrelay server, host:port.
    #[arg(long, default_value = "127.0.0.1:4040")]
    addr: String,
    /// Where the receiver listens (yrelay's `--webhook http://THIS/hook`).
    #[arg(long, default_value = "127.0.0.1:4999")]
    receiver: String,
    /// Only make the events (nothing receives them).
    #[arg(long)]
    no_receiver: bool,
    #[arg(long, default_value_t = 500)]
    docs: usize,
    /// Renames per document after its import.
    #[arg(long, default_value_t = 9)]
    renames: usize,
    #[arg(long)]
    json: bool,
}

const SOURCES: usize = 16;

/// What the receiver saw: deliveries, and each one's delay after its event.
#[derive(Default)]
struct Received {
    count: AtomicUsize,
    delays: Mutex<Vec<u64>>,
    first: Mutex<Option<Instant>>,
    last: Mutex<Option<Instant>>,
}

pub async fn run(args: WebhooksArgs) -> Result<(), String> {
    let run = super::nanos();
    let events = args.docs * (1 + args.renames);
    let received = Arc::new(Received::default());
    if !args.no_receiver {
        let listener = TcpListener::bind(&args.receiver)
            .await
            .map_err(|e| format!("receiver on {}: {e}", args.receiver))?;
        tokio::spawn(receive(listener, received.clone()));
    }
    eprintln!(
        "webhooks: {} docs x (1 import + {} renames) = {events} events",
        args.docs, args.renames
    );
    let started = Instant::now();
    let sources: Vec<_> = (0..SOURCES)
        .map(|s| {
            let (addr, docs, renames) = (args.addr.clone(), args.docs, args.renames);
            tokio::spawn(async move {
                let stream = TcpStream::connect(&addr)
                    .await
                    .map_err(|e| format!("connect {addr}: {e}"))?;
                let _ = stream.set_nodelay(true);
                let mut stream = BufReader::new(stream);
                for d in (s..docs).step_by(SOURCES) {
                    let path = format!("/v1/docs/bench/wh-{run}-{d}");
                    request(
                        &mut stream,
                        "POST",
                        &format!("{path}/import"),
                        br#"{"n": 1}"#,
                        201,
                    )
                    .await?;
                    for r in 0..renames {
                        let title = format!(r#"{{"title": "t{r}"}}"#);
                        request(&mut stream, "PATCH", &path, title.as_bytes(), 200).await?;
                    }
                }
                Ok::<_, String>(())
            })
        })
        .collect();
    for s in sources {
        s.await.map_err(|e| e.to_string())??;
    }
    let produced = started.elapsed().as_secs_f64();
    eprintln!("webhooks: {events} events made in {produced:.1} s");
    if args.no_receiver {
        println!("webhooks: {events} events made in {produced:.1} s; nothing receives them");
        return Ok(());
    }
    let mut progress = tokio::time::interval(Duration::from_secs(2));
    let deadline = Instant::now() + Duration::from_secs(600);
    while received.count.load(Ordering::Relaxed) < events {
        if Instant::now() > deadline {
            return Err(format!(
                "only {} of {events} events delivered in 10 minutes",
                received.count.load(Ordering::Relaxed)
            ));
        }
        progress.tick().await;
        eprintln!(
            "webhooks: {} of {events} delivered",
            received.count.load(Ordering::Relaxed)
        );
    }
    let all = started.elapsed().as_secs_f64();
    let first = received.first.lock().await.unwrap_or(started);
    let last = received.last.lock().await.unwrap_or(started);
    let span = last.duration_since(first).as_secs_f64().max(0.001);
    let mut delays = super::histogram()?;
    for d in received.delays.lock().await.iter() {
        delays.record((*d).max(1)).map_err(|e| e.to_string())?;
    }
    let delivered_per_second = events as f64 / span;
    let result = serde_json::json!({
        "scenario": "webhooks",
        "events": events,
        "made_in_s": produced,
        "delivered_in_s": all,
        "delivered_per_second": delivered_per_second,
        "delay_ms": super::latency_json(&delays),
    });
    if args.json {
        println!("{result}");
    } else {
        println!(
            "webhooks: {events} events made in {produced:.1} s ({:.0}/s), all delivered {all:.1} s after the first was made ({delivered_per_second:.0}/s between the first and last delivery); delay after the event {}",
            events as f64 / produced,
            super::latency_text(&delays)
        );
    }
    Ok(())
}

/// One request on a keep-alive connection; its status must be `expect`.
async fn request(
    stream: &mut BufReader<TcpStream>,
    method: &str,
    path: &str,
    body: &[u8],
    expect: u16,
) -> Result<(), String> {
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let socket = stream.get_mut();
    socket
        .write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    socket.write_all(body).await.map_err(|e| e.to_string())?;
    let (status, _) = super::http::read_message(stream).await?;
    if status != expect {
        return Err(format!(
            "{method} {path}: HTTP {status} (start yrelay with a high --max-posts-per-sec)"
        ));
    }
    Ok(())
}

/// The receiver: answers every request 204, counting it and its delay
/// after the event's `timestamp`.
async fn receive(listener: TcpListener, received: Arc<Received>) {
    while let Ok((stream, _)) = listener.accept().await {
        let received = received.clone();
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let mut stream = BufReader::new(stream);
            while let Ok((_, body)) = super::http::read_message(&mut stream).await {
                let now = Instant::now();
                let event_ms = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["timestamp"].as_i64());
                if let Some(ms) = event_ms {
                    let delay_ms = super::since_epoch().as_millis() as i64 - ms;
                    received
                        .delays
                        .lock()
                        .await
                        .push(delay_ms.max(0) as u64 * 1000);
                }
                received.first.lock().await.get_or_insert(now);
                *received.last.lock().await = Some(now);
                received.count.fetch_add(1, Ordering::Relaxed);
                let answer = b"HTTP/1.1 204 No Content\r\n\r\n";
                if stream.get_mut().write_all(answer).await.is_err() {
                    return;
                }
            }
        });
    }
}
