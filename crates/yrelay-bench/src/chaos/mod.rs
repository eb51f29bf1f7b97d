//! `chaos`: writers on every transport against several yrelay instances on
//! one Redis log and one PostgreSQL store, while instances are SIGKILLed,
//! Redis is killed and restarted, PostgreSQL is stopped, and the store's
//! disk is filled and freed, at random. Every acknowledgement is recorded;
//! at the end every acknowledged update must be in the store and in a fresh
//! client's document. Prints what it did and the counts; fails on a loss.
//!
//! Acknowledged: a `POST .../updates` answered 200, a Socket.IO
//! `push-doc-update` acked `accepted`. y-websocket has no acknowledgement:
//! its writers keep their document and sync it again after every reconnect,
//! so everything they wrote counts as owed (the protocol's own promise).

mod cluster;
mod writers;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use std::process::Stdio;
use tokio::process::Command;
use yrelay_client::WsClient;
use yrs::updates::decoder::Decode;
use yrs::{Doc, Map, Transact, Update};

use cluster::{Cluster, inject};
use writers::{Shared, post_writer, sio_writer, ws_writer};

const SPACE: &str = "chaos";
/// How long the end waits for writers to flush and the store to catch up.
const SETTLE: Duration = Duration::from_secs(90);

#[derive(clap::Args)]
pub struct ChaosArgs {
    /// How long faults are injected.
    #[arg(long, default_value_t = 60.0)]
    seconds: f64,
    /// The yrelay binary to run.
    #[arg(long, default_value = "target/debug/yrelay")]
    yrelay: PathBuf,
    #[arg(long, default_value_t = 2)]
    instances: usize,
    /// Documents written (each by one writer per transport).
    #[arg(long, default_value_t = 3)]
    docs: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Size of the store's disk (a tmpfs) in MiB: what the run writes must
    /// fit (a 30-minute run writes about 1 GiB into PostgreSQL).
    #[arg(long, default_value_t = 256)]
    disk_mb: u64,
}

/// A tiny xorshift generator: the run is the same for the same seed (up to
/// timing).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from))
    }
}

/// The keys of root map "chaos" in a v1 update.
fn keys_of(update: &[u8]) -> BTreeSet<String> {
    let doc = Doc::new();
    if let Ok(u) = Update::decode_v1(update) {
        let _ = doc.transact_mut().apply_update(u);
    }
    let map = doc.get_or_insert_map("chaos");
    let txn = doc.transact();
    map.keys(&txn).map(str::to_owned).collect()
}

pub async fn run(args: ChaosArgs) -> Result<(), String> {
    let started = Instant::now();
    let cluster = Arc::new(tokio::sync::Mutex::new(Cluster::start(&args).await?));
    let (addrs, store, log, yrelay) = {
        let c = cluster.lock().await;
        let addrs: Vec<String> = (0..c.ports.len()).map(|i| c.addr(i)).collect();
        (addrs, c.pg_url(), c.redis_url(), c.yrelay.clone())
    };
    eprintln!(
        "chaos: {} instances, {} documents x 3 writers (POST, Socket.IO, y-websocket), {} s of faults",
        addrs.len(),
        args.docs,
        args.seconds
    );
    let until = Instant::now() + Duration::from_secs_f64(args.seconds);
    let ledger: Shared = Arc::default();
    let mut writers = Vec::new();
    for d in 0..args.docs {
        let doc = format!("d{d}");
        let id = 1000 + 10 * d as u64;
        let l = || ledger.clone();
        writers.push(tokio::spawn(post_writer(
            addrs.clone(),
            doc.clone(),
            id,
            until,
            l(),
        )));
        writers.push(tokio::spawn(sio_writer(
            addrs.clone(),
            doc.clone(),
            id + 1,
            until,
            l(),
        )));
        writers.push(tokio::spawn(ws_writer(
            addrs.clone(),
            doc.clone(),
            id + 2,
            until,
            l(),
        )));
    }
    let mut rng = Rng(args.seed.max(1));
    let faults = inject(&cluster, &mut rng, until, started).await?;
    cluster.lock().await.heal().await?;
    eprintln!("chaos: faults over; waiting for writers to flush and the store to catch up");

    // Every writer done: nothing left unacknowledged (POST, Socket.IO), or
    // everything served (y-websocket); each gives up after SETTLE.
    for w in writers {
        let _ = w.await;
    }
    let settled = Instant::now() + SETTLE;
    loop {
        let status = Command::new(&yrelay)
            .args(["backlog", "--store", &store, "--log", &log])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .map_err(|e| e.to_string())?;
        if status.success() || Instant::now() > settled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let ledger = std::mem::take(&mut *ledger.lock().unwrap_or_else(|p| p.into_inner()));
    let mut in_store = BTreeSet::new();
    let mut in_client = BTreeSet::new();
    for d in 0..args.docs {
        // PostgreSQL may still be recovering from its last stop: retried.
        let mut attempts = 0;
        let exported = loop {
            let exported = Command::new(&yrelay)
                .args(["doc", "export", &format!("{SPACE}/d{d}")])
                .args(["--format", "update", "--store", &store, "--log", &log])
                .output()
                .await
                .map_err(|e| e.to_string())?;
            attempts += 1;
            if exported.status.success() {
                break exported.stdout;
            }
            if attempts == 30 {
                return Err(format!(
                    "yrelay doc export: {}",
                    String::from_utf8_lossy(&exported.stderr)
                ));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        in_store.extend(keys_of(&exported));
        let url = format!("ws://{}/v1/ws/{SPACE}/d{d}", addrs[d % addrs.len()]);
        let fresh = WsClient::connect(&url, Doc::new())
            .await
            .map_err(|e| format!("fresh client: {e}"))?;
        fresh
            .wait_synced(Duration::from_secs(30))
            .await
            .map_err(|e| format!("fresh client: {e}"))?;
        in_client.extend(keys_of(&fresh.state()));
    }
    let owed: BTreeSet<&String> = ledger.acked.iter().chain(&ledger.owed).collect();
    let lost: Vec<&&String> = owed
        .iter()
        .filter(|k| !in_store.contains(k.as_str()) || !in_client.contains(k.as_str()))
        .collect();
    let report = json!({
        "seconds": args.seconds,
        "instances": addrs.len(),
        "faults": faults.len(),
        "acked": ledger.acked.len(),
        "ws_written": ledger.owed.len(),
        "found_in_store": owed.iter().filter(|k| in_store.contains(k.as_str())).count(),
        "found_in_fresh_client": owed.iter().filter(|k| in_client.contains(k.as_str())).count(),
        "lost": lost.len(),
        "disk_filled": cluster.lock().await.disk.is_some(),
    });
    for line in &faults {
        println!("fault {line}");
    }
    println!("{report}");
    if !lost.is_empty() {
        let sample: Vec<_> = lost.iter().take(10).collect();
        return Err(format!("{} owed updates lost, e.g. {sample:?}", lost.len()));
    }
    Ok(())
}
