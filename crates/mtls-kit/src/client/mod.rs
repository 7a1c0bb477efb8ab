//! The client side: a tonic `Channel` whose connections are made by our own
//! connector, with the rustls config from [`crate::tls`].
//!
//! Doing TLS in the connector (rather than through tonic's
//! `ClientTlsConfig`) keeps one TLS code path for both sides and lets the
//! config be swapped for new connections while the channel lives.
//!
//! [`cli`] holds the flags and exit-status conventions of a client binary,
//! and [`dynamic`] calls any served method by its path with JSON messages.
//! [`balance`] spreads RPCs over every replica behind a name (addresses
//! from [`resolve`]), and [`retry`] retries a call once when that is safe.

pub mod balance;
pub mod cli;
pub mod dynamic;
pub mod resolve;
pub mod retry;

pub use balance::{BalanceSettings, BalancedChannel};
pub use cli::ClientArgs;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

/// Errors from connecting.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The address does not make a valid URI (`http://` + the address).
    #[error("invalid server address {addr:?}: {source}")]
    Address {
        /// The address as given.
        addr: String,
        /// Why tonic refused it.
        source: tonic::transport::Error,
    },
    /// The TCP connection or the TLS handshake failed, or timed out.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// The address connected to.
        addr: String,
        /// The cause; its own source says which step failed.
        source: tonic::transport::Error,
    },
}

/// How to reach the server.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// `host:port`.
    pub addr: String,
    /// The name the server's certificate must carry.
    pub server_name: ServerName<'static>,
    /// Timeout for TCP connect plus TLS handshake. Default 5 s.
    pub connect_timeout: Duration,
}

impl ClientSettings {
    /// Settings for `addr` (`host:port`), expecting `server_name` in the
    /// server's certificate, with the default connect timeout (5 s).
    pub fn new(addr: impl Into<String>, server_name: ServerName<'static>) -> Self {
        Self {
            addr: addr.into(),
            server_name,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Connects (TCP, then mutual TLS) and returns a channel. A server the
/// client cannot verify, or that refuses the client, fails here or on the
/// first RPC (in TLS 1.3 the server's verdict on the client certificate
/// arrives after the client's side of the handshake is done).
pub async fn connect(
    settings: &ClientSettings,
    tls: Arc<ArcSwap<ClientConfig>>,
) -> Result<Channel, ConnectError> {
    let endpoint = Endpoint::from_shared(format!("http://{}", settings.addr))
        .map_err(|source| ConnectError::Address {
            addr: settings.addr.clone(),
            source,
        })?
        .connect_timeout(settings.connect_timeout)
        .tcp_nodelay(true);
    let server_name = settings.server_name.clone();
    let addr = settings.addr.clone();
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let server_name = server_name.clone();
        let addr = addr.clone();
        // The config current at connect time: a rotated client certificate
        // is used by the next connection.
        let connector = TlsConnector::from(tls.load_full());
        async move {
            let tcp = TcpStream::connect(&addr).await?;
            tcp.set_nodelay(true)?;
            let stream = connector.connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|source| ConnectError::Connect {
            addr: settings.addr.clone(),
            source,
        })
}

/// The canonical name of a gRPC status code (`PERMISSION_DENIED`), as
/// every gRPC implementation prints it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Renders an error and its causes on one line, skipping a cause whose text
/// its parent already printed (tonic's transport errors repeat their source).
pub fn describe_error(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}
