//! Access of open sockets, kept current: sockets whose token expired are
//! disconnected; a revoke disconnects the sockets it takes a joined space
//! from (the client's reconnect is then refused), ends the subscriptions
//! it takes a document from, and turns writes it takes away into
//! `DOC_ACTION_DENIED` (each update is checked). Sockets the app's callback
//! let in are asked about again.

use std::sync::Weak;

use socketioxide::socket::Sid;
use tokio::sync::watch;

use crate::auth::{AuthError, Revoked};
use crate::metrics;

use super::gateway::Gateway;

/// Applies each revoke to this instance's sockets, as it arrives.
pub(super) async fn follow_revokes(gateway: Weak<Gateway>, mut revokes: watch::Receiver<i64>) {
    let mut seen = *revokes.borrow_and_update();
    while revokes.changed().await.is_ok() {
        let Some(gw) = gateway.upgrade() else { return };
        let new = gw.app.auth.revocations.since(seen);
        seen = new.iter().map(|r| r.id).max().unwrap_or(seen);
        gw.apply_revokes(&new).await;
    }
}

impl Gateway {
    async fn apply_revokes(&self, revoked: &[Revoked]) {
        let by_sub = |sub: Option<&str>| {
            revoked
                .iter()
                .any(|r| r.what.sub.is_none() || r.what.sub.as_deref() == sub)
        };
        // What the app's callback answered is asked for again.
        let ask: Vec<_> = self
            .state()
            .conns
            .iter()
            .filter(|(_, c)| {
                c.claims.as_ref().is_some_and(|c| c.from_app) && by_sub(c.sub.as_deref())
            })
            .map(|(sid, c)| (*sid, c.who.clone()))
            .collect();
        for (sid, who) in ask {
            match self.app.auth.claims(&who, None, None).await {
                Ok(claims) => {
                    if let Some(conn) = self.state().conns.get_mut(&sid) {
                        conn.claims = claims;
                    }
                }
                Err(e) => self.end(sid, &e),
            }
        }
        // Our tokens: a revoke of the subject everywhere, or of a space the
        // socket joined, ends it.
        let lost: Vec<(Sid, AuthError)> = self
            .state()
            .conns
            .iter()
            .filter_map(|(sid, c)| {
                let claims = c.claims.as_ref()?;
                let everywhere = !claims.from_app
                    && revoked.iter().any(|r| {
                        r.what.space.is_none() && r.what.sub.as_deref() == Some(&claims.sub)
                    });
                if everywhere {
                    return Some((*sid, AuthError::Revoked("this server".into())));
                }
                c.spaces.keys().find_map(|space| {
                    self.app
                        .auth
                        .member_permit(Some(claims), &space.space())
                        .err()
                        .map(|e| (*sid, e))
                })
            })
            .collect();
        for (sid, e) in lost {
            self.end(sid, &e);
        }
        self.end_lost_subscriptions();
    }

    fn end(&self, sid: Sid, why: &AuthError) {
        if let Some(socket) = self.io.get_socket(sid) {
            metrics::rejected("access_lost");
            tracing::info!(socket = %sid, reason = %why, "access lost: socket disconnected");
            let _ = socket.disconnect();
        }
    }

    /// Disconnects the sockets whose token has expired, each instance its
    /// own: the client reconnects with a fresh token (a stale one is
    /// refused at connect, "sign in required: the token has expired").
    pub(super) fn end_expired_sockets(&self) {
        let expired: Vec<Sid> = self
            .state()
            .conns
            .iter()
            .filter(|(_, conn)| conn.claims.as_ref().is_some_and(|c| c.expired()))
            .map(|(sid, _)| *sid)
            .collect();
        for sid in expired {
            if let Some(socket) = self.io.get_socket(sid) {
                metrics::rejected("token_expired");
                tracing::info!(socket = %sid, "token expired: socket disconnected");
                let _ = socket.disconnect();
            }
        }
    }

    /// Ends the subscriptions whose socket may no longer read the document
    /// (its token expired, a revoke): each instance for its own sockets.
    pub(super) fn end_lost_subscriptions(&self) {
        let lost: Vec<_> = self
            .state()
            .conns
            .iter()
            .flat_map(|(sid, conn)| {
                conn.subscriptions
                    .iter()
                    .filter(|(_, addr)| {
                        conn.claims.as_ref().is_some_and(|c| c.expired())
                            || self
                                .app
                                .auth
                                .doc_permit(conn.claims.as_ref(), addr)
                                .is_err()
                    })
                    .map(|(space, addr)| (*sid, space.clone(), addr.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (sid, space, addr) in lost {
            if let Some(socket) = self.io.get_socket(sid) {
                metrics::rejected("subscription_access_lost");
                tracing::info!(socket = %sid, doc = %addr, "read access lost: subscription ended");
                self.unsubscribe(&socket, &space, &addr);
            }
        }
    }
}
