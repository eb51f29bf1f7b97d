//! Hardening against unlucky and hostile clients (issue 12): nothing received
//! is lost, no input crashes the instance or poisons a document.

mod common;

use common::{TestServer, WAIT};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use yrelay_protocol::sync;
use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact};

/// A text update of a fresh client writing `content`.
fn text_update(client: u64, content: &str) -> Vec<u8> {
    let doc = Doc::with_client_id(client);
    let text = doc.get_or_insert_text("text");
    text.insert(&mut doc.transact_mut(), 0, content);
    doc.transact()
        .encode_state_as_update_v1(&StateVector::default())
}

/// The document's text as the server serves it to a new reader.
async fn served_text(server: &TestServer, doc: &str) -> String {
    let body = server.get_bytes(&format!("/v1/docs/{doc}/update")).await;
    let replica = Doc::new();
    yrelay_protocol::update::apply_update(&replica, &body).unwrap();
    let text = replica.get_or_insert_text("text");
    text.get_string(&replica.transact())
}

/// An update frame followed at once by a close frame (a closed tab): the
/// update is durable by the time the server answers the close, and the
/// answer is a close frame, not a torn connection.
#[tokio::test]
async fn an_update_sent_just_before_a_close_is_kept_and_the_close_answered() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]).await;
    for round in 0..10u64 {
        let doc = format!("s/closing-{round}");
        let (mut socket, _) = tokio_tungstenite::connect_async(server.ws_url(&doc))
            .await
            .unwrap();
        let word = format!("kept-{round}");
        socket
            .send(Message::Binary(
                sync::encode_update(&text_update(round + 1, &word)).into(),
            ))
            .await
            .unwrap();
        socket
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "tab closed".into(),
            })))
            .await
            .unwrap();
        let answer = common::close_code(&mut socket).await;
        assert!(answer.is_some(), "round {round}: the close is answered");
        assert_eq!(served_text(&server, &doc).await, word, "round {round}");
    }
}

/// `depth` arrays nested in root array "a", one update per level.
fn nested_array_updates(depth: usize) -> Vec<Vec<u8>> {
    use yrs::{Array, ArrayPrelim, ArrayRef};
    let doc = Doc::with_client_id(1);
    let mut array: ArrayRef = doc.get_or_insert_array("a");
    let mut updates = Vec::new();
    for _ in 0..depth {
        let before = doc.transact().state_vector();
        array = array.push_back(&mut doc.transact_mut(), ArrayPrelim::default());
        updates.push(doc.transact().encode_diff_v1(&before));
    }
    updates
}

/// A delete set alone: client 1's first item (the outermost array).
const DELETE_OUTER: [u8; 6] = [0, 1, 1, 1, 0, 1];

/// Nesting is built over many updates, so no single one shows it: each is
/// checked against the document. Past the limit the update is refused
/// (400, 1007 on WebSocket) and the instance, the document and its other
/// clients carry on; deleting the outer array of what was accepted is fine.
#[tokio::test]
async fn types_nested_past_the_limit_are_refused_and_the_instance_survives() {
    use common::sse::post;
    let limit = yrelay_protocol::nesting::MAX_TYPE_DEPTH as usize;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]).await;
    let updates = nested_array_updates(limit + 1);
    for (n, update) in updates[..limit].iter().enumerate() {
        let (status, body) = post(server.addr, "/v1/docs/s/deep/updates", update).await;
        assert_eq!(status, 200, "level {}: {body}", n + 1);
    }
    let (status, body) = post(server.addr, "/v1/docs/s/deep/updates", &updates[limit]).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "BAD_UPDATE", "{body}");

    // The same over WebSocket: 1007, and the refused update is nowhere.
    let (mut socket, _) = tokio_tungstenite::connect_async(server.ws_url("s/deep"))
        .await
        .unwrap();
    let frame = sync::encode_update(&updates[limit]);
    socket.send(Message::Binary(frame.into())).await.unwrap();
    assert_eq!(common::close_code(&mut socket).await, Some(1007));
    let served = server.get_bytes("/v1/docs/s/deep/update").await;
    let replica = Doc::new();
    yrelay_protocol::update::apply_update(&replica, &served).unwrap();
    let sv = replica.transact().state_vector();
    assert_eq!(
        sv.get(&yrs::ClientID::new(1)),
        limit as u32,
        "the refused level is not served"
    );
    assert!(
        server
            .metric("yrelay_rejected_messages_total{reason=\"too_deep\"}")
            .await
            >= 2.0
    );

    // Deleting the outermost of the accepted levels is fine.
    let (status, body) = post(server.addr, "/v1/docs/s/deep/updates", &DELETE_OUTER).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = server.get("/v1/docs/s/deep/json").await;
    assert_eq!(status, 200);
    assert_eq!(server.get("/healthz").await.0, 200);
}

/// Documents stored before nesting was bounded (12,000 levels; one with the
/// deletion of the outermost, which yrs carries out one stack frame per
/// level) are loaded, served and compacted without bringing the instance
/// down, and counted; a JSON export refuses to walk that deep.
#[tokio::test]
async fn a_stored_document_nested_past_the_limit_is_served_and_compacted() {
    use std::sync::Arc;
    use yrelay::store::NewUpdate;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("yrelay.db").display());
    {
        let store = yrelay::store::open(&url).await.unwrap();
        let updates = nested_array_updates(12_000);
        let whole =
            yrelay_protocol::update::merge_updates(updates.iter().map(Vec::as_slice)).unwrap();
        let stored = [
            ("legacy", whole.clone()),
            ("legacy", DELETE_OUTER.to_vec()),
            ("legacy-kept", whole),
        ];
        for (doc, data) in stored {
            let new = NewUpdate {
                addr: yrelay_protocol::DocAddress::parse("s", doc).unwrap(),
                data: Arc::from(data),
                log_cursor: None,
                timestamp_ms: 1,
                editor: None,
            };
            store.append(&[new]).await.unwrap();
        }
    }
    let server = TestServer::start(dir.path(), &["--compact-idle-secs", "0.2"]).await;
    let served = server.get_bytes("/v1/docs/s/legacy/update").await;
    assert!(!served.is_empty());
    // Too deep for a JSON export, which says so rather than walking it.
    let (status, body) = server.get("/v1/docs/s/legacy-kept/json").await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("DOC_TOO_DEEP"), "{body}");
    server
        .wait_for_metric("yrelay_compactions_total", |v| v >= 1.0)
        .await;
    assert!(server.metric("yrelay_deep_updates_applied_total").await >= 1.0);
    assert_eq!(server.get("/healthz").await.0, 200);
}

/// A token for `s/deep`, read-only or not.
fn token(secret: &str, read_only: bool) -> String {
    use yrelay::auth::{Grant, Mode, SigningKey, mint};
    let grant = Grant {
        space: "s".into(),
        doc: "deep".into(),
        mode: if read_only { Mode::Ro } else { Mode::Rw },
    };
    mint(&SigningKey::Secret(secret.into()), "ann", vec![grant], 600).unwrap()
}

/// An `Any` nested 7,000 deep (14 KB) used to overflow the stack while it
/// was checked, even from a read-only connection: now a reader's update is
/// refused before it is decoded, and a writer's with 1007.
#[tokio::test]
async fn a_deeply_nested_value_is_refused_on_every_transport() {
    let secret = "s3cret-for-tests-only-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &["--jwt-secret", secret]).await;
    let mut deep = vec![1, 1, 1, 0, 8, 1, 1, b'a', 1];
    for _ in 0..7000 {
        deep.extend_from_slice(&[117, 1]);
    }
    deep.extend_from_slice(&[126, 0]);
    for (mode, expect) in [("--read-only", None), ("", Some(1007u16))] {
        let token = token(secret, mode == "--read-only");
        let url = format!("{}?token={token}", server.ws_url("s/deep"));
        let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        socket
            .send(Message::Binary(sync::encode_update(&deep).into()))
            .await
            .unwrap();
        // A reader is told "permission denied" and stays connected; a writer
        // is closed with 1007.
        let outcome = tokio::time::timeout(WAIT, async {
            while let Some(Ok(frame)) = socket.next().await {
                match frame {
                    Message::Close(frame) => return Some(frame.map(|f| u16::from(f.code))),
                    Message::Binary(data) if data.first() == Some(&2) => return None,
                    _ => continue,
                }
            }
            Some(None)
        })
        .await
        .expect("an answer in time");
        assert_eq!(outcome.map(Option::unwrap_or_default), expect, "{mode}");
    }
    let token = token(secret, false);
    let (status, body) = common::http_call(
        server.addr,
        "POST",
        "/v1/docs/s/deep/updates",
        &[("Authorization", &format!("Bearer {token}"))],
        &deep,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("BAD_UPDATE"), "{body}");
    assert_eq!(server.get("/healthz").await.0, 200);
}

/// A small filesystem of its own (tmpfs), unmounted when dropped; `None`
/// where this process may not mount (not root).
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(bytes: usize) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then_some(Self { dir })
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Fills what is left with a file (until the filesystem refuses more).
    fn fill(&self) {
        use std::io::Write;
        let mut filler = std::fs::File::create(self.path().join("filler")).unwrap();
        let chunk = vec![0u8; 4096];
        while filler.write_all(&chunk).is_ok() {}
        let _ = filler.sync_all();
    }

    fn free(&self) {
        std::fs::remove_file(self.path().join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// An update setting key `k{n}` of root map "keys" (client n + 1).
fn key_update(n: u64) -> Vec<u8> {
    use yrs::Map;
    let doc = Doc::with_client_id(n + 1);
    let keys = doc.get_or_insert_map("keys");
    keys.insert(&mut doc.transact_mut(), format!("k{n}"), n as i64);
    doc.transact()
        .encode_state_as_update_v1(&StateVector::default())
}

/// SQLite on a full disk: every update is either acknowledged and kept
/// (also across a restart), or refused with 503; `/readyz` says the store is
/// unavailable until a commit succeeds again; once space is back, writes
/// resume by themselves. (A failed COMMIT used to leave its pooled
/// connection inside the transaction: later writes on it were answered 200
/// and never reached the file.)
#[tokio::test]
async fn a_full_disk_never_loses_an_acknowledged_update() {
    use common::sse::post;
    let Some(disk) = SmallDisk::mount(2 << 20) else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let mut server = TestServer::start(disk.path(), &[]).await;
    let mut acked = Vec::new();
    let mut refused = 0;
    let mut next = 0u64;
    let write = async |server: &TestServer, next: &mut u64| {
        let n = *next;
        *next += 1;
        let (status, body) = post(server.addr, "/v1/docs/s/full/updates", &key_update(n)).await;
        match status {
            200 => Some(n),
            503 => None,
            other => panic!("update {n}: {other} {body}"),
        }
    };
    for _ in 0..5 {
        acked.extend(write(&server, &mut next).await);
    }
    assert_eq!(acked.len(), 5, "room for the first updates");
    disk.fill();
    for _ in 0..60 {
        match write(&server, &mut next).await {
            Some(n) => acked.push(n),
            None => refused += 1,
        }
    }
    assert!(refused > 0, "a full disk refuses updates");
    let (status, body) = server.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("STORE_UNAVAILABLE"), "{body}");

    disk.free();
    let resumed = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(n) = write(&server, &mut next).await {
                return n;
            }
        }
    })
    .await
    .expect("writes resume once there is space");
    acked.push(resumed);
    for _ in 0..20 {
        acked.push(write(&server, &mut next).await.expect("room again"));
    }
    assert_eq!(server.get("/readyz").await.0, 200);

    server.stop().await;
    server.restart().await;
    let body = server.get_bytes("/v1/docs/s/full/json").await;
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let missing: Vec<_> = acked
        .iter()
        .filter(|n| json["keys"].get(format!("k{n}")).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged but lost: {missing:?} of {}",
        acked.len()
    );
}

/// After a `DELETE`, a client still writing from its old state builds on
/// content the document no longer holds: refused as deleted (410, 4410),
/// also after a restart; a fresh client may create the document anew.
#[tokio::test]
async fn updates_building_on_a_deleted_document_are_refused() {
    use common::sse::post;
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(dir.path(), &[]).await;
    let old = Doc::with_client_id(7);
    let text = old.get_or_insert_text("text");
    let edit = |content: &str| {
        let before = old.transact().state_vector();
        let len = text.len(&old.transact());
        text.insert(&mut old.transact_mut(), len, content);
        old.transact().encode_diff_v1(&before)
    };
    let (status, body) = post(server.addr, "/v1/docs/s/gone/updates", &edit("hello")).await;
    assert_eq!(status, 200, "{body}");
    let purge = "/v1/docs/s/gone?purge=true";
    let (status, _) = common::http_request(server.addr, "DELETE", purge, &[]).await;
    assert_eq!(status, 204);

    let stale = edit(" again");
    let (status, body) = post(server.addr, "/v1/docs/s/gone/updates", &stale).await;
    assert_eq!(status, 410, "{body}");
    assert_eq!(body["error"]["code"], "DOC_DELETED", "{body}");
    let (mut socket, _) = tokio_tungstenite::connect_async(server.ws_url("s/gone"))
        .await
        .unwrap();
    socket
        .send(Message::Binary(sync::encode_update(&stale).into()))
        .await
        .unwrap();
    assert_eq!(common::close_code(&mut socket).await, Some(4410));

    // A fresh client creates the document anew; the stale one stays refused.
    let (status, body) = post(
        server.addr,
        "/v1/docs/s/gone/updates",
        &text_update(8, "new"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    server.restart().await;
    let (status, body) = post(server.addr, "/v1/docs/s/gone/updates", &stale).await;
    assert_eq!(status, 410, "{body}");
    assert_eq!(served_text(&server, "s/gone").await, "new");
}
