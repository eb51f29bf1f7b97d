//! Scenario `join`: how long a new client takes from connect to synced on a
//! document with many stored updates. A writer first stores `updates`
//! separate updates (start the server with a high `--max-updates-per-sec`);
//! then `joins` fresh clients connect one after another. With `--settle S`
//! every client waits S seconds after the previous one left, so that a
//! server started with a shorter `--idle-unload-secs` serves each join cold
//! (from the store); start it with `--no-compactor` to measure uncompacted
//! history. `--payload-bytes` makes each update carry a string that long
//! (e.g. 80 updates of 256 KiB: a 20 MB document).

use std::time::{Duration, Instant};

use yrelay_client::WsClient;
use yrs::updates::encoder::Encode;
use yrs::{Array, Doc, ReadTxn, Transact};

#[derive(clap::Args)]
pub struct JoinArgs {
    #[arg(long, default_value = "ws://127.0.0.1:4040/v1/ws/bench/{room}")]
    url: String,
    /// Separate updates stored before the joins.
    #[arg(long, default_value_t = 100_000)]
    updates: usize,
    /// Bytes of text per update (0: each update adds one number).
    #[arg(long, default_value_t = 0)]
    payload_bytes: usize,
    #[arg(long, default_value_t = 10)]
    joins: usize,
    /// Seconds between one client leaving and the next joining.
    #[arg(long, default_value_t = 0.0)]
    settle: f64,
    /// All clients join at once (a join storm) instead of one after another.
    #[arg(long)]
    at_once: bool,
    /// The server's pid: its peak RSS (VmHWM) is reported.
    #[arg(long)]
    server_pid: Option<u32>,
    #[arg(long)]
    json: bool,
}

const WAIT: Duration = Duration::from_secs(120);

pub async fn run(args: JoinArgs) -> Result<(), String> {
    let url = args
        .url
        .replace("{room}", &format!("join-{}", super::nanos()));
    let writer = WsClient::connect(&url, crate::writer::yjs_doc())
        .await
        .map_err(|e| e.to_string())?;
    writer.wait_synced(WAIT).await.map_err(|e| e.to_string())?;
    let list = writer.doc().get_or_insert_array("items");
    eprintln!("join: storing {} updates", args.updates);
    for i in 0..args.updates {
        writer.edit(|txn| {
            if args.payload_bytes > 0 {
                let text = format!("{i:08}").repeat(args.payload_bytes / 8 + 1);
                list.push_back(txn, &text[..args.payload_bytes]);
            } else {
                list.push_back(txn, i as i64);
            }
        });
        if args.updates >= 10 && (i + 1) % (args.updates / 10) == 0 {
            eprintln!("  sent {}/{}", i + 1, args.updates);
        }
    }
    let target = writer.doc().transact().state_vector();
    let doc_bytes = writer
        .doc()
        .transact()
        .encode_state_as_update_v1(&yrs::StateVector::default())
        .len();
    wait_stored(&url, &target, WAIT).await?;
    writer.close().await;
    let mut histogram = super::histogram()?;
    if args.at_once {
        eprintln!("join: {} clients at once", args.joins);
        let joins: Vec<_> = (0..args.joins)
            .map(|j| {
                let url = url.clone();
                tokio::spawn(async move { raw_join(&url, j, doc_bytes).await })
            })
            .collect();
        for j in joins {
            let took = j.await.map_err(|e| e.to_string())??;
            histogram
                .record(took.as_micros().max(1) as u64)
                .map_err(|e| e.to_string())?;
        }
    }
    for j in (0..args.joins).filter(|_| !args.at_once) {
        if args.settle > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
        }
        let took = join(&url, j, args.updates).await?;
        histogram
            .record(took.as_micros().max(1) as u64)
            .map_err(|e| e.to_string())?;
    }
    let peak_rss_mb = match args.server_pid {
        Some(pid) => Some(peak_rss_kb(pid)? as f64 / 1024.0),
        None => None,
    };
    let result = serde_json::json!({
        "scenario": "join",
        "updates": args.updates,
        "doc_bytes": doc_bytes,
        "joins": args.joins,
        "settle_seconds": args.settle,
        "at_once": args.at_once,
        "join_ms": super::latency_json(&histogram),
        "server_peak_rss_mb": peak_rss_mb,
    });
    if args.json {
        println!("{result}");
    } else {
        println!(
            "join: {} stored updates ({:.1} MB), {} joins ({}): connect to synced {}{}",
            args.updates,
            doc_bytes as f64 / 1e6,
            args.joins,
            if args.at_once {
                "at once".to_string()
            } else {
                format!("settle {:.1} s", args.settle)
            },
            super::latency_text(&histogram).replace("latency ms", "ms"),
            peak_rss_mb
                .map(|mb| format!("; server peak RSS {mb:.0} MB"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// One client joining: connect to synced, checked to hold every update.
async fn join(url: &str, j: usize, updates: usize) -> Result<Duration, String> {
    let started = Instant::now();
    let client = WsClient::connect(url, Doc::new())
        .await
        .map_err(|e| e.to_string())?;
    client.wait_synced(WAIT).await.map_err(|e| e.to_string())?;
    let took = started.elapsed();
    let items = client.doc().get_or_insert_array("items");
    let len = items.len(&client.doc().transact()) as usize;
    client.close().await;
    if len != updates {
        return Err(format!("join {j}: {len} items, expected {updates}"));
    }
    Ok(took)
}

/// One raw client of a join storm: asks for everything and waits until the
/// whole answer has arrived, without applying it (150 clients applying
/// 20 MB each would measure this machine's generator, not the server).
async fn raw_join(url: &str, j: usize, doc_bytes: usize) -> Result<Duration, String> {
    let started = Instant::now();
    let (mut ws, answer) = ask_everything(url, WAIT)
        .await
        .map_err(|e| format!("join {j}: {e}"))?;
    let took = started.elapsed();
    if answer < doc_bytes {
        return Err(format!(
            "join {j}: a sync of {answer} bytes, the document has {doc_bytes}"
        ));
    }
    let _ = ws.close(None).await;
    Ok(took)
}

pub(crate) type RawSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A raw client that connects, sends a sync step 1 with an empty state
/// vector and waits for the whole answer (not applied): its socket, and
/// the answer's size.
pub(crate) async fn ask_everything(
    url: &str,
    wait: Duration,
) -> Result<(RawSocket, usize), String> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(url, Some(yrelay_client::config()), true)
            .await
            .map_err(|e| e.to_string())?;
    let ask = yrelay_protocol::sync::encode_sync_step1(&yrs::StateVector::default().encode_v1());
    ws.send(Message::Binary(ask.into()))
        .await
        .map_err(|e| e.to_string())?;
    let answer = tokio::time::timeout(wait, async {
        while let Some(message) = ws.next().await {
            match message {
                Ok(Message::Binary(b)) if b.starts_with(&[0, 1]) => return Ok(b.len()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Err("closed before the sync".to_string())
    })
    .await
    .map_err(|_| format!("no sync within {wait:?}"))??;
    Ok((ws, answer))
}

/// Waits until a fresh client sees everything up to `target`: stored.
pub(crate) async fn wait_stored(
    url: &str,
    target: &yrs::StateVector,
    wait: Duration,
) -> Result<(), String> {
    let check = WsClient::connect(url, Doc::new())
        .await
        .map_err(|e| e.to_string())?;
    check
        .wait_for("every update stored", wait, |c| {
            let sv = c.doc().transact().state_vector();
            target
                .iter()
                .all(|(client, clock)| sv.get(client) >= *clock)
        })
        .await
        .map_err(|e| e.to_string())?;
    check.close().await;
    Ok(())
}

/// The peak resident memory of a process (VmHWM), from /proc.
fn peak_rss_kb(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| "no VmHWM".to_string())
}
