//! Scaled out: several instances on one Redis log and one PostgreSQL store,
//! all real processes, with faults injected by killing and restarting them.

mod common;

use common::services::{PostgresServer, RedisCluster, RedisServer};
use common::{TestServer, WAIT, converge, covers};
use yrelay_client::WsClient;
use yrelay_protocol::DocAddress;
use yrelay_protocol::update::merge_updates;
use yrs::{Array, Doc, Map, ReadTxn, StateVector, Text, Transact};

const DOC: &str = "team/shared";

/// The document as the store alone holds it (normal form).
async fn stored_state(pg: &PostgresServer, doc: &str) -> Option<Vec<u8>> {
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
struct Cluster<R = RedisServer> {
    redis: R,
    pg: PostgresServer,
    instances: Vec<TestServer>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    async fn start(n: usize, extra: &[&str]) -> Self {
        let redis = RedisServer::start().await;
        let url = redis.url();
        Cluster::start_on(redis, &url, n, extra).await
    }
}

impl<R> Cluster<R> {
    async fn start_on(redis: R, log: &str, n: usize, extra: &[&str]) -> Self {
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
    async fn stored_state(&self) -> Option<Vec<u8>> {
        self.stored_state_of(DOC).await
    }

    async fn stored_state_of(&self, doc: &str) -> Option<Vec<u8>> {
        stored_state(&self.pg, doc).await
    }

    /// Waits until the store alone holds exactly `expected`.
    async fn store_catches_up(&self, expected: &[u8]) {
        self.store_catches_up_on(DOC, expected).await
    }

    async fn store_catches_up_on(&self, doc: &str, expected: &[u8]) {
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

async fn connect(server: &TestServer, doc: Doc) -> WsClient {
    connect_to(server, DOC, doc).await
}

async fn connect_to(server: &TestServer, name: &str, doc: Doc) -> WsClient {
    let client = WsClient::connect(&server.ws_url(name), doc).await.unwrap();
    client.wait_synced(WAIT).await.unwrap();
    client
}

/// A client whose connection ended (e.g. `1013` during a fault) reconnects
/// with the same document, as y-websocket clients do.
async fn reconnect_if_closed(client: WsClient, server: &TestServer) -> WsClient {
    reconnect_to_if_closed(client, server, DOC).await
}

async fn reconnect_to_if_closed(client: WsClient, server: &TestServer, name: &str) -> WsClient {
    if !client.is_closed() {
        return client;
    }
    let doc = client.doc().clone();
    drop(client);
    connect_to(server, name, doc).await
}

/// Deterministic pseudo-random edits on Y.Text, Y.Map and Y.Array.
fn edit(client: &WsClient, seed: &mut u64, rounds: usize) {
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

#[tokio::test]
async fn three_instances_converge_and_the_store_holds_everything() {
    let cluster = Cluster::start(3, &[]).await;
    let mut clients = Vec::new();
    for i in 0..6 {
        clients.push(connect(&cluster.instances[i % 3], Doc::new()).await);
    }
    let mut seed = 0x9e3779b97f4a7c15;
    for round in 0..5 {
        for c in &clients {
            edit(c, &mut seed, 10 + round);
        }
    }
    // awareness crosses instances too
    clients[0].set_awareness(&serde_json::json!({"user": "ann"}));
    clients[2]
        .wait_for("presence", WAIT, |c| {
            c.peers().iter().any(|(_, s)| s.contains("ann"))
        })
        .await
        .unwrap();

    let refs: Vec<&WsClient> = clients.iter().collect();
    let state = converge(&refs).await;
    cluster.store_catches_up(&state).await;
    // Once persisted, the document leaves the compactor's backlog while its
    // entries stay in the log for the retention window (resumable streams).
    let redis = redis::Client::open(cluster.redis.url()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let drained = async {
        loop {
            let owed: i64 = redis::cmd("ZCARD")
                .arg("yrelay:{backlog}")
                .query_async(&mut conn)
                .await
                .unwrap();
            if owed == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(WAIT, drained)
        .await
        .expect("the backlog drained");
    let retained: i64 = redis::cmd("XLEN")
        .arg(format!("yrelay:{{{DOC}}}:log"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(retained > 0, "entries stay for the retention window");
    // a new instance starts cold and serves the document at once
    let dir = tempfile::tempdir().unwrap();
    let (store, log) = (cluster.pg.url(), cluster.redis.url());
    let cold = TestServer::start(dir.path(), &["--store", &store, "--log", &log]).await;
    let late = connect(&cold, Doc::new()).await;
    assert_eq!(merge_updates([late.state().as_slice()]).unwrap(), state);
}

#[tokio::test]
async fn postgres_outage_does_not_stop_editing_and_the_backlog_drains() {
    let mut cluster = Cluster::start(2, &[]).await;
    let a = connect(&cluster.instances[0], Doc::new()).await;
    let b = connect(&cluster.instances[1], Doc::new()).await;
    let mut seed = 42;
    edit(&a, &mut seed, 20);
    edit(&b, &mut seed, 20);
    converge(&[&a, &b]).await;

    cluster.pg.stop().await;
    for _ in 0..5 {
        edit(&a, &mut seed, 10);
        edit(&b, &mut seed, 10);
    }
    let during = converge(&[&a, &b]).await;
    // joining a live document during the outage gets the full current doc
    let c = connect(&cluster.instances[0], Doc::new()).await;
    assert_eq!(converge(&[&a, &b, &c]).await, during);
    let (status, body) = cluster.instances[0].get("/readyz").await;
    assert_eq!(status, 503, "{body}");

    cluster.pg.start_again().await;
    cluster.store_catches_up(&during).await;
}

/// `yrelay backlog` against the cluster's store and log: (exit success, stdout).
fn backlog_cli(cluster: &Cluster) -> (bool, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_yrelay"))
        .args([
            "backlog",
            "--store",
            &cluster.pg.url(),
            "--log",
            &cluster.redis.url(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (output.status.success(), stdout)
}

/// What waits in the log for the store is counted on every instance (not
/// only by whichever compactor holds a document), never reads 0 before the
/// store has it, and `yrelay backlog` says the same.
#[tokio::test]
async fn the_backlog_is_counted_on_every_instance_until_the_store_has_it() {
    let mut cluster = Cluster::start(2, &[]).await;
    let a = connect(&cluster.instances[0], Doc::new()).await;
    let b = connect(&cluster.instances[1], Doc::new()).await;
    let mut seed = 11;
    edit(&a, &mut seed, 5);
    converge(&[&a, &b]).await;
    cluster.pg.stop().await;
    for _ in 0..5 {
        edit(&a, &mut seed, 10);
        edit(&b, &mut seed, 10);
    }
    let during = converge(&[&a, &b]).await;
    for instance in &cluster.instances {
        instance
            .wait_for_metric("yrelay_store_backlog_updates", |v| v >= 1.0)
            .await;
    }
    let (drained, out) = backlog_cli(&cluster);
    assert!(
        !drained,
        "yrelay backlog fails while the store lacks updates: {out}"
    );

    cluster.pg.start_again().await;
    for instance in &cluster.instances {
        instance
            .wait_for_metric("yrelay_store_backlog_updates", |v| v == 0.0)
            .await;
        // Read as drained: the store must hold everything already.
        assert_eq!(cluster.stored_state().await.as_deref(), Some(&during[..]));
    }
    let (drained, out) = backlog_cli(&cluster);
    assert!(drained, "{out}");
    assert!(out.contains("\"updates\":0"), "{out}");
}

/// A graceful stop moves what it can of the log's backlog to the store and
/// says what is left: stopped right after PostgreSQL returns, the instance
/// leaves nothing behind in the log.
#[tokio::test]
async fn a_graceful_stop_moves_the_backlog_to_the_store() {
    let mut cluster = Cluster::start(1, &[]).await;
    let a = connect(&cluster.instances[0], Doc::new()).await;
    let mut seed = 3;
    cluster.pg.stop().await;
    edit(&a, &mut seed, 20);
    let during = converge(&[&a]).await;
    cluster.pg.start_again().await;
    cluster.instances[0].stop().await;
    cluster.instances[0]
        .wait_for_log("at stop the store holds everything the log held")
        .await;
    assert_eq!(cluster.stored_state().await.as_deref(), Some(&during[..]));
    let (drained, out) = backlog_cli(&cluster);
    assert!(drained, "{out}");
}

/// An instance started while PostgreSQL is down (an autoscaler adding
/// capacity during an outage, or a restart) starts, says it is not ready,
/// and serves once PostgreSQL is back, without a restart.
#[tokio::test]
async fn an_instance_starts_while_postgres_is_down_and_serves_once_it_returns() {
    let redis = RedisServer::start().await;
    let mut pg = PostgresServer::start().await;
    pg.stop().await;
    let dir = tempfile::tempdir().unwrap();
    let (store, log) = (pg.url(), redis.url());
    let args = [
        "--store",
        &store,
        "--log",
        &log,
        "--compact-idle-secs",
        "0.2",
    ];
    let server = TestServer::start(dir.path(), &args).await;
    let (status, body) = server.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("STORE_UNAVAILABLE"), "{body}");

    pg.start_again().await;
    tokio::time::timeout(WAIT, async {
        while server.get("/readyz").await.0 != 200 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("ready once PostgreSQL is back");
    let a = connect(&server, Doc::new()).await;
    let mut seed = 5;
    edit(&a, &mut seed, 10);
    let state = converge(&[&a]).await;
    tokio::time::timeout(WAIT, async {
        while stored_state(&pg, DOC).await.as_ref() != Some(&state) {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the store holds the edits");
}

#[tokio::test]
async fn a_killed_instance_loses_nothing_acknowledged() {
    let mut cluster = Cluster::start(2, &[]).await;
    let a = connect(&cluster.instances[0], Doc::new()).await;
    let b = connect(&cluster.instances[1], Doc::new()).await;
    let mut seed = 7;
    edit(&a, &mut seed, 30);
    edit(&b, &mut seed, 30);
    // what b has seen of a was acknowledged (relayed only once in the log)
    converge(&[&a, &b]).await;
    edit(&a, &mut seed, 30);
    cluster.instances[0].kill().await;

    a.closed(WAIT).await.unwrap();
    let a = reconnect_if_closed(a, &cluster.instances[1]).await;
    edit(&a, &mut seed, 5);
    let state = converge(&[&a, &b]).await;
    cluster.store_catches_up(&state).await;
}

#[tokio::test]
async fn redis_restarted_with_its_data_is_resumed_without_restarting_instances() {
    // No retention: replicas whose feed broke catch up from the store.
    let mut cluster = Cluster::start(2, &["--log-retention-secs", "0"]).await;
    let a = connect(&cluster.instances[0], Doc::new()).await;
    let b = connect(&cluster.instances[1], Doc::new()).await;
    let mut seed = 99;
    edit(&a, &mut seed, 20);
    edit(&b, &mut seed, 20);
    converge(&[&a, &b]).await;

    cluster.redis.restart(true).await;
    let a = reconnect_if_closed(a, &cluster.instances[0]).await;
    let b = reconnect_if_closed(b, &cluster.instances[1]).await;
    edit(&a, &mut seed, 20);
    edit(&b, &mut seed, 20);
    let state = converge(&[&a, &b]).await;
    cluster.store_catches_up(&state).await;
}

#[tokio::test]
async fn durability_store_keeps_every_acknowledged_update_when_redis_loses_everything() {
    let mut cluster = Cluster::start(2, &["--durability", "store"]).await;
    let a = connect(&cluster.instances[0], Doc::new()).await;
    let b = connect(&cluster.instances[1], Doc::new()).await;
    let mut seed = 1234;
    edit(&a, &mut seed, 40);
    edit(&b, &mut seed, 40);
    let acknowledged = converge(&[&a, &b]).await;

    cluster.redis.restart(false).await;
    let stored = cluster
        .stored_state()
        .await
        .expect("the store holds the document");
    assert_eq!(stored, acknowledged);
}

/// `yrelay worker`: the compactor alone.
fn worker(cluster: &Cluster) -> tokio::process::Child {
    worker_on(&cluster.pg, &cluster.redis.url())
}

fn worker_on(pg: &PostgresServer, log: &str) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_yrelay"))
        .args(["worker", "--store", &pg.url(), "--log", log])
        .args(["--compact-idle-secs", "0.2"])
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn yrelay worker")
}

#[tokio::test]
async fn a_compactor_that_dies_holding_a_document_is_taken_over() {
    let cluster = Cluster::start(2, &["--no-compactor"]).await;
    let mut first = worker(&cluster);
    let _second = worker(&cluster);
    let a = connect(&cluster.instances[0], Doc::new()).await;
    let b = connect(&cluster.instances[1], Doc::new()).await;
    let mut seed = 5;
    edit(&a, &mut seed, 30);
    edit(&b, &mut seed, 30);
    converge(&[&a, &b]).await;

    // What a compactor killed mid-work leaves behind: its lease on the
    // document, and log entries not yet trimmed. Kill a real one as well.
    let client = redis::Client::open(cluster.redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let lease = format!("yrelay:{{{DOC}}}:lease");
    let _: () = redis::cmd("SET")
        .arg(&lease)
        .arg("dead-compactor")
        .arg("PX")
        .arg(10_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    first.kill().await.unwrap();
    edit(&a, &mut seed, 30);
    edit(&b, &mut seed, 30);
    let state = converge(&[&a, &b]).await;

    // The surviving worker takes over once the lease runs out.
    cluster.store_catches_up(&state).await;
}

#[tokio::test]
async fn sse_stream_on_one_instance_and_posts_on_another_converge_and_resume_anywhere() {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use common::sse::{EventStream, post};
    use yrelay_protocol::update::apply_update;

    let cluster = Cluster::start(2, &[]).await;
    let (a, b) = (cluster.instances[0].addr, cluster.instances[1].addr);
    let events = format!("/v1/docs/{DOC}/events");
    let updates = format!("/v1/docs/{DOC}/updates");
    let ws = connect(&cluster.instances[1], Doc::new()).await;

    let mut stream = EventStream::open(a, &events, None).await;
    assert_eq!(stream.next().await.event, "sync");
    let writer = Doc::new();
    let text = writer.get_or_insert_text("text");
    let post_edit = |s: &str| {
        let before = writer.transact().state_vector();
        text.push(&mut writer.transact_mut(), s);
        writer.transact().encode_diff_v1(&before)
    };
    let mut cursors = Vec::new();
    for s in ["one ", "two ", "three "] {
        let (status, ack) = post(b, &updates, &post_edit(s)).await;
        assert_eq!(status, 200, "{ack}");
        cursors.push(ack["cursor"].as_str().unwrap().to_string());
    }
    let reader = Doc::new();
    for cursor in &cursors[..1] {
        let e = stream.next().await;
        assert_eq!(
            (e.event.as_str(), e.id.as_deref()),
            ("update", Some(cursor.as_str()))
        );
        apply_update(&reader, &STANDARD.decode(&e.data).unwrap()).unwrap();
    }
    drop(stream);
    // resume on the *other* instance, right after the first update
    let mut resumed = EventStream::open(b, &events, Some(&cursors[0])).await;
    for cursor in &cursors[1..] {
        let e = resumed.next().await;
        assert_eq!(
            (e.event.as_str(), e.id.as_deref()),
            ("update", Some(cursor.as_str()))
        );
        apply_update(&reader, &STANDARD.decode(&e.data).unwrap()).unwrap();
    }
    let expected = merge_updates([writer
        .transact()
        .encode_state_as_update_v1(&StateVector::default())
        .as_slice()])
    .unwrap();
    let got = merge_updates([reader
        .transact()
        .encode_state_as_update_v1(&StateVector::default())
        .as_slice()])
    .unwrap();
    assert_eq!(got, expected);
    let target = writer.transact().state_vector();
    ws.wait_for("posted edits", WAIT, |c| {
        covers(&c.doc().transact().state_vector(), &target)
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn space_events_reach_every_instance() {
    use common::sse::{EventStream, post};
    let cluster = Cluster::start(2, &[]).await;
    let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
    let mut events = EventStream::open(a.addr, "/v1/spaces/ev/events", None).await;
    let data =
        |e: &common::sse::SseEvent| serde_json::from_str::<serde_json::Value>(&e.data).unwrap();

    let (status, _) = post(b.addr, "/v1/docs/ev/one/import", br#"{"n": 1}"#).await;
    assert_eq!(status, 201);
    let created = events.next().await;
    assert_eq!(created.event, "doc.created");
    assert_eq!(data(&created)["doc"], "one");
    assert!(data(&created)["timestamp"].as_i64().unwrap() > 0);

    let client = WsClient::connect(&b.ws_url("ev/one"), Doc::new())
        .await
        .unwrap();
    client.wait_synced(WAIT).await.unwrap();
    let root = client.doc().get_or_insert_map("root");
    client.edit(|txn| {
        root.insert(txn, "n", 2);
    });
    let updated = events.next().await;
    assert_eq!(
        (updated.event.as_str(), data(&updated)["doc"].as_str()),
        ("doc.updated", Some("one"))
    );

    let (status, _) =
        common::http_request(b.addr, "PATCH", "/v1/docs/ev/one", br#"{"title": "One"}"#).await;
    assert_eq!(status, 200);
    let renamed = events.next().await;
    assert_eq!(renamed.event, "doc.renamed");
    assert_eq!(data(&renamed)["title"], "One");

    let (status, _) = common::http_request(b.addr, "DELETE", "/v1/docs/ev/one", b"").await;
    assert_eq!(status, 204);
    let deleted = events.next().await;
    assert_eq!(
        (deleted.event.as_str(), data(&deleted)["doc"].as_str()),
        ("doc.deleted", Some("one"))
    );
}

#[tokio::test]
async fn a_redis_cluster_spreads_documents_over_its_nodes_and_instances_converge() {
    let redis = RedisCluster::start(3).await;
    let url = redis.url();
    let cluster = Cluster::start_on(redis, &url, 3, &["--no-compactor"]).await;
    // the compactor, given the cluster as a list of seed nodes
    let _worker = worker_on(&cluster.pg, &cluster.redis.seeds());
    let names: Vec<String> = (0..6).map(|i| format!("team/doc-{i}")).collect();
    let mut clients = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let a = connect_to(&cluster.instances[i % 3], name, Doc::new()).await;
        let b = connect_to(&cluster.instances[(i + 1) % 3], name, Doc::new()).await;
        clients.push((a, b));
    }
    let mut seed = 0x2545f4914f6cdd1d;
    for round in 0..4 {
        for (a, b) in &clients {
            edit(a, &mut seed, 5 + round);
            edit(b, &mut seed, 5 + round);
        }
    }
    clients[0]
        .0
        .set_awareness(&serde_json::json!({"user": "ann"}));
    clients[0]
        .1
        .wait_for("presence", WAIT, |c| {
            c.peers().iter().any(|(_, s)| s.contains("ann"))
        })
        .await
        .unwrap();
    for (name, (a, b)) in names.iter().zip(&clients) {
        let state = converge(&[a, b]).await;
        cluster.store_catches_up_on(name, &state).await;
    }

    // The documents' logs live on more than one node.
    let mut nodes_with_logs = 0;
    for port in &cluster.redis.ports {
        let node = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        let mut conn = node.get_multiplexed_async_connection().await.unwrap();
        let logs: Vec<String> = redis::cmd("KEYS")
            .arg("yrelay:*:log")
            .query_async(&mut conn)
            .await
            .unwrap();
        nodes_with_logs += usize::from(!logs.is_empty());
    }
    assert!(nodes_with_logs >= 2, "logs on {nodes_with_logs} node(s)");

    // A cold instance serves a document at once.
    let dir = tempfile::tempdir().unwrap();
    let (store, log) = (cluster.pg.url(), cluster.redis.url());
    let cold = TestServer::start(dir.path(), &["--store", &store, "--log", &log]).await;
    let late = connect_to(&cold, &names[5], Doc::new()).await;
    let (a, b) = &clients[5];
    assert_eq!(
        merge_updates([late.state().as_slice()]).unwrap(),
        converge(&[a, b]).await
    );
}

/// PostgreSQL allots ids at insert, not at commit: an update committed by a
/// slower transaction (another instance's batch) can hold a lower id than
/// one the compactor already merged. Compaction removes only what it merged.
#[tokio::test]
async fn compaction_keeps_an_update_committed_late_under_a_lower_id() {
    use std::sync::Arc;
    use yrelay::store::NewUpdate;
    use yrs::GetString;

    let pg = PostgresServer::start().await;
    let store = yrelay::store::open(&pg.url()).await.unwrap();
    let addr = DocAddress::parse_path(DOC).unwrap();
    let update = |client: u64, text: &str| {
        let doc = Doc::with_client_id(client);
        let t = doc.get_or_insert_text("text");
        t.insert(&mut doc.transact_mut(), 0, text);
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default())
    };
    let append = |data: Vec<u8>| NewUpdate {
        addr: addr.clone(),
        data: Arc::from(data),
        log_cursor: None,
        timestamp_ms: 1,
    };
    store.append(&[append(update(1, "first "))]).await.unwrap();
    // A slow transaction takes the next id and has not committed yet.
    let pool = sqlx::PgPool::connect(&pg.url()).await.unwrap();
    let mut slow = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO doc_updates (space, doc, data, created_at) VALUES ($1, $2, $3, 1)")
        .bind(addr.space())
        .bind(addr.doc())
        .bind(update(2, "late "))
        .execute(&mut *slow)
        .await
        .unwrap();
    store.append(&[append(update(3, "third"))]).await.unwrap();

    // The compactor reads what is committed, then the slow one commits.
    let read = store.load(&addr).await.unwrap().unwrap();
    assert_eq!(read.updates.len(), 2);
    slow.commit().await.unwrap();
    let merged: Vec<i64> = read.updates.iter().map(|(id, _)| *id).collect();
    let snapshot = merge_updates(read.updates.iter().map(|(_, u)| u.as_slice())).unwrap();
    store.compact(&addr, &snapshot, &merged).await.unwrap();

    let after = store.load(&addr).await.unwrap().unwrap();
    assert_eq!(after.updates.len(), 1, "the late update stays");
    let doc = Doc::new();
    for part in after
        .snapshot
        .iter()
        .chain(after.updates.iter().map(|(_, u)| u))
    {
        yrelay_protocol::update::apply_update(&doc, part).unwrap();
    }
    let text = doc.get_or_insert_text("text");
    let content = text.get_string(&doc.transact());
    for word in ["first", "late", "third"] {
        assert!(content.contains(word), "{word} in {content:?}");
    }
}

/// Bells are the fast path: with every registration of the document gone
/// (as if each bell were lost), the instances still read its log and the
/// clients converge.
#[tokio::test]
async fn lost_bells_only_delay_delivery() {
    let cluster = Cluster::start(2, &[]).await;
    let a = connect(&cluster.instances[0], Doc::new()).await;
    let b = connect(&cluster.instances[1], Doc::new()).await;
    let mut seed = 77;
    edit(&a, &mut seed, 5);
    converge(&[&a, &b]).await;

    let redis = redis::Client::open(cluster.redis.url()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let forgotten: i64 = redis::cmd("DEL")
        .arg(format!("yrelay:{{{DOC}}}:subs"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(forgotten, 1, "the document had followers");
    edit(&a, &mut seed, 5);
    edit(&b, &mut seed, 5);
    converge(&[&a, &b]).await;
}

/// A cluster node restarted (with its data) during edits: the instances
/// reconnect through the cluster client and resume by cursor.
#[tokio::test]
async fn a_redis_cluster_node_restarted_with_its_data_is_resumed() {
    let redis = RedisCluster::start(3).await;
    let url = redis.url();
    let mut cluster = Cluster::start_on(redis, &url, 2, &["--log-retention-secs", "0"]).await;
    let name = "team/doc-0";
    let a = connect_to(&cluster.instances[0], name, Doc::new()).await;
    let b = connect_to(&cluster.instances[1], name, Doc::new()).await;
    let mut seed = 4242;
    edit(&a, &mut seed, 20);
    edit(&b, &mut seed, 20);
    converge(&[&a, &b]).await;

    // The node that holds the document's log.
    let log = format!("yrelay:{{{name}}}:log");
    let mut holder = None;
    for (i, port) in cluster.redis.ports.iter().enumerate() {
        let node = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        let mut conn = node.get_multiplexed_async_connection().await.unwrap();
        let here: Result<i64, _> = redis::cmd("EXISTS").arg(&log).query_async(&mut conn).await;
        if here == Ok(1) {
            holder = Some(i);
        }
    }
    let holder = holder.expect("a node holds the document's log");
    cluster.redis.restart_node(holder).await;

    let a = reconnect_to_if_closed(a, &cluster.instances[0], name).await;
    let b = reconnect_to_if_closed(b, &cluster.instances[1], name).await;
    edit(&a, &mut seed, 20);
    edit(&b, &mut seed, 20);
    let state = converge(&[&a, &b]).await;
    cluster.store_catches_up_on(name, &state).await;
}

/// Text edits whose updates are posted one by one (`POST .../updates`).
struct Poster {
    doc: Doc,
    text: yrs::TextRef,
    server: std::net::SocketAddr,
}

impl Poster {
    fn new(server: &TestServer) -> Self {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("text");
        Self {
            doc,
            text,
            server: server.addr,
        }
    }

    /// Appends `s` and posts the update it made: the status and the answer.
    async fn post(&self, s: &str) -> (u16, serde_json::Value) {
        let before = self.doc.transact().state_vector();
        self.text.push(&mut self.doc.transact_mut(), s);
        let update = self.doc.transact().encode_diff_v1(&before);
        common::sse::post(self.server, &format!("/v1/docs/{DOC}/updates"), &update).await
    }

    /// Posts `s`, which must be acknowledged; its log cursor.
    async fn acked(&self, s: &str) -> String {
        let (status, ack) = self.post(s).await;
        assert_eq!(status, 200, "{ack}");
        ack["cursor"].as_str().unwrap().to_string()
    }
}

/// `XRANGE` of the entry `cursor` of the document's log (one entry if there).
fn log_entry(cursor: &str) -> redis::Cmd {
    let mut range = redis::cmd("XRANGE");
    range
        .arg(format!("yrelay:{{{DOC}}}:log"))
        .arg(cursor)
        .arg(cursor);
    range
}

/// Asserts that `entries` (the answer to [`log_entry`]) hold the entry.
fn assert_found(entries: Option<Vec<redis::Value>>, cursor: &str) {
    let found = entries.unwrap_or_default().len();
    assert_eq!(found, 1, "acknowledged {cursor} is not there");
}

/// `--log-replicas 1`: an update is acknowledged only once a Redis replica
/// has it, so a failover to that replica cannot lose it. A replica that
/// stops answering turns acknowledgements into errors, never into acks.
#[tokio::test]
async fn with_log_replicas_every_acknowledged_update_is_on_a_replica() {
    let primary = RedisServer::start().await;
    let replica = RedisServer::start_replica_of(&primary).await;
    let dir = tempfile::tempdir().unwrap();
    let log = primary.url();
    let args = ["--log", log.as_str(), "--log-replicas", "1"];
    let server = TestServer::start(dir.path(), &args).await;
    let writer = Poster::new(&server);
    for s in ["one ", "two ", "three "] {
        let cursor = writer.acked(s).await;
        assert_found(replica.query(log_entry(&cursor)).await, &cursor);
    }

    replica.signal("STOP");
    let (status, answer) = writer.post("unreplicated ").await;
    replica.signal("CONT");
    assert_eq!(status, 503, "{answer}");
    assert!(answer.to_string().contains("replicas"), "{answer}");

    let cursor = writer.acked("four").await;
    assert_found(replica.query(log_entry(&cursor)).await, &cursor);
}

/// A Redis Cluster primary killed: its replica takes over, and every update
/// acknowledged before (with `--log-replicas 1`) is on the new primary.
/// Acks wait until the new primary has a replica again (the old node,
/// restarted, rejoins as one); the instance appends there without a restart.
#[tokio::test]
async fn a_redis_cluster_failover_loses_nothing_acknowledged_with_log_replicas() {
    let mut redis = RedisCluster::start_with_replicas(3, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let seeds = redis.seeds();
    let args = ["--log", seeds.as_str(), "--log-replicas", "1"];
    let server = TestServer::start(dir.path(), &args).await;
    let writer = Poster::new(&server);
    let mut acked = Vec::new();
    for i in 0..20 {
        acked.push(writer.acked(&format!("{i} ")).await);
    }

    let key = format!("yrelay:{{{DOC}}}:log");
    let primary = redis.primary_of(&key).await;
    redis.kill_node(primary).await;
    redis.wait_failover_of(primary).await;
    let promoted = redis.primary_of(&key).await;
    for cursor in acked {
        assert_found(
            redis.query_node(promoted, log_entry(&cursor)).await,
            &cursor,
        );
    }

    // Appending goes on once the promoted node has a replica again (the
    // instance's cluster client finds the new topology by itself).
    redis.restart_node(primary).await;
    let appended = async {
        loop {
            let (status, ack) = writer.post("after").await;
            if status == 200 {
                return ack["cursor"].as_str().unwrap().to_string();
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    let cursor = tokio::time::timeout(WAIT, appended)
        .await
        .expect("appends resume after the failover");
    assert_found(
        redis.query_node(promoted, log_entry(&cursor)).await,
        &cursor,
    );
}

/// A load reads the snapshot and the appended updates as of one moment: a
/// compaction that commits between its statements (here held on a table
/// lock until the load waits on it) must not give it the old snapshot
/// without the updates the compaction merged.
#[tokio::test]
async fn a_load_sees_one_state_while_a_compaction_commits() {
    use std::sync::Arc;
    use yrelay::store::NewUpdate;
    use yrs::GetString;

    let pg = PostgresServer::start().await;
    let store: Arc<dyn yrelay::store::Store> = yrelay::store::open(&pg.url()).await.unwrap();
    let addr = DocAddress::parse_path(DOC).unwrap();
    let update = |client: u64, text: &str| {
        let doc = Doc::with_client_id(client);
        let t = doc.get_or_insert_text("text");
        t.insert(&mut doc.transact_mut(), 0, text);
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default())
    };
    for (client, text) in [(1, "first "), (2, "second")] {
        let new = NewUpdate {
            addr: addr.clone(),
            data: Arc::from(update(client, text)),
            log_cursor: None,
            timestamp_ms: 1,
        };
        store.append(&[new]).await.unwrap();
    }
    let pool = sqlx::PgPool::connect(&pg.url()).await.unwrap();
    let merged = merge_updates([
        update(1, "first ").as_slice(),
        update(2, "second").as_slice(),
    ])
    .unwrap();

    // A compaction that has taken its locks but not yet written.
    let mut compaction = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE doc_updates IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *compaction)
        .await
        .unwrap();
    let load = tokio::spawn({
        let (store, addr) = (store.clone(), addr.clone());
        async move { store.load(&addr).await }
    });
    // Wait until the load waits on the lock (it has read what comes before).
    tokio::time::timeout(WAIT, async {
        loop {
            let waiting: i64 =
                sqlx::query_scalar("SELECT count(*) FROM pg_locks WHERE NOT granted")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            if waiting > 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the load waits on the compaction's lock");
    sqlx::query("DELETE FROM doc_updates")
        .execute(&mut *compaction)
        .await
        .unwrap();
    sqlx::query("INSERT INTO doc_snapshots (space, doc, data) VALUES ($1, $2, $3)")
        .bind(addr.space())
        .bind(addr.doc())
        .bind(&merged)
        .execute(&mut *compaction)
        .await
        .unwrap();
    compaction.commit().await.unwrap();

    let loaded = load.await.unwrap().unwrap().unwrap();
    let doc = Doc::new();
    for part in loaded
        .snapshot
        .iter()
        .chain(loaded.updates.iter().map(|(_, u)| u))
    {
        yrelay_protocol::update::apply_update(&doc, part).unwrap();
    }
    let text = doc.get_or_insert_text("text");
    let content = text.get_string(&doc.transact());
    for word in ["first", "second"] {
        assert!(content.contains(word), "{word} in {content:?}");
    }
}
