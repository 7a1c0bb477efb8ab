//! Shared test fixtures: an in-memory PKI, a real server on an ephemeral
//! loopback port, and real clients as named identities.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use mtls_template::authz::SharedPolicy;
use mtls_template::client::{self, ClientSettings, ConnectError};
use mtls_template::pki::{CertificateAuthority, IssuedCert, LeafSpec};
use mtls_template::policy::Policy;
use mtls_template::reload::{self, ServerReloader, ServerSources, WatchSettings};
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
    spawn_server_opts(pki, policy_json, limits, false).await
}

pub async fn spawn_server_opts(
    pki: &TestPki,
    policy_json: &str,
    limits: Limits,
    dry_run: bool,
) -> TestServer {
    let identity = CertifiedKeyFiles::in_memory(
        vec![pki.server.cert_der.clone()],
        pki.server.key_der(),
        "server",
    );
    let tls =
        tls::server_config(&identity, &pki.anchors(), &[], ServerTlsOptions::default()).unwrap();
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
        dry_run,
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

/// A server whose TLS files and policy live in a temporary directory and
/// are reloaded from there, as in production.
pub struct FileServer {
    pub dir: tempfile::TempDir,
    pub server: TestServer,
    pub reloader: Arc<ServerReloader>,
    server_policy: SharedPolicy,
    watcher: Option<JoinHandle<()>>,
}

pub struct FilePaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
    pub crl: PathBuf,
    pub policy: PathBuf,
}

impl FileServer {
    pub fn paths(&self) -> FilePaths {
        let d = self.dir.path();
        FilePaths {
            cert: d.join("server.pem"),
            key: d.join("server.key"),
            client_ca: d.join("ca.pem"),
            crl: d.join("crl.pem"),
            policy: d.join("policy.json"),
        }
    }

    /// Writes `contents` to `path` atomically (write, then rename), as
    /// cert-manager and friends do.
    pub fn replace(&self, path: &Path, contents: &[u8]) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    /// Waits, without sleeping, until the configuration in force was built
    /// from `contents` of `path`.
    pub async fn wait_in_force(&self, path: &Path, contents: &[u8]) {
        let mut attempts = self.reloader.watch_attempts();
        let wait = async {
            while self.reloader.in_force(path).as_deref() != Some(contents) {
                attempts.changed().await.unwrap();
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .unwrap_or_else(|_| panic!("{} was not reloaded", path.display()));
    }

    /// The name of the policy in force.
    pub fn server_policy_name(&self) -> String {
        self.server_policy.load().name().to_owned()
    }

    pub fn stop_watching(&mut self) {
        if let Some(w) = self.watcher.take() {
            w.abort();
        }
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop_watching();
    }
}

/// Starts a file-backed server for `pki` with `policy_json`, a CRL (empty
/// unless `revoked` names serials), and the given reload triggers (`None`:
/// no watcher; tests then call `reloader.reload()` themselves).
pub async fn spawn_file_server(
    pki: &TestPki,
    policy_json: &str,
    limits: Limits,
    watch: Option<WatchSettings>,
) -> FileServer {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("server.pem"), &pki.server.cert_pem).unwrap();
    std::fs::write(d.join("server.key"), pki.server.key_pem()).unwrap();
    std::fs::write(d.join("ca.pem"), pki.ca.cert_pem()).unwrap();
    std::fs::write(d.join("crl.pem"), pki.ca.crl(&[], 1, 1).unwrap().pem).unwrap();
    std::fs::write(d.join("policy.json"), policy_json).unwrap();
    let sources = ServerSources {
        cert: d.join("server.pem"),
        key: d.join("server.key"),
        client_ca: d.join("ca.pem"),
        crls: vec![d.join("crl.pem")],
        policy: d.join("policy.json"),
        tls: ServerTlsOptions::default(),
    };
    let loaded = ServerReloader::load(sources).unwrap_or_else(|e| panic!("{e:?}"));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let inventory = InventoryService::new();
    let parts = ServerParts {
        tls: loaded.tls.clone(),
        policy: loaded.policy.clone(),
        inventory: inventory.clone(),
        limits,
        dry_run: false,
    };
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(server::run(listener, parts, async {
        let _ = rx.await;
    }));
    let watcher = watch.map(|settings| {
        let reloader = loaded.reloader.clone();
        tokio::spawn(reload::watch_files(
            loaded.reloader.sources().all_paths(),
            settings,
            move || {
                reloader.reload();
            },
        ))
    });
    FileServer {
        dir,
        server: TestServer {
            addr,
            inventory,
            shutdown: Some(tx),
            handle,
            ca: pki.anchors(),
        },
        reloader: loaded.reloader,
        server_policy: loaded.policy,
        watcher,
    }
}

/// The certificate a new TLS handshake with the server presents.
pub async fn presented_cert(
    addr: SocketAddr,
    client: &IssuedCert,
    anchors: &TrustAnchors,
) -> Vec<u8> {
    let identity =
        CertifiedKeyFiles::in_memory(vec![client.cert_der.clone()], client.key_der(), "client");
    let config = tls::client_config(&identity, anchors, ClientTlsOptions::default()).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(tls::server_name("localhost").unwrap(), tcp)
        .await
        .unwrap();
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// Captures the log lines (JSON) emitted on this thread while alive. Tests
/// run on a current-thread runtime, so this includes the server's tasks.
///
/// One global subscriber serves every test; it writes each event into the
/// capture buffer of the thread that emitted it, if that thread has one.
/// (Per-thread default subscribers would race with tracing's global
/// callsite-interest cache when tests run in parallel.)
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

thread_local! {
    static CAPTURE: std::cell::RefCell<Option<LogCapture>> = const { std::cell::RefCell::new(None) };
}

/// Stops capturing on this thread when dropped.
pub struct CaptureGuard;

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        CAPTURE.with(|c| c.borrow_mut().take());
    }
}

impl LogCapture {
    pub fn start() -> (Self, CaptureGuard) {
        static GLOBAL: std::sync::Once = std::sync::Once::new();
        GLOBAL.call_once(|| {
            let subscriber = tracing_subscriber::fmt()
                .json()
                .flatten_event(true)
                .with_max_level(tracing::Level::DEBUG)
                .with_writer(ThreadWriter)
                .finish();
            tracing::subscriber::set_global_default(subscriber).unwrap();
        });
        let capture = LogCapture::default();
        CAPTURE.with(|c| *c.borrow_mut() = Some(capture.clone()));
        (capture, CaptureGuard)
    }

    /// Every captured event, parsed.
    pub fn events(&self) -> Vec<serde_json::Value> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Events whose fields include every `(key, value)` given.
    pub fn matching(&self, fields: &[(&str, &str)]) -> Vec<serde_json::Value> {
        self.events()
            .into_iter()
            .filter(|e| fields.iter().all(|(k, v)| e[*k] == *v))
            .collect()
    }
}

/// Writes into the current thread's capture buffer, or nowhere.
struct ThreadWriter;

impl std::io::Write for ThreadWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURE.with(|c| {
            if let Some(capture) = &*c.borrow() {
                capture.0.lock().unwrap().extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for ThreadWriter {
    type Writer = ThreadWriter;
    fn make_writer(&'a self) -> Self::Writer {
        ThreadWriter
    }
}
