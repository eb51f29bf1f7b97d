//! Scaled out on a Redis Cluster: documents spread over its nodes, a node
//! restarted, a failover, and log replicas (WAIT) that keep every
//! acknowledged update.

mod common;

use common::cluster::*;
use common::redis_cluster::RedisCluster;
use common::services::RedisServer;
use common::{TestServer, WAIT, converge};
use yrelay_protocol::update::merge_updates;
use yrs::{Doc, ReadTxn, Text, Transact};

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
