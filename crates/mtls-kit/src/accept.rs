//! Accepting connections: TCP accept, the TLS handshake under deadlines,
//! and the HTTP/2 preface, before a connection is handed to tonic.
//!
//! We terminate TLS ourselves instead of through tonic's `ServerTlsConfig`
//! so that the rustls `ServerConfig` is ours: each handshake uses whatever
//! config is current (so it can be replaced while serving), and it can carry
//! CRLs and resumption settings tonic's wrapper has no place for.
//!
//! Slow clients cannot starve new ones. A connection is "pending" from
//! accept until its TLS handshake is done, and at most
//! `max_pending_handshakes` are. When all slots are taken, the oldest
//! connection that has not even sent its ClientHello is closed to make room:
//! a real client sends its ClientHello right after connecting, so the
//! connections that lose their slot are idle or trickling ones. Only when
//! every pending connection is really handshaking does accepting pause.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_rustls::LazyConfigAcceptor;
use tracing::{debug, info, warn};

use crate::conn::{PeerStream, H2_PREFACE};
use crate::identity::PeerIdentity;
use crate::metrics::handshake::{HandshakeOutcome, HandshakeRecorder};

/// Settings of the accept loop.
#[derive(Clone, Copy, Debug)]
pub struct AcceptSettings {
    /// A client that has not finished the TLS handshake by then (counted
    /// from accept) is dropped, so idle sockets cannot pin server memory.
    pub handshake_timeout: Duration,
    /// A client whose ClientHello has not fully arrived by then (counted
    /// from accept) is dropped. Shorter than `handshake_timeout`: a real
    /// client sends it at once.
    pub client_hello_timeout: Duration,
    /// A client that has not sent the HTTP/2 preface this long after its
    /// TLS handshake is dropped.
    pub preface_timeout: Duration,
    /// Connections accepted but not yet through their TLS handshake.
    pub max_pending_handshakes: usize,
}

/// Binds `addr` with a listen backlog of `backlog`. The accept loop never
/// waits on a slow client, so the kernel queue only needs to absorb bursts;
/// a longer one would only hide queueing from the pending-handshake limit.
pub fn bind(addr: SocketAddr, backlog: usize) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // A restarted server can bind while old connections sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(u32::try_from(backlog.max(1)).unwrap_or(u32::MAX))
}

/// Connections waiting for their ClientHello, oldest first. Dropping an
/// entry's sender tells that connection to give up its slot.
type Waiting = Arc<Mutex<BTreeMap<u64, oneshot::Sender<()>>>>;

/// Starts accepting on `listener`. Returns the stream of authenticated
/// connections for tonic and the accept task, which stops when the stream
/// is dropped (and should be aborted when the server returns). Every
/// handshake's outcome and every open connection is reported to `observe`
/// (the server's metrics; `HandshakeRecorder::default()` records nothing).
pub fn accept_loop(
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
    let waiting: Waiting = Arc::default();
    let task = tokio::spawn(async move {
        for id in 0u64.. {
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
            let permit = match pending.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    if let Some((_, oldest)) = lock(&waiting).pop_first() {
                        drop(oldest);
                    }
                    tokio::select! {
                        permit = pending.clone().acquire_owned() => match permit {
                            Ok(permit) => permit,
                            Err(_) => return,
                        },
                        _ = tx.closed() => return,
                    }
                }
            };
            let _ = tcp.set_nodelay(true);
            let (slot, evicted) = oneshot::channel();
            lock(&waiting).insert(id, slot);
            let pending = Pending {
                id,
                remote,
                permit,
                waiting: waiting.clone(),
                evicted,
            };
            let (tls, tx, observe) = (tls.clone(), tx.clone(), observe.clone());
            tokio::spawn(async move {
                if let Some(stream) = establish(tcp, pending, &tls, settings, &observe).await {
                    let _ = tx.send(stream).await;
                }
            });
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    (tokio_stream::StreamExt::map(stream, Ok), task)
}

fn lock(waiting: &Waiting) -> std::sync::MutexGuard<'_, BTreeMap<u64, oneshot::Sender<()>>> {
    // A panic elsewhere cannot leave the map inconsistent: every operation
    // on it is a single insert, remove or pop.
    waiting.lock().unwrap_or_else(|e| e.into_inner())
}

/// A connection's place among the pending ones.
struct Pending {
    id: u64,
    remote: SocketAddr,
    permit: OwnedSemaphorePermit,
    waiting: Waiting,
    evicted: oneshot::Receiver<()>,
}

/// ClientHello, handshake, identity and preface, each under its deadline.
/// Every way out is logged; `None` closes the connection.
async fn establish(
    tcp: TcpStream,
    pending: Pending,
    tls: &ArcSwap<rustls::ServerConfig>,
    settings: AcceptSettings,
    observe: &HandshakeRecorder,
) -> Option<PeerStream> {
    let started = Instant::now();
    let remote = pending.remote;
    let hello_deadline = settings
        .client_hello_timeout
        .min(settings.handshake_timeout);
    let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
    let hello = tokio::select! {
        hello = timeout(hello_deadline, acceptor) => hello,
        _ = pending.evicted => {
            observe.handshake(HandshakeOutcome::Timeout);
            debug!(%remote, "no ClientHello yet; closed to make room for a new connection");
            return None;
        }
    };
    lock(&pending.waiting).remove(&pending.id);
    let start = match hello {
        Err(_) => {
            observe.handshake(HandshakeOutcome::Timeout);
            info!(%remote, "no ClientHello in time; connection closed");
            return None;
        }
        Ok(Err(e)) => {
            observe.handshake(HandshakeOutcome::of_error(&e));
            info!(%remote, error = %e, "TLS handshake refused");
            return None;
        }
        Ok(Ok(start)) => start,
    };
    // The config current when the handshake starts.
    let rest = settings.handshake_timeout.saturating_sub(started.elapsed());
    let stream = match timeout(rest, start.into_stream(tls.load_full())).await {
        Err(_) => {
            observe.handshake(HandshakeOutcome::Timeout);
            info!(%remote, "TLS handshake timed out; connection closed");
            return None;
        }
        Ok(Err(e)) => {
            observe.handshake(HandshakeOutcome::of_error(&e));
            info!(%remote, error = %e, "TLS handshake refused");
            return None;
        }
        Ok(Ok(stream)) => stream,
    };
    // The handshake is done: waiting for the preface costs little and has
    // its own deadline, so it does not hold a pending slot.
    drop(pending.permit);
    let certs = stream.get_ref().1.peer_certificates().unwrap_or_default();
    let identity = match PeerIdentity::from_chain(certs) {
        Ok(identity) => {
            observe.handshake(HandshakeOutcome::Ok);
            identity
        }
        Err(e) => {
            observe.handshake(HandshakeOutcome::Other);
            warn!(%remote, error = %e, "verified certificate is unreadable; connection closed");
            return None;
        }
    };
    let mut stream = stream;
    let mut preface = [0u8; H2_PREFACE.len()];
    match timeout(settings.preface_timeout, stream.read_exact(&mut preface)).await {
        Err(_) => {
            info!(%remote, peer = %identity, "no HTTP/2 preface in time after the TLS handshake; connection closed");
            None
        }
        Ok(Err(e)) => {
            debug!(%remote, peer = %identity, error = %e, "connection closed before the HTTP/2 preface");
            None
        }
        Ok(Ok(_)) if &preface != H2_PREFACE => {
            info!(%remote, peer = %identity, "not an HTTP/2 client; connection closed");
            None
        }
        Ok(Ok(_)) => {
            debug!(%remote, peer = %identity, "connection authenticated");
            Some(PeerStream::new(
                stream,
                Arc::new(identity),
                observe.opened(),
            ))
        }
    }
}
