//! What the history and trash tests share: tokens of one secret, calls
//! with a token, clients of one document and waits on what they show.

use std::time::Duration;

use serde_json::Value;
use yrelay::auth::{Grant, Mode, SigningKey, mint};
use yrelay::clock::now_ms;
use yrelay_client::WsClient;
use yrelay_protocol::json::{doc_from_update, doc_to_json};
use yrs::Doc;

use super::{TestServer, WAIT, http_exchange};

pub const SECRET: &str = "history-secret";
pub const DOC: &str = "acme/plan";

pub fn token(sub: &str, mode: Mode) -> String {
    let grant = Grant {
        space: "acme".into(),
        doc: "*".into(),
        mode,
    };
    mint(&SigningKey::Secret(SECRET.into()), sub, vec![grant], 600).unwrap()
}

/// `(status, head, JSON body or Null)`.
pub async fn call(
    server: &TestServer,
    method: &str,
    path: &str,
    token: &str,
    body: Value,
) -> (u16, String, Value) {
    let auth = format!("Bearer {token}");
    let body = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    let (status, head, text) = http_exchange(
        server.addr,
        method,
        path,
        &[("Authorization", &auth)],
        &body,
    )
    .await;
    (
        status,
        head,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

pub fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

pub async fn client(server: &TestServer, token: &str) -> WsClient {
    let url = format!("{}?token={token}", server.ws_url(DOC));
    let client = WsClient::connect(&url, Doc::new()).await.unwrap();
    client.wait_synced(WAIT).await.unwrap();
    client
}

/// A client's document as the server exports it (roots typed by content).
pub fn json_of(client: &WsClient) -> Value {
    doc_to_json(&doc_from_update(&client.state()).unwrap()).unwrap()
}

/// Waits until the server's export of the document is `expected`.
pub async fn server_shows(server: &TestServer, token: &str, expected: &Value) {
    let path = format!("/v1/docs/{DOC}/json");
    let mut last = Value::Null;
    let shown = tokio::time::timeout(WAIT, async {
        loop {
            last = call(server, "GET", &path, token, Value::Null).await.2;
            if &last == expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(shown.is_ok(), "the server shows {last}, never {expected}");
}

/// Waits until the clock has passed `t`, so later writes are later.
pub async fn after(t: i64) {
    while now_ms() <= t {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The id of the document's newest version.
pub async fn list_first_id(server: &TestServer, token: &str) -> i64 {
    let path = format!("/v1/docs/{DOC}/versions");
    let (_, _, list) = call(server, "GET", &path, token, Value::Null).await;
    list[0]["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no version: {list}"))
}

/// A server's arguments for auth with [`SECRET`].
pub fn auth_args() -> Vec<&'static str> {
    vec!["--jwt-secret", SECRET]
}
