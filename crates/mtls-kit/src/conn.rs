//! Accepting connections: TCP accept, the TLS handshake under a deadline,
//! and the peer identity read once per connection.
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
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};
use tracing::{debug, info, warn};

use crate::identity::PeerIdentity;
use crate::metrics::handshake::{HandshakeOutcome, HandshakeRecorder, OpenConnection};

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
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.tls.get_ref().remote_addr()
    }
}

/// Reads the verified peer identity of an RPC, for handlers.
pub fn peer_identity<T>(req: &tonic::Request<T>) -> Option<&PeerIdentity> {
    req.extensions().get::<PeerInfo>().map(|p| &*p.identity)
}

/// An accepted, authenticated TLS connection.
pub struct PeerStream {
    tls: TlsStream<TcpStream>,
    identity: Arc<PeerIdentity>,
    /// Counts this connection in `mtls_connections_open` while it lives.
    _open: OpenConnection,
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
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
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

/// Settings of the accept loop.
#[derive(Clone, Copy, Debug)]
pub struct AcceptSettings {
    /// A client that has not finished the TLS handshake by then is dropped,
    /// so idle sockets cannot pin server memory.
    pub handshake_timeout: Duration,
    /// Handshakes in progress at once; beyond this, accepting pauses
    /// (back-pressure instead of unbounded tasks).
    pub max_pending_handshakes: usize,
}

/// Starts accepting on `listener`. Returns the stream of authenticated
/// connections for tonic and the accept task, which stops when the stream
/// is dropped (and should be aborted when the server returns).
pub fn accept_loop(
    listener: TcpListener,
    tls: Arc<ArcSwap<rustls::ServerConfig>>,
    settings: AcceptSettings,
) -> (
    impl tokio_stream::Stream<Item = Result<PeerStream, io::Error>>,
    JoinHandle<()>,
) {
    accept_loop_observed(listener, tls, settings, HandshakeRecorder::default())
}

/// [`accept_loop`], reporting every handshake and open connection to
/// `observe` (the server's metrics).
pub fn accept_loop_observed(
    listener: TcpListener,
    tls: Arc<ArcSwap<rustls::ServerConfig>>,
    settings: AcceptSettings,
    observe: HandshakeRecorder,
) -> (
    impl tokio_stream::Stream<Item = Result<PeerStream, io::Error>>,
    JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel::<PeerStream>(64);
    let pending = Arc::new(Semaphore::new(settings.max_pending_handshakes.max(1)));
    let task = tokio::spawn(async move {
        loop {
            let Ok(permit) = pending.clone().acquire_owned().await else {
                return;
            };
            let (tcp, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // EMFILE and friends: back off briefly rather than
                        // spin; the listener itself stays usable.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            // Each handshake uses the config current at accept time.
            let acceptor = TlsAcceptor::from(tls.load_full());
            let tx = tx.clone();
            let observe = observe.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(settings.handshake_timeout, acceptor.accept(tcp)).await {
                    Err(_) => {
                        observe.handshake(HandshakeOutcome::Timeout);
                        info!(%remote, "TLS handshake timed out; connection closed")
                    }
                    Ok(Err(e)) => {
                        observe.handshake(HandshakeOutcome::of_error(&e));
                        info!(%remote, error = %e, "TLS handshake refused")
                    }
                    Ok(Ok(stream)) => {
                        let certs = stream.get_ref().1.peer_certificates().unwrap_or_default();
                        match PeerIdentity::from_chain(certs) {
                            Ok(identity) => {
                                observe.handshake(HandshakeOutcome::Ok);
                                debug!(%remote, peer = %identity, "connection authenticated");
                                let stream = PeerStream {
                                    tls: stream,
                                    identity: Arc::new(identity),
                                    _open: observe.opened(),
                                };
                                let _ = tx.send(stream).await;
                            }
                            Err(e) => {
                                observe.handshake(HandshakeOutcome::Other);
                                warn!(%remote, error = %e, "verified certificate is unreadable; connection closed")
                            }
                        }
                    }
                }
            });
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    (tokio_stream::StreamExt::map(stream, Ok), task)
}
