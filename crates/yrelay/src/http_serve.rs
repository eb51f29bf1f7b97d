//! Serves the router on accepted connections with hyper's own timeouts on,
//! which `axum::serve` leaves off (it gives hyper no timer):
//!
//! - HTTP/1: a request's headers must arrive within the header timeout,
//!   counted from when the connection waits for a request, so a connection
//!   that sends nothing, stops halfway through its headers, or idles between
//!   requests is closed (they held a descriptor each for good, and at the
//!   descriptor limit even `/healthz` was refused);
//! - HTTP/2: the connection is pinged while idle and closed when the pings go
//!   unanswered.
//!
//! Each request carries its peer's address (`ConnectInfo<SocketAddr>`).
//!
//! Graceful shutdown as `axum::serve` does it: stop accepting, let each
//! connection finish what it serves, then return.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::serve::Listener;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::sync::watch;
use tower::ServiceExt;

/// HTTP/2 keep-alive pings of an idle connection, and how long one may go
/// unanswered.
const H2_PING_EVERY: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// Serves `router` on every connection `listener` accepts until `signal`
/// resolves, then waits for the open connections to finish.
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    header_timeout: Duration,
    signal: impl Future<Output = ()>,
) -> Result<(), Infallible>
where
    L: Listener<Addr = SocketAddr>,
    L::Io: Unpin,
{
    let (stop, stopping) = watch::channel(false);
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_PING_EVERY)
        .keep_alive_timeout(H2_PING_TIMEOUT)
        // WebSockets over HTTP/2 (RFC 8441)
        .enable_connect_protocol();
    let mut signal = std::pin::pin!(signal);
    loop {
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut signal => break,
        };
        let service = router
            .clone()
            .map_request(move |mut request: axum::http::Request<_>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            });
        let service = TowerToHyperService::new(service);
        let builder = builder.clone();
        let mut stopping = stopping.clone();
        tokio::spawn(async move {
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = stopping.wait_for(|stop| *stop) => conn.as_mut().graceful_shutdown(),
            }
            let _ = conn.await;
        });
    }
    let _ = stop.send(true);
    // Every connection task holds a receiver: closed once all have ended.
    drop(stopping);
    stop.closed().await;
    Ok(())
}
