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

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use yrelay_client::WsClient;
use yrs::updates::decoder::Decode;
use yrs::{Doc, Map, ReadTxn, Transact, Update};

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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// A program run as `postgres` when we are root (PostgreSQL refuses root).
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn postgres_bin() -> Result<PathBuf, String> {
    let found = std::process::Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if !found.is_empty() {
        let path = std::fs::canonicalize(&found).unwrap_or_else(|_| PathBuf::from(&found));
        return Ok(path.parent().unwrap_or(Path::new("/")).to_path_buf());
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| "PostgreSQL is not installed".to_string())?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().ok_or_else(|| "no initdb found".into())
}

/// Waits until `port` accepts connections.
async fn wait_port(port: u16, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            return Err(format!("{what} did not start"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The processes under test, each restartable.
struct Cluster {
    dir: PathBuf,
    yrelay: PathBuf,
    redis_port: u16,
    redis: Option<Child>,
    pg_bin: PathBuf,
    pg_port: u16,
    pg: Option<Child>,
    ports: Vec<u16>,
    instances: Vec<Option<Child>>,
    /// The tmpfs under PostgreSQL's data, when this process may mount one.
    disk: Option<PathBuf>,
}

impl Cluster {
    async fn start(args: &ChaosArgs) -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("yrelay-chaos-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let disk_dir = dir.join("pgdisk");
        std::fs::create_dir_all(&disk_dir).map_err(|e| e.to_string())?;
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256m", "tmpfs"])
            .arg(&disk_dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("chaos: cannot mount a tmpfs (not root): the disk is never filled");
        }
        let _ = std::process::Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&disk_dir)
            .status();
        let pg_bin = postgres_bin()?;
        let status = as_postgres(&pg_bin.join("initdb"))
            .args(["-U", "postgres", "--auth=trust", "-D"])
            .arg(disk_dir.join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .map_err(|e| format!("initdb: {e}"))?;
        if !status.success() {
            return Err("initdb failed".into());
        }
        let mut cluster = Self {
            yrelay: args.yrelay.clone(),
            redis_port: free_port(),
            redis: None,
            pg_bin,
            pg_port: free_port(),
            pg: None,
            ports: (0..args.instances).map(|_| free_port()).collect(),
            instances: (0..args.instances).map(|_| None).collect(),
            disk: mounted.then_some(disk_dir),
            dir,
        };
        cluster.start_redis().await?;
        cluster.start_pg().await?;
        for i in 0..args.instances {
            cluster.start_instance(i).await?;
        }
        Ok(cluster)
    }

    fn pg_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.pg_port)
    }

    fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.redis_port)
    }

    fn addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.ports[i])
    }

    async fn start_redis(&mut self) -> Result<(), String> {
        // appendfsync always: what Redis acknowledged survives its SIGKILL.
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.redis_port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("redis-server: {e}"))?;
        self.redis = Some(child);
        wait_port(self.redis_port, "redis-server").await
    }

    async fn start_pg(&mut self) -> Result<(), String> {
        let data = self.dir.join("pgdisk").join("data");
        let _ = std::fs::remove_file(data.join("postmaster.pid"));
        let child = as_postgres(&self.pg_bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &self.pg_port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1", "-k", "/tmp"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("postgres: {e}"))?;
        self.pg = Some(child);
        wait_port(self.pg_port, "postgres").await
    }

    async fn start_instance(&mut self, i: usize) -> Result<(), String> {
        let log = std::fs::File::create(self.dir.join(format!("yrelay-{i}.log")))
            .map_err(|e| e.to_string())?;
        let child = Command::new(&self.yrelay)
            .arg("serve")
            .args(["--listen", &self.addr(i), "--store", &self.pg_url()])
            .args(["--log", &self.redis_url(), "--compact-idle-secs", "0.5"])
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("{}: {e}", self.yrelay.display()))?;
        self.instances[i] = Some(child);
        wait_port(self.ports[i], "yrelay").await
    }

    /// The postmaster's own pid (under `runuser` when root).
    fn pg_signal(&self, signal: &str) {
        let pidfile = self.dir.join("pgdisk").join("data").join("postmaster.pid");
        if let Some(pid) = std::fs::read_to_string(pidfile)
            .ok()
            .and_then(|t| t.lines().next().map(str::to_owned))
        {
            let _ = std::process::Command::new("kill")
                .args([signal, pid.trim()])
                .status();
        }
    }

    async fn stop_pg(&mut self) {
        self.pg_signal("-INT");
        if let Some(mut child) = self.pg.take() {
            let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
            let _ = child.kill().await;
        }
    }

    /// PostgreSQL stops by itself when it cannot write its WAL (a full disk).
    async fn pg_is_running(&mut self) -> bool {
        self.pg
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn fill(&self) {
        use std::io::Write;
        let Some(disk) = &self.disk else { return };
        if let Ok(mut filler) = std::fs::File::create(disk.join("filler")) {
            let chunk = vec![0u8; 1 << 16];
            while filler.write_all(&chunk).is_ok() {}
        }
    }

    fn free(&self) {
        if let Some(disk) = &self.disk {
            let _ = std::fs::remove_file(disk.join("filler"));
        }
    }

    /// Brings every process back (the end of a fault, and of the run).
    async fn heal(&mut self) -> Result<(), String> {
        self.free();
        if self
            .redis
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some())
        {
            self.start_redis().await?;
        }
        if !self.pg_is_running().await {
            self.stop_pg().await;
            self.start_pg().await?;
        }
        for i in 0..self.instances.len() {
            let down = self.instances[i]
                .as_mut()
                .is_none_or(|c| c.try_wait().ok().flatten().is_some());
            if down {
                self.start_instance(i).await?;
            }
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.pg_signal("-KILL");
        if let Some(disk) = &self.disk {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(disk)
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Faults, one at a time, until `until`; returns what was done.
async fn inject(
    cluster: &Arc<tokio::sync::Mutex<Cluster>>,
    rng: &mut Rng,
    until: Instant,
    started: Instant,
) -> Result<Vec<String>, String> {
    let mut done = Vec::new();
    while Instant::now() < until {
        tokio::time::sleep(rng.millis(500, 2500)).await;
        let mut c = cluster.lock().await;
        let outage = rng.millis(300, 2500);
        let what = match rng.below(4) {
            0 => {
                let i = rng.below(c.instances.len() as u64) as usize;
                if let Some(mut child) = c.instances[i].take() {
                    let _ = child.kill().await;
                }
                format!("SIGKILL instance {i}")
            }
            1 => {
                if let Some(mut child) = c.redis.take() {
                    let _ = child.kill().await;
                }
                "SIGKILL Redis".to_string()
            }
            2 => {
                c.stop_pg().await;
                "stop PostgreSQL".to_string()
            }
            _ if c.disk.is_some() => {
                c.fill();
                "fill the store's disk".to_string()
            }
            _ => continue,
        };
        let line = format!(
            "{:6.1} s  {what} for {} ms",
            started.elapsed().as_secs_f64(),
            outage.as_millis()
        );
        eprintln!("chaos: {line}");
        done.push(line);
        drop(c);
        tokio::time::sleep(outage).await;
        cluster.lock().await.heal().await?;
    }
    Ok(done)
}

/// Keys a writer wrote and which of them were acknowledged.
#[derive(Default)]
struct Ledger {
    acked: BTreeSet<String>,
    /// Written by y-websocket writers (owed without an acknowledgement).
    owed: BTreeSet<String>,
}

type Shared = Arc<Mutex<Ledger>>;

/// A writer's document and what it has not had acknowledged yet.
struct Outbox {
    doc: Doc,
    pending: Vec<(String, Vec<u8>)>,
}

impl Outbox {
    fn new(client: u64) -> Self {
        Self {
            doc: Doc::with_client_id(client),
            pending: Vec::new(),
        }
    }

    fn write(&mut self, key: String) {
        let map = self.doc.get_or_insert_map("chaos");
        let before = self.doc.transact().state_vector();
        map.insert(&mut self.doc.transact_mut(), key.clone(), 1);
        let update = self.doc.transact().encode_diff_v1(&before);
        self.pending.push((key, update));
    }

    /// Everything pending as one update.
    fn merged(&self) -> Vec<u8> {
        let updates = self
            .pending
            .iter()
            .filter_map(|(_, u)| Update::decode_v1(u).ok());
        yrs::updates::encoder::Encode::encode_v1(&Update::merge_updates(updates))
    }

    fn acked(&mut self, ledger: &Shared) {
        let mut l = ledger.lock().unwrap_or_else(|p| p.into_inner());
        for (key, _) in self.pending.drain(..) {
            l.acked.insert(key);
        }
    }
}

/// POSTs its outbox (merged) to a random instance until acknowledged.
async fn post_writer(addrs: Vec<String>, doc: String, id: u64, until: Instant, ledger: Shared) {
    let mut rng = Rng(id * 7919 + 1);
    let mut out = Outbox::new(id);
    let mut n = 0;
    let settle = until + SETTLE;
    while Instant::now() < settle {
        if Instant::now() < until {
            n += 1;
            out.write(format!("post-{doc}-{n}"));
        } else if out.pending.is_empty() {
            return;
        }
        let addr = &addrs[rng.below(addrs.len() as u64) as usize];
        let path = format!("/v1/docs/{SPACE}/{doc}/updates");
        if post(addr, &path, &out.merged()).await == Some(200) {
            out.acked(&ledger);
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

/// One HTTP/1.1 POST; its status, or `None` when the connection failed.
async fn post(addr: &str, path: &str, body: &[u8]) -> Option<u16> {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.ok()?;
        stream.write_all(body).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        String::from_utf8_lossy(&response)
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .ok()
        .flatten()
}

/// Pushes its outbox over AFFiNE's Socket.IO protocol until acknowledged,
/// reconnecting (to a random instance) whenever the connection fails.
async fn sio_writer(addrs: Vec<String>, doc: String, id: u64, until: Instant, ledger: Shared) {
    let mut rng = Rng(id * 104_729 + 3);
    let mut out = Outbox::new(id);
    let mut n = 0;
    let settle = until + SETTLE;
    while Instant::now() < settle {
        if Instant::now() >= until && out.pending.is_empty() {
            return;
        }
        let addr = &addrs[rng.below(addrs.len() as u64) as usize];
        let _ = sio_session(addr, &doc, &mut out, &mut n, until, &ledger).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One Socket.IO connection: join, then push (one at a time, acked) until
/// it fails or there is nothing left to do.
async fn sio_session(
    addr: &str,
    doc: &str,
    out: &mut Outbox,
    n: &mut u64,
    until: Instant,
    ledger: &Shared,
) -> Result<(), String> {
    let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
    let (socket, _) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .map_err(|_| "connect timed out")?
    .map_err(|e| e.to_string())?;
    let (mut sink, mut stream) = socket.split();
    let space = json!({ "spaceType": "workspace", "spaceId": SPACE });
    let mut ack = 0u64;
    let mut joined = false;
    let mut waiting: Option<u64> = None;
    loop {
        if joined && waiting.is_none() {
            if Instant::now() < until {
                *n += 1;
                out.write(format!("sio-{doc}-{n}"));
            } else if out.pending.is_empty() {
                return Ok(());
            }
            ack += 1;
            let mut push = space.clone();
            push["docId"] = json!(doc);
            push["update"] = json!(STANDARD.encode(out.merged()));
            let frame = format!("42{ack}{}", json!(["space:push-doc-update", push]));
            sink.send(Message::Text(frame.into()))
                .await
                .map_err(|e| e.to_string())?;
            waiting = Some(ack);
        }
        let next = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .map_err(|_| "no answer for 10 s")?;
        let text = match next {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Err("closed".into()),
            Some(Ok(_)) => continue,
        };
        let reply = match text.as_str() {
            t if t.starts_with('0') => Some("40".to_string()),
            t if t.starts_with("40") => {
                let mut join = space.clone();
                join["clientVersion"] = json!("0.26.0");
                Some(format!("420{}", json!(["space:join", join])))
            }
            "2" => Some("3".to_string()),
            t if t.starts_with("430") => {
                joined = true;
                None
            }
            t if t.starts_with("43") => {
                let (id, body) = t[2..].split_at(t[2..].find('[').unwrap_or(0));
                let answer: Value = serde_json::from_str(body).unwrap_or(Value::Null);
                if waiting.is_some_and(|w| id == w.to_string()) {
                    waiting = None;
                    if answer[0]["data"]["accepted"] == true {
                        out.acked(ledger);
                    } else {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                None
            }
            t if t.starts_with("41") || t.starts_with('1') => return Err("disconnected".into()),
            _ => None,
        };
        if let Some(reply) = reply {
            sink.send(Message::Text(reply.into()))
                .await
                .map_err(|e| e.to_string())?;
        }
    }
}

/// Edits over y-websocket, reconnecting whenever the connection ends (the
/// document syncs again on every connect). After the faults it stays
/// connected until the server serves everything it wrote.
async fn ws_writer(addrs: Vec<String>, doc: String, id: u64, until: Instant, ledger: Shared) {
    let mut rng = Rng(id * 15_485_863 + 5);
    let ydoc = Doc::with_client_id(id);
    let map = ydoc.get_or_insert_map("chaos");
    let mut mine = BTreeSet::new();
    let settle = until + SETTLE;
    let mut n = 0;
    while Instant::now() < settle {
        let addr = &addrs[rng.below(addrs.len() as u64) as usize];
        let url = format!("ws://{addr}/v1/ws/{SPACE}/{doc}");
        let Ok(client) = WsClient::connect(&url, ydoc.clone()).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        while Instant::now() < until && !client.is_closed() {
            n += 1;
            let key = format!("ws-{doc}-{n}");
            client.edit(|txn| {
                map.insert(txn, key.clone(), 1);
            });
            mine.insert(key.clone());
            ledger
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .owed
                .insert(key);
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        if Instant::now() >= until && client.wait_synced(Duration::from_secs(10)).await.is_ok() {
            // Held until another instance serves all of it (or it closes).
            for _ in 0..50 {
                let served = get(&addrs[0], &format!("/v1/docs/{SPACE}/{doc}/update")).await;
                if served.is_some_and(|body| keys_of(&body).is_superset(&mine)) {
                    return;
                }
                if client.is_closed() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// One HTTP/1.1 GET answered 200: its body.
async fn get(addr: &str, path: &str) -> Option<Vec<u8>> {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let split = response.windows(4).position(|w| w == b"\r\n\r\n")?;
        response
            .starts_with(b"HTTP/1.1 200")
            .then(|| response[split + 4..].to_vec())
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .ok()
        .flatten()
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
