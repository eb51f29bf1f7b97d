//! Keys: what tokens are checked with (errors reading them) and what
//! `yrelay token` signs with.

use std::path::Path;

use jsonwebtoken::{Algorithm, EncodingKey, Header};

use super::{Claims, Grant};
use crate::clock::now_ms;

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

pub(super) fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
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
        exp: Some((now_ms() / 1000 + ttl_secs).max(0) as u64),
        iat: Some((now_ms() / 1000).max(0) as u64),
        access,
        from_app: false,
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
