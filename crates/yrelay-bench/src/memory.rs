//! Scenario `memory`: what one loaded document costs the server. Run in two
//! steps against two servers on the same store (bench/memory.sh does it):
//! `memory write` stores a document of `--mb` megabytes into `--room`; then,
//! on a freshly started server (so nothing of the writing is in its heap),
//! `memory load` reads the server's RSS, makes it load the document (a raw
//! client asks for everything and holds its connection) and reads the RSS
//! again once it has settled.

use std::time::Duration;

use yrelay_client::WsClient;
use yrs::{Array, Map, ReadTxn, Transact};

use crate::idle::proc_stats;
use crate::join::{ask_everything, wait_stored};

#[derive(clap::Args)]
pub struct MemoryArgs {
    #[command(subcommand)]
    step: Step,
}

#[derive(clap::Subcommand)]
enum Step {
    /// Store a document of about `--mb` megabytes (encoded).
    Write {
        #[arg(long)]
        url: String,
        #[arg(long)]
        mb: f64,
        /// `text`: strings of 256 KiB in a Y.Array (few, large items);
        /// `map`: a Y.Map of distinct keys with 100-byte values (many small
        /// items, an app's settings or records).
        #[arg(long, value_enum, default_value_t = Shape::Text)]
        shape: Shape,
    },
    /// Load the document on a fresh server and report its RSS.
    Load {
        #[arg(long)]
        url: String,
        #[arg(long)]
        server_pid: u32,
        /// Seconds to let the server settle before each reading.
        #[arg(long, default_value_t = 2.0)]
        settle: f64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Shape {
    Text,
    Map,
}

const WAIT: Duration = Duration::from_secs(300);

pub async fn run(args: MemoryArgs) -> Result<(), String> {
    match args.step {
        Step::Write { url, mb, shape } => write(&url, mb, shape).await,
        Step::Load {
            url,
            server_pid,
            settle,
            json,
        } => load(&url, server_pid, settle, json).await,
    }
}

async fn write(url: &str, mb: f64, shape: Shape) -> Result<(), String> {
    let writer = WsClient::connect(url, crate::writer::yjs_doc())
        .await
        .map_err(|e| e.to_string())?;
    writer.wait_synced(WAIT).await.map_err(|e| e.to_string())?;
    let target = (mb * 1e6) as usize;
    let list = writer.doc().get_or_insert_array("items");
    let map = writer.doc().get_or_insert_map("records");
    let mut written = 0usize;
    let mut round = 0usize;
    while written < target {
        writer.edit(|txn| {
            match shape {
                Shape::Text => {
                    let text = format!("{round:08}").repeat(256 * 1024 / 8);
                    list.push_back(txn, text);
                }
                // 2,000 records of 100 bytes per update.
                Shape::Map => {
                    for i in 0..2000 {
                        let key = format!("record-{round:06}-{i:04}");
                        let value = format!("{round:08}{i:08}").repeat(7)[..100].to_string();
                        map.insert(txn, key, value);
                    }
                }
            }
            written += txn.encode_update_v1().len();
        });
        round += 1;
        if round.is_multiple_of(20) {
            eprintln!("  {:.1}/{mb} MB", written as f64 / 1e6);
        }
    }
    let target_sv = writer.doc().transact().state_vector();
    let encoded = writer
        .doc()
        .transact()
        .encode_state_as_update_v1(&yrs::StateVector::default())
        .len();
    wait_stored(url, &target_sv, WAIT).await?;
    writer.close().await;
    println!("memory write: {encoded} bytes encoded in {round} updates");
    Ok(())
}

async fn load(url: &str, pid: u32, settle: f64, json: bool) -> Result<(), String> {
    use futures_util::StreamExt;
    let pause = Duration::from_secs_f64(settle);
    tokio::time::sleep(pause).await;
    let before = proc_stats(pid)?.rss_kb;
    let (mut ws, encoded) = ask_everything(url, WAIT).await?;
    // Keep reading (awareness, pings) while the server settles.
    let hold = tokio::spawn(async move { while ws.next().await.is_some() {} });
    tokio::time::sleep(pause).await;
    let loaded = proc_stats(pid)?.rss_kb;
    hold.abort();
    let cost = loaded.saturating_sub(before) as f64 * 1024.0;
    let result = serde_json::json!({
        "scenario": "memory",
        "encoded_bytes": encoded,
        "rss_mb_before": before as f64 / 1024.0,
        "rss_mb_loaded": loaded as f64 / 1024.0,
        "rss_per_encoded_byte": cost / encoded as f64,
    });
    if json {
        println!("{result}");
    } else {
        println!(
            "memory: a document of {:.1} MB encoded: server RSS {:.1} MB → {:.1} MB loaded ({:.2}× its encoded size)",
            encoded as f64 / 1e6,
            before as f64 / 1024.0,
            loaded as f64 / 1024.0,
            cost / encoded as f64
        );
    }
    Ok(())
}
