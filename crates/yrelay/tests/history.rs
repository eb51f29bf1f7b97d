//! Document history on both stores: versions on demand and by compaction,
//! the document at any moment (exact within the window, as of a version
//! beyond it), who changed what, restore with clients connected and undoing
//! it, and the errors.

mod common;

use std::time::Duration;

use common::doc_api::*;
use common::services::PostgresServer;
use common::{TestServer, WAIT, converge};
use serde_json::{Value, json};
use yrelay::auth::Mode;
use yrelay::clock::now_ms;
use yrelay_client::WsClient;
use yrs::{Doc, Map, Text, WriteTxn};

/// Everything a user does with history, against one running server.
async fn history_scenario(server: &TestServer) {
    let (ann, bob) = (token("ann", Mode::Rw), token("bob", Mode::Rw));
    let reader = token("rea", Mode::Ro);
    let a = client(server, &ann).await;
    a.edit(|txn| {
        let settings = txn.get_or_insert_map("settings");
        settings.insert(txn, "theme", "dark");
        settings.insert(txn, "zoom", 3);
        let text = txn.get_or_insert_text("text");
        text.insert(txn, 0, "the plan");
    });
    let good = json_of(&a);
    server_shows(server, &ann, &good).await;
    let t_good = now_ms();
    after(t_good).await;
    let (status, _, made) = call(
        server,
        "POST",
        &format!("/v1/docs/{DOC}/versions"),
        &ann,
        json!({"label": "good"}),
    )
    .await;
    assert_eq!(status, 201, "{made}");
    let good_id = made["id"].as_i64().unwrap();

    // Bob breaks it.
    let b = client(server, &bob).await;
    converge(&[&a, &b]).await;
    b.edit(|txn| {
        let settings = txn.get_or_insert_map("settings");
        settings.insert(txn, "theme", "neon");
        settings.remove(txn, "zoom");
        let text = txn.get_or_insert_text("text");
        text.remove_range(txn, 0, 4);
    });
    let broken = json_of(&b);
    assert_ne!(broken, good);
    server_shows(server, &ann, &broken).await;

    // The past, exactly, and the version.
    let (status, head, at) = call(
        server,
        "GET",
        &format!("/v1/docs/{DOC}/json?at={t_good}"),
        &reader,
        Value::Null,
    )
    .await;
    assert_eq!((status, &at), (200, &good), "{head}");
    assert!(head.contains(&format!("yrelay-at: {t_good}")), "{head}");
    assert!(head.contains("yrelay-at-exact: true"), "{head}");
    let path = format!("/v1/docs/{DOC}/versions/{good_id}/json");
    let (status, _, version) = call(server, "GET", &path, &reader, Value::Null).await;
    assert_eq!((status, &version), (200, &good));
    let path = format!("/v1/docs/{DOC}/versions");
    let (_, _, versions) = call(server, "GET", &path, &reader, Value::Null).await;
    let listed = &versions.as_array().unwrap()[0];
    assert_eq!(listed["id"], good_id, "{versions}");
    assert_eq!(listed["label"], "good", "{versions}");
    assert_eq!(listed["editors"], json!(["ann"]), "{versions}");

    // Who changed what.
    let path = format!("/v1/docs/{DOC}/changes?from=0");
    let (status, _, changes) = call(server, "GET", &path, &reader, Value::Null).await;
    assert_eq!(status, 200, "{changes}");
    let editors: Vec<&str> = changes
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["editor"].as_str().unwrap_or(""))
        .collect();
    assert!(
        editors.contains(&"ann") && editors.contains(&"bob"),
        "{changes}"
    );
    let path = format!("/v1/docs/{DOC}/changes?from=0&to={t_good}");
    let (_, _, early) = call(server, "GET", &path, &reader, Value::Null).await;
    assert!(
        early
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["editor"] == "ann"),
        "{early}"
    );

    // Bad requests change nothing.
    let restore = format!("/v1/docs/{DOC}/restore");
    let (status, _, body) = call(
        server,
        "POST",
        &restore,
        &reader,
        json!({"version": good_id}),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (status, _, body) = call(server, "POST", &restore, &ann, json!({"version": 99_999})).await;
    assert_eq!(
        (status, error_code(&body)),
        (404, "VERSION_NOT_FOUND"),
        "{body}"
    );
    let (status, _, body) = call(server, "POST", &restore, &ann, json!({})).await;
    assert_eq!((status, error_code(&body)), (400, "BAD_JSON"), "{body}");
    let future = now_ms() + 3_600_000;
    let path = format!("/v1/docs/{DOC}/json?at={future}");
    let (status, _, body) = call(server, "GET", &path, &reader, Value::Null).await;
    assert_eq!(
        (status, error_code(&body)),
        (400, "AT_OUT_OF_RANGE"),
        "{body}"
    );
    let path = format!("/v1/docs/{DOC}/update?at=1");
    let (status, _, body) = call(server, "GET", &path, &reader, Value::Null).await;
    assert_eq!(
        (status, error_code(&body)),
        (400, "AT_OUT_OF_RANGE"),
        "{body}"
    );
    let path = format!("/v1/docs/{DOC}/versions/nope/json");
    let (status, _, body) = call(server, "GET", &path, &reader, Value::Null).await;
    assert_eq!(
        (status, error_code(&body)),
        (404, "VERSION_NOT_FOUND"),
        "{body}"
    );
    server_shows(server, &ann, &broken).await;

    // Restore, seen live by both clients; then undo it.
    let (status, _, restored) =
        call(server, "POST", &restore, &ann, json!({"version": good_id})).await;
    assert_eq!(status, 200, "{restored}");
    let before = restored["version"].as_i64().unwrap();
    assert!(restored["timestamp"].as_i64().is_some(), "{restored}");
    server_shows(server, &ann, &good).await;
    for c in [&a, &b] {
        c.wait_for("the restore", WAIT, |c| json_of(c) == good)
            .await
            .unwrap();
    }
    converge(&[&a, &b]).await;
    let (status, _, undone) =
        call(server, "POST", &restore, &bob, json!({"version": before})).await;
    assert_eq!(status, 200, "{undone}");
    server_shows(server, &ann, &broken).await;
    for c in [&a, &b] {
        c.wait_for("the undone restore", WAIT, |c| json_of(c) == broken)
            .await
            .unwrap();
    }

    // And by moment: back to before Bob's edit.
    let (status, _, _) = call(server, "POST", &restore, &ann, json!({"at": t_good})).await;
    assert_eq!(status, 200);
    server_shows(server, &ann, &good).await;
}

#[tokio::test]
async fn history_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &auth_args()).await;
    history_scenario(&server).await;
}

#[tokio::test]
async fn history_on_postgres() {
    let pg = PostgresServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = pg.url();
    let mut args = auth_args();
    args.extend(["--store", &store]);
    let server = TestServer::start(dir.path(), &args).await;
    history_scenario(&server).await;
}

/// Compactions record versions; past the exact window, history is pruned
/// and a moment is shown as of the version before it.
#[tokio::test]
async fn compactions_record_versions_and_old_moments_show_a_version() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = auth_args();
    args.extend([
        "--compact-idle-secs",
        "0.1",
        "--history-interval-secs",
        "0",
        "--history-exact-secs",
        "1",
    ]);
    let mut server = TestServer::start(dir.path(), &args).await;
    let ann = token("ann", Mode::Rw);
    let a = client(&server, &ann).await;
    let versions = format!("/v1/docs/{DOC}/versions");
    let wait_versions = async |n: usize| {
        tokio::time::timeout(WAIT, async {
            loop {
                let (_, _, list) = call(&server, "GET", &versions, &ann, Value::Null).await;
                if list.as_array().is_some_and(|l| l.len() >= n) {
                    return list;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("a compaction records a version")
    };
    a.edit(|txn| {
        txn.get_or_insert_map("settings").insert(txn, "step", 1);
    });
    let first = json_of(&a);
    let list = wait_versions(1).await;
    assert_eq!(list[0]["label"], Value::Null, "{list}");
    assert_eq!(list[0]["editors"], json!(["ann"]), "{list}");
    let t_first = list[0]["timestamp"].as_i64().unwrap();
    after(t_first).await;
    a.edit(|txn| {
        txn.get_or_insert_map("settings").insert(txn, "step", 2);
    });
    wait_versions(2).await;
    server.wait_for_log("history pruned past its windows").await;

    // Beyond the exact window: the version at or before the moment.
    let path = format!("/v1/docs/{DOC}/json?at={t_first}");
    let (status, head, body) = call(&server, "GET", &path, &ann, Value::Null).await;
    assert_eq!((status, &body), (200, &first), "{head}");
    assert!(head.contains("yrelay-at-exact: false"), "{head}");
    assert!(head.contains(&format!("yrelay-at: {t_first}")), "{head}");
}

/// Scaled out: a restore made on one instance reaches clients on another,
/// and a client that was offline with the old state merges its own edit on
/// top when it comes back.
#[tokio::test]
async fn a_restore_reaches_every_instance_and_an_offline_client_merges_on_top() {
    use common::cluster::Cluster;
    use yrs::updates::decoder::Decode;
    use yrs::{Array, Transact, Update};

    let cluster = Cluster::start(2, &["--jwt-secret", SECRET]).await;
    let (one, two) = (&cluster.instances[0], &cluster.instances[1]);
    let ann = token("ann", Mode::Rw);
    let a = client(one, &ann).await;
    let b = client(two, &ann).await;
    a.edit(|txn| {
        txn.get_or_insert_map("settings")
            .insert(txn, "theme", "dark");
        txn.get_or_insert_array("list").push_back(txn, "a");
    });
    let good = json_of(&a);
    b.wait_for("the first edit", WAIT, |c| json_of(c) == good)
        .await
        .unwrap();
    // Goes offline holding the good state.
    let offline = Doc::new();
    let held = Update::decode_v1(&a.state()).unwrap();
    offline.transact_mut().apply_update(held).unwrap();
    let versions = format!("/v1/docs/{DOC}/versions");
    let (status, _, made) = call(two, "POST", &versions, &ann, json!({})).await;
    assert_eq!(status, 201, "{made}");

    b.edit(|txn| {
        txn.get_or_insert_map("settings")
            .insert(txn, "theme", "neon");
        txn.get_or_insert_array("list").remove(txn, 0);
    });
    let broken = json_of(&b);
    a.wait_for("the breaking edit", WAIT, |c| json_of(c) == broken)
        .await
        .unwrap();
    let restore = format!("/v1/docs/{DOC}/restore");
    let (status, _, body) = call(one, "POST", &restore, &ann, json!({"version": made["id"]})).await;
    assert_eq!(status, 200, "{body}");
    for c in [&a, &b] {
        c.wait_for("the restore", WAIT, |c| json_of(c) == good)
            .await
            .unwrap();
    }

    // Back online with an edit made while away.
    offline
        .get_or_insert_array("list")
        .push_back(&mut offline.transact_mut(), "offline");
    let url = format!("{}?token={ann}", two.ws_url(DOC));
    let c = WsClient::connect(&url, offline).await.unwrap();
    c.wait_synced(WAIT).await.unwrap();
    let merged = |c: &WsClient| {
        let json = json_of(c);
        let list = json["list"].as_array().cloned().unwrap_or_default();
        json["settings"]["theme"] == "dark"
            && list.len() == 2
            && list.contains(&json!("a"))
            && list.contains(&json!("offline"))
    };
    for c in [&a, &b, &c] {
        c.wait_for("the offline edit on top of the restore", WAIT, merged)
            .await
            .unwrap();
    }
    converge(&[&a, &b, &c]).await;
}

/// Scaled out, what only the log holds yet (no compactor has moved it to
/// the store) is part of the history too: `?at=` and `changes` include it.
#[tokio::test]
async fn history_includes_what_only_the_log_holds_yet() {
    use common::cluster::Cluster;

    let cluster = Cluster::start(2, &["--jwt-secret", SECRET, "--no-compactor"]).await;
    let (one, two) = (&cluster.instances[0], &cluster.instances[1]);
    let ann = token("ann", Mode::Rw);
    let a = client(one, &ann).await;
    a.edit(|txn| {
        txn.get_or_insert_map("settings")
            .insert(txn, "theme", "dark");
    });
    let content = json_of(&a);
    server_shows(two, &ann, &content).await;
    assert_eq!(cluster.stored_state_of(DOC).await, None, "only in the log");
    let now = now_ms();
    let path = format!("/v1/docs/{DOC}/json?at={now}");
    let (status, head, body) = call(two, "GET", &path, &ann, Value::Null).await;
    assert_eq!((status, &body), (200, &content), "{head}");
    let path = format!("/v1/docs/{DOC}/changes?to={now}");
    let (_, _, changes) = call(two, "GET", &path, &ann, Value::Null).await;
    let changes = changes.as_array().unwrap();
    assert!(
        !changes.is_empty() && changes.iter().all(|c| c["editor"] == "ann"),
        "{changes:?}"
    );
}
