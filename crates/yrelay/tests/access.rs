//! Access control on every transport (WebSocket, SSE + POST, REST), and the
//! limits against abuse: connection count and per-connection update rate.

mod common;

use common::sse::EventStream;
use common::{TestServer, WAIT, http_call};
use yrelay::auth::{Grant, Mode, SigningKey, mint};
use yrelay_client::WsClient;
use yrs::{Doc, ReadTxn, Text, Transact, WriteTxn};

const SECRET: &str = "test-secret";

fn token(sub: &str, grants: &[(&str, &str, Mode)]) -> String {
    let access = grants
        .iter()
        .map(|(space, doc, mode)| Grant {
            space: space.to_string(),
            doc: doc.to_string(),
            mode: *mode,
        })
        .collect();
    mint(&SigningKey::Secret(SECRET.into()), sub, access, 600).unwrap()
}

fn expired(sub: &str) -> String {
    mint(&SigningKey::Secret(SECRET.into()), sub, vec![], -600).unwrap()
}

/// Connects and returns the close code the server ends the connection with.
async fn refused_with(url: &str) -> (Option<u16>, String) {
    let client = WsClient::connect(url, Doc::new()).await.unwrap();
    let info = client.closed(WAIT).await.unwrap();
    (info.code, info.reason)
}

fn hello(client: &WsClient, s: &str) {
    let text = client.doc().get_or_insert_text("text");
    client.edit(|txn| text.push(txn, s));
}

#[tokio::test]
async fn websocket_tokens_decide_who_reads_and_who_writes() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &["--jwt-secret", SECRET]).await;
    let url = |doc: &str, token: &str| format!("{}?token={token}", server.ws_url(doc));

    // No token, a forged one, an expired one, a token for another space.
    for (doc, token, why) in [
        ("team/plan", String::new(), "required"),
        (
            "team/plan",
            mint(&SigningKey::Secret("wrong".into()), "ann", vec![], 60).unwrap(),
            "not valid",
        ),
        ("team/plan", expired("ann"), "expired"),
        (
            "team/plan",
            token("ann", &[("other", "*", Mode::Rw)]),
            "no access",
        ),
        ("@bob/notes", token("ann", &[]), "no access"),
    ] {
        let (code, reason) = refused_with(&url(doc, &token)).await;
        assert_eq!(code, Some(1008), "{doc} {why}: {reason}");
        assert!(reason.contains(why), "{reason:?} should say {why:?}");
    }

    // A writer, the owner of a userspace, and a reader.
    let writer = WsClient::connect(
        &url("team/plan", &token("ann", &[("team", "*", Mode::Rw)])),
        Doc::new(),
    )
    .await
    .unwrap();
    writer.wait_synced(WAIT).await.unwrap();
    hello(&writer, "from the writer");
    let own = WsClient::connect(&url("@ann/notes", &token("ann", &[])), Doc::new())
        .await
        .unwrap();
    own.wait_synced(WAIT).await.unwrap();

    let reader = WsClient::connect(
        &url("team/plan", &token("bob", &[("team", "plan", Mode::Ro)])),
        Doc::new(),
    )
    .await
    .unwrap();
    reader
        .wait_for("the writer's text", WAIT, |c| {
            common::text(c) == "from the writer"
        })
        .await
        .unwrap();
    reader.set_awareness(&serde_json::json!({"user": "bob"}));
    writer
        .wait_for("the reader's presence", WAIT, |c| {
            c.peers().iter().any(|(_, s)| s.contains("bob"))
        })
        .await
        .unwrap();
    hello(&reader, " and the reader");
    reader
        .wait_for("permission denied", WAIT, |c| {
            c.permission_denied().is_some()
        })
        .await
        .unwrap();
    assert_eq!(reader.permission_denied().as_deref(), Some("read-only"));
    // The reader's edit reached nobody: a fresh writer sees only the writer's text.
    hello(&writer, "!");
    let late = WsClient::connect(
        &url("team/plan", &token("cy", &[("*", "*", Mode::Ro)])),
        Doc::new(),
    )
    .await
    .unwrap();
    late.wait_for("the writer's text", WAIT, |c| {
        common::text(c) == "from the writer!"
    })
    .await
    .unwrap();
    assert!(
        !reader.is_closed(),
        "a refused update does not end the connection"
    );
    assert!(
        server
            .metric("yrelay_rejected_messages_total{reason=\"read_only\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn sse_and_rest_answer_401_and_403_with_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &["--jwt-secret", SECRET]).await;
    let rw = format!("Bearer {}", token("ann", &[("team", "*", Mode::Rw)]));
    let ro = format!("Bearer {}", token("bob", &[("team", "*", Mode::Ro)]));
    let update = {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("text");
        text.push(&mut doc.transact_mut(), "hi");
        doc.transact()
            .encode_state_as_update_v1(&yrs::StateVector::default())
    };
    let call = |method: &'static str, path: &'static str, auth: Option<String>, body: Vec<u8>| {
        let addr = server.addr;
        async move {
            let headers: Vec<(&str, &str)> = match &auth {
                Some(a) => vec![("Authorization", a.as_str())],
                None => vec![],
            };
            let (status, body) = http_call(addr, method, path, &headers, &body).await;
            let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            (
                status,
                json["error"]["code"].as_str().unwrap_or("").to_owned(),
            )
        }
    };
    let u = "/v1/docs/team/plan/updates";
    assert_eq!(
        call("POST", u, None, update.clone()).await,
        (401, "AUTHENTICATION_REQUIRED".into())
    );
    assert_eq!(
        call("POST", u, Some("Bearer nonsense".into()), update.clone()).await,
        (401, "INVALID_TOKEN".into())
    );
    assert_eq!(
        call("POST", u, Some(ro.clone()), update.clone()).await,
        (403, "READ_ONLY".into())
    );
    assert_eq!(
        call("POST", u, Some(rw.clone()), update.clone()).await.0,
        200
    );
    assert_eq!(
        call("GET", "/v1/docs/team/plan/json", Some(ro.clone()), vec![])
            .await
            .0,
        200
    );
    assert_eq!(
        call("GET", "/v1/spaces/team/docs", Some(ro.clone()), vec![])
            .await
            .0,
        200
    );
    let other = format!("Bearer {}", token("dan", &[("team", "notes", Mode::Rw)]));
    assert_eq!(
        call("GET", "/v1/spaces/team/docs", Some(other.clone()), vec![]).await,
        (403, "ACCESS_DENIED".into())
    );
    assert_eq!(
        call("GET", "/v1/docs/team/plan", Some(other), vec![]).await,
        (403, "ACCESS_DENIED".into())
    );
    assert_eq!(
        call("DELETE", "/v1/docs/team/plan", Some(ro.clone()), vec![]).await,
        (403, "READ_ONLY".into())
    );
    assert_eq!(
        call(
            "POST",
            "/v1/docs/team/plan/awareness",
            Some(ro.clone()),
            vec![0]
        )
        .await
        .0,
        204,
        "awareness is allowed read-only"
    );
    assert_eq!(
        call(
            "GET",
            "/v1/docs/team/plan/events",
            Some(format!("Bearer {}", expired("ann"))),
            vec![]
        )
        .await,
        (401, "TOKEN_EXPIRED".into())
    );
    // EventSource cannot set headers: ?token= works for the stream.
    let ro_token = token("bob", &[("team", "*", Mode::Ro)]);
    let mut events = EventStream::open(
        server.addr,
        &format!("/v1/docs/team/plan/events?token={ro_token}"),
        None,
    )
    .await;
    let sync = events.next().await;
    assert_eq!(sync.event, "sync");
}

#[tokio::test]
async fn a_token_mints_from_the_cli_and_works() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_yrelay"))
        .args([
            "token",
            "--sub",
            "ann",
            "--space",
            "team",
            "--read-only",
            "--ttl",
            "5m",
        ])
        .env("YRELAY_JWT_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let minted = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    let server = TestServer::start(dir.path(), &["--jwt-secret", SECRET]).await;
    let client = WsClient::connect(
        &format!("{}?token={minted}", server.ws_url("team/x")),
        Doc::new(),
    )
    .await
    .unwrap();
    client.wait_synced(WAIT).await.unwrap();
    hello(&client, "x");
    client
        .wait_for("permission denied", WAIT, |c| {
            c.permission_denied().is_some()
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn connection_and_rate_limits_give_their_documented_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        dir.path(),
        &["--max-connections", "2", "--max-updates-per-sec", "5"],
    )
    .await;
    let a = common::connect(&server, "s/limits").await;
    let _b = common::connect(&server, "s/limits").await;
    let third = WsClient::connect(&server.ws_url("s/limits"), Doc::new()).await;
    let err = third
        .err()
        .expect("a third connection is refused")
        .to_string();
    assert!(err.contains("503"), "{err}");
    let (status, body) = server.get("/v1/docs/s/limits/events").await;
    assert_eq!(status, 503);
    assert!(body.contains("TOO_MANY_CONNECTIONS"), "{body}");

    // 5 updates/s with bursts of 10: 30 at once is over the limit.
    let text = a.doc().get_or_insert_text("text");
    for i in 0..30 {
        a.edit(|txn| text.push(txn, &i.to_string()));
    }
    let info = a.closed(WAIT).await.unwrap();
    assert_eq!(info.code, Some(1008), "{info:?}");
    assert!(info.reason.contains("updates per second"), "{info:?}");
    // The slot is free again once the connection is gone.
    server
        .wait_for_metric("yrelay_connections{transport=\"websocket\"}", |n| n == 1.0)
        .await;
    common::connect(&server, "s/limits").await;
    assert!(
        server
            .metric("yrelay_rejected_messages_total{reason=\"rate_limited\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn public_key_tokens_rs256_es256_eddsa() {
    let dir = tempfile::tempdir().unwrap();
    for (name, genkey) in [
        (
            "rsa",
            vec![
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ],
        ),
        (
            "ec",
            vec![
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ],
        ),
        ("ed25519", vec!["genpkey", "-algorithm", "ed25519"]),
    ] {
        let private = dir.path().join(format!("{name}.pem"));
        let public = dir.path().join(format!("{name}.pub.pem"));
        let openssl = |args: &[&str]| {
            let status = std::process::Command::new("openssl")
                .args(args)
                .status()
                .expect("openssl (the test command installs it)");
            assert!(status.success(), "openssl {args:?}");
        };
        let mut gen_args = genkey.clone();
        gen_args.extend(["-out", private.to_str().unwrap()]);
        openssl(&gen_args);
        openssl(&[
            "pkey",
            "-in",
            private.to_str().unwrap(),
            "-pubout",
            "-out",
            public.to_str().unwrap(),
        ]);

        let server =
            TestServer::start(dir.path(), &["--jwt-public-key", public.to_str().unwrap()]).await;
        let key = SigningKey::PrivateKey(private.clone());
        let good = mint(&key, "ann", vec![], 60).unwrap();
        let client = WsClient::connect(
            &format!("{}?token={good}", server.ws_url("@ann/notes")),
            Doc::new(),
        )
        .await
        .unwrap();
        client
            .wait_synced(WAIT)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        // A token signed with a secret is refused by a public-key server.
        let hs = mint(&SigningKey::Secret("x".into()), "ann", vec![], 60).unwrap();
        let (code, reason) =
            refused_with(&format!("{}?token={hs}", server.ws_url("@ann/notes"))).await;
        assert_eq!(code, Some(1008), "{name}: {reason}");
    }
}

/// A token's `exp` holds on open connections too: when it passes, the
/// WebSocket is closed (1008) and the event stream ends with an `error`
/// event, so clients refresh and reconnect; a connection with a valid token
/// stays.
#[tokio::test]
async fn a_token_that_expires_ends_the_connections_it_opened() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &["--jwt-secret", SECRET]).await;
    let grant = Grant {
        space: "team".into(),
        doc: "*".into(),
        mode: Mode::Rw,
    };
    let short = mint(&SigningKey::Secret(SECRET.into()), "ann", vec![grant], 1).unwrap();
    let url = |token: &str| format!("{}?token={token}", server.ws_url("team/plan"));
    let expiring = WsClient::connect(&url(&short), Doc::new()).await.unwrap();
    expiring.wait_synced(WAIT).await.unwrap();
    let mut events = EventStream::open(
        server.addr,
        &format!("/v1/docs/team/plan/events?token={short}"),
        None,
    )
    .await;
    assert_eq!(events.next().await.event, "sync");
    let long = token("bob", &[("team", "*", Mode::Rw)]);
    let stays = WsClient::connect(&url(&long), Doc::new()).await.unwrap();
    stays.wait_synced(WAIT).await.unwrap();

    let info = expiring.closed(WAIT).await.unwrap();
    assert_eq!(info.code, Some(1008), "{info:?}");
    assert!(info.reason.contains("expired"), "{info:?}");
    let ended = loop {
        let event = events.next().await;
        if event.event == "error" {
            break event;
        }
    };
    assert!(ended.data.contains("TOKEN_EXPIRED"), "{}", ended.data);
    assert!(!stays.is_closed());
    stays.edit(|txn| {
        txn.get_or_insert_text("text").insert(txn, 0, "still here");
    });
    let check = WsClient::connect(&url(&long), Doc::new()).await.unwrap();
    check
        .wait_for("the edit of the connection that stayed", WAIT, |c| {
            common::text(c) == "still here"
        })
        .await
        .unwrap();
}

/// The inspector's reads: only an admin (every space, read-write) may list
/// spaces and see who is connected; it sees each connection's transport,
/// user and presence.
#[tokio::test]
async fn an_admin_sees_spaces_and_who_is_connected_with_what_presence() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &["--jwt-secret", SECRET]).await;
    let admin = token("root", &[("*", "*", Mode::Rw)]);
    let ann = token("ann", &[("acme", "*", Mode::Rw)]);
    let get = |path: &'static str, token: Option<String>| {
        let addr = server.addr;
        async move {
            let auth = token.map(|t| format!("Bearer {t}"));
            let headers: Vec<(&str, &str)> =
                auth.iter().map(|a| ("Authorization", a.as_str())).collect();
            let (status, text) = http_call(addr, "GET", path, &headers, b"").await;
            (
                status,
                serde_json::from_str::<serde_json::Value>(&text).unwrap_or_default(),
            )
        }
    };
    for path in ["/v1/spaces", "/v1/docs/acme/plan/connections"] {
        assert_eq!(get(path, None).await.0, 401, "{path}");
        assert_eq!(get(path, Some(ann.clone())).await.0, 403, "{path}");
    }

    let url = format!("{}?token={ann}", server.ws_url("acme/plan"));
    let client = WsClient::connect(&url, Doc::new()).await.unwrap();
    client.wait_synced(WAIT).await.unwrap();
    hello(&client, "hi");
    let mut stream = EventStream::open(
        server.addr,
        &format!("/v1/docs/acme/plan/events?token={ann}"),
        None,
    )
    .await;
    client.set_awareness(&serde_json::json!({ "user": { "name": "ann" } }));
    // Relayed to the stream once the document holds it.
    while stream.next().await.event != "awareness" {}

    let (status, spaces) = get("/v1/spaces?q=AC", Some(admin.clone())).await;
    assert_eq!(status, 200, "{spaces}");
    assert_eq!(spaces["spaces"][0]["space"], "acme", "{spaces}");
    assert_eq!(spaces["spaces"][0]["docs"], 1, "{spaces}");
    let (_, docs) = get("/v1/spaces/acme/docs?limit=10&q=PL", Some(admin.clone())).await;
    assert_eq!(docs[0]["doc"], "plan", "{docs}");
    assert_eq!(docs[0]["connections"], 2, "{docs}");

    let (status, view) = get("/v1/docs/acme/plan/connections", Some(admin.clone())).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["live"], true, "{view}");
    let mut transports: Vec<_> = view["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["transport"].as_str().unwrap(),
                c["user"].as_str().unwrap(),
            )
        })
        .collect();
    transports.sort();
    assert_eq!(transports, [("sse", "ann"), ("websocket", "ann")], "{view}");
    let presence = &view["presence"][0];
    assert_eq!(presence["state"]["user"]["name"], "ann", "{view}");
    let ws = view["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["transport"] == "websocket")
        .unwrap();
    assert_eq!(
        ws["clients"][0], presence["clientId"],
        "the presence is the WebSocket's"
    );
    assert_eq!(presence["connection"], ws["id"], "{view}");
}
