//! Access control: who may read or write which document.
//!
//! A request carries a JWT (`Authorization: Bearer`, `?token=`, or the
//! `yauth-<jwt>` WebSocket subprotocol; Socket.IO handshake auth). Its claims
//! are `sub`, `exp` and `access`, a list of `{space, doc, mode}` grants. A
//! space whose id is `@{user}` is that user's private space (userspace): its
//! owner may read and write it without a grant.
//!
//! With no key configured every request is allowed (development); the server
//! says so loudly when it starts. Transports ask [`Auth::doc`] or
//! [`Auth::space`] once per request or connection and map [`AuthError`] to
//! their own protocol's error in one place.

use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use yrelay_protocol::DocAddress;

use crate::clock::now_ms;

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

/// The claims yrelay reads from a token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default)]
    pub access: Vec<Grant>,
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
        }
    }

    /// 401 when the caller must (re)authenticate, 403 when it may not.
    pub fn is_unauthenticated(&self) -> bool {
        matches!(
            self,
            AuthError::Missing | AuthError::Expired | AuthError::Invalid(_)
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

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0} holds no RSA, EC or Ed25519 key in PEM form")]
    Unsupported(String),
    #[error("cannot sign: {0}")]
    Sign(String),
}

/// Verifies tokens (or allows everything when no key is configured).
pub struct Auth {
    verifier: Option<(DecodingKey, Validation)>,
}

impl Auth {
    /// No key: every request is allowed.
    pub fn open() -> Self {
        Self { verifier: None }
    }

    /// HS256 tokens signed with `secret`.
    pub fn with_secret(secret: &str) -> Self {
        Self {
            verifier: Some((
                DecodingKey::from_secret(secret.as_bytes()),
                validation(&[Algorithm::HS256]),
            )),
        }
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
        Ok(Self {
            verifier: Some((key, validation(algorithms))),
        })
    }

    pub fn is_open(&self) -> bool {
        self.verifier.is_none()
    }

    /// The verified claims of `token` (`None` with auth off).
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

    /// What `token` allows on one document (at least read).
    pub fn doc(&self, token: Option<&str>, addr: &DocAddress) -> Result<Permit, AuthError> {
        self.permit(token, |c| c.doc_mode(addr), || addr.to_string())
    }

    /// What `token` allows on one document, which must include writing
    /// (`ReadOnly` otherwise).
    pub fn writer(&self, token: Option<&str>, addr: &DocAddress) -> Result<Permit, AuthError> {
        let permit = self.doc(token, addr)?;
        if !permit.can_write() {
            return Err(AuthError::ReadOnly(addr.to_string()));
        }
        Ok(permit)
    }

    /// What `token` allows on a whole space (at least read).
    pub fn space(&self, token: Option<&str>, space: &str) -> Result<Permit, AuthError> {
        self.permit(token, |c| c.space_mode(space), || format!("space {space}"))
    }

    /// Whether `token` may be a member of `space` (any access in it): the
    /// one decision for joining a space, on every transport.
    pub fn member(&self, token: Option<&str>, space: &str) -> Result<Permit, AuthError> {
        self.permit(token, |c| c.member_mode(space), || format!("space {space}"))
    }

    fn permit(
        &self,
        token: Option<&str>,
        mode: impl FnOnce(&Claims) -> Option<Mode>,
        what: impl FnOnce() -> String,
    ) -> Result<Permit, AuthError> {
        let Some(claims) = self.verify(token)? else {
            return Ok(Permit {
                sub: None,
                mode: Mode::Rw,
                exp: None,
            });
        };
        let mode = mode(&claims).ok_or_else(|| AuthError::Denied(what()))?;
        Ok(Permit {
            sub: Some(claims.sub),
            mode,
            exp: Some(claims.exp),
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

fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// What `yrelay token` signs with.
pub enum SigningKey {
    Secret(String),
    /// A PEM private key (RSA → RS256, EC P-256 → ES256, Ed25519 → EdDSA).
    PrivateKey(std::path::PathBuf),
}

/// Mints a token (development and tests): `sub`, `exp` = now + `ttl_secs`
/// (negative for an expired token), and `access`.
pub fn mint(
    key: &SigningKey,
    sub: &str,
    access: Vec<Grant>,
    ttl_secs: i64,
) -> Result<String, KeyError> {
    let claims = Claims {
        sub: sub.to_owned(),
        exp: (now_ms() / 1000 + ttl_secs).max(0) as u64,
        access,
    };
    let (header, key) = match key {
        SigningKey::Secret(secret) => (
            Header::new(Algorithm::HS256),
            EncodingKey::from_secret(secret.as_bytes()),
        ),
        SigningKey::PrivateKey(path) => {
            let pem = read(path)?;
            if let Ok(key) = EncodingKey::from_rsa_pem(&pem) {
                (Header::new(Algorithm::RS256), key)
            } else if let Ok(key) = EncodingKey::from_ec_pem(&pem) {
                (Header::new(Algorithm::ES256), key)
            } else if let Ok(key) = EncodingKey::from_ed_pem(&pem) {
                (Header::new(Algorithm::EdDSA), key)
            } else {
                return Err(KeyError::Unsupported(path.display().to_string()));
            }
        }
    };
    jsonwebtoken::encode(&header, &claims, &key).map_err(|e| KeyError::Sign(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(space: &str, doc: &str) -> DocAddress {
        DocAddress::parse(space, doc).unwrap()
    }

    fn grant(space: &str, doc: &str, mode: Mode) -> Grant {
        Grant {
            space: space.into(),
            doc: doc.into(),
            mode,
        }
    }

    #[test]
    fn grants_match_space_doc_and_wildcards_and_the_best_mode_wins() {
        let claims = Claims {
            sub: "ann".into(),
            exp: 0,
            access: vec![
                grant("team", "*", Mode::Ro),
                grant("team", "plan", Mode::Rw),
            ],
        };
        assert_eq!(claims.doc_mode(&addr("team", "plan")), Some(Mode::Rw));
        assert_eq!(claims.doc_mode(&addr("team", "notes")), Some(Mode::Ro));
        assert_eq!(claims.doc_mode(&addr("other", "plan")), None);
        assert_eq!(claims.doc_mode(&addr("@ann", "x")), Some(Mode::Rw));
        assert_eq!(claims.doc_mode(&addr("@bob", "x")), None);
        assert_eq!(claims.space_mode("team"), Some(Mode::Ro));
        assert_eq!(claims.space_mode("@ann"), Some(Mode::Rw));
    }

    #[test]
    fn tokens_verify_and_fail_with_a_clear_reason() {
        let key = SigningKey::Secret("s3cret".into());
        let auth = Auth::with_secret("s3cret");
        let token = mint(&key, "ann", vec![grant("team", "*", Mode::Ro)], 60).unwrap();
        let permit = auth.doc(Some(&token), &addr("team", "d")).unwrap();
        assert_eq!(permit.mode, Mode::Ro);
        assert_eq!(permit.sub.as_deref(), Some("ann"));
        assert_eq!(
            auth.doc(Some(&token), &addr("x", "d")),
            Err(AuthError::Denied("x/d".into()))
        );
        assert_eq!(auth.doc(None, &addr("team", "d")), Err(AuthError::Missing));
        let forged = mint(&SigningKey::Secret("other".into()), "ann", vec![], 60).unwrap();
        assert!(matches!(
            auth.doc(Some(&forged), &addr("@ann", "d")),
            Err(AuthError::Invalid(_))
        ));
        // Not valid yet (nbf an hour ahead), and an empty subject.
        let claims = |sub: &str, nbf: i64| serde_json::json!({ "sub": sub, "exp": now_ms() / 1000 + 7200, "nbf": nbf, "access": [] });
        let signed = |c: serde_json::Value| {
            jsonwebtoken::encode(&Header::default(), &c, &EncodingKey::from_secret(b"s3cret"))
                .unwrap()
        };
        let later = signed(claims("ann", now_ms() / 1000 + 3600));
        assert!(matches!(
            auth.doc(Some(&later), &addr("@ann", "d")),
            Err(AuthError::Invalid(m)) if m.contains("nbf")
        ));
        let now = signed(claims("ann", now_ms() / 1000));
        assert!(auth.doc(Some(&now), &addr("@ann", "d")).is_ok());
        let nobody = signed(claims("", now_ms() / 1000));
        assert!(matches!(
            auth.doc(Some(&nobody), &addr("x", "d")),
            Err(AuthError::Invalid(m)) if m.contains("sub")
        ));
        let expired = mint(&key, "ann", vec![], -60).unwrap();
        assert_eq!(
            auth.doc(Some(&expired), &addr("@ann", "d")),
            Err(AuthError::Expired)
        );
        assert_eq!(
            Auth::open().doc(None, &addr("x", "d")).unwrap().mode,
            Mode::Rw
        );
    }
}
