//! A deadline on every write to a client, on every transport at once: the
//! accepted socket itself refuses to wait longer than the limit.
//!
//! A peer that stops reading fills its TCP window; from then on every write
//! to it stays pending. Without a deadline the task writing to it (a
//! WebSocket's, an event stream's body, a Socket.IO socket's) waits forever
//! and keeps what it holds: its session, its queue, the document's replica.
//! Here a write (or flush) that makes no progress for the limit fails with
//! `TimedOut`, whatever is writing (hyper, tungstenite, engine.io): the
//! connection ends and its handlers are dropped.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// A stream whose writes must make progress within `limit`, and whose
/// first bytes must arrive within `first_read` (a connection that sends
/// nothing at all never reaches hyper's header timeout: hyper waits for
/// them to tell HTTP/1 from HTTP/2).
pub struct WriteDeadline<S> {
    inner: S,
    limit: Duration,
    /// Running while writes are stuck; dropped on any progress.
    stalled: Option<Pin<Box<Sleep>>>,
    /// Running until the first bytes arrive.
    first_read: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteDeadline<S> {
    pub fn new(inner: S, limit: Duration, first_read: Duration) -> Self {
        Self {
            inner,
            limit,
            stalled: None,
            first_read: Some(Box::pin(tokio::time::sleep(first_read))),
        }
    }

    /// What a write that returned `poll` means under the deadline.
    fn check<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let limit = self.limit;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        ready!(stalled.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the peer took nothing for {} s", limit.as_secs_f64()),
        )))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let Some(first_read) = self.first_read.as_mut() else {
            return poll;
        };
        match poll {
            Poll::Ready(Ok(())) if buf.filled().len() == before => Poll::Ready(Ok(())),
            Poll::Ready(outcome) => {
                self.first_read = None;
                Poll::Ready(outcome)
            }
            Poll::Pending => {
                ready!(first_read.as_mut().poll(cx));
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the peer sent nothing",
                )))
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.check(cx, poll)
    }
}

/// Accepted connections wrapped in a [`WriteDeadline`].
pub struct DeadlineListener<L> {
    inner: L,
    limit: Duration,
    first_read: Duration,
}

impl<L> DeadlineListener<L> {
    pub fn new(inner: L, limit: Duration, first_read: Duration) -> Self {
        Self {
            inner,
            limit,
            first_read,
        }
    }
}

impl<L> axum::serve::Listener for DeadlineListener<L>
where
    L: axum::serve::Listener,
    L::Io: Unpin,
{
    type Io = WriteDeadline<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = self.inner.accept().await;
        (WriteDeadline::new(io, self.limit, self.first_read), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_peer_that_reads_nothing_fails_the_write_after_the_limit() {
        let (ours, theirs) = tokio::io::duplex(1024);
        let mut ours = WriteDeadline::new(ours, Duration::from_millis(100), Duration::MAX);
        let chunk = vec![0u8; 4096];
        let outcome = tokio::time::timeout(Duration::from_secs(10), ours.write_all(&chunk)).await;
        let err = outcome.expect("the deadline ends the write").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        drop(theirs);
    }

    #[tokio::test]
    async fn a_slow_but_reading_peer_is_never_cut() {
        use tokio::io::AsyncReadExt;
        let (ours, mut theirs) = tokio::io::duplex(64);
        let mut ours = WriteDeadline::new(ours, Duration::from_millis(200), Duration::MAX);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            let mut total = 0;
            while total < 4096 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                total += theirs.read(&mut buf).await.unwrap();
            }
            total
        });
        ours.write_all(&[7u8; 4096]).await.unwrap();
        assert_eq!(reader.await.unwrap(), 4096);
    }
}
