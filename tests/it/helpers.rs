//! Shared test fixtures: an in-memory PKI, a real server on an ephemeral
//! loopback port, and real clients as named identities.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use mtls_template::authz::SharedPolicy;
use mtls_template::client::{self, ClientSettings, ConnectError};
use mtls_template::pki::{CertificateAuthority, IssuedCert, LeafSpec};
use mtls_template::policy::Policy;
use mtls_template::server::{self, Limits, ServeError, ServerParts};
use mtls_template::service::InventoryService;
use mtls_template::tls::{
    self, CertifiedKeyFiles, ClientTlsOptions, ServerTlsOptions, TrustAnchors,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// The policy most tests run with: each identity gets a different set of
/// RPCs, and `outsider` is denied everything by a deny rule.
pub const POLICY: &str = include_str!("../../config/policy.json");

/// A CA, a server certificate and one client certificate per identity.
pub struct TestPki {
    pub ca: CertificateAuthority,
    pub server: IssuedCert,
}

impl TestPki {
    pub fn new() -> Self {
        let ca = CertificateAuthority::new("test CA", 1).unwrap();
        let server = ca
            .issue(&LeafSpec::server(
                "test server",
                &["localhost", "127.0.0.1"],
            ))
            .unwrap();
        Self { ca, server }
    }

    /// A development-style client certificate for `name`.
    pub fn client(&self, name: &str) -> IssuedCert {
        self.ca.issue(&LeafSpec::dev_client(name)).unwrap()
    }

    pub fn anchors(&self) -> TrustAnchors {
        TrustAnchors::in_memory(vec![self.ca.cert_der().clone()], "test CA")
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub inventory: InventoryService,
    shutdown: Option<oneshot::Sender<()>>,
    pub handle: JoinHandle<Result<(), ServeError>>,
    ca: TrustAnchors,
}

pub async fn spawn_server(pki: &TestPki, policy_json: &str) -> TestServer {
    spawn_server_with(pki, policy_json, Limits::default()).await
}

pub async fn spawn_server_with(pki: &TestPki, policy_json: &str, limits: Limits) -> TestServer {
    let identity = CertifiedKeyFiles::in_memory(
        vec![pki.server.cert_der.clone()],
        pki.server.key_der(),
        "server",
    );
    let tls = tls::server_config(&identity, &pki.anchors(), ServerTlsOptions::default()).unwrap();
    let policy: SharedPolicy = Arc::new(ArcSwap::from_pointee(
        Policy::from_json(policy_json).unwrap(),
    ));
    let inventory = InventoryService::new();
    // Bind first: the port is ready before the server task even starts.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let parts = ServerParts {
        tls: Arc::new(ArcSwap::new(tls)),
        policy: policy.clone(),
        inventory: inventory.clone(),
        limits,
    };
    let handle = tokio::spawn(server::run(listener, parts, async {
        let _ = rx.await;
    }));
    TestServer {
        addr,
        inventory,
        shutdown: Some(tx),
        handle,
        ca: pki.anchors(),
    }
}

impl TestServer {
    /// Connects as `cert`, verifying the server as `localhost`.
    pub async fn connect(&self, cert: &IssuedCert) -> Result<Channel, ConnectError> {
        self.connect_named(cert, "localhost").await
    }

    pub async fn connect_named(
        &self,
        cert: &IssuedCert,
        server_name: &str,
    ) -> Result<Channel, ConnectError> {
        let identity =
            CertifiedKeyFiles::in_memory(vec![cert.cert_der.clone()], cert.key_der(), "client");
        let config = tls::client_config(&identity, &self.ca, ClientTlsOptions::default()).unwrap();
        let settings = ClientSettings::new(
            self.addr.to_string(),
            tls::server_name(server_name).unwrap(),
        );
        client::connect(&settings, Arc::new(ArcSwap::new(config))).await
    }

    /// Starts the graceful shutdown.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
