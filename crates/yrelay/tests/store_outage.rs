//! Scaled out while PostgreSQL is away: editing goes on, the backlog is
//! counted everywhere and drains into the store once it is back.

mod common;

use common::cluster::*;

use common::services::{PostgresServer, RedisServer};
use common::{TestServer, WAIT, converge};
use yrs::Doc;

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

/// A stop's drain waits for a document another compactor holds (its round
/// may be failing on a store that just came back) instead of taking the
/// held lease for "nothing left".
#[tokio::test]
async fn a_drain_waits_for_a_document_another_compactor_holds() {
    use std::sync::Arc;
    use std::time::Duration;
    use yrelay::compactor::{Compactor, CompactorConfig, HistoryConfig, LEASE, measure_backlog};
    use yrelay::{log, store};

    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store_url = format!("sqlite://{}", dir.path().join("y.db").display());
    let store = store::open(&store_url).await.unwrap();
    let log = log::open(&redis.url(), 100, 0, 1).await.unwrap();
    let doc = yrelay_protocol::DocAddress::parse("space", "held").unwrap();
    for n in 0..3u8 {
        log.append_update(&doc, Arc::from(&[n][..]), None, None)
            .await
            .unwrap();
    }
    // Another holder has the document for a moment (well under the drain's
    // limit); then its lease runs out.
    let lease = Duration::from_millis(300);
    assert!(lease < LEASE);
    let coordination = log.coordination();
    assert!(coordination.try_lease(&doc, "other", lease).await.unwrap());

    let config = CompactorConfig {
        min_updates: 1000,
        idle: Duration::from_secs(60),
        poll: Duration::from_secs(1),
        log_retention: Duration::from_secs(60),
        instance: 2,
        history: HistoryConfig {
            interval: Duration::from_secs(600),
            exact: Duration::from_secs(600),
            retention: Duration::from_secs(600),
            keep_labelled: false,
            trash_retention: Duration::from_secs(600),
        },
    };
    let compactor = Compactor::new(store.clone(), log.clone(), config);
    compactor.drain(WAIT).await;
    let left = measure_backlog(&*store, &*log).await.unwrap();
    assert_eq!(left.updates, 0, "the drain left {left:?}");
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
