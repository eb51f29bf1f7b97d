//! The document REST API: import → export round trip, listing, metadata,
//! block/unblock, delete (connected clients are told), and its errors.

mod common;

use common::sse::{EventStream, post};
use common::{TestServer, WAIT, http_call};
use serde_json::{Value, json};
use yrelay_protocol::json::{doc_from_update, doc_to_json};
use yrs::{Doc, Map, ReadTxn, StateVector, Transact};

async fn call(server: &TestServer, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
    let (status, text) = http_call(server.addr, method, path, &[], body).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test]
async fn json_import_exports_back_and_clients_see_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]).await;
    let settings = json!({
        "center": {"lat": 52.52, "lng": 13.40},
        "zoom": 11,
        "layers": [{"name": "roads", "colour": "#d33"}, {"name": "parks", "colour": "#3a3"}],
    });
    let body = serde_json::to_vec(&settings).unwrap();
    let (status, ack) = call(&server, "POST", "/v1/docs/acme/map/import", &body).await;
    assert_eq!(status, 201, "{ack}");
    assert!(ack["timestamp"].as_i64().unwrap() > 0);

    // Exactly once.
    let (status, err) = call(&server, "POST", "/v1/docs/acme/map/import", &body).await;
    assert_eq!((status, error_code(&err)), (409, "DOC_EXISTS"));

    let (status, exported) = call(&server, "GET", "/v1/docs/acme/map/json", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(exported, json!({ "root": settings }));

    // A y-websocket client sees the imported document as Y types.
    let client = common::connect(&server, "acme/map").await;
    let root = client.doc().get_or_insert_map("root");
    let center = root.get(&client.doc().transact(), "center");
    assert!(
        matches!(center, Some(yrs::Out::YMap(_))),
        "objects import as Y.Map: {center:?}"
    );
    assert_eq!(
        doc_to_json(client.doc()).unwrap(),
        json!({ "root": settings }),
        "the client's copy is the imported JSON"
    );

    // The whole document as one update, and the diff against a state vector.
    let whole = server.get_bytes("/v1/docs/acme/map/update").await;
    assert_eq!(
        doc_to_json(&doc_from_update(&whole).unwrap()).unwrap(),
        json!({ "root": settings })
    );
    let sv = client.doc().transact().state_vector();
    let sv_b64 = base64_url(&yrs::updates::encoder::Encode::encode_v1(&sv));
    let diff = server
        .get_bytes(&format!("/v1/docs/acme/map/update?sv={sv_b64}"))
        .await;
    assert_eq!(diff, yrs::Update::EMPTY_V1, "the client misses nothing");

    // An import under another root map.
    let (status, _) = call(
        &server,
        "POST",
        "/v1/docs/acme/prefs/import?root=settings",
        br#"{"theme": "dark"}"#,
    )
    .await;
    assert_eq!(status, 201);
    let (_, exported) = call(&server, "GET", "/v1/docs/acme/prefs/json", &[]).await;
    assert_eq!(exported, json!({"settings": {"theme": "dark"}}));
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn list_meta_block_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]).await;
    for doc in ["a", "b"] {
        let (status, _) = call(
            &server,
            "POST",
            &format!("/v1/docs/team/{doc}/import"),
            br#"{"n": 1}"#,
        )
        .await;
        assert_eq!(status, 201);
    }
    let (status, list) = call(&server, "GET", "/v1/spaces/team/docs", &[]).await;
    assert_eq!(status, 200);
    let docs: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["doc"].as_str().unwrap())
        .collect();
    assert_eq!(docs, ["a", "b"]);
    let newest = list[1]["updatedAt"].as_i64().unwrap();
    let (_, later) = call(
        &server,
        "GET",
        &format!("/v1/spaces/team/docs?after={newest}"),
        &[],
    )
    .await;
    assert_eq!(later, json!([]));

    // Rename and block.
    let (status, meta) = call(
        &server,
        "PATCH",
        "/v1/docs/team/a",
        br#"{"title": "Plan A", "blocked": true}"#,
    )
    .await;
    assert_eq!(status, 200, "{meta}");
    assert_eq!(meta["title"], "Plan A");
    assert_eq!(meta["blocked"], true);
    let (_, meta) = call(&server, "GET", "/v1/docs/team/a", &[]).await;
    assert_eq!(meta["title"], "Plan A");

    // A blocked document refuses writes on every transport.
    let client = common::connect(&server, "team/a").await;
    let map = client.doc().get_or_insert_map("root");
    client.edit(|txn| {
        map.insert(txn, "n", 2);
    });
    client
        .wait_for("permission denied", WAIT, |c| {
            c.permission_denied().is_some()
        })
        .await
        .unwrap();
    let update = client
        .doc()
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    let (status, err) = post(server.addr, "/v1/docs/team/a/updates", &update).await;
    assert_eq!((status, error_code(&err)), (403, "DOC_UPDATE_BLOCKED"));
    let (_, exported) = call(&server, "GET", "/v1/docs/team/a/json", &[]).await;
    assert_eq!(exported, json!({"root": {"n": 1}}));

    // Unblocked, the same update goes through.
    let (status, _) = call(
        &server,
        "PATCH",
        "/v1/docs/team/a",
        br#"{"blocked": false}"#,
    )
    .await;
    assert_eq!(status, 200);
    let mut events = EventStream::open(server.addr, "/v1/docs/team/a/events", None).await;
    assert_eq!(events.next().await.event, "sync");
    let (status, _) = post(server.addr, "/v1/docs/team/a/updates", &update).await;
    assert_eq!(status, 200);
    // The replica applies accepted updates from the log, then relays them.
    assert_eq!(events.next().await.event, "update");
    let (_, exported) = call(&server, "GET", "/v1/docs/team/a/json", &[]).await;
    assert_eq!(exported, json!({"root": {"n": 2}}));

    // Delete: the connected client is told (4410), the document is gone.
    let (status, _) = call(&server, "DELETE", "/v1/docs/team/a", &[]).await;
    assert_eq!(status, 204);
    let info = client.closed(WAIT).await.unwrap();
    assert_eq!(info.code, Some(4410), "{info:?}");
    for path in [
        "/v1/docs/team/a",
        "/v1/docs/team/a/json",
        "/v1/docs/team/a/update",
    ] {
        let (status, err) = call(&server, "GET", path, &[]).await;
        assert_eq!((status, error_code(&err)), (404, "DOC_NOT_FOUND"), "{path}");
    }
    let (status, _) = call(&server, "DELETE", "/v1/docs/team/a", &[]).await;
    assert_eq!(status, 404);
    let (_, list) = call(&server, "GET", "/v1/spaces/team/docs", &[]).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    // In the trash its name stays taken; purged, it can be imported again.
    let (status, _) = call(&server, "POST", "/v1/docs/team/a/import", br#"{"n": 9}"#).await;
    assert_eq!(status, 409);
    let (status, _) = call(&server, "DELETE", "/v1/docs/team/a?purge=true", &[]).await;
    assert_eq!(status, 204);
    let (status, _) = call(&server, "POST", "/v1/docs/team/a/import", br#"{"n": 9}"#).await;
    assert_eq!(status, 201);
}

#[tokio::test]
async fn bad_requests_get_json_errors_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &["--max-message-size", "1024"]).await;
    for (method, path, body, status, code) in [
        (
            "POST",
            "/v1/docs/s/d/import",
            &b"{not json"[..],
            400,
            "BAD_JSON",
        ),
        ("POST", "/v1/docs/s/d/import", b"[1, 2]", 400, "BAD_JSON"),
        ("POST", "/v1/docs/s/d/import?root=", b"{}", 400, "BAD_QUERY"),
        ("POST", "/v1/docs/s/d%20x/import", b"{}", 400, "BAD_DOC_ID"),
        ("PATCH", "/v1/docs/s/d", b"{\"colour\": 1}", 400, "BAD_JSON"),
        (
            "PATCH",
            "/v1/docs/s/never",
            b"{\"title\": \"x\"}",
            404,
            "DOC_NOT_FOUND",
        ),
        (
            "GET",
            "/v1/docs/s/d/update?sv=%%%",
            b"",
            400,
            "BAD_STATE_VECTOR",
        ),
        (
            "GET",
            "/v1/spaces/s/docs?after=yesterday",
            b"",
            400,
            "BAD_QUERY",
        ),
        ("GET", "/v1/spaces/s%2Fx/docs", b"", 400, "BAD_DOC_ID"),
        ("GET", "/v1/docs/s/never", b"", 404, "DOC_NOT_FOUND"),
    ] {
        let (got, body) = call(&server, method, path, body).await;
        assert_eq!((got, error_code(&body)), (status, code), "{method} {path}");
    }
    let big = format!("{{\"x\": \"{}\"}}", "a".repeat(4096));
    let (status, body) = call(&server, "POST", "/v1/docs/s/d/import", big.as_bytes()).await;
    assert_eq!((status, error_code(&body)), (413, "BODY_TOO_LARGE"));
    let (_, list) = call(&server, "GET", "/v1/spaces/s/docs", &[]).await;
    assert_eq!(list, json!([]), "nothing was stored");
    // The update export of the imported JSON is a valid document.
    let (status, _) = call(&server, "POST", "/v1/docs/s/ok/import", br#"{"a": [1]}"#).await;
    assert_eq!(status, 201);
    let raw = server.get_bytes("/v1/docs/s/ok/update").await;
    let doc: Doc = doc_from_update(&raw).unwrap();
    assert_eq!(doc_to_json(&doc).unwrap(), json!({"root": {"a": [1]}}));
}

/// GET returning the raw body bytes.
/// Runs `yrelay doc ...` against a store; returns (success, stdout, stderr).
fn doc_cli(store: &str, args: &[&str]) -> (bool, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_yrelay"))
        .arg("doc")
        .args(args)
        .args(["--store", store])
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_cli_imports_exports_lists_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("yrelay.db").display());
    let file = dir.path().join("legacy.json");
    let entries: serde_json::Map<String, Value> = (0..50)
        .map(|i| (format!("k{i}"), json!({"i": i})))
        .collect();
    std::fs::write(&file, serde_json::to_vec(&entries).unwrap()).unwrap();

    let (ok, _, progress) = doc_cli(&store, &["import", "app/legacy", file.to_str().unwrap()]);
    assert!(ok, "{progress}");
    assert!(progress.contains("50/50 entries (100%)"), "{progress}");
    let (ok, _, err) = doc_cli(&store, &["import", "app/legacy", file.to_str().unwrap()]);
    assert!(!ok && err.contains("already exists"), "{err}");
    let (ok, out, _) = doc_cli(&store, &["export", "app/legacy"]);
    assert!(ok);
    let exported: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(exported, json!({ "root": entries }));
    let (ok, out, _) = doc_cli(&store, &["list", "app"]);
    assert!(ok);
    assert_eq!(out.lines().count(), 1);
    assert!(out.contains("\"doc\":\"legacy\""), "{out}");

    // A server on the same store serves what the CLI imported.
    let mut server = TestServer::start(dir.path(), &[]).await;
    let (status, json) = call(&server, "GET", "/v1/docs/app/legacy/json", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(json, exported);
    server.stop().await;

    let (ok, _, err) = doc_cli(&store, &["delete", "app/legacy"]);
    assert!(ok, "{err}");
    let (ok, out, _) = doc_cli(&store, &["list", "app"]);
    assert!(ok && out.is_empty(), "{out}");

    // Out of the trash, with its history; then for good.
    let (ok, _, err) = doc_cli(&store, &["undelete", "app/legacy"]);
    assert!(ok, "{err}");
    let (ok, out, _) = doc_cli(&store, &["versions", "app/legacy"]);
    assert!(ok && out.contains("\"label\":\"imported\""), "{out}");
    let now = yrelay::clock::now_ms().to_string();
    let (ok, out, err) = doc_cli(&store, &["export", "app/legacy", "--at", &now]);
    assert!(ok, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), exported);
    let (ok, _, err) = doc_cli(&store, &["restore", "app/legacy", "--version", "1"]);
    assert!(
        ok && err.contains("to undo: yrelay doc restore app/legacy --version 2"),
        "{err}"
    );
    let (ok, _, err) = doc_cli(&store, &["restore", "app/legacy", "--version", "99"]);
    assert!(!ok && err.contains("version 99"), "{err}");
    let (ok, _, err) = doc_cli(&store, &["delete", "app/legacy", "--purge"]);
    assert!(ok, "{err}");
    let (ok, _, err) = doc_cli(&store, &["undelete", "app/legacy"]);
    assert!(!ok && err.contains("not in the trash"), "{err}");
    let (ok, _, err) = doc_cli(&store, &["export", "app/bad id"]);
    assert!(!ok && err.contains("app/bad id"), "{err}");
}

/// A document holding only deletions of items it never held is listed
/// with metadata, so it is served (empty) too, not 404 on one endpoint and
/// listed on another.
#[tokio::test]
async fn a_document_with_nothing_visible_answers_the_same_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]).await;
    let delete_unknown = [0u8, 1, 9, 1, 0, 1];
    let (status, body) = call(&server, "POST", "/v1/docs/s/ghost/updates", &delete_unknown).await;
    assert_eq!(status, 200, "{body}");
    let (status, list) = call(&server, "GET", "/v1/spaces/s/docs", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(list[0]["doc"], "ghost", "{list}");
    let (status, _) = call(&server, "GET", "/v1/docs/s/ghost", &[]).await;
    assert_eq!(status, 200);
    let (status, json) = call(&server, "GET", "/v1/docs/s/ghost/json", &[]).await;
    assert_eq!((status, json), (200, serde_json::json!({})));
    let update = server.get_bytes("/v1/docs/s/ghost/update").await;
    assert!(!update.is_empty());
    // A document never written is still 404 everywhere.
    let (status, _) = call(&server, "GET", "/v1/docs/s/nothing/json", &[]).await;
    assert_eq!(status, 404);
}

/// A `Last-Event-ID` from the future (no instance has reached it) gets a
/// fresh `sync`, then the updates that follow: it used to skip every update
/// up to that cursor, that is all of them, on a 200 stream.
#[tokio::test]
async fn a_resume_cursor_from_the_future_gets_a_fresh_sync() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]).await;
    let update = |client: u64, key: &str| {
        let doc = Doc::with_client_id(client);
        doc.get_or_insert_map("m")
            .insert(&mut doc.transact_mut(), key, 1);
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default())
    };
    let (status, _) = post(server.addr, "/v1/docs/s/f/updates", &update(1, "a")).await;
    assert_eq!(status, 200);
    let future = "99999999999999-0";
    let mut events = EventStream::open(server.addr, "/v1/docs/s/f/events", Some(future)).await;
    assert_eq!(events.next().await.event, "sync");
    let (status, _) = post(server.addr, "/v1/docs/s/f/updates", &update(2, "b")).await;
    assert_eq!(status, 200);
    assert_eq!(events.next().await.event, "update");
}
