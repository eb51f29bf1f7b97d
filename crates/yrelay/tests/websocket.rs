//! The y-websocket protocol against the real binary, with yrs clients.

mod common;

use common::{TestServer, WAIT, connect, converge, text};
use yrelay_client::WsClient;
use yrs::updates::decoder::Decode;
use yrs::{Array, Doc, GetString, Map, Text, Transact};

async fn converged(a: &WsClient, b: &WsClient) {
    converge(&[a, b]).await;
}

#[tokio::test]
async fn two_clients_converge_on_map_text_and_array() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]).await;
    let a = connect(&server, "team/notes").await;
    let b = connect(&server, "team/notes").await;
    for i in 0..20 {
        let (writer, n) = if i % 2 == 0 { (&a, "a") } else { (&b, "b") };
        let t = writer.doc().get_or_insert_text("text");
        let m = writer.doc().get_or_insert_map("settings");
        let arr = writer.doc().get_or_insert_array("layers");
        writer.edit(|txn| {
            t.insert(txn, 0, &format!("{n}{i} "));
            m.insert(txn, format!("k{}", i % 3), i as i64);
            arr.push_back(txn, i as i64);
        });
    }
    converged(&a, &b).await;
    assert_eq!(text(&a).split_whitespace().count(), 20);
    let arr = a.doc().get_or_insert_array("layers");
    assert_eq!(arr.len(&a.doc().transact()), 20);
}

#[tokio::test]
async fn late_joiner_gets_everything() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]).await;
    let a = connect(&server, "s/late").await;
    let t = a.doc().get_or_insert_text("text");
    for i in 0..50 {
        a.edit(|txn| t.push(txn, &format!("{i},")));
    }
    // a second client seeing the last edit means the server has all of them
    let witness = connect(&server, "s/late").await;
    converged(&a, &witness).await;
    let late = connect(&server, "s/late").await;
    assert_eq!(late.state(), a.state());
    assert!(text(&late).starts_with("0,1,2,"));
}

/// New clients share one encode of the document (per change of it): a
/// change that only deletes (the state vector stays the same) still
/// reaches the next new client.
#[tokio::test]
async fn a_new_client_after_a_deletion_gets_the_document_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]).await;
    let a = connect(&server, "s/deleted").await;
    let t = a.doc().get_or_insert_text("text");
    a.edit(|txn| t.push(txn, "abc"));
    let first = connect(&server, "s/deleted").await;
    converged(&a, &first).await;
    a.edit(|txn| t.remove_range(txn, 1, 1));
    first
        .wait_for("the deletion", WAIT, |c| text(c) == "ac")
        .await
        .unwrap();
    let next = connect(&server, "s/deleted").await;
    assert_eq!(text(&next), "ac");
}

#[tokio::test]
async fn offline_edits_on_both_sides_converge_after_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]).await;
    let a = connect(&server, "s/offline").await;
    let b = connect(&server, "s/offline").await;
    let ta = a.doc().get_or_insert_text("text");
    a.edit(|txn| ta.push(txn, "shared "));
    converged(&a, &b).await;

    // b goes offline and edits locally; a keeps editing online
    let b_doc = b.doc().clone();
    b.close().await;
    let tb = b_doc.get_or_insert_text("text");
    tb.push(&mut b_doc.transact_mut(), "from-b-offline ");
    a.edit(|txn| ta.push(txn, "from-a-online "));

    let b = WsClient::connect(&server.ws_url("s/offline"), b_doc)
        .await
        .unwrap();
    b.wait_synced(WAIT).await.unwrap();
    converged(&a, &b).await;
    let t = text(&a);
    assert!(
        t.contains("from-b-offline") && t.contains("from-a-online"),
        "{t}"
    );
}

#[tokio::test]
async fn documents_survive_a_graceful_restart_and_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(dir.path(), &[]).await;
    let a = connect(&server, "s/durable").await;
    let witness = connect(&server, "s/durable").await;
    let t = a.doc().get_or_insert_text("text");
    a.edit(|txn| t.push(txn, "before-stop "));
    converged(&a, &witness).await;
    drop((a, witness));
    server.stop().await;
    server.restart().await;

    let a = connect(&server, "s/durable").await;
    assert_eq!(text(&a), "before-stop ");
    let witness = connect(&server, "s/durable").await;
    let t = a.doc().get_or_insert_text("text");
    a.edit(|txn| t.push(txn, "before-kill"));
    // relayed means acknowledged: it is committed before anyone sees it
    converged(&a, &witness).await;
    server.kill().await;
    server.restart().await;

    let fresh = connect(&server, "s/durable").await;
    assert_eq!(text(&fresh), "before-stop before-kill");
}

#[tokio::test]
async fn awareness_is_relayed_queried_and_removed_on_disconnect() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]).await;
    let a = connect(&server, "s/presence").await;
    let b = connect(&server, "s/presence").await;
    a.set_awareness(&serde_json::json!({"user": {"name": "ann"}}));
    b.wait_for("a's presence", WAIT, |c| {
        c.peers().iter().any(|(_, s)| s.contains("ann"))
    })
    .await
    .unwrap();
    a.set_awareness(&serde_json::json!({"user": {"name": "ann", "cursor": 3}}));
    b.wait_for("a's update", WAIT, |c| {
        c.peers().iter().any(|(_, s)| s.contains("cursor"))
    })
    .await
    .unwrap();

    // a joiner receives current states on connect, and on query
    let c = connect(&server, "s/presence").await;
    c.wait_for("state on join", WAIT, |c| {
        c.peers().iter().any(|(_, s)| s.contains("ann"))
    })
    .await
    .unwrap();
    c.query_awareness();

    a.close().await;
    b.wait_for("a's removal", WAIT, |c| c.peers().is_empty())
        .await
        .unwrap();
    c.wait_for("a's removal", WAIT, |c| c.peers().is_empty())
        .await
        .unwrap();
}

#[tokio::test]
async fn concurrent_cold_loads_load_the_document_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]).await;
    let url = server.ws_url("s/cold");
    let clients = futures_util::future::join_all((0..16).map(|_| {
        let url = url.clone();
        async move { WsClient::connect(&url, Doc::new()).await.unwrap() }
    }))
    .await;
    for c in &clients {
        c.wait_synced(WAIT).await.unwrap();
    }
    assert_eq!(server.metric("yrelay_doc_loads_total").await, 1.0);
    assert_eq!(server.metric("yrelay_docs_loaded").await, 1.0);
}

#[tokio::test]
async fn idle_documents_are_unloaded_and_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(
        dir.path(),
        &[
            "--idle-unload-secs",
            "0.2",
            "--compact-min-updates",
            "20",
            "--compact-idle-secs",
            "0.2",
        ],
    )
    .await;
    let a = connect(&server, "s/compact").await;
    let t = a.doc().get_or_insert_text("text");
    for i in 0..40 {
        a.edit(|txn| t.push(txn, &format!("{i} ")));
    }
    let witness = connect(&server, "s/compact").await;
    converged(&a, &witness).await;
    let expected = a.state();
    drop((a, witness));
    server.wait_for_log("compacted").await;
    server.wait_for_log("document unloaded").await;
    let reloaded = connect(&server, "s/compact").await;
    let td = reloaded.doc().get_or_insert_text("text");
    let original = Doc::new();
    original
        .transact_mut()
        .apply_update(yrs::Update::decode_v1(&expected).unwrap())
        .unwrap();
    let to = original.get_or_insert_text("text");
    assert_eq!(
        td.get_string(&reloaded.doc().transact()),
        to.get_string(&original.transact())
    );
    assert_eq!(server.metric("yrelay_doc_loads_total").await, 2.0);
}
