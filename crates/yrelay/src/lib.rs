//! yrelay: a real-time sync server for Yjs documents.
//!
//! Dependencies point one way: `transport` → `hub` → (`store`, `log`);
//! `vocab` holds the types they all share, `state` what request handlers
//! reach.
//! `yrelay_protocol` holds the pure codecs every layer may use.

pub mod api;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod compactor;
pub mod config;
pub mod deadline;
pub mod edge;
pub mod hooks;
pub mod http_error;
pub mod http_serve;
pub mod hub;
pub mod inspect;
pub mod log;
pub mod metrics;
pub mod revokes;
pub mod server;
pub mod settings;
pub mod state;
pub mod store;
pub mod tls;
pub mod transport;
pub mod vocab;
