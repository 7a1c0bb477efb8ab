//! Test fixtures for services built on the kit (feature `testing`): an
//! in-memory PKI, the real server on an ephemeral loopback port, and real
//! clients as named identities.
//!
//! Everything here panics on failure: it is for tests, never for input a
//! user supplies.
//!
//! ```no_run
//! # async fn demo(services: mtls_kit::server::Services) {
//! use mtls_kit::testing::{TestPki, TestServer};
//! let pki = TestPki::new("example.org");
//! let policy = r#"{"name": "p", "allow_rules": [{"name": "all"}]}"#;
//! let server = TestServer::spawn(&pki, policy, services).await;
//! let channel = server.connect(&pki.client("reader")).await.unwrap();
//! # }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::authz::SharedPolicy;
use crate::client::{self, ClientSettings, ConnectError};
use crate::metrics::{self, Metrics};
use crate::pki::{CertificateAuthority, IssuedCert, LeafSpec};
use crate::policy::Policy;
use crate::server::{self, Limits, ServeError, ServerParts, Services};
use crate::tls::{self, CertifiedKeyFiles, ClientTlsOptions, ServerTlsOptions, TrustAnchors};

/// A CA, a server certificate for `localhost` and `127.0.0.1`, and client
/// certificates on demand.
pub struct TestPki {
    /// The CA (valid one day): issue certificates of your own from it,
    /// e.g. expired ones or CRLs.
    pub ca: CertificateAuthority,
    /// The server's certificate and key.
    pub server: IssuedCert,
    trust_domain: String,
}

impl TestPki {
    /// A PKI whose client identities are `spiffe://<trust_domain>/<name>`.
    pub fn new(trust_domain: &str) -> Self {
        let ca = CertificateAuthority::new("test CA", 1).expect("test CA");
        let server = ca
            .issue(&LeafSpec::server(
                "test server",
                &["localhost", "127.0.0.1"],
            ))
            .expect("test server certificate");
        Self {
            ca,
            server,
            trust_domain: trust_domain.to_owned(),
        }
    }

    /// A development-style client certificate for `name`.
    pub fn client(&self, name: &str) -> IssuedCert {
        self.ca
            .issue(&LeafSpec::dev_client(&self.trust_domain, name))
            .expect("test client certificate")
    }

    /// The CA as a trust anchor.
    pub fn anchors(&self) -> TrustAnchors {
        TrustAnchors::in_memory(vec![self.ca.cert_der().clone()], "test CA")
    }

    /// The server's TLS config, trusting this PKI's CA for clients.
    pub fn server_tls(&self) -> Arc<rustls::ServerConfig> {
        let identity = CertifiedKeyFiles::in_memory(
            vec![self.server.cert_der.clone()],
            self.server.key_der(),
            "server",
        );
        tls::server_config(&identity, &self.anchors(), &[], ServerTlsOptions::default())
            .expect("test server TLS config")
    }
}

/// A running server. Dropping it leaves the task running until the test's
/// runtime ends; call [`TestServer::begin_shutdown`] to drain it.
pub struct TestServer {
    /// The gRPC address (`127.0.0.1`, an ephemeral port), already
    /// listening.
    pub addr: SocketAddr,
    /// The metrics endpoint (`GET /metrics`), on its own `127.0.0.1:0`.
    pub metrics_addr: SocketAddr,
    /// The server's metrics registry.
    pub metrics: Metrics,
    /// The server's task: await it after [`TestServer::begin_shutdown`]
    /// to wait for the drain to end.
    pub handle: JoinHandle<Result<(), ServeError>>,
    shutdown: Option<oneshot::Sender<()>>,
    ca: TrustAnchors,
}

impl TestServer {
    /// Serves `services` with `policy_json` and default limits.
    pub async fn spawn(pki: &TestPki, policy_json: &str, services: Services) -> Self {
        Self::spawn_with(pki, policy_json, Limits::default(), false, services).await
    }

    /// Serves `services` with `policy_json`, `limits` and, if `dry_run`,
    /// denials only logged.
    pub async fn spawn_with(
        pki: &TestPki,
        policy_json: &str,
        limits: Limits,
        dry_run: bool,
        services: Services,
    ) -> Self {
        let policy: SharedPolicy = Arc::new(ArcSwap::from_pointee(
            Policy::from_json(policy_json).expect("test policy"),
        ));
        let parts = ServerParts {
            tls: Arc::new(ArcSwap::new(pki.server_tls())),
            policy,
            limits,
            dry_run,
            quota: Arc::default(),
        };
        Self::start(parts, services, pki.anchors()).await
    }

    /// Serves `services` with `parts` (say, from a reloader) on a new
    /// `127.0.0.1:0` listener. Clients verify the server against `ca`.
    pub async fn start(parts: ServerParts, services: Services, ca: TrustAnchors) -> Self {
        // Bind first: the port is ready before the server task even starts.
        let listener = crate::accept::bind(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            parts.limits.max_pending_handshakes,
        )
        .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let metrics = services.metrics().clone();
        let metrics_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0 for metrics");
        let metrics_addr = metrics_listener.local_addr().expect("local address");
        // Runs until the test's runtime ends, like the server.
        tokio::spawn(metrics::http::serve(metrics_listener, metrics.clone()));
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(server::run(listener, parts, services, async {
            let _ = rx.await;
        }));
        Self {
            addr,
            metrics_addr,
            metrics,
            handle,
            shutdown: Some(tx),
            ca,
        }
    }

    /// Connects as `cert`, verifying the server as `localhost`.
    pub async fn connect(&self, cert: &IssuedCert) -> Result<Channel, ConnectError> {
        self.connect_named(cert, "localhost").await
    }

    /// Connects as `cert`, verifying the server as `server_name`.
    pub async fn connect_named(
        &self,
        cert: &IssuedCert,
        server_name: &str,
    ) -> Result<Channel, ConnectError> {
        let identity =
            CertifiedKeyFiles::in_memory(vec![cert.cert_der.clone()], cert.key_der(), "client");
        let config = tls::client_config(&identity, &self.ca, ClientTlsOptions::default())
            .expect("test client TLS config");
        let settings = ClientSettings::new(
            self.addr.to_string(),
            tls::server_name(server_name).expect("server name"),
        );
        client::connect(&settings, Arc::new(ArcSwap::new(config))).await
    }

    /// Scrapes the metrics endpoint over HTTP and parses the exposition.
    pub async fn scrape(&self) -> metrics::scrape::Exposition {
        metrics::scrape::scrape(self.metrics_addr).await
    }

    /// Starts the graceful shutdown.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
