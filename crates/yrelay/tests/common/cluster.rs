//! Instances scaled out on one Redis log (server or cluster) and one
//! PostgreSQL store, and the clients the scale-out tests drive them with.

use yrelay_client::WsClient;
use yrelay_protocol::DocAddress;
use yrelay_protocol::update::merge_updates;
use yrs::{Array, Doc, Map, Text};

use super::services::{PostgresServer, RedisServer};
use super::{TestServer, WAIT};

pub const DOC: &str = "team/shared";

/// The document as the store alone holds it (normal form).
pub async fn stored_state(pg: &PostgresServer, doc: &str) -> Option<Vec<u8>> {
    let store = yrelay::store::open(&pg.url()).await.ok()?;
    let stored = store
        .load(&DocAddress::parse_path(doc).unwrap())
        .await
        .ok()??;
    let parts = stored
        .snapshot
        .iter()
        .chain(stored.updates.iter().map(|(_, u)| u));
    merge_updates(parts.map(Vec::as_slice)).ok()
}

/// Instances on one log and one store (`R`: a Redis server or cluster).
pub struct Cluster<R = RedisServer> {
    pub redis: R,
    pub pg: PostgresServer,
    pub instances: Vec<TestServer>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    pub async fn start(n: usize, extra: &[&str]) -> Self {
        let redis = RedisServer::start().await;
        let url = redis.url();
        Cluster::start_on(redis, &url, n, extra).await
    }
}

impl<R> Cluster<R> {
    pub async fn start_on(redis: R, log: &str, n: usize, extra: &[&str]) -> Self {
        let pg = PostgresServer::start().await;
        let mut instances = Vec::new();
        let mut dirs = Vec::new();
        for _ in 0..n {
            let dir = tempfile::tempdir().unwrap();
            let store = pg.url();
            let mut args = vec![
                "--store",
                &store,
                "--log",
                log,
                "--compact-idle-secs",
                "0.2",
            ];
            args.extend_from_slice(extra);
            instances.push(TestServer::start(dir.path(), &args).await);
            dirs.push(dir);
        }
        Self {
            redis,
            pg,
            instances,
            _dirs: dirs,
        }
    }

    /// The document as the store alone holds it (normal form).
    pub async fn stored_state(&self) -> Option<Vec<u8>> {
        self.stored_state_of(DOC).await
    }

    pub async fn stored_state_of(&self, doc: &str) -> Option<Vec<u8>> {
        stored_state(&self.pg, doc).await
    }

    /// Waits until the store alone holds exactly `expected`.
    pub async fn store_catches_up(&self, expected: &[u8]) {
        self.store_catches_up_on(DOC, expected).await
    }

    pub async fn store_catches_up_on(&self, doc: &str, expected: &[u8]) {
        let poll = async {
            loop {
                if self.stored_state_of(doc).await.as_deref() == Some(expected) {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        };
        tokio::time::timeout(WAIT, poll)
            .await
            .expect("the store caught up with the clients");
    }
}

pub async fn connect(server: &TestServer, doc: Doc) -> WsClient {
    connect_to(server, DOC, doc).await
}

pub async fn connect_to(server: &TestServer, name: &str, doc: Doc) -> WsClient {
    let client = WsClient::connect(&server.ws_url(name), doc).await.unwrap();
    client.wait_synced(WAIT).await.unwrap();
    client
}

/// A client whose connection ended (e.g. `1013` during a fault) reconnects
/// with the same document, as y-websocket clients do.
pub async fn reconnect_if_closed(client: WsClient, server: &TestServer) -> WsClient {
    reconnect_to_if_closed(client, server, DOC).await
}

pub async fn reconnect_to_if_closed(client: WsClient, server: &TestServer, name: &str) -> WsClient {
    if !client.is_closed() {
        return client;
    }
    let doc = client.doc().clone();
    drop(client);
    connect_to(server, name, doc).await
}

/// Deterministic pseudo-random edits on Y.Text, Y.Map and Y.Array.
pub fn edit(client: &WsClient, seed: &mut u64, rounds: usize) {
    let text = client.doc().get_or_insert_text("text");
    let map = client.doc().get_or_insert_map("map");
    let array = client.doc().get_or_insert_array("array");
    for _ in 0..rounds {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let n = *seed;
        client.edit(|txn| match n % 3 {
            0 => {
                let len = text.len(txn);
                text.insert(txn, (n / 3) as u32 % (len + 1), &format!("{} ", n % 1000));
            }
            1 => {
                map.insert(txn, format!("k{}", n % 7), (n % 10_000) as i64);
            }
            _ => {
                array.push_back(txn, (n % 10_000) as i64);
            }
        });
    }
}

/// `yrelay worker`: the compactor alone.
pub fn worker(cluster: &Cluster) -> tokio::process::Child {
    worker_on(&cluster.pg, &cluster.redis.url())
}

pub fn worker_on(pg: &PostgresServer, log: &str) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_yrelay"))
        .args(["worker", "--store", &pg.url(), "--log", log])
        .args(["--compact-idle-secs", "0.2"])
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn yrelay worker")
}
