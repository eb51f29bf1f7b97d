//! The y-protocols messages spoken by y-websocket clients (sync, awareness,
//! auth, queryAwareness, and y-sweet's sync status), on top of `yrs::sync`'s
//! tags and lib0 encoding.
//!
//! Incoming frames are decoded into [`ClientMessage`]s that keep the raw bytes
//! the server relays (awareness updates are validated, then relayed unchanged).
//! Outgoing messages are encoded one per frame (y-websocket decodes only the
//! first message of a frame).

use yrs::StateVector;
use yrs::encoding::read::{Cursor, Read};
use yrs::encoding::write::Write;
use yrs::sync::AwarenessUpdate;
use yrs::sync::protocol::{
    MSG_AUTH, MSG_AWARENESS, MSG_QUERY_AWARENESS, MSG_SYNC, MSG_SYNC_STEP_1, MSG_SYNC_STEP_2,
    MSG_SYNC_UPDATE, PERMISSION_DENIED,
};
use yrs::updates::decoder::Decode;

/// Why an incoming frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("empty frame")]
    Empty,
    #[error("malformed {0} message")]
    Malformed(&'static str),
    #[error("unknown message type {0}")]
    UnknownType(u64),
    #[error("unknown sync message type {0}")]
    UnknownSyncType(u64),
    #[error("{0} message: its length overflows 32 bits")]
    LengthOverflow(&'static str),
}

/// A length-prefixed buffer of a `what` message. yrs reads the length as a
/// u32 that silently wraps: 2^32 + 5 read as 5, and the rest of the bytes
/// then went for another message, named wrongly in the refusal.
fn read_buf<'c>(cursor: &'c mut Cursor<'_>, what: &'static str) -> Result<&'c [u8], FrameError> {
    let mut len: u64 = 0;
    let mut shift = 0u32;
    loop {
        let byte = cursor.read_u8().map_err(|_| FrameError::Malformed(what))?;
        len |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            break;
        }
        shift += 7;
        if shift > 28 {
            return Err(FrameError::LengthOverflow(what));
        }
    }
    let len = u32::try_from(len).map_err(|_| FrameError::LengthOverflow(what))?;
    cursor
        .read_exact(len as usize)
        .map_err(|_| FrameError::Malformed(what))
}

/// One y-protocols message received from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    /// "Here is my state vector, send me what I miss."
    SyncStep1(StateVector),
    /// The answer to our SyncStep1: an update (v1) with what we miss.
    SyncStep2(Vec<u8>),
    /// An incremental update (v1).
    Update(Vec<u8>),
    /// An awareness update, validated; `raw` is relayed unchanged.
    Awareness {
        raw: Vec<u8>,
        update: AwarenessUpdate,
    },
    /// "Send me every awareness state you know."
    QueryAwareness,
    /// An auth message: `Some(reason)` when permission is denied.
    Auth(Option<String>),
    /// y-sweet's "sync status" (type 102): an opaque payload (the client's
    /// local version), echoed once what the client sent before it is saved.
    SyncStatus(Vec<u8>),
}

/// y-sweet's sync-status message type.
pub const MSG_SYNC_STATUS: u64 = 102;

/// Decodes every message of one frame (stock clients send one per frame; a
/// frame with several is accepted too).
pub fn decode_frame(frame: &[u8]) -> Result<Vec<ClientMessage>, FrameError> {
    if frame.is_empty() {
        return Err(FrameError::Empty);
    }
    let mut cursor = Cursor::new(frame);
    let mut messages = Vec::with_capacity(1);
    while cursor.has_content() {
        messages.push(decode_message(&mut cursor)?);
    }
    Ok(messages)
}

fn decode_message(cursor: &mut Cursor<'_>) -> Result<ClientMessage, FrameError> {
    let tag: u64 = cursor
        .read_var()
        .map_err(|_| FrameError::Malformed("y-protocols"))?;
    match tag {
        t if t == MSG_SYNC as u64 => {
            let kind: u64 = cursor
                .read_var()
                .map_err(|_| FrameError::Malformed("sync"))?;
            let buf = read_buf(cursor, "sync")?;
            match kind {
                k if k == MSG_SYNC_STEP_1 as u64 => StateVector::decode_v1(buf)
                    .map(ClientMessage::SyncStep1)
                    .map_err(|_| FrameError::Malformed("sync step 1 state vector")),
                k if k == MSG_SYNC_STEP_2 as u64 => Ok(ClientMessage::SyncStep2(buf.to_vec())),
                k if k == MSG_SYNC_UPDATE as u64 => Ok(ClientMessage::Update(buf.to_vec())),
                k => Err(FrameError::UnknownSyncType(k)),
            }
        }
        t if t == MSG_AWARENESS as u64 => {
            let raw = read_buf(cursor, "awareness")?;
            let update = decode_awareness(raw)?;
            Ok(ClientMessage::Awareness {
                raw: raw.to_vec(),
                update,
            })
        }
        t if t == MSG_AUTH as u64 => {
            let flag: u8 = cursor
                .read_var()
                .map_err(|_| FrameError::Malformed("auth"))?;
            if flag != PERMISSION_DENIED {
                return Ok(ClientMessage::Auth(None));
            }
            let reason = cursor
                .read_string()
                .map_err(|_| FrameError::Malformed("auth"))?;
            Ok(ClientMessage::Auth(Some(reason.to_owned())))
        }
        t if t == MSG_QUERY_AWARENESS as u64 => Ok(ClientMessage::QueryAwareness),
        MSG_SYNC_STATUS => {
            let payload = read_buf(cursor, "sync status")?;
            Ok(ClientMessage::SyncStatus(payload.to_vec()))
        }
        t => Err(FrameError::UnknownType(t)),
    }
}

/// Decodes an awareness update (the payload of an awareness message), checking
/// that every state is JSON so that what is relayed can be read by clients.
pub fn decode_awareness(raw: &[u8]) -> Result<AwarenessUpdate, FrameError> {
    // yrs asserts (in debug builds) that client ids fit in 53 bits.
    let decoded = std::panic::catch_unwind(|| AwarenessUpdate::decode_v1(raw));
    let update = match decoded {
        Ok(Ok(update)) => update,
        _ => return Err(FrameError::Malformed("awareness")),
    };
    for entry in update.clients.values() {
        if serde_json_is_invalid(&entry.json) {
            return Err(FrameError::Malformed("awareness state JSON"));
        }
    }
    Ok(update)
}

fn serde_json_is_invalid(json: &str) -> bool {
    yrs::Any::from_json(json).is_err()
}

fn sync_message(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(payload.len() + 8);
    buf.write_var(MSG_SYNC);
    buf.write_var(kind);
    buf.write_buf(payload);
    buf
}

/// SyncStep1 carrying the server's state vector (v1).
pub fn encode_sync_step1(state_vector: &[u8]) -> Vec<u8> {
    sync_message(MSG_SYNC_STEP_1, state_vector)
}

/// SyncStep2 carrying the diff the client misses.
pub fn encode_sync_step2(update: &[u8]) -> Vec<u8> {
    sync_message(MSG_SYNC_STEP_2, update)
}

/// An incremental update relayed to a client.
pub fn encode_update(update: &[u8]) -> Vec<u8> {
    sync_message(MSG_SYNC_UPDATE, update)
}

/// An awareness message around an (already encoded) awareness update.
pub fn encode_awareness(raw: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(raw.len() + 6);
    buf.write_var(MSG_AWARENESS);
    buf.write_buf(raw);
    buf
}

/// The answer to a sync-status message: its payload, unchanged.
pub fn encode_sync_status(payload: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(payload.len() + 4);
    buf.write_var(MSG_SYNC_STATUS);
    buf.write_buf(payload);
    buf
}

/// The auth message telling a client that it may not write.
pub fn encode_permission_denied(reason: &str) -> Vec<u8> {
    let mut buf = Vec::with_capacity(reason.len() + 4);
    buf.write_var(MSG_AUTH);
    buf.write_var(PERMISSION_DENIED);
    buf.write_string(reason);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use yrs::sync::{Message, SyncMessage};
    use yrs::updates::encoder::Encode;
    use yrs::{Doc, ReadTxn, Text, Transact};

    fn sample_update() -> Vec<u8> {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        text.insert(&mut doc.transact_mut(), 0, "hello");
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    #[test]
    fn encodes_like_yrs() {
        let update = sample_update();
        assert_eq!(
            encode_update(&update),
            Message::Sync(SyncMessage::Update(update.clone())).encode_v1()
        );
        assert_eq!(
            encode_sync_step2(&update),
            Message::Sync(SyncMessage::SyncStep2(update.clone())).encode_v1()
        );
        let sv = StateVector::default();
        assert_eq!(
            encode_sync_step1(&sv.encode_v1()),
            Message::Sync(SyncMessage::SyncStep1(sv)).encode_v1()
        );
        assert_eq!(
            encode_permission_denied("read-only"),
            Message::Auth(Some("read-only".into())).encode_v1()
        );
    }

    /// A length of 2^32 + 5 was read as 5 (yrs's u32 wraps); the bytes
    /// after went for another message and the refusal named the wrong one.
    #[test]
    fn a_length_past_32_bits_is_refused_as_such() {
        let mut frame = vec![0, 2, 0x85, 0x80, 0x80, 0x80, 0x10];
        frame.extend_from_slice(&[0u8; 16]);
        let err = decode_frame(&frame).unwrap_err();
        assert!(matches!(err, FrameError::LengthOverflow(_)), "{err:?}");
        assert!(err.to_string().contains("overflows 32 bits"), "{err}");
    }

    #[test]
    fn decodes_what_clients_send() {
        let update = sample_update();
        let frame = Message::Sync(SyncMessage::Update(update.clone())).encode_v1();
        assert_eq!(
            decode_frame(&frame).unwrap(),
            vec![ClientMessage::Update(update)]
        );
        let mut awareness = yrs::sync::Awareness::new(Doc::new());
        awareness
            .set_local_state(serde_json::json!({"user": "ann"}))
            .unwrap();
        let au = awareness.update().unwrap();
        let frame = Message::Awareness(au.clone()).encode_v1();
        match &decode_frame(&frame).unwrap()[..] {
            [ClientMessage::Awareness { raw, update }] => {
                assert_eq!(raw, &au.encode_v1());
                assert_eq!(update, &au);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            decode_frame(&[3]).unwrap(),
            vec![ClientMessage::QueryAwareness]
        );
        assert_eq!(
            decode_frame(&encode_permission_denied("read-only")).unwrap(),
            vec![ClientMessage::Auth(Some("read-only".into()))]
        );
        // y-sweet: 102, then its local version as a length-prefixed buffer.
        assert_eq!(
            decode_frame(&[102, 1, 7]).unwrap(),
            vec![ClientMessage::SyncStatus(vec![7])]
        );
        assert_eq!(encode_sync_status(&[7]), vec![102, 1, 7]);
    }

    #[test]
    fn rejects_bad_frames() {
        assert_eq!(decode_frame(&[]), Err(FrameError::Empty));
        assert_eq!(decode_frame(&[9, 0]), Err(FrameError::UnknownType(9)));
        assert_eq!(
            decode_frame(&[0, 7, 0]),
            Err(FrameError::UnknownSyncType(7))
        );
        assert!(matches!(
            decode_frame(&[0, 2, 50, 1]),
            Err(FrameError::Malformed(_))
        ));
        // A sync length of 2^32 + 2: named as such, not wrapped to 2.
        let mut wrapped = vec![0, 2];
        wrapped.write_var((1u64 << 32) + 2);
        wrapped.extend_from_slice(&[0, 0, 9, 9]);
        assert_eq!(
            decode_frame(&wrapped),
            Err(FrameError::LengthOverflow("sync"))
        );
        // awareness whose state is not JSON
        let mut raw = Vec::new();
        raw.write_var(1u32);
        raw.write_var(7u64);
        raw.write_var(1u32);
        raw.write_string("{not json");
        assert!(matches!(
            decode_frame(&encode_awareness(&raw)),
            Err(FrameError::Malformed(_))
        ));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_frame(&bytes);
        }
    }
}
