//! A minimal HTTP/1.1 client for the SSE + POST transport in tests: POST a
//! body, and read an event stream (chunked) event by event.

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::WAIT;

#[derive(Debug, Clone, Default)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
    pub id: Option<String>,
}

pub struct EventStream {
    reader: BufReader<TcpStream>,
    buffer: String,
}

impl EventStream {
    pub async fn open(addr: SocketAddr, path: &str, last_event_id: Option<&str>) -> Self {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let resume = last_event_id
            .map(|id| format!("Last-Event-ID: {id}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{resume}\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut reader = BufReader::new(stream);
        let mut status = String::new();
        reader.read_line(&mut status).await.unwrap();
        assert!(status.contains(" 200 "), "{status}");
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).await.unwrap();
            if header == "\r\n" {
                break;
            }
        }
        Self {
            reader,
            buffer: String::new(),
        }
    }

    /// The next event that is not a comment.
    pub async fn next(&mut self) -> SseEvent {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(end) = self.buffer.find("\n\n") {
                    let block: String = self.buffer.drain(..end + 2).collect();
                    let mut event = SseEvent::default();
                    let mut any = false;
                    for line in block.lines() {
                        if let Some(v) = line.strip_prefix("event:") {
                            event.event = v.trim().to_string();
                            any = true;
                        } else if let Some(v) = line.strip_prefix("data:") {
                            event.data.push_str(v.trim());
                            any = true;
                        } else if let Some(v) = line.strip_prefix("id:") {
                            event.id = Some(v.trim().to_string());
                        }
                    }
                    if any {
                        return event;
                    }
                    continue;
                }
                // one chunk of the chunked body
                let mut size = String::new();
                self.reader.read_line(&mut size).await.unwrap();
                let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
                let mut chunk = vec![0; size + 2];
                self.reader.read_exact(&mut chunk).await.unwrap();
                chunk.truncate(size);
                self.buffer.push_str(&String::from_utf8(chunk).unwrap());
            }
        })
        .await
        .expect("an event in time")
    }
}

/// POSTs `body` and returns (status, JSON body).
pub async fn post(addr: SocketAddr, path: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let (status, text) = super::http_request(addr, "POST", path, body).await;
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}
