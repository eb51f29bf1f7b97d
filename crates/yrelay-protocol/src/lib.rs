//! The pure part of yrelay: everything that turns bytes into meaning and back,
//! with no IO, so it can be tested (and property-tested) without sockets.
//!
//! - [`address`]: `{space}/{doc}` ids, validated once at the edge.
//! - [`sync`]: the y-protocols messages spoken by y-websocket clients.
//! - [`hocuspocus`]: the Hocuspocus framing around them (one socket, many documents).
//! - [`nesting`]: how deep a document's shared types nest, bounded.
//! - [`scan`]: the bounded walk that admits only what JavaScript `yjs` decodes.
//! - [`update`]: checking, merging and diffing Yjs v1 updates.
//! - [`json`]: a document's root types as JSON, and plain JSON as a new document.
//! - [`restore`]: the one update that brings a document back to an earlier state.

pub mod address;
pub mod hocuspocus;
pub mod json;
pub mod nesting;
pub mod restore;
pub mod scan;
pub mod sync;
pub mod update;

pub use address::{AddressError, DocAddress};
pub use yrs::StateVector;
