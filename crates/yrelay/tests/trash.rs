//! The trash: a deleted document is kept with its history, not served,
//! listed or written, until it is undeleted or purged (by hand or past its
//! retention).

mod common;

use common::doc_api::*;
use common::{TestServer, WAIT};
use serde_json::{Value, json};
use yrelay::auth::Mode;
use yrelay::clock::now_ms;
use yrs::{Map, WriteTxn};

/// Deleting moves a document to the trash: not served, listed or written,
/// but kept with its history until it is undeleted or purged.
#[tokio::test]
async fn the_trash_keeps_a_deleted_document_until_undeleted_or_purged() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &auth_args()).await;
    let ann = token("ann", Mode::Rw);
    let a = client(&server, &ann).await;
    a.edit(|txn| {
        txn.get_or_insert_map("settings")
            .insert(txn, "theme", "dark");
    });
    let content = json_of(&a);
    server_shows(&server, &ann, &content).await;
    let versions = format!("/v1/docs/{DOC}/versions");
    let (status, _, _) = call(&server, "POST", &versions, &ann, json!({"label": "kept"})).await;
    assert_eq!(status, 201);
    let kept_id = list_first_id(&server, &ann).await;

    let doc = format!("/v1/docs/{DOC}");
    let (status, _, _) = call(&server, "DELETE", &doc, &ann, Value::Null).await;
    assert_eq!(status, 204);
    let closed = a.closed(WAIT).await.unwrap();
    assert_eq!(closed.code, Some(4410), "{closed:?}");
    let kept = kept_id;
    let now = now_ms();
    for path in [
        doc.clone(),
        format!("{doc}/json"),
        versions.clone(),
        format!("{doc}/json?at={now}"),
        format!("{doc}/versions/{kept}/json"),
        format!("{doc}/changes"),
    ] {
        let (status, _, body) = call(&server, "GET", &path, &ann, Value::Null).await;
        assert_eq!(
            (status, error_code(&body)),
            (404, "DOC_NOT_FOUND"),
            "{path}"
        );
    }
    let (_, _, listed) = call(&server, "GET", "/v1/spaces/acme/docs", &ann, Value::Null).await;
    assert_eq!(listed, json!([]));
    let (_, _, trash) = call(&server, "GET", "/v1/spaces/acme/trash", &ann, Value::Null).await;
    assert_eq!(trash[0]["doc"], "plan", "{trash}");
    assert!(trash[0]["deletedAt"].as_i64().is_some(), "{trash}");
    // Nothing writes to it, nothing restores it.
    let b = client(&server, &ann).await;
    b.edit(|txn| {
        txn.get_or_insert_map("settings")
            .insert(txn, "theme", "new");
    });
    let refused = b.closed(WAIT).await.unwrap();
    assert_eq!(refused.code, Some(4410), "{refused:?}");
    let restore = format!("{doc}/restore");
    let (status, _, body) = call(&server, "POST", &restore, &ann, json!({"at": now_ms()})).await;
    assert_eq!((status, error_code(&body)), (410, "DOC_DELETED"), "{body}");
    let (status, _, _) = call(&server, "DELETE", &doc, &ann, Value::Null).await;
    assert_eq!(status, 404, "deleted once");

    // Undeleted: served again with its history, and written.
    let undelete = format!("{doc}/undelete");
    let (status, _, meta) = call(&server, "POST", &undelete, &ann, Value::Null).await;
    assert_eq!(status, 200, "{meta}");
    assert_eq!(meta["doc"], "plan", "{meta}");
    server_shows(&server, &ann, &content).await;
    let (_, _, list) = call(&server, "GET", &versions, &ann, Value::Null).await;
    assert_eq!(list[0]["label"], "kept", "{list}");
    let c = client(&server, &ann).await;
    assert_eq!(json_of(&c), content);
    c.edit(|txn| {
        txn.get_or_insert_map("settings")
            .insert(txn, "theme", "back");
    });
    let back = json_of(&c);
    server_shows(&server, &ann, &back).await;

    // Purged: gone for good.
    let (status, _, _) = call(&server, "DELETE", &doc, &ann, Value::Null).await;
    assert_eq!(status, 204);
    let (status, _, _) = call(
        &server,
        "DELETE",
        &format!("{doc}?purge=true"),
        &ann,
        Value::Null,
    )
    .await;
    assert_eq!(status, 204);
    let (_, _, trash) = call(&server, "GET", "/v1/spaces/acme/trash", &ann, Value::Null).await;
    assert_eq!(trash, json!([]));
    let (status, _, body) = call(&server, "POST", &undelete, &ann, Value::Null).await;
    assert_eq!((status, error_code(&body)), (404, "NOT_IN_TRASH"), "{body}");
}

/// Past `--trash-retention-secs` a document in the trash is purged.
#[tokio::test]
async fn the_trash_is_emptied_past_its_retention() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = auth_args();
    args.extend(["--trash-retention-secs", "0.2"]);
    let mut server = TestServer::start(dir.path(), &args).await;
    let ann = token("ann", Mode::Rw);
    let a = client(&server, &ann).await;
    a.edit(|txn| {
        txn.get_or_insert_map("settings")
            .insert(txn, "theme", "dark");
    });
    server_shows(&server, &ann, &json_of(&a)).await;
    let doc = format!("/v1/docs/{DOC}");
    let (status, _, _) = call(&server, "DELETE", &doc, &ann, Value::Null).await;
    assert_eq!(status, 204);
    server.wait_for_log("document purged from the trash").await;
    let (_, _, trash) = call(&server, "GET", "/v1/spaces/acme/trash", &ann, Value::Null).await;
    assert_eq!(trash, json!([]));
    let (status, _, body) = call(
        &server,
        "POST",
        &format!("{doc}/undelete"),
        &ann,
        Value::Null,
    )
    .await;
    assert_eq!((status, error_code(&body)), (404, "NOT_IN_TRASH"), "{body}");
}
