//! An accepted connection as tonic sees it: the TLS stream, the peer
//! identity read once per connection, and the HTTP/2 preface the accept
//! loop ([`crate::accept`]) already read and checked.
//!
//! We terminate TLS ourselves instead of through tonic's `ServerTlsConfig`
//! so that the rustls `ServerConfig` is ours: each handshake uses whatever
//! config is current (so it can be replaced while serving), and it can carry
//! CRLs and resumption settings tonic's wrapper has no place for.
//!
//! Each accepted stream reaches tonic as a [`PeerStream`], whose connect
//! info ([`PeerInfo`]) holds the parsed identity and tonic's own
//! `TlsConnectInfo`, so RPC layers and handlers see both.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

use crate::identity::PeerIdentity;
use crate::metrics::handshake::OpenConnection;

/// What every RPC on a connection knows about the peer. tonic puts it in
/// each request's extensions.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// Who the peer is, read from its verified certificate.
    pub identity: Arc<PeerIdentity>,
    /// tonic's connection info: addresses and the peer certificate chain.
    pub tls: TlsConnectInfo<TcpConnectInfo>,
}

impl PeerInfo {
    /// The peer's IP address and port; `None` if the socket could not tell
    /// at accept.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.tls.get_ref().remote_addr()
    }
}

/// Reads the verified peer identity of an RPC, for handlers.
pub fn peer_identity<T>(req: &tonic::Request<T>) -> Option<&PeerIdentity> {
    req.extensions().get::<PeerInfo>().map(|p| &*p.identity)
}

/// The HTTP/2 client connection preface (RFC 9113, section 3.4).
pub(crate) const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An accepted, authenticated TLS connection.
pub struct PeerStream {
    tls: TlsStream<TcpStream>,
    identity: Arc<PeerIdentity>,
    /// How much of the preface, read by the accept loop, has been handed on
    /// to hyper, which reads it again.
    preface_replayed: usize,
    /// Dropped with the stream: tells whoever serves the connection that it
    /// has ended.
    closed: Option<oneshot::Sender<()>>,
    /// Counts this connection in `mtls_connections_open` while it lives.
    _open: OpenConnection,
    /// Set once our close_notify and FIN are out; until it passes, or the
    /// peer closes too, what the peer still sends is read and dropped.
    linger: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// How long a closing connection keeps reading after its FIN (lingering
/// close). The peer normally closes within a round trip.
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);

impl PeerStream {
    /// A connection whose HTTP/2 preface has been read and checked.
    pub(crate) fn new(
        tls: TlsStream<TcpStream>,
        identity: Arc<PeerIdentity>,
        open: OpenConnection,
    ) -> Self {
        Self {
            tls,
            identity,
            preface_replayed: 0,
            closed: None,
            _open: open,
            linger: None,
        }
    }

    /// Completes (with an error, as the sender is dropped, never used) when
    /// this stream is dropped, that is when its connection has ended.
    pub(crate) fn closed(&mut self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.closed = Some(tx);
        rx
    }
}

impl Connected for PeerStream {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        PeerInfo {
            identity: self.identity.clone(),
            tls: self.tls.connect_info(),
        }
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(rest) = H2_PREFACE
            .get(self.preface_replayed..)
            .filter(|r| !r.is_empty())
        {
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            self.preface_replayed += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }
    /// Lingering close: after close_notify and FIN, reads (and drops) what
    /// the peer still sends until it closes too, or for `LINGER` (1 s). Closing
    /// a socket with unread data makes the kernel answer with RST, and an
    /// RST makes the peer drop what it has not read yet: the last responses
    /// and the GOAWAY of a graceful drain.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        use std::future::Future;
        if self.linger.is_none() {
            // close_notify, then FIN (tokio-rustls shuts the TCP write side).
            std::task::ready!(Pin::new(&mut self.tls).poll_shutdown(cx))?;
            self.linger = Some(Box::pin(tokio::time::sleep(LINGER)));
        }
        let mut scratch = [0u8; 4096];
        loop {
            if let Some(deadline) = self.linger.as_mut() {
                if deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Ok(()));
                }
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.tls).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => continue,
                // EOF, or an error (a peer that closed without close_notify).
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }
}
