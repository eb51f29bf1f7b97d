//! Scenario `acks`: acknowledged updates per second and ack latency, through
//! yrelay's `POST /v1/docs/{space}/{doc}/updates` (answered once the update
//! is durable: in the log, or with `--durability store` committed in the
//! store). W workers, each on its own keep-alive HTTP/1.1 connection, post
//! small updates to D documents as fast as the acks come back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use yrs::{Array, Doc, Transact};

#[derive(clap::Args)]
pub struct AcksArgs {
    /// The server, host:port.
    #[arg(long, default_value = "127.0.0.1:4040")]
    addr: String,
    /// Concurrent writers (one connection each).
    #[arg(long, default_value_t = 64)]
    workers: usize,
    /// Documents written to (worker i writes document i mod D).
    #[arg(long, default_value_t = 16)]
    docs: usize,
    /// How long to post, seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    #[arg(long)]
    json: bool,
}

pub async fn run(args: AcksArgs) -> Result<(), String> {
    let run = super::nanos();
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    eprintln!(
        "acks: {} workers posting to {} docs for {:.0} s",
        args.workers, args.docs, args.seconds
    );
    let acked = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..args.workers)
        .map(|i| {
            let addr = args.addr.clone();
            let path = format!("/v1/docs/bench/acks-{run}-{}/updates", i % args.docs.max(1));
            let acked = acked.clone();
            tokio::spawn(async move { worker(&addr, &path, deadline, &acked).await })
        })
        .collect();
    let progress = tokio::spawn(progress(acked));
    let mut latencies = super::histogram()?;
    for w in workers {
        let h = w.await.map_err(|e| e.to_string())??;
        latencies.add(&h).map_err(|e| e.to_string())?;
    }
    progress.abort();
    let acked = latencies.len();
    let per_second = acked as f64 / args.seconds;
    let result = serde_json::json!({
        "scenario": "acks",
        "workers": args.workers,
        "docs": args.docs,
        "acked": acked,
        "acked_per_second": per_second,
        "ack_latency_ms": super::latency_json(&latencies),
    });
    if args.json {
        println!("{result}");
    } else {
        println!(
            "acks: {} workers, {} docs: {acked} updates acknowledged in {:.1} s ({per_second:.0}/s); ack {}",
            args.workers,
            args.docs,
            args.seconds,
            super::latency_text(&latencies)
        );
    }
    Ok(())
}

/// A line every 2 s: the acknowledgements so far and their rate.
async fn progress(acked: Arc<AtomicU64>) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.tick().await;
    loop {
        tick.tick().await;
        let n = acked.load(Ordering::Relaxed);
        let rate = n as f64 / started.elapsed().as_secs_f64();
        eprintln!("  {n} acknowledged ({rate:.0}/s)");
    }
}

/// Posts updates on one keep-alive connection until `deadline`.
async fn worker(
    addr: &str,
    path: &str,
    deadline: Instant,
    acked: &AtomicU64,
) -> Result<Histogram<u64>, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let mut stream = BufReader::new(stream);
    let mut latencies = super::histogram()?;
    let doc = Doc::new();
    let list = doc.get_or_insert_array("items");
    let mut i = 0i64;
    while Instant::now() < deadline {
        let update = {
            let mut txn = doc.transact_mut();
            list.push_back(&mut txn, i);
            txn.encode_update_v1()
        };
        i += 1;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            update.len()
        );
        let started = Instant::now();
        let socket = stream.get_mut();
        socket
            .write_all(head.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        socket.write_all(&update).await.map_err(|e| e.to_string())?;
        let (status, _) = super::http::read_message(&mut stream).await?;
        if status == 429 {
            return Err(format!(
                "POST {path}: HTTP 429 (start yrelay with a high --max-posts-per-sec: every worker posts from one address)"
            ));
        }
        if status != 200 {
            return Err(format!("POST {path}: HTTP {status}"));
        }
        latencies
            .record(started.elapsed().as_micros().max(1) as u64)
            .map_err(|e| e.to_string())?;
        acked.fetch_add(1, Ordering::Relaxed);
    }
    Ok(latencies)
}
