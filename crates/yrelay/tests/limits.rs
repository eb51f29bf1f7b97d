//! Every resource bounded per connection and per document (issue 13): what
//! a hostile or broken client holds is released, counted by the server's own
//! gauges, never by timing.

mod common;

use common::{TestServer, connect};
use tokio::io::AsyncWriteExt;
use yrs::Text;

/// A TCP connection with a tiny receive window that sends `request` and
/// then never reads.
async fn non_reader(server: &TestServer, request: String) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(server.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

fn ws_upgrade(server: &TestServer, doc: &str) -> String {
    format!(
        "GET /v1/ws/{doc} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    )
}

fn sse_request(server: &TestServer, doc: &str) -> String {
    format!(
        "GET /v1/docs/{doc}/events HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
        server.addr
    )
}

/// Readers that stop reading (WebSocket and event stream) are closed once
/// a write to them makes no progress for the write timeout, and everything
/// they held is released: rounds of them leave no connection and, once the
/// writer leaves too, no document loaded. (They used to stay connected for
/// good, each holding a replica of the document.)
#[tokio::test]
async fn readers_that_stop_reading_are_closed_and_release_everything() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--write-timeout-secs",
        "1",
        "--queue-bound",
        "8",
        "--idle-unload-secs",
        "0.2",
    ];
    let server = TestServer::start(dir.path(), &args).await;
    // More than the kernel buffers of both ends hold (up to 4 MiB each),
    // so writes to the non-readers block.
    let chunk = "x".repeat(128 * 1024);
    for round in 0..3 {
        let doc = format!("s/stuck-{round}");
        let writer = connect(&server, &doc).await;
        let ws = non_reader(&server, ws_upgrade(&server, &doc)).await;
        let sse = non_reader(&server, sse_request(&server, &doc)).await;
        server
            .wait_for_metric("yrelay_connections{transport=\"sse\"}", |v| v == 1.0)
            .await;
        server
            .wait_for_metric("yrelay_connections{transport=\"websocket\"}", |v| v == 2.0)
            .await;
        let text = writer.doc().get_or_insert_text("text");
        for _ in 0..96 {
            writer.edit(|txn| text.push(txn, &chunk));
        }
        // Both non-readers are gone; the writer stays.
        server
            .wait_for_metric("yrelay_connections{transport=\"websocket\"}", |v| v == 1.0)
            .await;
        server
            .wait_for_metric("yrelay_connections{transport=\"sse\"}", |v| v == 0.0)
            .await;
        writer.close().await;
        server
            .wait_for_metric("yrelay_connections{transport=\"websocket\"}", |v| v == 0.0)
            .await;
        server
            .wait_for_metric("yrelay_docs_loaded", |v| v == 0.0)
            .await;
        drop((ws, sse));
    }
}

/// One frame of many SyncStep1 messages (each answered with a diff of the
/// whole document) is cut off at the sync rate: 1008, and at most a burst's
/// worth of answers (it made the server produce 2.2 GB from one 80 KB frame).
#[tokio::test]
async fn sync_requests_are_rate_limited() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use yrelay_protocol::sync;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &["--max-syncs-per-sec", "10"]).await;
    let writer = connect(&server, "s/big").await;
    let text = writer.doc().get_or_insert_text("text");
    writer.edit(|txn| text.push(txn, &"y".repeat(100_000)));
    drop(writer);

    let (mut socket, _) = tokio_tungstenite::connect_async(server.ws_url("s/big"))
        .await
        .unwrap();
    let step1 = sync::encode_sync_step1(&[0]);
    let frame: Vec<u8> = std::iter::repeat_n(step1, 2000).flatten().collect();
    socket.send(Message::Binary(frame.into())).await.unwrap();
    let mut answers = 0;
    let close = tokio::time::timeout(common::WAIT, async {
        while let Some(Ok(message)) = socket.next().await {
            match message {
                Message::Binary(data) if data.starts_with(&[0, 1]) => answers += 1,
                Message::Close(frame) => return frame,
                _ => {}
            }
        }
        None
    })
    .await
    .expect("closed in time")
    .expect("a close frame");
    assert_eq!(u16::from(close.code), 1008, "{close:?}");
    assert!(close.reason.contains("sync requests"), "{close:?}");
    assert!(
        answers <= 20,
        "{answers} answers: a burst is twice the rate"
    );
    assert!(
        server
            .metric("yrelay_rejected_messages_total{reason=\"sync_rate_limited\"}")
            .await
            >= 1.0
    );
}

/// An awareness update setting each of `ids` (clock 1) to a small state
/// naming `by`.
fn awareness(ids: impl IntoIterator<Item = u64>, by: &str) -> Vec<u8> {
    use yrs::sync::awareness::{AwarenessUpdate, AwarenessUpdateEntry};
    use yrs::updates::encoder::Encode;
    let clients = ids
        .into_iter()
        .map(|id| {
            let entry = AwarenessUpdateEntry {
                clock: 1,
                json: std::sync::Arc::from(format!("{{\"user\":{id},\"by\":\"{by}\"}}")),
            };
            (yrs::ClientID::new(id), entry)
        })
        .collect();
    AwarenessUpdate { clients }.encode_v1()
}

/// Awareness client ids belong to the connection that introduced them (no
/// other may overwrite or remove them), a connection introduces a few at
/// most, a document holds a bounded number (any connection could add states
/// without end, and overwrite anyone's presence).
#[tokio::test]
async fn awareness_is_owned_and_bounded() {
    use common::sse::post;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use yrelay_protocol::sync;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]).await;
    let send = |ids: Vec<u64>, by: &str| {
        Message::Binary(sync::encode_awareness(&awareness(ids, by)).into())
    };
    let (mut ann, _) = tokio_tungstenite::connect_async(server.ws_url("s/here"))
        .await
        .unwrap();
    ann.send(send(vec![100], "ann")).await.unwrap();
    // Once the server relays it back (awareness goes to its sender too), the
    // id is recorded as Ann's.
    tokio::time::timeout(common::WAIT, async {
        while let Some(Ok(message)) = ann.next().await {
            if let Message::Binary(data) = message
                && data.first() == Some(&1)
            {
                return;
            }
        }
    })
    .await
    .expect("ann's presence relayed");
    let (mut bob, _) = tokio_tungstenite::connect_async(server.ws_url("s/here"))
        .await
        .unwrap();
    // Refused updates are dropped and counted; the connection stays (a
    // reconnecting client reuses its id while its old connection lingers).
    let refusals = "yrelay_rejected_messages_total{reason=\"awareness\"}";
    bob.send(send(vec![100], "bob")).await.unwrap();
    server.wait_for_metric(refusals, |v| v >= 1.0).await;
    bob.send(send((200..209).collect(), "bob")).await.unwrap();
    server.wait_for_metric(refusals, |v| v >= 2.0).await;
    // Ann still owns 100: what a newcomer is told is hers.
    let newcomer = connect(&server, "s/here").await;
    newcomer
        .wait_for("ann's state", common::WAIT, |c| {
            c.peers()
                .iter()
                .any(|(id, state)| *id == 100 && state.contains("ann"))
        })
        .await
        .unwrap();
    assert!(
        !newcomer
            .peers()
            .iter()
            .any(|(id, _)| (200..209).contains(id))
    );

    // POSTs (8 ids each) until the document holds as many states as it may.
    let mut refused = None;
    for n in 0..200u64 {
        let (status, body) = post(
            server.addr,
            "/v1/docs/s/here/awareness",
            &awareness((0..8).map(|i| 1000 + 8 * n + i), "post"),
        )
        .await;
        if status != 204 {
            refused = Some((n, status, body));
            break;
        }
    }
    // Ann's state and 124 posts of 8 are 993 states: the 125th post would
    // pass 1,000 (a few more may pass while the log delivers the last ones
    // to the replica that counts them).
    let (n, status, body) = refused.expect("a bound is reached");
    assert_eq!(status, 429, "{body}");
    assert!((124..=140).contains(&n), "refused after {n} posts of 8");
    assert!(
        server
            .metric("yrelay_rejected_messages_total{reason=\"awareness\"}")
            .await
            >= 3.0
    );
}

/// Connections that send nothing, stop halfway through a request's headers
/// or body, or idle after a request, are closed after `--http-timeout-secs`
/// (they held a descriptor each for good).
#[tokio::test]
async fn silent_and_half_sent_connections_are_closed() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &["--http-timeout-secs", "1"]).await;
    let silent = String::new();
    let half_head = "GET /healthz HTTP/1.1\r\nHost: x\r\n".to_string();
    let half_body =
        "POST /v1/docs/s/d/updates HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789"
            .to_string();
    let idle = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".to_string();
    for (what, request) in [
        ("silent", silent),
        ("half a head", half_head),
        ("half a body", half_body),
        ("idle", idle),
    ] {
        let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let closed = tokio::time::timeout(common::WAIT, async {
            let mut buf = vec![0u8; 4096];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue, // an answer (the idle one's, or a 4xx): then the close
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "{what}: the server closes the connection");
    }
    assert_eq!(server.get("/healthz").await.0, 200);
}

/// A Socket.IO socket that stops reading is closed by the write timeout like
/// any other connection (it used to be "disconnected to resync" hundreds of
/// times while it stayed connected with its packet buffer full).
#[tokio::test]
async fn a_socketio_socket_that_stops_reading_is_closed() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &["--write-timeout-secs", "1"]).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", server.addr);
    let (mut sio, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    let space = r#""spaceType":"workspace","spaceId":"s""#;
    let mut step = 0;
    // Open, connect, join, load the document; then read nothing more.
    while step < 4 {
        let Some(Ok(Message::Text(text))) = sio.next().await else {
            panic!("the handshake ended");
        };
        let reply = match (step, text.as_str()) {
            (0, t) if t.starts_with('0') => "40".to_string(),
            (1, t) if t.starts_with("40") => {
                format!(r#"420["space:join",{{{space},"clientVersion":"0.26.0"}}]"#)
            }
            (2, t) if t.starts_with("430") => {
                format!(r#"421["space:load-doc",{{{space},"docId":"d"}}]"#)
            }
            (3, t) if t.starts_with("431") => break,
            _ => continue,
        };
        sio.send(Message::Text(reply.into())).await.unwrap();
        step += 1;
    }
    server
        .wait_for_metric(
            "yrelay_connections{transport=\"socketio-websocket\"}",
            |v| v == 1.0,
        )
        .await;
    let writer = connect(&server, "s/d").await;
    let text = writer.doc().get_or_insert_text("text");
    let chunk = "x".repeat(128 * 1024);
    for _ in 0..96 {
        writer.edit(|txn| text.push(txn, &chunk));
    }
    // Its writes stall; engine.io ends the socket at its next heartbeat
    // (every 25 s), so this waits longer than the kit's usual 20 s.
    let gauge = "yrelay_connections{transport=\"socketio-websocket\"}";
    tokio::time::timeout(std::time::Duration::from_secs(90), async {
        while server.metric(gauge).await != 0.0 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the socket is closed");
    drop(sio);
}

/// The HTTP write endpoints are rate-limited per caller (token subject, or
/// address without a token): one caller flooding `POST .../updates` gets
/// 429 while another goes on; awareness posted over HTTP belongs to its
/// caller (it belonged to no one: any caller could overwrite anyone's); the
/// awareness bounds are settings. (`POST .../updates` had no limit at all.)
#[tokio::test]
async fn http_calls_are_limited_per_caller_and_presence_is_the_callers() {
    use yrelay::auth::{Grant, Mode, SigningKey, mint};
    let secret = "limits-secret";
    let token = |sub: &str| {
        let grant = Grant {
            space: "s".into(),
            doc: "*".into(),
            mode: Mode::Rw,
        };
        let token = mint(&SigningKey::Secret(secret.into()), sub, vec![grant], 600).unwrap();
        format!("Bearer {token}")
    };
    let (ann, bob, cy) = (token("ann"), token("bob"), token("cy"));
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--jwt-secret",
        secret,
        "--max-posts-per-sec",
        "1",
        "--max-awareness-clients",
        "2",
    ];
    let server = TestServer::start(dir.path(), &args).await;
    let post = |who: &str, path: &str, body: Vec<u8>| {
        let (who, path) = (who.to_owned(), path.to_owned());
        let addr = server.addr;
        async move { common::http_call(addr, "POST", &path, &[("Authorization", &who)], &body).await }
    };
    let update = |s: &str| {
        let doc = yrs::Doc::new();
        let text = doc.get_or_insert_text("text");
        let mut txn = yrs::Transact::transact_mut(&doc);
        text.push(&mut txn, s);
        txn.encode_update_v1()
    };
    // 1 call a second, bursts of 2: ten at once are over it.
    let mut statuses = Vec::new();
    for i in 0..10 {
        let (status, body) = post(&ann, "/v1/docs/s/flood/updates", update(&i.to_string())).await;
        assert!(status == 200 || status == 429, "{status} {body}");
        if status == 429 {
            assert!(body.contains("TOO_MANY_REQUESTS"), "{body}");
        }
        statuses.push(status);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    let (status, body) = post(&bob, "/v1/docs/s/flood/updates", update("bob")).await;
    assert_eq!(status, 200, "another caller goes on: {body}");
    assert!(
        server
            .metric("yrelay_rejected_messages_total{reason=\"posts_rate_limited\"}")
            .await
            >= 1.0
    );

    // Bob's presence (client 7) is his: Ann cannot overwrite it.
    let (status, body) = post(&bob, "/v1/docs/s/here/awareness", awareness([7], "bob")).await;
    assert_eq!(status, 204, "{body}");
    // Until the log delivers Bob's state to the replica, the id is nobody's
    // yet; Ann's rate allows a try a second.
    let tries = async {
        loop {
            let (status, body) =
                post(&ann, "/v1/docs/s/here/awareness", awareness([7], "ann")).await;
            match status {
                204 | 429 => tokio::time::sleep(std::time::Duration::from_millis(300)).await,
                _ => break (status, body),
            }
        }
    };
    let (status, body) = tokio::time::timeout(common::WAIT, tries).await.unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("AWARENESS_NOT_YOURS"), "{body}");
    // --max-awareness-clients 2: three new ids in one update are refused.
    let (status, body) = post(
        &cy,
        "/v1/docs/s/other/awareness",
        awareness([1, 2, 3], "cy"),
    )
    .await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("at most 2 awareness clients"), "{body}");
}

/// Past `--max-connections`, a new Socket.IO (engine.io) session is refused
/// at its handshake, before the server keeps anything for it; it used to
/// be opened and only its Socket.IO connect refused.
#[tokio::test]
async fn socketio_handshakes_are_refused_when_the_instance_is_full() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &["--max-connections", "1"]).await;
    let handshake = "/socket.io/?EIO=4&transport=polling";
    let (status, body) = server.get(handshake).await;
    assert_eq!(status, 200, "{body}");
    let _only = connect(&server, "s/full").await;
    let (status, body) = server.get(handshake).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("TOO_MANY_CONNECTIONS"), "{body}");
}
