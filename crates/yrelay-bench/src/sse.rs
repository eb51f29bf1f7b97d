//! SSE readers for the fan-out: yrelay's `GET /v1/docs/{space}/{doc}/events`
//! (a `sync` event, then an `update` event per update, base64), read over a
//! plain HTTP/1.1 connection (chunked body).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::{ReaderOutcome, Tally, wall_us};

/// The event stream URL of the document a y-websocket URL of yrelay names
/// (`ws://H/v1/ws/S/D` → `http://H/v1/docs/S/D/events`).
pub fn events_url(ws_url: &str) -> Result<String, String> {
    let rest = ws_url
        .strip_prefix("ws://")
        .ok_or("SSE readers need a ws:// URL of yrelay (no TLS in the bench)")?;
    let (host, path) = rest.split_once('/').ok_or("no path in the URL")?;
    let doc = path
        .strip_prefix("v1/ws/")
        .ok_or("SSE readers need yrelay's /v1/ws/{space}/{doc} URLs")?;
    Ok(format!("http://{host}/v1/docs/{doc}/events"))
}

fn decode(data: &str) -> Result<Vec<u8>, String> {
    STANDARD.decode(data).map_err(|e| e.to_string())
}

/// Reads the event stream until every item arrived.
pub async fn read(
    url: String,
    updates: usize,
    synced: tokio::sync::mpsc::Sender<()>,
) -> Result<ReaderOutcome, String> {
    let (host, path) = url
        .strip_prefix("http://")
        .and_then(|r| r.split_once('/'))
        .ok_or("SSE reader URLs are http://HOST/PATH")?;
    let stream = TcpStream::connect(host)
        .await
        .map_err(|e| format!("reader connect: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let request =
        format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n");
    let io = |e: std::io::Error| e.to_string();
    reader
        .get_mut()
        .write_all(request.as_bytes())
        .await
        .map_err(io)?;
    let mut line = String::new();
    reader.read_line(&mut line).await.map_err(io)?;
    if !line.contains(" 200 ") {
        return Err(format!("event stream refused: {}", line.trim()));
    }
    while line != "\r\n" {
        line.clear();
        if reader.read_line(&mut line).await.map_err(io)? == 0 {
            return Err("event stream ended in its headers".into());
        }
    }
    let mut tally = Tally::new(updates)?;
    let mut buffer = String::new();
    while !tally.done() {
        // One chunk of the chunked body.
        line.clear();
        reader.read_line(&mut line).await.map_err(io)?;
        let size = usize::from_str_radix(line.trim(), 16).map_err(|_| "bad chunk size")?;
        if size == 0 {
            return Err("event stream ended".into());
        }
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk).await.map_err(io)?;
        let now = wall_us();
        chunk.truncate(size);
        buffer.push_str(&String::from_utf8(chunk).map_err(|e| e.to_string())?);
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut event, mut data) = ("", String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                }
            }
            match event {
                "sync" => {
                    let sync: serde_json::Value =
                        serde_json::from_str(&data).map_err(|e| e.to_string())?;
                    tally.apply(&decode(sync["update"].as_str().unwrap_or_default())?)?;
                    let _ = synced.send(()).await;
                }
                "update" => tally.apply(&decode(&data)?)?,
                "deleted" => return Err("the document was deleted".into()),
                _ => {}
            }
        }
        tally.record(now)?;
    }
    tally.finish()
}
