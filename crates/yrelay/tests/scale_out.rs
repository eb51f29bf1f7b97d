//! Scaled out: several instances on one Redis log and one PostgreSQL store,
//! all real processes, with faults injected by killing and restarting them.

mod common;

use common::cluster::*;

use common::services::PostgresServer;
use common::{TestServer, WAIT, converge, covers};
use yrelay_client::WsClient;
use yrelay_protocol::DocAddress;
use yrelay_protocol::update::merge_updates;
use yrs::{Doc, Map, ReadTxn, StateVector, Text, Transact};

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
        editor: None,
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
    lose_every_bell_then_converge(&[]).await;
}

/// Lost bells, and the log trimmed (no retention) before the sweep reads
/// it: the instance that missed the entries catches up from the store.
#[tokio::test]
async fn entries_trimmed_before_a_lost_bell_is_swept_come_from_the_store() {
    lose_every_bell_then_converge(&["--log-retention-secs", "0"]).await;
}

async fn lose_every_bell_then_converge(args: &[&str]) {
    let cluster = Cluster::start(2, args).await;
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
            editor: None,
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

/// The inspector asks one instance: it lists its own connections, and
/// another instance's through the presence they introduced.
#[tokio::test]
async fn one_instance_shows_the_presence_of_another_instances_connections() {
    let cluster = Cluster::start(2, &[]).await;
    let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
    let here = connect_to(a, "insp/doc", Doc::new()).await;
    let there = connect_to(b, "insp/doc", Doc::new()).await;
    there.set_awareness(&serde_json::json!({ "user": "bea" }));
    here.wait_for("bea's presence", WAIT, |c| {
        c.peers().iter().any(|(_, s)| s.contains("bea"))
    })
    .await
    .unwrap();

    let (status, body) = common::http_get(a.addr, "/v1/docs/insp/doc/connections").await;
    assert_eq!(status, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(view["connections"].as_array().unwrap().len(), 1, "{view}");
    let presence = &view["presence"][0];
    assert_eq!(presence["state"]["user"], "bea", "{view}");
    assert_ne!(presence["instance"], view["instance"], "{view}");
    let (_, on_b) = common::http_get(b.addr, "/v1/docs/insp/doc/connections").await;
    let on_b: serde_json::Value = serde_json::from_str(&on_b).unwrap();
    assert_eq!(presence["instance"], on_b["instance"], "B introduced it");
    assert_eq!(
        on_b["connections"][0]["id"], presence["connection"],
        "through its connection"
    );
}
