//! The Hocuspocus wire protocol (`@hocuspocus/provider` 3.x and 4.x): every
//! frame starts with the document's name (a lib0 string; with the 4.x
//! `sessionAwareness` option `{name}\0{session}`), then a message type and
//! its body. Sync, awareness and query-awareness bodies are y-protocols'
//! ([`crate::sync`]); the rest is Hocuspocus's own. A bare `[9]` (ping) or
//! `[10]` (pong) frame carries no name.

use yrs::encoding::read::{Cursor, Read};
use yrs::encoding::write::Write;

use crate::sync::{self, ClientMessage, FrameError};

/// Hocuspocus message types.
pub const SYNC: u8 = 0;
pub const AWARENESS: u8 = 1;
pub const AUTH: u8 = 2;
pub const QUERY_AWARENESS: u8 = 3;
pub const STATELESS: u8 = 5;
pub const BROADCAST_STATELESS: u8 = 6;
pub const CLOSE: u8 = 7;
pub const SYNC_STATUS: u8 = 8;
pub const PING: u8 = 9;
pub const PONG: u8 = 10;

/// Auth message sub-types.
const AUTH_TOKEN: u8 = 0;
const AUTH_PERMISSION_DENIED: u8 = 1;
const AUTH_AUTHENTICATED: u8 = 2;

/// Longest document name (plus session id) accepted.
pub const MAX_NAME: usize = 1024;

/// One message from a provider, after its document name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Sync, awareness or query-awareness, as y-protocols has them.
    Yjs(ClientMessage),
    /// The provider's token (empty when it has none) and its version.
    Auth {
        token: String,
        version: Option<String>,
    },
    Stateless(String),
    /// The provider detaches from the document.
    Close,
}

/// One frame from a provider, its message not yet decoded (a document's
/// messages are decoded only once the socket may use the document).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A message about the document whose routing key is `name` (answered
    /// under the same key).
    Doc { name: String, body: &'a [u8] },
    /// The answer to our ping, or a ping (no document).
    Keepalive,
}

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HocuspocusError {
    #[error("frame without a document name")]
    NoName,
    #[error("document name is not UTF-8")]
    NameNotUtf8,
    #[error("document name longer than {MAX_NAME} bytes")]
    NameTooLong,
    #[error("{name:?}: {error}")]
    Message { name: String, error: FrameError },
    #[error("{name:?}: broadcast-stateless is the server's own message")]
    ServerOnly { name: String },
}

/// The routing key's document name (before `\0` and a session id).
pub fn document_name(key: &str) -> &str {
    key.split_once('\0').map_or(key, |(name, _)| name)
}

/// Reads a frame's routing key; its message stays undecoded.
pub fn split_frame(frame: &[u8]) -> Result<Frame<'_>, HocuspocusError> {
    if let [PING | PONG] = frame {
        return Ok(Frame::Keepalive);
    }
    let mut cursor = Cursor::new(frame);
    let name = read_name(&mut cursor)?;
    Ok(Frame::Doc {
        name,
        body: &frame[cursor.next..],
    })
}

/// Whether a message is the provider's token (the one message read before
/// the document is authorized).
pub fn is_auth(body: &[u8]) -> bool {
    body.first() == Some(&AUTH)
}

/// Decodes the message `body` of the document `name`.
pub fn decode_message(name: &str, body: &[u8]) -> Result<Message, HocuspocusError> {
    let mut cursor = Cursor::new(body);
    let malformed = |what| HocuspocusError::Message {
        name: name.to_owned(),
        error: FrameError::Malformed(what),
    };
    let tag: u64 = cursor.read_var().map_err(|_| malformed("hocuspocus"))?;
    let message = match tag {
        t if t == u64::from(SYNC)
            || t == u64::from(AWARENESS)
            || t == u64::from(QUERY_AWARENESS) =>
        {
            // A y-protocols message from the tag on.
            let mut messages =
                sync::decode_frame(body).map_err(|error| HocuspocusError::Message {
                    name: name.to_owned(),
                    error,
                })?;
            if messages.len() != 1 {
                return Err(malformed("hocuspocus (one message per frame)"));
            }
            Message::Yjs(messages.remove(0))
        }
        t if t == u64::from(AUTH) => {
            let kind: u64 = cursor.read_var().map_err(|_| malformed("auth"))?;
            if kind != u64::from(AUTH_TOKEN) {
                return Err(malformed("auth (only a token is sent by providers)"));
            }
            let token = read_string(&mut cursor).ok_or_else(|| malformed("auth"))?;
            let version = if cursor.has_content() {
                Some(read_string(&mut cursor).ok_or_else(|| malformed("auth"))?)
            } else {
                None
            };
            Message::Auth { token, version }
        }
        t if t == u64::from(STATELESS) => {
            Message::Stateless(read_string(&mut cursor).ok_or_else(|| malformed("stateless"))?)
        }
        t if t == u64::from(BROADCAST_STATELESS) => {
            return Err(HocuspocusError::ServerOnly {
                name: name.to_owned(),
            });
        }
        t if t == u64::from(CLOSE) => Message::Close,
        t => {
            return Err(HocuspocusError::Message {
                name: name.to_owned(),
                error: FrameError::UnknownType(t),
            });
        }
    };
    Ok(message)
}

fn read_name(cursor: &mut Cursor<'_>) -> Result<String, HocuspocusError> {
    let len: u64 = cursor.read_var().map_err(|_| HocuspocusError::NoName)?;
    if len > MAX_NAME as u64 {
        return Err(HocuspocusError::NameTooLong);
    }
    let bytes = cursor
        .read_exact(len as usize)
        .map_err(|_| HocuspocusError::NoName)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| HocuspocusError::NameNotUtf8)
}

/// A lib0 string (length-prefixed UTF-8), refusing lengths past the bytes.
fn read_string(cursor: &mut Cursor<'_>) -> Option<String> {
    let len: u64 = cursor.read_var().ok()?;
    if len > (cursor.buf.len() - cursor.next) as u64 {
        return None;
    }
    let bytes = cursor.read_exact(len as usize).ok()?;
    String::from_utf8(bytes.to_vec()).ok()
}

/// A frame for the document `key`: its name, then `body` (a y-protocols
/// message, or one of the encoders below).
pub fn frame(key: &str, body: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(key.len() + body.len() + 4);
    buf.write_string(key);
    buf.extend_from_slice(body);
    buf
}

/// What a provider sends first for a document: its token (empty when it
/// has none) and its version.
pub fn token(token: &str, version: &str) -> Vec<u8> {
    let mut buf = Vec::with_capacity(token.len() + version.len() + 6);
    buf.write_var(AUTH);
    buf.write_var(AUTH_TOKEN);
    buf.write_string(token);
    buf.write_string(version);
    buf
}

/// "You are in": `read-write` or `readonly`.
pub fn authenticated(read_only: bool) -> Vec<u8> {
    let mut buf = Vec::new();
    buf.write_var(AUTH);
    buf.write_var(AUTH_AUTHENTICATED);
    buf.write_string(if read_only { "readonly" } else { "read-write" });
    buf
}

/// "You may not open this document", and why.
pub fn permission_denied(reason: &str) -> Vec<u8> {
    let mut buf = Vec::new();
    buf.write_var(AUTH);
    buf.write_var(AUTH_PERMISSION_DENIED);
    buf.write_string(reason);
    buf
}

/// Whether an update was saved (`true`) or refused (`false`).
pub fn sync_status(saved: bool) -> Vec<u8> {
    vec![SYNC_STATUS, u8::from(saved)]
}

pub fn stateless(payload: &str) -> Vec<u8> {
    let mut buf = Vec::with_capacity(payload.len() + 4);
    buf.write_var(STATELESS);
    buf.write_string(payload);
    buf
}

/// The server ends its side of one document.
pub fn close(reason: &str) -> Vec<u8> {
    let mut buf = Vec::new();
    buf.write_var(CLOSE);
    buf.write_string(reason);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn doc_frame(name: &str, body: &[u8]) -> Vec<u8> {
        frame(name, body)
    }

    /// A frame as the server reads it: the key, then the message.
    #[derive(Debug, PartialEq)]
    enum Decoded {
        Doc { name: String, message: Message },
        Keepalive,
    }

    fn decode_frame(frame: &[u8]) -> Result<Decoded, HocuspocusError> {
        Ok(match split_frame(frame)? {
            Frame::Keepalive => Decoded::Keepalive,
            Frame::Doc { name, body } => Decoded::Doc {
                message: decode_message(&name, body)?,
                name,
            },
        })
    }

    #[test]
    fn decodes_what_providers_send() {
        let update = sync::encode_update(&[0, 0]);
        assert_eq!(
            decode_frame(&doc_frame("space/doc", &update)).unwrap(),
            Decoded::Doc {
                name: "space/doc".into(),
                message: Message::Yjs(ClientMessage::Update(vec![0, 0])),
            }
        );
        // Auth as the provider writes it: name, 2, 0, token, version.
        let mut auth = vec![AUTH, AUTH_TOKEN];
        auth.write_string("tok");
        auth.write_string("4.8.0");
        assert_eq!(token("tok", "4.8.0"), auth);
        assert_eq!(
            decode_frame(&doc_frame("d\0s1", &auth)).unwrap(),
            Decoded::Doc {
                name: "d\0s1".into(),
                message: Message::Auth {
                    token: "tok".into(),
                    version: Some("4.8.0".into())
                },
            }
        );
        assert_eq!(document_name("d\0s1"), "d");
        let mut auth3 = vec![AUTH, AUTH_TOKEN];
        auth3.write_string("");
        assert!(matches!(
            decode_frame(&doc_frame("d", &auth3)).unwrap(),
            Decoded::Doc {
                message: Message::Auth { version: None, .. },
                ..
            }
        ));
        assert_eq!(
            decode_frame(&doc_frame("d", &stateless("hi"))).unwrap(),
            Decoded::Doc {
                name: "d".into(),
                message: Message::Stateless("hi".into())
            }
        );
        assert_eq!(
            decode_frame(&doc_frame("d", &[CLOSE])).unwrap(),
            Decoded::Doc {
                name: "d".into(),
                message: Message::Close
            }
        );
        assert_eq!(decode_frame(&[PONG]).unwrap(), Decoded::Keepalive);
        assert_eq!(
            decode_frame(&doc_frame("d", &[QUERY_AWARENESS])).unwrap(),
            Decoded::Doc {
                name: "d".into(),
                message: Message::Yjs(ClientMessage::QueryAwareness)
            }
        );
    }

    #[test]
    fn refuses_bad_frames() {
        assert_eq!(decode_frame(&[]), Err(HocuspocusError::NoName));
        assert_eq!(decode_frame(&[5, b'a']), Err(HocuspocusError::NoName));
        assert_eq!(
            decode_frame(&[2, 0xff, 0xfe, 0]),
            Err(HocuspocusError::NameNotUtf8)
        );
        assert!(matches!(
            decode_frame(&doc_frame("d", &[42])),
            Err(HocuspocusError::Message {
                error: FrameError::UnknownType(42),
                ..
            })
        ));
        assert!(matches!(
            decode_frame(&doc_frame("d", &[SYNC, 0, 0x80])),
            Err(HocuspocusError::Message { .. })
        ));
        assert!(matches!(
            decode_frame(&doc_frame("d", &[BROADCAST_STATELESS, 0])),
            Err(HocuspocusError::ServerOnly { .. })
        ));
        // A stateless string longer than the frame.
        assert!(matches!(
            decode_frame(&doc_frame("d", &[STATELESS, 0x7f, b'x'])),
            Err(HocuspocusError::Message { .. })
        ));
        let mut long = Vec::new();
        long.write_var(MAX_NAME as u64 + 1);
        assert_eq!(decode_frame(&long), Err(HocuspocusError::NameTooLong));
    }

    #[test]
    fn encodes_what_providers_read() {
        assert_eq!(frame("d", &sync_status(true)), vec![1, b'd', 8, 1]);
        assert_eq!(
            frame("d", &authenticated(true)),
            [&[1, b'd', 2, 2, 8][..], b"readonly"].concat()
        );
        let mut expected = vec![1, b'd', 2, 1, 6];
        expected.extend_from_slice(b"denied");
        assert_eq!(frame("d", &permission_denied("denied")), expected);
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_frame(&bytes);
        }
    }
}
