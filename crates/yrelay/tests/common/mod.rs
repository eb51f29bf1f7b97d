//! Test kit: runs the real `yrelay` binary on a free port with a private
//! store, and talks to it over real sockets.

#![allow(dead_code)]

pub mod cluster;
pub mod doc_api;
pub mod redis_cluster;
pub mod services;
pub mod sse;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

pub const WAIT: Duration = Duration::from_secs(20);

pub struct TestServer {
    child: Child,
    pub addr: SocketAddr,
    store: PathBuf,
    args: Vec<String>,
    lines: Arc<Mutex<Vec<String>>>,
    line_count: watch::Receiver<usize>,
}

impl TestServer {
    /// Starts `yrelay serve` with its SQLite file in `dir`.
    pub async fn start(dir: &Path, args: &[&str]) -> Self {
        Self::start_on(dir, "127.0.0.1:0", args).await
    }

    async fn start_on(dir: &Path, listen: &str, args: &[&str]) -> Self {
        let store = dir.join("yrelay.db");
        let mut command = Command::new(env!("CARGO_BIN_EXE_yrelay"));
        command.arg("serve").arg("--listen").arg(listen);
        if !args.contains(&"--store") {
            command
                .arg("--store")
                .arg(format!("sqlite://{}", store.display()));
        }
        let mut child = command
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn yrelay");
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (count_tx, line_count) = watch::channel(0usize);
        let (addr_tx, mut addr_rx) = watch::channel(None::<SocketAddr>);
        let collected = lines.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest.split_whitespace().next().and_then(|a| a.parse().ok());
                    addr_tx.send_replace(addr);
                }
                eprintln!("[yrelay] {line}");
                let mut all = collected.lock().unwrap();
                all.push(line);
                count_tx.send_replace(all.len());
            }
        });
        let addr = tokio::time::timeout(WAIT, addr_rx.wait_for(Option::is_some))
            .await
            .expect("server did not start in time")
            .expect("server exited before listening")
            .expect("address");
        Self {
            child,
            addr,
            store,
            args: args.iter().map(|s| s.to_string()).collect(),
            lines,
            line_count,
        }
    }

    pub fn ws_url(&self, doc: &str) -> String {
        format!("ws://{}/v1/ws/{doc}", self.addr)
    }

    /// Waits for a log line containing `needle` (after the first `skip` lines).
    pub async fn wait_for_log(&mut self, needle: &str) -> String {
        let lines = self.lines.clone();
        let found = |_: &usize| lines.lock().unwrap().iter().any(|l| l.contains(needle));
        tokio::time::timeout(WAIT, self.line_count.wait_for(found))
            .await
            .unwrap_or_else(|_| panic!("no log line with {needle:?}"))
            .expect("log reader ended");
        self.lines
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains(needle))
            .cloned()
            .unwrap()
    }

    /// SIGKILL: no chance to flush anything.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("kill");
    }

    /// SIGTERM, then waits for the exit.
    pub async fn stop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("stop in time")
            .expect("wait");
        assert!(status.success(), "yrelay exited with {status}");
    }

    /// Starts again on the same port and store.
    pub async fn restart(&mut self) {
        let dir = self.store.parent().unwrap().to_path_buf();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let listen = self.addr.to_string();
        let _ = self.child.kill().await;
        *self = Self::start_on(&dir, &listen, &args).await;
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path).await
    }

    /// The body of a `GET` that must answer 200 (binary bodies too).
    pub async fn get_bytes(&self, path: &str) -> Vec<u8> {
        let mut stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("headers end");
        assert!(
            response.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&response)
        );
        response[split + 4..].to_vec()
    }

    /// The value of one Prometheus sample (0 when absent).
    pub async fn metric(&self, sample: &str) -> f64 {
        let (_, body) = self.get("/metrics").await;
        body.lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|v| v.strip_prefix(' ')))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0.0)
    }
}

impl TestServer {
    /// Waits (polling `/metrics`) until a sample satisfies `ok`.
    pub async fn wait_for_metric(&self, sample: &str, ok: impl Fn(f64) -> bool) {
        let poll = async {
            loop {
                if ok(self.metric(sample).await) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(WAIT, poll)
            .await
            .unwrap_or_else(|_| panic!("metric {sample} never satisfied"));
    }
}

/// A minimal HTTP/1.1 request: returns the status and the body.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, String) {
    http_call(addr, method, path, &[], body).await
}

/// [`http_request`] with extra headers (e.g. `("Authorization", "Bearer ...")`).
pub async fn http_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let (status, _, body) = http_exchange(addr, method, path, headers, body).await;
    (status, body)
}

/// [`http_call`], answering the response's head (status line and headers) too.
pub async fn http_exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/octet-stream\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (status, head.to_owned(), body.to_owned())
}

pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path, &[]).await
}

/// Reads a raw WebSocket until the server's close frame (skipping the rest):
/// its code, or `None` when the connection ended without one.
pub async fn close_code<S>(socket: &mut tokio_tungstenite::WebSocketStream<S>) -> Option<u16>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    tokio::time::timeout(WAIT, async {
        while let Some(Ok(message)) = socket.next().await {
            if let Message::Close(frame) = message {
                return frame.map(|f| u16::from(f.code));
            }
        }
        None
    })
    .await
    .expect("the server closes in time")
}

/// Connects a yrs client to `doc` on `server` and waits for the sync.
pub async fn connect(server: &TestServer, doc: &str) -> yrelay_client::WsClient {
    let client = yrelay_client::WsClient::connect(&server.ws_url(doc), yrs::Doc::new())
        .await
        .unwrap();
    client.wait_synced(WAIT).await.unwrap();
    client
}

/// The client's root text "text".
pub fn text(client: &yrelay_client::WsClient) -> String {
    use yrs::{GetString, Transact};
    let text = client.doc().get_or_insert_text("text");
    let txn = client.doc().transact();
    text.get_string(&txn)
}

/// Whether a peer with `sv` has seen everything `target` names.
pub fn covers(sv: &yrs::StateVector, target: &yrs::StateVector) -> bool {
    target
        .iter()
        .all(|(client, clock)| sv.get(client) >= *clock)
}

/// The convergence check: waits until every client has everything any
/// client has, asserts that their states are byte-identical in normal form
/// (re-encoded through a fresh document: how yrs splits a client's own
/// consecutive edits into blocks is local bookkeeping), and returns it.
pub async fn converge(clients: &[&yrelay_client::WsClient]) -> Vec<u8> {
    use yrelay_protocol::update::merge_updates;
    use yrs::{ReadTxn, StateVector, Transact};
    let mut union = StateVector::default();
    for c in clients {
        union.merge(c.doc().transact().state_vector());
    }
    for c in clients {
        c.wait_for("convergence", WAIT, |c| {
            covers(&c.doc().transact().state_vector(), &union)
        })
        .await
        .unwrap();
    }
    let states: Vec<Vec<u8>> = clients
        .iter()
        .map(|c| merge_updates([c.state().as_slice()]).unwrap())
        .collect();
    for s in &states[1..] {
        assert_eq!(s, &states[0], "byte-identical state on every client");
    }
    states[0].clone()
}
