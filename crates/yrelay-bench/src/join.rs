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
    #[arg(long)]
    json: bool,
}

const WAIT: Duration = Duration::from_secs(120);

pub async fn run(args: JoinArgs) -> Result<(), String> {
    let url = args
        .url
        .replace("{room}", &format!("join-{}", super::nanos()));
    let writer = WsClient::connect(&url, Doc::new())
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
    // Stored: a fresh client sees all of it.
    let check = WsClient::connect(&url, Doc::new())
        .await
        .map_err(|e| e.to_string())?;
    check
        .wait_for("every update stored", WAIT, |c| {
            let sv = c.doc().transact().state_vector();
            target
                .iter()
                .all(|(client, clock)| sv.get(client) >= *clock)
        })
        .await
        .map_err(|e| e.to_string())?;
    check.close().await;
    writer.close().await;
    let mut histogram = super::histogram()?;
    for j in 0..args.joins {
        if args.settle > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
        }
        let started = Instant::now();
        let client = WsClient::connect(&url, Doc::new())
            .await
            .map_err(|e| e.to_string())?;
        client.wait_synced(WAIT).await.map_err(|e| e.to_string())?;
        let took = started.elapsed();
        let items = client.doc().get_or_insert_array("items");
        let len = items.len(&client.doc().transact()) as usize;
        if len != args.updates {
            return Err(format!("join {j}: {len} items, expected {}", args.updates));
        }
        histogram
            .record(took.as_micros().max(1) as u64)
            .map_err(|e| e.to_string())?;
        client.close().await;
    }
    let result = serde_json::json!({
        "scenario": "join",
        "updates": args.updates,
        "doc_bytes": doc_bytes,
        "joins": args.joins,
        "settle_seconds": args.settle,
        "join_ms": super::latency_json(&histogram),
    });
    if args.json {
        println!("{result}");
    } else {
        println!(
            "join: {} stored updates ({:.1} MB), {} joins (settle {:.1} s): connect to synced {}",
            args.updates,
            doc_bytes as f64 / 1e6,
            args.joins,
            args.settle,
            super::latency_text(&histogram).replace("latency ms", "ms")
        );
    }
    Ok(())
}
