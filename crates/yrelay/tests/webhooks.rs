//! Webhooks against a real local HTTP receiver: every document event
//! delivered, signed, in order per document; a receiver that is down or
//! fails gets everything once it answers, across a SIGKILL of yrelay.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::{TestServer, WAIT, http_request};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use yrelay_client::WsClient;
use yrs::{Doc, Map, WriteTxn};

const SECRET: &str = "hook-secret";

/// A receiver that fails its first `failures` requests, then records.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<(HeaderMap, String)>>>,
    failures: Arc<AtomicUsize>,
    answered: Arc<AtomicUsize>,
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: String) -> StatusCode {
    r.answered.fetch_add(1, Ordering::SeqCst);
    if r.failures
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    r.got.lock().unwrap().push((headers, body));
    StatusCode::NO_CONTENT
}

impl Receiver {
    /// A receiver listening on a free port.
    async fn start() -> (Self, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = listener.local_addr().unwrap();
        let receiver = Receiver::default();
        receiver.serve_on(listener).await;
        (receiver, at)
    }

    async fn serve_on(&self, listener: tokio::net::TcpListener) {
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
    }

    /// The events received so far (`event` of each body).
    fn events(&self) -> Vec<String> {
        self.bodies()
            .iter()
            .map(|b| b["event"].as_str().unwrap_or("").to_owned())
            .collect()
    }

    fn bodies(&self) -> Vec<Value> {
        let got = self.got.lock().unwrap();
        got.iter()
            .map(|(_, body)| serde_json::from_str(body).unwrap())
            .collect()
    }

    async fn wait_for(&self, n: usize) -> Vec<String> {
        tokio::time::timeout(WAIT * 2, async {
            loop {
                if self.got.lock().unwrap().len() >= n {
                    return self.events();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("only {:?} arrived", self.events()))
    }
}

/// Checks `Yrelay-Signature: t=..,v1=..` against the body.
fn signed(headers: &HeaderMap, body: &str) -> bool {
    let Some(header) = headers
        .get("yrelay-signature")
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mut parts = header.split(',');
    let t = parts
        .next()
        .and_then(|p| p.strip_prefix("t="))
        .unwrap_or("");
    let v1 = parts
        .next()
        .and_then(|p| p.strip_prefix("v1="))
        .unwrap_or("");
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    v1 == expected
}

fn args(receiver: SocketAddr) -> Vec<String> {
    [
        "--webhook",
        &format!("http://{receiver}/hook"),
        "--webhook-secret",
        SECRET,
        "--webhook-debounce-ms",
        "100",
        "--webhook-max-wait-ms",
        "1000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

async fn call(server: &TestServer, method: &str, path: &str, body: &[u8]) -> u16 {
    http_request(server.addr, method, path, body).await.0
}

#[tokio::test]
async fn every_event_reaches_the_receiver_signed_and_in_order() {
    events_signed_and_in_order(&[]).await;
}

#[tokio::test]
async fn every_event_reaches_the_receiver_on_postgres() {
    let pg = common::services::PostgresServer::start().await;
    events_signed_and_in_order(&["--store", &pg.url()]).await;
}

async fn events_signed_and_in_order(extra: &[&str]) {
    let (receiver, at) = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let args = args(at);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend_from_slice(extra);
    let server = TestServer::start(dir.path(), &args).await;

    assert_eq!(
        call(&server, "POST", "/v1/docs/team/a/import", br#"{"n": 1}"#).await,
        201
    );
    receiver.wait_for(1).await;
    let client = WsClient::connect(&server.ws_url("team/a"), Doc::new())
        .await
        .unwrap();
    client.wait_synced(WAIT).await.unwrap();
    for n in 0..5 {
        client.edit(|txn| {
            txn.get_or_insert_map("root").insert(txn, "n", n);
        });
    }
    receiver.wait_for(2).await;
    assert_eq!(
        call(&server, "PATCH", "/v1/docs/team/a", br#"{"title": "A"}"#).await,
        200
    );
    assert_eq!(call(&server, "DELETE", "/v1/docs/team/a", b"").await, 204);
    assert_eq!(
        call(&server, "POST", "/v1/docs/team/a/undelete", b"").await,
        200
    );

    let events = receiver.wait_for(5).await;
    assert_eq!(
        events,
        [
            "doc.created",
            "doc.updated",
            "doc.renamed",
            "doc.deleted",
            "doc.undeleted"
        ]
    );
    for (headers, body) in receiver.got.lock().unwrap().iter() {
        assert!(signed(headers, body), "{headers:?} {body}");
    }
    let bodies = receiver.bodies();
    let ids: std::collections::HashSet<&str> =
        bodies.iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 5, "a distinct id each");
    for body in &bodies {
        assert_eq!(
            (&body["space"], &body["doc"]),
            (&"team".into(), &"a".into()),
            "{body}"
        );
        assert!(body["timestamp"].as_i64().is_some(), "{body}");
    }
    assert!(bodies[1]["cursor"].as_str().is_some(), "{}", bodies[1]);
    // The receiver has the last one before its batch is settled as sent.
    let listed = async {
        loop {
            let (status, sent) = server.get("/v1/webhooks/deliveries?status=sent").await;
            assert_eq!(status, 200, "{sent}");
            let sent = serde_json::from_str::<Value>(&sent).unwrap();
            if sent.as_array().unwrap().len() == 5 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(WAIT, listed)
        .await
        .expect("the five deliveries are listed as sent");
}

/// A receiver that is down, then failing: every event waits in the outbox
/// (across a SIGKILL of yrelay) and arrives, in order, once it answers.
#[tokio::test]
async fn a_receiver_that_is_down_gets_every_event_once_it_answers() {
    // A port with nobody on it yet.
    let at = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let args = args(at);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = TestServer::start(dir.path(), &args).await;
    for doc in ["one", "two"] {
        let path = format!("/v1/docs/team/{doc}/import");
        assert_eq!(call(&server, "POST", &path, br#"{"n": 1}"#).await, 201);
        let path = format!("/v1/docs/team/{doc}");
        assert_eq!(
            call(&server, "PATCH", &path, br#"{"title": "T"}"#).await,
            200
        );
    }
    // Tried and failed: pending in the outbox.
    tokio::time::timeout(WAIT, async {
        loop {
            let (_, pending) = server.get("/v1/webhooks/deliveries?status=pending").await;
            let pending: Value = serde_json::from_str(&pending).unwrap();
            let tried = pending.as_array().is_some_and(|p| {
                p.len() == 4 && p.iter().any(|d| d["attempts"].as_i64() >= Some(1))
            });
            if tried {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("four pending deliveries, tried");
    server
        .wait_for_metric("yrelay_webhook_deliveries_pending", |n| n == 4.0)
        .await;
    server.kill().await;

    let receiver = Receiver::default();
    receiver.failures.store(2, Ordering::SeqCst);
    receiver
        .serve_on(tokio::net::TcpListener::bind(at).await.unwrap())
        .await;
    server.restart().await;
    receiver.wait_for(4).await;
    assert!(
        receiver.answered.load(Ordering::SeqCst) >= 6,
        "two failures, then four"
    );
    let bodies = receiver.bodies();
    for doc in ["one", "two"] {
        let events: Vec<&str> = bodies
            .iter()
            .filter(|b| b["doc"] == doc)
            .map(|b| b["event"].as_str().unwrap())
            .collect();
        assert_eq!(events, ["doc.created", "doc.renamed"], "{doc}: in order");
    }
    let (_, failed) = server.get("/v1/webhooks/deliveries?status=failed").await;
    assert_eq!(failed, "[]");
    server
        .wait_for_metric("yrelay_webhook_deliveries_pending", |n| n == 0.0)
        .await;
}

/// Two instances share the outbox: every event of edits made through both
/// arrives, each once (no delivery attempted by both).
#[tokio::test]
async fn two_instances_share_the_outbox_and_deliver_each_event_once() {
    let (receiver, at) = Receiver::start().await;
    let args = args(at);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cluster = common::cluster::Cluster::start(2, &args).await;
    for (n, instance) in cluster.instances.iter().enumerate() {
        for doc in 0..5 {
            let path = format!("/v1/docs/team/i{n}d{doc}/import");
            assert_eq!(call(instance, "POST", &path, br#"{"n": 1}"#).await, 201);
        }
    }
    let events = receiver.wait_for(10).await;
    assert!(events.iter().all(|e| e == "doc.created"), "{events:?}");
    // Both instances kept claiming meanwhile: nothing more arrives.
    let settled = tokio::time::timeout(WAIT, async {
        loop {
            let mut pending = 0;
            for instance in &cluster.instances {
                let (_, list) = instance.get("/v1/webhooks/deliveries?status=pending").await;
                pending += serde_json::from_str::<Value>(&list)
                    .unwrap()
                    .as_array()
                    .unwrap()
                    .len();
            }
            if pending == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(settled.is_ok(), "deliveries still pending");
    let bodies = receiver.bodies();
    let ids: std::collections::HashSet<&str> =
        bodies.iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!((bodies.len(), ids.len()), (10, 10), "each event once");
}

/// A space registers its own webhook (and key): its documents' events go
/// there too, signed with that key; other spaces' events do not.
#[tokio::test]
async fn a_space_registers_its_own_webhook() {
    let (receiver, at) = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &["--webhook-debounce-ms", "100"]).await;
    let body = format!(r#"{{"webhooks": [{{"url": "http://{at}/hook", "secret": "{SECRET}"}}]}}"#);
    let (status, set) = http_request(
        server.addr,
        "PUT",
        "/v1/spaces/tenant/webhooks",
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{set}");
    let (_, listed) = server.get("/v1/spaces/tenant/webhooks").await;
    assert!(
        listed.contains(&format!("http://{at}/hook")) && !listed.contains(SECRET),
        "{listed}"
    );
    for bad in [
        r#"{"webhooks": [{"url": "ftp://x/y"}]}"#,
        r#"{"webhooks": [{"url": "http://a", "nope": 1}]}"#,
        "[]",
    ] {
        let (status, _) = http_request(
            server.addr,
            "PUT",
            "/v1/spaces/tenant/webhooks",
            bad.as_bytes(),
        )
        .await;
        assert_eq!(status, 400, "{bad}");
    }

    assert_eq!(
        call(
            &server,
            "POST",
            "/v1/docs/elsewhere/a/import",
            br#"{"n": 1}"#
        )
        .await,
        201
    );
    assert_eq!(
        call(&server, "POST", "/v1/docs/tenant/a/import", br#"{"n": 1}"#).await,
        201
    );
    receiver.wait_for(1).await;
    let got = receiver.got.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "only the tenant's event");
    let (headers, body) = &got[0];
    assert!(signed(headers, body), "signed with the space's key");
    assert_eq!(
        serde_json::from_str::<Value>(body).unwrap()["space"],
        "tenant"
    );
}

/// Events that happen while PostgreSQL is away (editing goes on through the
/// log) wait in memory and reach the outbox, then the receiver, once it is
/// back.
#[tokio::test]
async fn events_while_the_store_is_away_are_delivered_once_it_returns() {
    let (receiver, at) = Receiver::start().await;
    let args = args(at);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cluster = common::cluster::Cluster::start(1, &args).await;
    let client = WsClient::connect(&cluster.instances[0].ws_url("team/away"), Doc::new())
        .await
        .unwrap();
    client.wait_synced(WAIT).await.unwrap();
    cluster.pg.stop().await;
    client.edit(|txn| {
        txn.get_or_insert_map("root").insert(txn, "n", 1);
    });
    cluster.instances[0]
        .wait_for_log("webhook events not written to the outbox yet")
        .await;
    cluster.pg.start_again().await;
    let events = receiver.wait_for(1).await;
    assert!(events.contains(&"doc.updated".to_owned()), "{events:?}");
}

/// A webhook registered with `"include": ["json"]` gets the document's
/// JSON in each body (as it is when the event is written; none once it is
/// deleted); the space's other webhook does not.
#[tokio::test]
async fn a_webhook_that_asks_for_the_json_gets_the_document() {
    let (receiver, at) = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &["--webhook-debounce-ms", "100"]).await;
    let body = format!(
        r#"{{"webhooks": [{{"url": "http://{at}/hook?plain"}}, {{"url": "http://{at}/hook?json", "include": ["json"]}}]}}"#
    );
    let (status, set) = http_request(
        server.addr,
        "PUT",
        "/v1/spaces/tenant/webhooks",
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{set}");
    assert!(set.contains(r#""include":["json"]"#), "{set}");
    let (status, _) = http_request(
        server.addr,
        "PUT",
        "/v1/spaces/tenant/webhooks",
        br#"{"webhooks": [{"url": "http://a/b", "include": ["yaml"]}]}"#,
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = http_request(
        server.addr,
        "PUT",
        "/v1/spaces/tenant/webhooks",
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 200);

    assert_eq!(
        call(&server, "POST", "/v1/docs/tenant/a/import", br#"{"n": 1}"#).await,
        201
    );
    let client = WsClient::connect(&server.ws_url("tenant/a"), Doc::new())
        .await
        .unwrap();
    client.wait_synced(WAIT).await.unwrap();
    client.edit(|txn| {
        txn.get_or_insert_map("root").insert(txn, "k", "edited");
    });
    receiver.wait_for(4).await;
    assert_eq!(call(&server, "DELETE", "/v1/docs/tenant/a", b"").await, 204);
    let bodies = {
        receiver.wait_for(6).await;
        receiver.bodies()
    };
    let of =
        |event: &str| -> Vec<&Value> { bodies.iter().filter(|b| b["event"] == event).collect() };
    let created = of("doc.created");
    assert_eq!(created.len(), 2, "{bodies:?}");
    assert_eq!(
        created.iter().filter(|b| b.get("json").is_some()).count(),
        1,
        "{created:?}"
    );
    let with_json = created.iter().find(|b| b.get("json").is_some()).unwrap();
    assert_eq!(with_json["json"]["root"]["n"], 1.0, "{with_json}");
    let updated = of("doc.updated");
    let with_json = updated
        .iter()
        .find(|b| b.get("json").is_some())
        .expect("doc.updated with the JSON");
    assert_eq!(with_json["json"]["root"]["k"], "edited", "{with_json}");
    assert!(of("doc.deleted").iter().all(|b| b.get("json").is_none()));
}
