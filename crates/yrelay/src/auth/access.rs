//! What one open connection to a document may do, kept current: it ends
//! when the token expires, and is checked again when a revoke covers it
//! (our tokens are then refused; the callback is asked again, and may
//! answer with another mode).

use std::sync::Arc;

use tokio::sync::watch;
use yrelay_protocol::DocAddress;

use super::{Auth, AuthError, Credentials, Permit, until};

pub struct Access {
    auth: Arc<Auth>,
    who: Credentials,
    addr: DocAddress,
    permit: Permit,
    /// Revokes up to this id have been looked at.
    seen: i64,
    /// One of them covers this connection: it is checked again (kept
    /// until that check ends, should its caller stop waiting meanwhile).
    recheck: bool,
    revokes: watch::Receiver<i64>,
}

impl Access {
    /// Checks `who` on `addr` (at least read), as a connection opens.
    pub async fn open(
        auth: &Arc<Auth>,
        who: Credentials,
        addr: &DocAddress,
    ) -> Result<Self, AuthError> {
        // Subscribed before the check: a revoke made meanwhile is seen.
        let revokes = auth.revocations.watch();
        let seen = *revokes.borrow();
        let permit = auth.doc(&who, addr).await?;
        Ok(Self {
            auth: auth.clone(),
            who,
            addr: addr.clone(),
            permit,
            seen,
            recheck: false,
            revokes,
        })
    }

    pub fn permit(&self) -> &Permit {
        &self.permit
    }

    /// Waits until what the connection may do changes: `Err` when it may
    /// no longer read (its token expired, a revoke, the app said no, or
    /// cannot be asked: fail closed), `Ok` with the new permit when only
    /// its mode changed (read-write ↔ read-only). Cancel-safe: a check
    /// under way when the caller stops waiting is made again next time.
    pub async fn changed(&mut self) -> Result<Permit, AuthError> {
        loop {
            if self.recheck {
                let permit = self.auth.doc(&self.who, &self.addr).await?;
                self.recheck = false;
                let mode_changed = permit.mode != self.permit.mode;
                self.permit = permit;
                if mode_changed {
                    return Ok(self.permit.clone());
                }
            }
            tokio::select! {
                _ = until(self.permit.expires()) => return Err(AuthError::Expired),
                changed = self.revokes.changed() => {
                    if changed.is_err() {
                        // Revokes end with the server: only expiry is left.
                        until(self.permit.expires()).await;
                        return Err(AuthError::Expired);
                    }
                    let covering = self.auth.revocations.since(self.seen);
                    self.seen = covering.iter().map(|r| r.id).max().unwrap_or(self.seen);
                    let sub = self.permit.sub.as_deref();
                    self.recheck = covering
                        .iter()
                        .any(|r| r.what.covers(sub, self.addr.space(), Some(self.addr.doc())));
                }
            }
        }
    }
}
