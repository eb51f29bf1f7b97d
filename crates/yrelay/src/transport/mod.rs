//! Wire protocols. Each turns frames into hub calls and hub events into
//! frames; none holds CRDT logic or talks to the store or the log.

pub mod hocuspocus;
pub mod socketio;
pub mod sse;
pub mod ws;
