//! The auth callback (`--auth-webhook`): for a token or cookie that is not
//! one of yrelay's JWTs, the app is asked who it is and what it may open.
//!
//! `POST {token, cookie, space, doc, transport}` → `200 {sub, access, exp?}`
//! (the claims of a JWT), or 401/403 `{reason?}`. Answers (also refusals)
//! are cached for `--auth-cache-secs`; anything else — another status,
//! malformed JSON, a timeout, a callback that cannot be reached — fails
//! closed (`Unavailable`: 503, WebSocket 1013) and is not cached.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{AuthError, Claims, Credentials, Grant, Revocation};

/// How long one question may take.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer read.
const MAX_ANSWER: usize = 256 * 1024;
/// Cached answers kept at most (expired ones go first, then all).
const MAX_CACHED: usize = 100_000;

#[derive(Serialize)]
struct Question<'a> {
    token: Option<&'a str>,
    cookie: Option<&'a str>,
    space: Option<&'a str>,
    doc: Option<&'a str>,
    transport: &'a str,
}

#[derive(Deserialize)]
struct Answer {
    sub: String,
    #[serde(default)]
    access: Vec<Grant>,
    #[serde(default)]
    exp: Option<u64>,
}

#[derive(Deserialize, Default)]
struct Refusal {
    #[serde(default)]
    reason: Option<String>,
}

struct Cached {
    until: Instant,
    /// The answer's subject (to forget what a revoke covers).
    sub: Option<String>,
    space: Option<String>,
    doc: Option<String>,
    answer: Result<Claims, AuthError>,
}

pub struct Callback {
    url: String,
    ttl: Duration,
    client: reqwest::Client,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
}

impl Callback {
    pub fn new(url: String, cache_secs: u64) -> Self {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(TIMEOUT)
            .build()
            .expect("an HTTP client without custom TLS always builds");
        Self {
            url,
            ttl: Duration::from_secs(cache_secs),
            client,
            cache: Mutex::default(),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Cached>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Who `who` is and what it may open, for `space` (and `doc`): the
    /// cached answer, or the app's.
    pub async fn ask(
        &self,
        who: &Credentials,
        space: Option<&str>,
        doc: Option<&str>,
    ) -> Result<Claims, AuthError> {
        let key = key(who, space, doc);
        if let Some(cached) = self.cache().get(&key)
            && cached.until > Instant::now()
        {
            return cached.answer.clone();
        }
        let answer = self.question(who, space, doc).await;
        if matches!(answer, Err(AuthError::Unavailable(_))) {
            return answer;
        }
        let mut cache = self.cache();
        if cache.len() >= MAX_CACHED {
            let now = Instant::now();
            cache.retain(|_, c| c.until > now);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(
            key,
            Cached {
                until: Instant::now() + self.ttl,
                sub: answer.as_ref().ok().map(|c| c.sub.clone()),
                space: space.map(Into::into),
                doc: doc.map(Into::into),
                answer: answer.clone(),
            },
        );
        answer
    }

    /// Forgets the answers a revoke covers (refusals of a space or
    /// document it names too): the next check asks the app again.
    pub fn forget(&self, what: &Revocation) {
        self.cache().retain(|_, c| {
            let covered = match (&c.sub, c.space.as_deref()) {
                (sub, Some(space)) => what.covers(sub.as_deref(), space, c.doc.as_deref()),
                // Asked with no space (a Socket.IO connect): its subject.
                (Some(sub), None) => what.sub.as_deref() == Some(sub),
                (None, None) => false,
            };
            !covered
        });
    }

    async fn question(
        &self,
        who: &Credentials,
        space: Option<&str>,
        doc: Option<&str>,
    ) -> Result<Claims, AuthError> {
        let body = serde_json::to_vec(&Question {
            token: who.token.as_deref(),
            cookie: who.cookie.as_deref(),
            space,
            doc,
            transport: who.transport,
        })
        .expect("a question always serializes");
        let unavailable = |why: String| {
            tracing::warn!(callback = %self.url, error = %why, "auth callback failed: refusing (fail closed)");
            AuthError::Unavailable(why)
        };
        let mut response = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| unavailable(format!("cannot reach the auth callback: {e}")))?;
        let status = response.status().as_u16();
        let mut answer = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| unavailable(format!("the auth callback's answer broke off: {e}")))?
        {
            answer.extend_from_slice(&chunk);
            if answer.len() > MAX_ANSWER {
                return Err(unavailable(format!(
                    "the auth callback answered more than {MAX_ANSWER} bytes"
                )));
            }
        }
        let reason = || {
            serde_json::from_slice::<Refusal>(&answer)
                .unwrap_or_default()
                .reason
                .map(|r| r.chars().take(200).collect::<String>())
        };
        match status {
            200 => {
                let answer: Answer = serde_json::from_slice(&answer).map_err(|e| {
                    unavailable(format!("the auth callback answered malformed JSON: {e}"))
                })?;
                if answer.sub.is_empty() {
                    return Err(unavailable(
                        "the auth callback answered an empty subject (sub)".into(),
                    ));
                }
                Ok(Claims {
                    sub: answer.sub,
                    exp: answer.exp,
                    iat: None,
                    access: answer.access,
                    from_app: true,
                })
            }
            401 => Err(AuthError::Invalid(
                reason().unwrap_or_else(|| "the app did not recognise it".into()),
            )),
            403 => Err(AuthError::Denied(reason().unwrap_or_else(|| {
                match (space, doc) {
                    (Some(s), Some(d)) => format!("{s}/{d} (the app refused)"),
                    (Some(s), None) => format!("space {s} (the app refused)"),
                    _ => "this server (the app refused)".into(),
                }
            }))),
            other => Err(unavailable(format!("the auth callback answered {other}"))),
        }
    }
}

/// A hash of everything the answer depends on (tokens are not kept).
fn key(who: &Credentials, space: Option<&str>, doc: Option<&str>) -> [u8; 32] {
    let mut hash = Sha256::new();
    for part in [
        who.token.as_deref(),
        who.cookie.as_deref(),
        space,
        doc,
        Some(who.transport),
    ] {
        match part {
            Some(p) => {
                hash.update([1]);
                hash.update((p.len() as u64).to_le_bytes());
                hash.update(p.as_bytes());
            }
            None => hash.update([0]),
        }
    }
    hash.finalize().into()
}
