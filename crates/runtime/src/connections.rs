//! The connections a server accepts: at most `server.max_connections` at a
//! time (beyond that, new ones wait in the listen backlog until one closes),
//! each with TCP keepalive and no Nagle delay, and each closed unless it sends
//! the HTTP/2 connection preface within `server.preface_timeout`. A client
//! that connects and sends nothing therefore holds its slot only that long.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Sleep,
};
use tokio_stream::Stream;
use tokio_util::sync::PollSemaphore;
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};

/// The client's HTTP/2 connection preface: `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`.
const PREFACE_BYTES: usize = 24;

/// How many connections, and how patiently.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub preface_timeout: Duration,
    pub tcp_keepalive: Duration,
}

/// Accepted connections, within the limits.
pub struct GuardedIncoming {
    inner: TcpIncoming,
    slots: PollSemaphore,
    /// A slot taken while no connection was waiting yet.
    slot: Option<OwnedSemaphorePermit>,
    preface_timeout: Duration,
}

impl GuardedIncoming {
    pub fn new(listener: TcpListener, limits: ConnectionLimits) -> Self {
        let inner = TcpIncoming::from(listener)
            // Small replies must leave at once: without TCP_NODELAY, Nagle's
            // algorithm and delayed ACKs add ~40 ms to some calls.
            .with_nodelay(Some(true))
            .with_keepalive(Some(limits.tcp_keepalive));
        Self {
            inner,
            slots: PollSemaphore::new(Arc::new(Semaphore::new(limits.max_connections))),
            slot: None,
            preface_timeout: limits.preface_timeout,
        }
    }
}

impl Stream for GuardedIncoming {
    type Item = io::Result<GuardedConnection>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.slot.is_none() {
            match ready!(self.slots.poll_acquire(cx)) {
                Some(slot) => self.slot = Some(slot),
                None => return Poll::Ready(None),
            }
        }
        match ready!(Pin::new(&mut self.inner).poll_next(cx)) {
            Some(Ok(stream)) => {
                let slot = self.slot.take();
                let deadline = Box::pin(tokio::time::sleep(self.preface_timeout));
                Poll::Ready(Some(Ok(GuardedConnection {
                    stream,
                    _slot: slot,
                    deadline: Some(deadline),
                    preface_left: PREFACE_BYTES,
                })))
            }
            Some(Err(err)) => Poll::Ready(Some(Err(err))),
            None => Poll::Ready(None),
        }
    }
}

/// One accepted connection; its slot is freed when it closes.
pub struct GuardedConnection {
    stream: TcpStream,
    _slot: Option<OwnedSemaphorePermit>,
    /// Until the preface has arrived: when the connection is given up.
    deadline: Option<Pin<Box<Sleep>>>,
    preface_left: usize,
}

impl AsyncRead for GuardedConnection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = read {
            let got = buf.filled().len() - before;
            self.preface_left = self.preface_left.saturating_sub(got);
            if self.preface_left == 0 {
                self.deadline = None;
            }
            return read;
        }
        if let Some(deadline) = self.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client sent no HTTP/2 connection preface in time",
            )));
        }
        read
    }
}

impl AsyncWrite for GuardedConnection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl Connected for GuardedConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_stream::StreamExt;

    use super::*;

    async fn incoming(max_connections: usize) -> (GuardedIncoming, std::net::SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = ConnectionLimits {
            max_connections,
            preface_timeout: Duration::from_millis(200),
            tcp_keepalive: Duration::from_secs(60),
        };
        (GuardedIncoming::new(listener, limits), addr)
    }

    #[tokio::test]
    async fn a_silent_connection_is_given_up_and_one_that_speaks_is_not() {
        let (mut incoming, addr) = incoming(10).await;
        let _silent = TcpStream::connect(addr).await.unwrap();
        let mut accepted = incoming.next().await.unwrap().unwrap();
        let mut buf = [0; 8];
        let err = accepted.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);

        let mut speaking = TcpStream::connect(addr).await.unwrap();
        speaking.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        let mut accepted = incoming.next().await.unwrap().unwrap();
        let mut preface = [0; PREFACE_BYTES];
        accepted.read_exact(&mut preface).await.unwrap();
        // Past the preface, silence is the protocol's business (keepalive), not a timeout.
        let quiet = tokio::time::timeout(Duration::from_millis(400), accepted.read(&mut buf)).await;
        assert!(quiet.is_err(), "still waiting, not given up: {quiet:?}");
    }

    #[tokio::test]
    async fn beyond_the_cap_a_connection_waits_until_a_slot_frees() {
        let (mut incoming, addr) = incoming(1).await;
        let _first = TcpStream::connect(addr).await.unwrap();
        let first = incoming.next().await.unwrap().unwrap();
        let _second = TcpStream::connect(addr).await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(200), incoming.next()).await;
        assert!(waiting.is_err(), "the second waits while the first holds the only slot");
        drop(first);
        assert!(incoming.next().await.unwrap().is_ok(), "accepted once the first closed");
    }
}
