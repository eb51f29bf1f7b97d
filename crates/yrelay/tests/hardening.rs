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
        let answer = tokio::time::timeout(WAIT, async {
            while let Some(frame) = socket.next().await {
                match frame {
                    Ok(Message::Close(frame)) => return Some(frame),
                    Ok(_) => continue,
                    Err(_) => return None,
                }
            }
            None
        })
        .await
        .expect("the server answers in time");
        assert!(answer.is_some(), "round {round}: the close is answered");
        assert_eq!(served_text(&server, &doc).await, word, "round {round}");
    }
}
