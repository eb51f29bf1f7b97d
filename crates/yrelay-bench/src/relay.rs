//! The floor: a trivial y-websocket "server" that forwards every frame of a
//! room to the room's other connections. No CRDT, no storage, no checks; it
//! answers a client's SyncStep1 with an empty SyncStep2 so clients count as
//! synced. What yrelay's fan-out costs is measured against this.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use yrelay_protocol::sync::{self, ClientMessage};

type Rooms = Arc<Mutex<HashMap<String, Vec<(u64, mpsc::UnboundedSender<Message>)>>>>;

pub async fn serve(listen: &str) -> Result<(), String> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("bind {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    eprintln!("floor relay listening on ws://{addr}/{{room}}");
    let rooms: Rooms = Arc::default();
    let mut next_id = 0u64;
    loop {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        next_id += 1;
        tokio::spawn(connection(tcp, rooms.clone(), next_id));
    }
}

// The handshake callback's error type is tungstenite's, large by its design.
#[allow(clippy::result_large_err)]
async fn connection(tcp: tokio::net::TcpStream, rooms: Rooms, id: u64) {
    let mut path = String::new();
    let callback = |request: &Request, response: Response| {
        path = request.uri().path().to_owned();
        Ok(response)
    };
    let Ok(socket) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
        return;
    };
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    rooms
        .lock()
        .unwrap()
        .entry(path.clone())
        .or_default()
        .push((id, tx.clone()));
    let writer = tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            if sink.send(message).await.is_err() {
                return;
            }
        }
    });
    while let Some(Ok(message)) = stream.next().await {
        let Message::Binary(frame) = message else {
            continue;
        };
        let is_step1 = matches!(
            sync::decode_frame(&frame).as_deref(),
            Ok([ClientMessage::SyncStep1(_)])
        );
        if is_step1 {
            let _ = tx.send(Message::Binary(sync::encode_sync_step2(&[0, 0]).into()));
            continue;
        }
        let peers: Vec<_> = rooms.lock().unwrap()[&path]
            .iter()
            .filter(|(peer, _)| *peer != id)
            .map(|(_, tx)| tx.clone())
            .collect();
        for peer in peers {
            let _ = peer.send(Message::Binary(frame.clone()));
        }
    }
    if let Some(room) = rooms.lock().unwrap().get_mut(&path) {
        room.retain(|(peer, _)| *peer != id);
    }
    writer.abort();
}
