//! One connection to one replica, as the balancer sees it: a tonic
//! [`Channel`] over the kit's connector that dials exactly once, reports
//! when its connection ends, and measures its load for the balancer.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};
use tower::load::Load;
use tower::Service;

use super::discovery::Event;
use super::NotSent;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Request = http::Request<Body>;
type Response = http::Response<Body>;
type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response, BoxError>> + Send>>;

/// One connection to one address, as the balancer sees it.
pub(super) struct Replica {
    channel: Channel,
    shared: Arc<ReplicaShared>,
}

/// What the connection, the in-flight calls and the balancer share.
struct ReplicaShared {
    /// For errors and events.
    addr: SocketAddr,
    /// Set once the connection has closed, or a call on it failed at the
    /// transport level: the balancer then drops this replica.
    closed: AtomicBool,
    /// Requests sent and not yet answered: the balancer's load measure.
    in_flight: AtomicUsize,
    /// Until when this replica is passed over after answering UNAVAILABLE.
    penalized_until: Mutex<Option<Instant>>,
    /// How long a penalty lasts.
    penalty: Duration,
}

impl ReplicaShared {
    fn penalized(&self) -> bool {
        let until = *self
            .penalized_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        until.is_some_and(|t| Instant::now() < t)
    }

    fn penalize(&self) {
        *self
            .penalized_until
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + self.penalty);
    }
}

/// Compared field by field: a penalized replica loses to any other, then
/// fewer requests in flight wins.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub(super) struct ReplicaLoad {
    penalized: bool,
    in_flight: usize,
}

impl Load for Replica {
    type Metric = ReplicaLoad;

    fn load(&self) -> ReplicaLoad {
        ReplicaLoad {
            penalized: self.shared.penalized(),
            in_flight: self.shared.in_flight.load(Ordering::Relaxed),
        }
    }
}

impl Service<Request> for Replica {
    type Response = Response;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // An error here makes the balancer drop this replica for good; the
        // discovery task decides whether the address comes back.
        if self.shared.closed.load(Ordering::Acquire) {
            return Poll::Ready(Err(Box::new(NotSent {
                addr: self.shared.addr,
            })));
        }
        self.channel.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request) -> ResponseFuture {
        let in_flight = InFlight::new(self.shared.clone());
        let call = self.channel.call(req);
        Box::pin(async move {
            let result = call.await;
            let shared = &in_flight.0;
            match &result {
                Ok(response) => {
                    // A trailers-only UNAVAILABLE (the usual shape of an
                    // error answer) is in the headers.
                    if response.headers().get("grpc-status").map(|v| v.as_bytes()) == Some(b"14") {
                        shared.penalize();
                    }
                }
                Err(e) if connection_failed(e) => {
                    // Set before the caller sees the error, so that a retry
                    // cannot be given this replica again.
                    shared.closed.store(true, Ordering::Release);
                }
                Err(_) => {}
            }
            result.map_err(Into::into)
        })
    }
}

/// Whether a failed call means the connection itself is gone (not just
/// this stream: its deadline, or a reset of the stream alone).
fn connection_failed(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(e) = source {
        if e.is::<tonic::TimeoutExpired>() {
            return false;
        }
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return !h2.is_reset();
        }
        source = e.source();
    }
    true
}

/// Counts a request as in flight until its response (or failure) arrives,
/// or the caller gives up.
struct InFlight(Arc<ReplicaShared>);

impl InFlight {
    fn new(shared: Arc<ReplicaShared>) -> Self {
        shared.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(shared)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Everything a connect task needs to make one replica.
pub(super) struct Dial {
    /// The resolved address to connect to.
    pub(super) addr: SocketAddr,
    /// Goes with the `Lost` event, so a late one cannot remove a newer
    /// connection to the same address.
    pub(super) generation: u64,
    /// The channel's settings and `:authority` (the name, not the IP).
    pub(super) endpoint: Endpoint,
    /// What the certificate must carry, whatever the address.
    pub(super) server_name: ServerName<'static>,
    pub(super) tls: Arc<ArcSwap<ClientConfig>>,
    /// See `BalanceSettings::unavailable_penalty`.
    pub(super) penalty: Duration,
    /// Where the connection reports its end.
    pub(super) events: mpsc::UnboundedSender<Event>,
}

impl Dial {
    /// Connects (TCP, then mutual TLS) and completes the HTTP/2 handshake.
    pub(super) async fn connect(self) -> Result<Replica, tonic::transport::Error> {
        let Dial {
            addr,
            generation,
            endpoint,
            server_name,
            tls,
            penalty,
            events,
        } = self;
        let shared = Arc::new(ReplicaShared {
            addr,
            closed: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            penalized_until: Mutex::new(None),
            penalty,
        });
        let dialed = Arc::new(AtomicBool::new(false));
        let connector = {
            let shared = shared.clone();
            tower::service_fn(move |_uri: http::Uri| {
                // tonic's channel reconnects by itself when its connection
                // is lost. Here the discovery task owns reconnecting (only
                // to an address still resolved, with its own pacing), so a
                // second dial fails at once and the request is known unsent.
                let first = !dialed.swap(true, Ordering::AcqRel);
                // The config current at connect time: a rotated client
                // certificate is used by the next connection.
                let connector = TlsConnector::from(tls.load_full());
                let server_name = server_name.clone();
                let shared = shared.clone();
                let events = events.clone();
                async move {
                    if !first {
                        shared.closed.store(true, Ordering::Release);
                        return Err::<_, BoxError>(Box::new(NotSent { addr }));
                    }
                    let tcp = TcpStream::connect(addr).await?;
                    tcp.set_nodelay(true)?;
                    let stream = connector.connect(server_name, tcp).await?;
                    let guard = LostGuard {
                        shared,
                        generation,
                        events,
                    };
                    Ok(TokioIo::new(Tracked {
                        io: stream,
                        _guard: guard,
                    }))
                }
            })
        };
        let channel = endpoint.connect_with_connector(connector).await?;
        Ok(Replica { channel, shared })
    }
}

/// Reports the connection's end when hyper drops its socket: after a
/// GOAWAY and the last stream, a reset, or an EOF.
struct LostGuard {
    shared: Arc<ReplicaShared>,
    generation: u64,
    events: mpsc::UnboundedSender<Event>,
}

impl Drop for LostGuard {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        let _ = self
            .events
            .send(Event::Lost(self.shared.addr, self.generation));
    }
}

/// A connection's stream, with the guard that reports its end.
struct Tracked<T> {
    io: T,
    _guard: LostGuard,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_penalized_replica_loses_to_a_busier_one() {
        let idle_but_penalized = ReplicaLoad {
            penalized: true,
            in_flight: 0,
        };
        let busy = ReplicaLoad {
            penalized: false,
            in_flight: 50,
        };
        assert!(busy < idle_but_penalized);
    }
}
