//! The app decides access: an auth callback (a real local HTTP server)
//! answering for credentials that are not yrelay's tokens, and revokes that
//! reach open connections on every instance.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use common::cluster::Cluster;
use common::sse::EventStream;
use common::{TestServer, WAIT, http_call};
use serde_json::{Value, json};
use yrelay::auth::{Grant, Mode, SigningKey, mint};
use yrelay_client::WsClient;
use yrs::{Doc, Text, WriteTxn};

const SECRET: &str = "auth-hooks-secret";

/// How the app answers for one session.
#[derive(Clone)]
enum Answer {
    Grant(&'static str, &'static str, Mode),
    Refuse(u16, &'static str),
    Malformed,
}

/// The app's callback: answers by the token (or the `session` cookie) and
/// records every question.
#[derive(Clone, Default)]
struct App {
    answers: Arc<Mutex<HashMap<String, Answer>>>,
    asked: Arc<Mutex<Vec<Value>>>,
}

async fn callback(State(app): State<App>, Json(question): Json<Value>) -> Response {
    app.asked.lock().unwrap().push(question.clone());
    let session = question["token"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| {
            question["cookie"]
                .as_str()
                .and_then(|c| c.split("session=").nth(1))
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let answer = app.answers.lock().unwrap().get(&session).cloned();
    match answer {
        Some(Answer::Grant(space, doc, mode)) => Json(json!({
            "sub": session,
            "access": [{ "space": space, "doc": doc, "mode": mode }],
        }))
        .into_response(),
        Some(Answer::Refuse(status, reason)) => (
            StatusCode::from_u16(status).unwrap(),
            Json(json!({ "reason": reason })),
        )
            .into_response(),
        Some(Answer::Malformed) => (StatusCode::OK, "{\"sub\": ").into_response(),
        None => (StatusCode::UNAUTHORIZED, Json(json!({}))).into_response(),
    }
}

impl App {
    async fn start(answers: &[(&str, Answer)]) -> (Self, SocketAddr) {
        let app = App::default();
        app.set(answers);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = listener.local_addr().unwrap();
        let router = axum::Router::new()
            .route("/auth", axum::routing::post(callback))
            .with_state(app.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        (app, at)
    }

    fn set(&self, answers: &[(&str, Answer)]) {
        let mut table = self.answers.lock().unwrap();
        for (session, answer) in answers {
            table.insert(session.to_string(), answer.clone());
        }
    }

    /// Questions asked about `session` (by token or cookie).
    fn asked_about(&self, session: &str) -> Vec<Value> {
        self.asked
            .lock()
            .unwrap()
            .iter()
            .filter(|q| {
                q["token"].as_str() == Some(session)
                    || q["cookie"].as_str().is_some_and(|c| c.ends_with(session))
            })
            .cloned()
            .collect()
    }
}

fn jwt(sub: &str, space: &str, mode: Mode) -> String {
    let grant = Grant {
        space: space.into(),
        doc: "*".into(),
        mode,
    };
    mint(&SigningKey::Secret(SECRET.into()), sub, vec![grant], 600).unwrap()
}

fn write(client: &WsClient, s: &str) {
    client.edit(|txn| {
        let text = txn.get_or_insert_text("text");
        text.push(txn, s);
    });
}

async fn get(server: &TestServer, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    http_call(server.addr, "GET", path, headers, b"").await
}

/// `GET /v1/docs/team/plan/json` with this `Authorization` header.
async fn read_plan(server: &TestServer, authorization: &str) -> (u16, String) {
    get(
        server,
        "/v1/docs/team/plan/json",
        &[("Authorization", authorization)],
    )
    .await
}

/// Tokens that are not ours go to the app: it grants read-write or
/// read-only, refuses with its reason, or answers badly (refused with 503 /
/// 1013: fail closed, never open); cookies work without a token; our JWTs
/// are checked locally, without asking; answers are cached.
#[tokio::test]
async fn the_auth_callback_decides_for_credentials_that_are_not_our_tokens() {
    let (app, at) = App::start(&[
        ("ann-session", Answer::Grant("team", "*", Mode::Rw)),
        ("reader-session", Answer::Grant("team", "*", Mode::Ro)),
        ("elsewhere-session", Answer::Grant("other", "*", Mode::Rw)),
        ("nobody-session", Answer::Refuse(403, "not on this team")),
        ("broken-session", Answer::Malformed),
        ("failing-session", Answer::Refuse(500, "oops")),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://{at}/auth");
    let server = TestServer::start(
        dir.path(),
        &["--jwt-secret", SECRET, "--auth-webhook", &url],
    )
    .await;
    let ws = |token: &str| format!("{}?token={token}", server.ws_url("team/plan"));

    let ann = WsClient::connect(&ws("ann-session"), Doc::new())
        .await
        .unwrap();
    ann.wait_synced(WAIT).await.unwrap();
    write(&ann, "from ann");
    let check = WsClient::connect(&ws("ann-session"), Doc::new())
        .await
        .unwrap();
    check
        .wait_for("ann's edit", WAIT, |c| common::text(c) == "from ann")
        .await
        .unwrap();
    let (status, body) = get(
        &server,
        "/v1/docs/team/plan/json",
        &[("Cookie", "theme=dark; session=ann-session")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let asked = app.asked_about("ann-session");
    let websocket = asked
        .iter()
        .find(|q| q["transport"] == "websocket")
        .unwrap();
    assert_eq!(websocket["space"], "team");
    assert_eq!(websocket["doc"], "plan");
    assert!(
        asked
            .iter()
            .any(|q| q["token"].is_null() && q["transport"] == "rest")
    );

    // Read-only: reads, its writes refused.
    let bearer = |token: &str| format!("Bearer {token}");
    let reader = bearer("reader-session");
    let (status, _) = read_plan(&server, &reader).await;
    assert_eq!(status, 200);
    let (status, body) = http_call(
        server.addr,
        "POST",
        "/v1/docs/team/plan/updates",
        &[("Authorization", &reader)],
        yrs::Update::EMPTY_V1,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("READ_ONLY"), "{body}");

    // Refused: the app's reason; grants of another space open nothing here.
    for (session, reason) in [
        ("nobody-session", "not on this team"),
        ("elsewhere-session", "team/plan"),
    ] {
        let (status, body) = read_plan(&server, &bearer(session)).await;
        assert_eq!(status, 403, "{session}: {body}");
        assert!(body.contains(reason), "{session}: {body}");
        let info = WsClient::connect(&ws(session), Doc::new())
            .await
            .unwrap()
            .closed(WAIT)
            .await
            .unwrap();
        assert_eq!(info.code, Some(1008), "{info:?}");
    }
    let (status, _) = read_plan(&server, "Bearer unknown").await;
    assert_eq!(status, 401);

    // A callback that answers badly: fail closed (503, WebSocket 1013).
    for session in ["broken-session", "failing-session"] {
        let (status, body) = read_plan(&server, &bearer(session)).await;
        assert_eq!(status, 503, "{session}: {body}");
        assert!(body.contains("AUTH_UNAVAILABLE"), "{body}");
        let info = WsClient::connect(&ws(session), Doc::new())
            .await
            .unwrap()
            .closed(WAIT)
            .await
            .unwrap();
        assert_eq!(info.code, Some(1013), "{info:?}");
    }
    // ... and such answers are not cached: each is asked again.
    assert!(app.asked_about("broken-session").len() >= 2);

    // Our own tokens never reach the app; answers are cached.
    let bob = jwt("bob", "team", Mode::Rw);
    let (status, _) = read_plan(&server, &bearer(&bob)).await;
    assert_eq!(status, 200);
    assert!(app.asked_about(&bob).is_empty());
    let before = app.asked_about("reader-session").len();
    for _ in 0..3 {
        let (status, _) = read_plan(&server, &reader).await;
        assert_eq!(status, 200);
    }
    assert_eq!(app.asked_about("reader-session").len(), before, "cached");
    assert!(!ann.is_closed());
}

/// `POST /v1/access/revoke` (a token for every space) on one instance
/// closes the connections it covers on the other within moments, with the
/// reason, and refuses their tokens from then on; tokens issued later work;
/// other users stay; a connection the app let in is asked about again and
/// turned read-only without being dropped.
#[tokio::test]
async fn a_revoke_reaches_open_connections_on_every_instance() {
    let (app, at) = App::start(&[("carol-session", Answer::Grant("team", "*", Mode::Rw))]).await;
    let url = format!("http://{at}/auth");
    let cluster = Cluster::start(2, &["--jwt-secret", SECRET, "--auth-webhook", &url]).await;
    let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
    let ws =
        |server: &TestServer, token: &str| format!("{}?token={token}", server.ws_url("team/plan"));
    let ann = jwt("ann", "team", Mode::Rw);
    let bob = jwt("bob", "team", Mode::Rw);
    let admin = format!("Bearer {}", jwt("admin", "*", Mode::Rw));

    let ann_ws = WsClient::connect(&ws(b, &ann), Doc::new()).await.unwrap();
    ann_ws.wait_synced(WAIT).await.unwrap();
    let mut ann_events = EventStream::open(
        a.addr,
        &format!("/v1/docs/team/plan/events?token={ann}"),
        None,
    )
    .await;
    assert_eq!(ann_events.next().await.event, "sync");
    let bob_ws = WsClient::connect(&ws(b, &bob), Doc::new()).await.unwrap();
    bob_ws.wait_synced(WAIT).await.unwrap();
    let carol_ws = WsClient::connect(&ws(b, "carol-session"), Doc::new())
        .await
        .unwrap();
    carol_ws.wait_synced(WAIT).await.unwrap();

    // Refused: no filter, a doc without its space, not an admin.
    let revoke = |body: Value, auth: String| async move {
        http_call(
            a.addr,
            "POST",
            "/v1/access/revoke",
            &[("Authorization", &auth)],
            body.to_string().as_bytes(),
        )
        .await
    };
    let (status, body) = revoke(json!({}), admin.clone()).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("BAD_REVOKE"), "{body}");
    let (status, _) = revoke(json!({ "doc": "plan" }), admin.clone()).await;
    assert_eq!(status, 400);
    let (status, _) = revoke(json!({ "sub": "bob" }), format!("Bearer {ann}")).await;
    assert_eq!(status, 403);

    let (status, body) = revoke(json!({ "sub": "ann" }), admin.clone()).await;
    assert_eq!(status, 200, "{body}");
    let info = ann_ws.closed(WAIT).await.unwrap();
    assert_eq!(info.code, Some(1008), "{info:?}");
    assert!(info.reason.contains("revoked"), "{info:?}");
    let ended = loop {
        let event = ann_events.next().await;
        if event.event == "error" {
            break event;
        }
    };
    assert!(ended.data.contains("ACCESS_REVOKED"), "{}", ended.data);
    // The same token is refused from now on, on both instances.
    for server in [a, b] {
        let info = WsClient::connect(&ws(server, &ann), Doc::new())
            .await
            .unwrap()
            .closed(WAIT)
            .await
            .unwrap();
        assert_eq!(info.code, Some(1008), "{info:?}");
    }
    // A token issued after the revoke works.
    let later = {
        let now = yrelay::clock::now_ms() / 1000;
        let claims = json!({ "sub": "ann", "iat": now + 2, "exp": now + 600, "access": [{ "space": "team", "doc": "*", "mode": "rw" }] });
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    let ann_again = WsClient::connect(&ws(a, &later), Doc::new()).await.unwrap();
    ann_again.wait_synced(WAIT).await.unwrap();

    // The app now says carol may only read: asked again, downgraded, kept.
    app.set(&[("carol-session", Answer::Grant("team", "*", Mode::Ro))]);
    let (status, _) = revoke(json!({ "sub": "carol-session", "space": "team" }), admin).await;
    assert_eq!(status, 200);
    tokio::time::timeout(WAIT, async {
        while app
            .asked_about("carol-session")
            .iter()
            .filter(|q| q["transport"] == "websocket")
            .count()
            < 2
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the app is asked about carol again");
    // Carol's edit is refused; bob's, made after it, arrives: carol is
    // still connected and reading.
    write(&carol_ws, "from carol");
    write(&bob_ws, "from bob");
    carol_ws
        .wait_for("bob's edit, read by carol", WAIT, |c| {
            common::text(c).contains("from bob")
        })
        .await
        .unwrap();
    let check = WsClient::connect(&ws(a, &bob), Doc::new()).await.unwrap();
    check
        .wait_for("bob's edit", WAIT, |c| common::text(c).contains("from bob"))
        .await
        .unwrap();
    assert!(
        !common::text(&check).contains("from carol"),
        "{}",
        common::text(&check)
    );
    assert!(!carol_ws.is_closed());
    assert!(!bob_ws.is_closed());
}
