//! Access control: who may read or write which document.
//!
//! A request carries a JWT (`Authorization: Bearer`, `?token=`, or the
//! `yauth-<jwt>` WebSocket subprotocol; Socket.IO handshake auth). Its claims
//! are `sub`, `exp` and `access`, a list of `{space, doc, mode}` grants. A
//! space whose id is `@{user}` is that user's private space (userspace): its
//! owner may read and write it without a grant.
//!
//! A token that is not one of ours, or a cookie, goes to the app's auth
//! callback when one is configured ([`callback`]); its answer has the same
//! shape. Revokes ([`revoke`]) refuse tokens issued before them.
//!
//! With no key and no callback configured every request is allowed
//! (development); the server says so loudly when it starts. Transports ask
//! [`Auth::doc`] or [`Auth::space`] once per request or connection (a
//! long-lived connection keeps an [`Access`]) and map [`AuthError`] to their
//! own protocol's error in one place.

mod access;
mod callback;
mod keys;
mod revoke;

use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use yrelay_protocol::DocAddress;

use crate::clock::now_ms;

pub use access::Access;
pub use callback::Callback;
use keys::read;
pub use keys::{KeyError, SigningKey, mint};
pub use revoke::{Revocation, Revocations, Revoked};

/// What a request or connection presents: a token (`Authorization:
/// Bearer`, `?token=`, the `yauth-<jwt>` WebSocket subprotocol, Socket.IO
/// handshake auth, a Hocuspocus auth message), its cookies, and on which
/// transport (told to the auth callback).
#[derive(Debug, Clone)]
pub struct Credentials {
    pub token: Option<String>,
    /// The `Cookie` header, as sent.
    pub cookie: Option<String>,
    /// The subprotocol entry the token came in, if it did.
    pub subprotocol: Option<String>,
    pub transport: &'static str,
}

impl Default for Credentials {
    fn default() -> Self {
        Self {
            token: None,
            cookie: None,
            subprotocol: None,
            transport: "rest",
        }
    }
}

impl Credentials {
    /// The same credentials, told as coming over `transport`.
    pub fn via(mut self, transport: &'static str) -> Self {
        self.transport = transport;
        self
    }
}

/// What a grant allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Read and sync; awareness allowed; no updates.
    Ro,
    /// Read and write.
    Rw,
}

/// One entry of the `access` claim. `"*"` matches any space or doc.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub space: String,
    #[serde(default = "any")]
    pub doc: String,
    pub mode: Mode,
}

fn any() -> String {
    "*".into()
}

/// The claims yrelay reads from a token (or the auth callback answers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    /// Required in a token; optional in the callback's answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// When the token was issued (a revoke refuses tokens issued before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default)]
    pub access: Vec<Grant>,
    /// The app's callback answered these (a revoke asks it again instead
    /// of refusing them).
    #[serde(skip)]
    pub from_app: bool,
}

impl Claims {
    /// The best mode the claims give on a document (`None`: no access).
    pub fn doc_mode(&self, addr: &DocAddress) -> Option<Mode> {
        if self.owns(addr.space()) {
            return Some(Mode::Rw);
        }
        self.access
            .iter()
            .filter(|g| matches(&g.space, addr.space()) && matches(&g.doc, addr.doc()))
            .map(|g| g.mode)
            .max()
    }

    /// The best mode the claims give on a whole space (listing, events):
    /// only grants for every doc of the space (`doc: "*"`) count.
    pub fn space_mode(&self, space: &str) -> Option<Mode> {
        if self.owns(space) {
            return Some(Mode::Rw);
        }
        self.access
            .iter()
            .filter(|g| matches(&g.space, space) && g.doc == "*")
            .map(|g| g.mode)
            .max()
    }

    /// The best mode the claims give on anything in `space` (a whole-space
    /// grant or one of its documents): what joining a space needs, the
    /// documents themselves being checked one by one.
    pub fn member_mode(&self, space: &str) -> Option<Mode> {
        if self.owns(space) {
            return Some(Mode::Rw);
        }
        self.access
            .iter()
            .filter(|g| matches(&g.space, space))
            .map(|g| g.mode)
            .max()
    }

    /// Whether they have expired (with the leeway tokens are checked with).
    pub fn expired(&self) -> bool {
        self.exp
            .is_some_and(|exp| (exp + LEEWAY_SECS) as i64 * 1000 < now_ms())
    }

    fn owns(&self, space: &str) -> bool {
        userspace_owner(space) == Some(self.sub.as_str())
    }
}

/// The user a space belongs to, when it is a userspace (`@{user}`).
pub fn userspace_owner(space: &str) -> Option<&str> {
    space.strip_prefix('@').filter(|u| !u.is_empty())
}

fn matches(pattern: &str, id: &str) -> bool {
    pattern == "*" || pattern == id
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("a token is required (Authorization: Bearer, ?token=, or the yauth-<jwt> subprotocol)")]
    Missing,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid: {0}")]
    Invalid(String),
    #[error("the token gives no access to {0}")]
    Denied(String),
    #[error("the token gives read-only access to {0}")]
    ReadOnly(String),
    #[error("access to {0} was revoked: sign in again")]
    Revoked(String),
    #[error("access cannot be checked now (fail closed): {0}")]
    Unavailable(String),
}

impl AuthError {
    /// A stable code for JSON errors and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "AUTHENTICATION_REQUIRED",
            AuthError::Expired => "TOKEN_EXPIRED",
            AuthError::Invalid(_) => "INVALID_TOKEN",
            AuthError::Denied(_) => "ACCESS_DENIED",
            AuthError::ReadOnly(_) => "READ_ONLY",
            AuthError::Revoked(_) => "ACCESS_REVOKED",
            AuthError::Unavailable(_) => "AUTH_UNAVAILABLE",
        }
    }

    /// 401 when the caller must (re)authenticate, 403 when it may not.
    pub fn is_unauthenticated(&self) -> bool {
        matches!(
            self,
            AuthError::Missing | AuthError::Expired | AuthError::Invalid(_) | AuthError::Revoked(_)
        )
    }
}

/// Who is asking and what they may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permit {
    /// The token's subject; `None` with auth off.
    pub sub: Option<String>,
    pub mode: Mode,
    /// When the token expires (`exp`, seconds since the epoch); `None`
    /// with auth off.
    pub exp: Option<u64>,
}

impl Permit {
    pub fn can_write(&self) -> bool {
        self.mode == Mode::Rw
    }

    /// When a connection opened with this permit must end: once the token
    /// has expired (with the leeway a token is checked with at connect).
    pub fn expires(&self) -> Option<tokio::time::Instant> {
        let exp = self.exp?;
        let left_ms = (exp as i64 + LEEWAY_SECS as i64) * 1000 - now_ms();
        let left = std::time::Duration::from_millis(left_ms.max(0) as u64);
        Some(tokio::time::Instant::now() + left)
    }
}

/// Waits until `expires` (forever for `None`): the end of a connection
/// whose token expires.
pub async fn until(expires: Option<tokio::time::Instant>) {
    match expires {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Seconds of clock skew a token's `exp` and `nbf` are checked with.
const LEEWAY_SECS: u64 = 5;

/// Checks credentials: our tokens locally, anything else with the app's
/// callback (or allows everything when neither is configured).
pub struct Auth {
    verifier: Option<(DecodingKey, Validation)>,
    callback: Option<Callback>,
    pub revocations: Revocations,
}

/// How long revokes are kept by default (a token living longer than this
/// becomes valid again after it).
const REVOKES_KEPT_SECS: u64 = 86_400;

impl Auth {
    /// No key: every request is allowed.
    pub fn open() -> Self {
        Self::verifying(None)
    }

    fn verifying(verifier: Option<(DecodingKey, Validation)>) -> Self {
        Self {
            verifier,
            callback: None,
            revocations: Revocations::new(REVOKES_KEPT_SECS),
        }
    }

    /// HS256 tokens signed with `secret`.
    pub fn with_secret(secret: &str) -> Self {
        Self::verifying(Some((
            DecodingKey::from_secret(secret.as_bytes()),
            validation(&[Algorithm::HS256]),
        )))
    }

    /// RS256/ES256/EdDSA (and their relatives) tokens, checked with a PEM
    /// public key.
    pub fn with_public_key(path: &Path) -> Result<Self, KeyError> {
        let pem = read(path)?;
        let (key, algorithms): (DecodingKey, &[Algorithm]) =
            if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                (
                    key,
                    &[
                        Algorithm::RS256,
                        Algorithm::RS384,
                        Algorithm::RS512,
                        Algorithm::PS256,
                        Algorithm::PS384,
                        Algorithm::PS512,
                    ],
                )
            } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                (key, &[Algorithm::ES256, Algorithm::ES384])
            } else if let Ok(key) = DecodingKey::from_ed_pem(&pem) {
                (key, &[Algorithm::EdDSA])
            } else {
                return Err(KeyError::Unsupported(path.display().to_string()));
            };
        Ok(Self::verifying(Some((key, validation(algorithms)))))
    }

    /// Asks `callback` about credentials that are not one of our tokens.
    pub fn asking(mut self, callback: Callback) -> Self {
        self.callback = Some(callback);
        self
    }

    /// Keeps revokes for `secs` (default a day).
    pub fn keeping_revokes(mut self, secs: u64) -> Self {
        self.revocations = Revocations::new(secs);
        self
    }

    pub fn is_open(&self) -> bool {
        self.verifier.is_none() && self.callback.is_none()
    }

    /// The verified claims of one of our tokens (`None` with no key).
    pub fn verify(&self, token: Option<&str>) -> Result<Option<Claims>, AuthError> {
        let Some((key, validation)) = &self.verifier else {
            return Ok(None);
        };
        let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
        match jsonwebtoken::decode::<Claims>(token, key, validation) {
            Ok(data) if data.claims.sub.is_empty() => {
                Err(AuthError::Invalid("the subject (sub) is empty".into()))
            }
            Ok(data) => Ok(Some(data.claims)),
            Err(e) => Err(match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                jsonwebtoken::errors::ErrorKind::ImmatureSignature => {
                    AuthError::Invalid("the token is not valid yet (nbf)".into())
                }
                kind => AuthError::Invalid(format!("{kind:?}")),
            }),
        }
    }

    /// Who `who` is and what it may open (`None`: auth is off). Our tokens
    /// are checked here; anything else goes to the callback, asked about
    /// `space` (and `doc`) — none for a connection that opens many.
    pub async fn claims(
        &self,
        who: &Credentials,
        space: Option<&str>,
        doc: Option<&str>,
    ) -> Result<Option<Claims>, AuthError> {
        let token = who.token.as_deref().filter(|t| !t.is_empty());
        let local = match (&self.verifier, token) {
            (None, _) if self.callback.is_none() => return Ok(None),
            (Some(_), Some(_)) => Some(self.verify(token)),
            _ => None,
        };
        match (local, &self.callback) {
            (Some(Ok(claims)), _) => Ok(claims),
            // Signed by our key: it is ours, and it has expired.
            (Some(Err(AuthError::Expired)), _) => Err(AuthError::Expired),
            (Some(Err(e)), None) => Err(e),
            (None, None) => Err(AuthError::Missing),
            (_, Some(_)) if token.is_none() && who.cookie.is_none() => Err(AuthError::Missing),
            (_, Some(callback)) => callback.ask(who, space, doc).await.map(Some),
        }
    }

    /// What `who` may do on one document (at least read).
    pub async fn doc(&self, who: &Credentials, addr: &DocAddress) -> Result<Permit, AuthError> {
        let claims = self
            .claims(who, Some(addr.space()), Some(addr.doc()))
            .await?;
        self.doc_permit(claims.as_ref(), addr)
    }

    /// What `who` may do on one document, which must include writing
    /// (`ReadOnly` otherwise).
    pub async fn writer(&self, who: &Credentials, addr: &DocAddress) -> Result<Permit, AuthError> {
        let permit = self.doc(who, addr).await?;
        if !permit.can_write() {
            return Err(AuthError::ReadOnly(addr.to_string()));
        }
        Ok(permit)
    }

    /// What `who` may do on a whole space (at least read).
    pub async fn space(&self, who: &Credentials, space: &str) -> Result<Permit, AuthError> {
        let claims = self.claims(who, Some(space), None).await?;
        self.permit(
            claims.as_ref(),
            |c| c.space_mode(space),
            (space, None),
            || format!("space {space}"),
        )
    }

    /// Whether `who` may be a member of `space` (any access in it): the
    /// one decision for joining a space, on every transport.
    pub async fn member(&self, who: &Credentials, space: &str) -> Result<Permit, AuthError> {
        let claims = self.claims(who, Some(space), None).await?;
        self.member_permit(claims.as_ref(), space)
    }

    /// What claims already checked give on one document (a connection that
    /// opens many holds its claims).
    pub fn doc_permit(
        &self,
        claims: Option<&Claims>,
        addr: &DocAddress,
    ) -> Result<Permit, AuthError> {
        self.permit(
            claims,
            |c| c.doc_mode(addr),
            (addr.space(), Some(addr.doc())),
            || addr.to_string(),
        )
    }

    /// Whether claims already checked make a member of `space`.
    pub fn member_permit(&self, claims: Option<&Claims>, space: &str) -> Result<Permit, AuthError> {
        self.permit(
            claims,
            |c| c.member_mode(space),
            (space, None),
            || format!("space {space}"),
        )
    }

    /// Adds revokes (made here or read from the store): our tokens they
    /// cover are refused from now on, the callback's answers they cover
    /// are asked for again. Returns the ones not known before.
    pub fn revoke(&self, revoked: Vec<Revoked>) -> Vec<Revoked> {
        // Forgotten before the connections hear of them, so that they ask
        // the app, not the cache.
        if let Some(callback) = &self.callback {
            for r in revoked.iter().filter(|r| !self.revocations.knows(r.id)) {
                callback.forget(&r.what);
            }
        }
        self.revocations.add(revoked)
    }

    fn permit(
        &self,
        claims: Option<&Claims>,
        mode: impl FnOnce(&Claims) -> Option<Mode>,
        (space, doc): (&str, Option<&str>),
        what: impl FnOnce() -> String,
    ) -> Result<Permit, AuthError> {
        let Some(claims) = claims else {
            return Ok(Permit {
                sub: None,
                mode: Mode::Rw,
                exp: None,
            });
        };
        // Claims held by a connection are checked again: they may have
        // expired since.
        if claims.expired() {
            return Err(AuthError::Expired);
        }
        if !claims.from_app && self.revocations.refuses(claims, space, doc) {
            return Err(AuthError::Revoked(what()));
        }
        let mode = mode(claims).ok_or_else(|| AuthError::Denied(what()))?;
        Ok(Permit {
            sub: Some(claims.sub.clone()),
            mode,
            exp: claims.exp,
        })
    }
}

fn validation(algorithms: &[Algorithm]) -> Validation {
    let mut validation = Validation::new(algorithms[0]);
    validation.algorithms = algorithms.to_vec();
    // The same small leeway for `nbf` as for `exp` (clock skew).
    validation.leeway = LEEWAY_SECS;
    validation.validate_nbf = true;
    validation.validate_aud = false;
    validation.set_required_spec_claims(&["exp", "sub"]);
    validation
}

#[cfg(test)]
mod tests;
