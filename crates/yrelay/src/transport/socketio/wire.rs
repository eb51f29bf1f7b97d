//! The wire: payloads, versions, spaces and the error acks every event answers with.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::{Value, json};
use socketioxide::extract::SocketRef;
use yrelay_protocol::DocAddress;

use crate::hub::HubError;
use crate::metrics;

/// An ack: `{data}` or `{error}`.
pub(super) type Reply = Result<Value, SioError>;

/// Every refusal an event is answered with, as AFFiNE's gateway words it:
/// `{error: {status, code, type, name, message, data}}`.
#[derive(Debug, Clone)]
pub(super) struct SioError {
    status: u16,
    name: &'static str,
    message: String,
    data: Value,
}

impl SioError {
    /// The ack that carries it.
    pub(super) fn to_ack(&self) -> Value {
        let kind = match self.status {
            400 | 413 => "INVALID_INPUT",
            401 => "AUTHENTICATION_REQUIRED",
            403 => "ACTION_FORBIDDEN",
            404 | 410 => "RESOURCE_NOT_FOUND",
            429 => "TOO_MANY_REQUESTS",
            _ => "INTERNAL_SERVER_ERROR",
        };
        json!({ "error": {
            "status": self.status, "code": self.name, "type": kind, "name": self.name,
            "message": self.message, "data": self.data,
        }})
    }
}

pub(super) fn error(
    status: u16,
    name: &'static str,
    message: impl Into<String>,
    data: Value,
) -> SioError {
    SioError {
        status,
        name,
        message: message.into(),
        data,
    }
}

pub(super) fn bad_request(message: impl Into<String>) -> SioError {
    metrics::rejected("bad_request");
    error(400, "BAD_REQUEST", message, json!({}))
}

/// Which protocol room (and broadcast shape) a client version gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Protocol {
    /// 0.25.x: one `space:broadcast-doc-update` per update.
    V025,
    /// 0.26.0 and later (prereleases included): `space:broadcast-doc-updates`.
    V026,
    /// 0.27.5 and later, joined with `space:join-batch`: updates of the
    /// documents it subscribed to, and an invalidation of the space after
    /// any change.
    Batch,
}

/// Whether `version` is 0.27.5 or later (prereleases included): a client
/// that may join with `space:join-batch`.
pub(super) fn batch_version(version: &str) -> Result<bool, SioError> {
    let core = version.split(['-', '+']).next().unwrap_or_default();
    let parts: Result<Vec<u64>, _> = core.split('.').map(str::parse::<u64>).collect();
    match parts.as_deref() {
        Ok([major, minor, rest @ ..]) => {
            let patch = rest.first().copied().unwrap_or(0);
            Ok((*major, *minor, patch) >= (0, 27, 5))
        }
        _ => Err(bad_request(format!(
            "clientVersion {version:?} is not a version"
        ))),
    }
}

/// The room of the sockets subscribed to `addr` (batch protocol).
pub(super) fn subscribers_room(space: &SpaceRef, addr: &DocAddress) -> String {
    space.room(&format!("{}:subscribers", addr.doc()))
}

/// `None` for versions below 0.25.0 (refused).
pub(super) fn protocol_for(version: &str) -> Result<Option<Protocol>, SioError> {
    let core = version.split(['-', '+']).next().unwrap_or_default();
    let mut parts = core.split('.').map(str::parse::<u64>);
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => Ok(match (major, minor) {
            (0, m) if m < 25 => None,
            (0, 25) => Some(Protocol::V025),
            _ => Some(Protocol::V026),
        }),
        _ => Err(bad_request(format!(
            "clientVersion {version:?} is not a version"
        ))),
    }
}

/// The `{spaceType, spaceId}` every event carries.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct SpaceRef {
    pub(super) space_type: SpaceType,
    pub(super) space_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum SpaceType {
    Workspace,
    Userspace,
}

impl SpaceRef {
    pub(super) fn name(&self) -> String {
        format!("{}:{}", space_type(self), self.space_id)
    }

    /// The space's id on the other transports.
    pub(super) fn space(&self) -> String {
        match self.space_type {
            SpaceType::Workspace => self.space_id.clone(),
            SpaceType::Userspace => format!("@{}", self.space_id),
        }
    }

    pub(super) fn room(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.name())
    }

    /// The document `doc_id` (legacy forms normalised) of this space.
    pub(super) fn address(&self, doc_id: &str) -> Result<DocAddress, SioError> {
        let id = &self.space_id;
        let doc = doc_id
            .strip_prefix(&format!("ws:{id}:page:"))
            .or_else(|| doc_id.strip_prefix(&format!("ws:{id}:")))
            .or_else(|| doc_id.strip_prefix(&format!("{id}:")))
            .unwrap_or(doc_id);
        DocAddress::parse(&self.space(), doc).map_err(|e| bad_request(e.to_string()))
    }
}

pub(super) fn parse<T: serde::de::DeserializeOwned>(data: Value) -> Result<T, SioError> {
    serde_json::from_value(data).map_err(|e| bad_request(format!("bad payload: {e}")))
}

pub(super) fn base64(field: &str, text: &str) -> Result<Vec<u8>, SioError> {
    STANDARD
        .decode(text)
        .map_err(|e| bad_request(format!("{field} is not base64: {e}")))
}

/// The answer to a client older than 0.25.0; the socket is disconnected
/// once this ack is sent.
pub(super) fn too_old(socket: &SocketRef) -> Value {
    metrics::rejected("client_too_old");
    json!({ "clientId": socket.id.to_string(), "success": false })
}

pub(super) fn internal(e: HubError) -> SioError {
    error(500, "INTERNAL_SERVER_ERROR", e.to_string(), json!({}))
}

pub(super) fn space_type(space: &SpaceRef) -> &'static str {
    match space.space_type {
        SpaceType::Workspace => "workspace",
        SpaceType::Userspace => "userspace",
    }
}

/// The `{spaceType, spaceId, docId}` a document's events start with.
pub(super) fn doc_event(space: &SpaceRef, addr: &DocAddress) -> Value {
    json!({ "spaceType": space_type(space), "spaceId": space.space_id, "docId": addr.doc() })
}

pub(super) fn awareness_room(space: &SpaceRef, addr: &DocAddress) -> String {
    space.room(&format!("{}:awareness", addr.doc()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn versions_pick_the_protocol() {
        assert_eq!(protocol_for("0.24.9").unwrap(), None);
        assert_eq!(protocol_for("0.25.0").unwrap(), Some(Protocol::V025));
        assert_eq!(protocol_for("0.25.7-beta.1").unwrap(), Some(Protocol::V025));
        assert_eq!(
            protocol_for("0.26.0-canary.3").unwrap(),
            Some(Protocol::V026)
        );
        assert_eq!(protocol_for("1.2.3").unwrap(), Some(Protocol::V026));
        assert!(protocol_for("latest").is_err());
    }

    #[test]
    pub(super) fn legacy_doc_ids_normalise() {
        let space = SpaceRef {
            space_type: SpaceType::Workspace,
            space_id: "ws1".into(),
        };
        for id in ["page1", "ws:ws1:page1", "ws1:page1", "ws:ws1:page:page1"] {
            assert_eq!(space.address(id).unwrap().to_string(), "ws1/page1");
        }
        let mine = SpaceRef {
            space_type: SpaceType::Userspace,
            space_id: "ann".into(),
        };
        assert_eq!(mine.address("x").unwrap().to_string(), "@ann/x");
    }
}
