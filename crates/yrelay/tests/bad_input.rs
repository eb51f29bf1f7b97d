//! Bad input never poisons: every kind is refused with a clear close code or
//! HTTP status, counted, never stored or relayed, and other connections of
//! the same document carry on.

mod common;

use common::{TestServer, WAIT, connect, text};
use yrelay_protocol::sync;
use yrs::Text;

#[tokio::test]
async fn bad_addresses_and_plain_http_get_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]).await;
    let (status, body) = server.get("/v1/ws/bad%20space/doc").await;
    assert_eq!(status, 400);
    assert!(body.contains("\"BAD_DOC_ID\""), "{body}");
    let (status, body) = server.get(&format!("/v1/ws/s/{}", "x".repeat(256))).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = server.get("/v1/ws/s/doc").await;
    assert_eq!(status, 426, "{body}");
    assert!(body.contains("WEBSOCKET_REQUIRED"), "{body}");
    assert_eq!(
        server
            .metric("yrelay_rejected_messages_total{reason=\"bad_doc_id\"}")
            .await,
        2.0
    );
}

#[tokio::test]
async fn each_bad_frame_closes_only_its_own_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &["--max-message-size", "4096"]).await;
    let good = connect(&server, "s/target").await;
    let t = good.doc().get_or_insert_text("text");
    good.edit(|txn| t.push(txn, "good "));

    let binary = |frame: Vec<u8>| Some(frame);
    let cases = [
        (
            "malformed frame",
            binary(vec![0, 2, 50, 1]),
            1007,
            "malformed",
        ),
        ("empty frame", binary(vec![]), 1007, "malformed"),
        (
            "unknown message type",
            binary(vec![9, 0]),
            1003,
            "unknown_message",
        ),
        (
            "unknown sync type",
            binary(vec![0, 7, 0]),
            1003,
            "unknown_message",
        ),
        (
            "undecodable update",
            binary(sync::encode_update(&[5, 200, 1, 7])),
            1007,
            "bad_update",
        ),
        (
            "bad awareness",
            binary(sync::encode_awareness(&[1, 7, 1, 3, b'{', b'x', b'y'])),
            1007,
            "malformed",
        ),
        (
            "oversized",
            binary(sync::encode_update(&[0u8; 5000])),
            1009,
            "too_big",
        ),
        ("text frame", None, 1003, "text_frame"),
    ];
    for (name, frame, code, reason) in cases {
        let bad = connect(&server, "s/target").await;
        match frame {
            Some(frame) => bad.send_raw(frame),
            None => bad.send_text("hello"),
        }
        let close = bad.closed(WAIT).await.unwrap();
        assert_eq!(close.code, Some(code), "{name}: {close:?}");
        assert!(!close.reason.is_empty(), "{name}: a reason is given");
        let sample = format!("yrelay_rejected_messages_total{{reason=\"{reason}\"}}");
        assert!(
            server.metric(&sample).await >= 1.0,
            "{name} counted as {reason}"
        );
    }

    // The good connection is unaffected and still syncs with newcomers.
    good.edit(|txn| t.push(txn, "still-here"));
    let fresh = connect(&server, "s/target").await;
    fresh
        .wait_for("good edits", WAIT, |c| text(c) == "good still-here")
        .await
        .unwrap();
    let (status, _) = server.get("/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_slow_consumer_is_closed_with_1013_and_can_resync() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &["--queue-bound", "4"]).await;
    let writer = connect(&server, "s/firehose").await;

    // A reader with a tiny receive window that does not read.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let (mut reader, _) = tokio_tungstenite::client_async(server.ws_url("s/firehose"), stream)
        .await
        .unwrap();

    let t = writer.doc().get_or_insert_text("text");
    let chunk = "x".repeat(60 * 1024);
    for _ in 0..200 {
        writer.edit(|txn| t.push(txn, &chunk));
    }
    // Wait until the server has accepted them all (a reader would itself be
    // too slow for a queue of 4).
    server
        .wait_for_metric("yrelay_updates_total{transport=\"websocket\"}", |v| {
            v >= 200.0
        })
        .await;

    // Now read: whatever was queued, then a 1013 close.
    assert_eq!(common::close_code(&mut reader).await, Some(1013));
    assert!(server.metric("yrelay_slow_consumers_closed_total").await >= 1.0);

    // Reconnecting resyncs everything. The last accepted updates may still
    // be on their way to the document's replica, and to a client that joins
    // meanwhile; with a queue of 4 that client can itself be closed with
    // 1013, and then does what a y-websocket client does: reconnects.
    let full = 200 * chunk.len();
    for attempt in 1.. {
        let url = server.ws_url("s/firehose");
        let again = yrelay_client::WsClient::connect(&url, yrs::Doc::new())
            .await
            .unwrap();
        let all = |c: &yrelay_client::WsClient| text(c).len() == full;
        tokio::select! {
            done = again.wait_for("all 200 chunks", WAIT, all) => {
                done.unwrap();
                break;
            }
            close = again.closed(WAIT) => {
                let close = close.unwrap();
                assert_eq!(close.code, Some(1013), "{close:?}");
                assert!(attempt < 5, "closed as a slow consumer {attempt} times");
            }
        }
    }
}
