//! Revoked access (`POST /v1/access/revoke`): which subjects lost which
//! spaces or documents, and since when. Kept in the store, read by every
//! instance; the connections it covers are closed, downgraded or asked
//! about again by their transports (see [`super::Access`]).

use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::Claims;
use crate::clock::now_ms;

/// What a revoke covers: a subject, a space, a document of a space, or
/// any combination (at least one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub space: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doc: Option<String>,
}

impl Revocation {
    /// Why this revoke may not be made (no filter; a doc without a space).
    pub fn problem(&self) -> Option<&'static str> {
        let empty = |v: &Option<String>| v.as_deref().is_none_or(str::is_empty);
        if empty(&self.sub) && empty(&self.space) {
            return Some("a revoke needs a sub, a space or both (it never covers everyone)");
        }
        if !empty(&self.doc) && empty(&self.space) {
            return Some("a doc is named within its space: give the space too");
        }
        if [&self.sub, &self.space, &self.doc]
            .iter()
            .any(|v| v.as_ref().is_some_and(|v| v.is_empty() || v.len() > 512))
        {
            return Some("sub, space and doc are 1 to 512 characters");
        }
        None
    }

    /// Whether it covers `sub` using `space` (and `doc` there; `None`: the
    /// whole space, which a revoke of one document does not cover).
    pub fn covers(&self, sub: Option<&str>, space: &str, doc: Option<&str>) -> bool {
        let sub_ok = match &self.sub {
            Some(s) => sub == Some(s.as_str()),
            None => true,
        };
        let space_ok = self.space.as_deref().is_none_or(|s| s == space);
        let doc_ok = match (&self.doc, doc) {
            (None, _) => true,
            (Some(d), Some(doc)) => d == doc,
            (Some(_), None) => false,
        };
        sub_ok && space_ok && doc_ok
    }
}

/// A revoke as recorded: its id (store order) and when it was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    pub id: i64,
    pub at_ms: i64,
    pub what: Revocation,
}

/// The revokes of the last `retention_ms`, newest id last, and a signal
/// that changes whenever one is added.
pub struct Revocations {
    retention_ms: i64,
    list: Mutex<Vec<Revoked>>,
    added: watch::Sender<i64>,
}

impl Revocations {
    pub fn new(retention_secs: u64) -> Self {
        Self {
            retention_ms: retention_secs.saturating_mul(1000) as i64,
            list: Mutex::default(),
            added: watch::channel(0).0,
        }
    }

    fn list(&self) -> std::sync::MutexGuard<'_, Vec<Revoked>> {
        self.list.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds revokes not known yet (from this instance or read from the
    /// store); the ones past the retention are dropped. Returns the new ones.
    pub fn add(&self, revoked: Vec<Revoked>) -> Vec<Revoked> {
        let oldest = now_ms() - self.retention_ms;
        let mut list = self.list();
        list.retain(|r| r.at_ms >= oldest);
        let new: Vec<Revoked> = revoked
            .into_iter()
            .filter(|r| r.at_ms >= oldest && !list.iter().any(|k| k.id == r.id))
            .collect();
        if new.is_empty() {
            return new;
        }
        list.extend(new.iter().cloned());
        list.sort_by_key(|r| r.id);
        let last = list.last().map_or(0, |r| r.id);
        drop(list);
        self.added.send_replace(last);
        new
    }

    /// Whether the revoke `id` is known here.
    pub fn knows(&self, id: i64) -> bool {
        self.list().iter().any(|r| r.id == id)
    }

    /// The highest id known (where to read the store on from).
    pub fn last_id(&self) -> i64 {
        *self.added.borrow()
    }

    /// Changes whenever a revoke is added.
    pub fn watch(&self) -> watch::Receiver<i64> {
        self.added.subscribe()
    }

    /// The revokes with an id above `after`.
    pub fn since(&self, after: i64) -> Vec<Revoked> {
        self.list()
            .iter()
            .filter(|r| r.id > after)
            .cloned()
            .collect()
    }

    /// Whether a revoke refuses these claims (a token of ours, issued —
    /// by its `iat`, or at any time without one — at or before the revoke)
    /// on `space` (and `doc`).
    pub fn refuses(&self, claims: &Claims, space: &str, doc: Option<&str>) -> bool {
        let oldest = now_ms() - self.retention_ms;
        self.list().iter().any(|r| {
            r.at_ms >= oldest
                && claims.iat.is_none_or(|iat| (iat as i64) * 1000 <= r.at_ms)
                && r.what.covers(Some(&claims.sub), space, doc)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revocation(sub: Option<&str>, space: Option<&str>, doc: Option<&str>) -> Revocation {
        Revocation {
            sub: sub.map(Into::into),
            space: space.map(Into::into),
            doc: doc.map(Into::into),
        }
    }

    #[test]
    fn a_revoke_covers_its_subject_space_and_document_only() {
        let ann_team = revocation(Some("ann"), Some("team"), None);
        assert!(ann_team.covers(Some("ann"), "team", Some("plan")));
        assert!(ann_team.covers(Some("ann"), "team", None));
        assert!(!ann_team.covers(Some("bob"), "team", Some("plan")));
        assert!(!ann_team.covers(Some("ann"), "other", None));
        let plan = revocation(None, Some("team"), Some("plan"));
        assert!(plan.covers(Some("bob"), "team", Some("plan")));
        assert!(!plan.covers(Some("bob"), "team", Some("notes")));
        assert!(!plan.covers(Some("bob"), "team", None));
        assert!(revocation(None, None, None).problem().is_some());
        assert!(revocation(None, None, Some("plan")).problem().is_some());
        assert!(revocation(Some(""), None, None).problem().is_some());
        assert!(plan.problem().is_none());
    }

    #[test]
    fn tokens_issued_after_a_revoke_are_not_refused() {
        let revocations = Revocations::new(3600);
        let at_ms = now_ms();
        let added = revocations.add(vec![Revoked {
            id: 7,
            at_ms,
            what: revocation(Some("ann"), None, None),
        }]);
        assert_eq!(added.len(), 1);
        assert!(
            revocations.add(added.clone()).is_empty(),
            "known ids are not added twice"
        );
        let claims = |iat: Option<i64>| Claims {
            sub: "ann".into(),
            exp: None,
            iat: iat.map(|s| s as u64),
            access: vec![],
            from_app: false,
        };
        assert!(revocations.refuses(&claims(None), "team", None));
        assert!(revocations.refuses(&claims(Some(at_ms / 1000 - 60)), "team", Some("d")));
        assert!(!revocations.refuses(&claims(Some(at_ms / 1000 + 2)), "team", None));
        assert_eq!(revocations.last_id(), 7);
        assert_eq!(revocations.since(6).len(), 1);
        assert!(revocations.since(7).is_empty());
    }
}
