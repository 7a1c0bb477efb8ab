//! Shared test fixtures: an in-memory PKI, a real server on an ephemeral
//! loopback port, and real clients as named identities.

use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mtls_kit::authz::SharedPolicy;
use mtls_kit::pki::IssuedCert;
use mtls_kit::policy::PathCheck;
use mtls_kit::reload::{self, ServerReloader, ServerSources, WatchSettings};
use mtls_kit::server::{Limits, ServeError, ServerParts};
use mtls_kit::testing;
use mtls_kit::tls::{self, ClientTlsOptions, ServerTlsOptions, TrustAnchors};
use tokio::task::JoinHandle;

pub use crate::store::TestStore;
use mtls_kit::tls::CertifiedKeyFiles;

/// The policy most tests run with: each identity gets a different set of
/// the test store's RPCs, and `outsider` is denied everything by a deny rule.
pub const POLICY: &str = include_str!("policy.json");

/// The test PKI, with identities in the trust domain the test policies name.
pub struct TestPki(testing::TestPki);

impl TestPki {
    pub fn new() -> Self {
        Self(testing::TestPki::new("example.org"))
    }
}

impl Deref for TestPki {
    type Target = testing::TestPki;
    fn deref(&self) -> &testing::TestPki {
        &self.0
    }
}

/// The real server running the test store.
pub struct TestServer {
    inner: testing::TestServer,
    pub store: TestStore,
}

impl Deref for TestServer {
    type Target = testing::TestServer;
    fn deref(&self) -> &testing::TestServer {
        &self.inner
    }
}

impl DerefMut for TestServer {
    fn deref_mut(&mut self) -> &mut testing::TestServer {
        &mut self.inner
    }
}

impl TestServer {
    /// The server task, to wait for its end.
    pub fn into_handle(self) -> JoinHandle<Result<(), ServeError>> {
        self.inner.handle
    }
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
    let store = TestStore::default();
    let inner =
        testing::TestServer::spawn_with(pki, policy_json, limits, dry_run, store.services(&limits))
            .await;
    TestServer { inner, store }
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
    spawn_file_server_checked(pki, policy_json, limits, watch, PathCheck::default()).await
}

/// As [`spawn_file_server`], with the policy's paths checked as `check`
/// says.
pub async fn spawn_file_server_checked(
    pki: &TestPki,
    policy_json: &str,
    limits: Limits,
    watch: Option<WatchSettings>,
    check: PathCheck,
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
        limits: None,
        policy_check: check,
        tls: ServerTlsOptions::default(),
    };
    let loaded = ServerReloader::load(sources).unwrap_or_else(|e| panic!("{e:?}"));
    let store = TestStore::default();
    let parts = ServerParts {
        tls: loaded.tls.clone(),
        policy: loaded.policy.clone(),
        limits,
        dry_run: false,
        quota: loaded.limiter.clone(),
    };
    let inner = testing::TestServer::start(parts, store.services(&limits), pki.anchors()).await;
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
        server: TestServer { inner, store },
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

/// The kit's client TLS config presenting `cert`, trusting the test CA.
pub fn client_tls(pki: &TestPki, cert: &IssuedCert) -> Arc<rustls::ClientConfig> {
    let identity =
        CertifiedKeyFiles::in_memory(vec![cert.cert_der.clone()], cert.key_der(), "client");
    tls::client_config(&identity, &pki.anchors(), ClientTlsOptions::default()).unwrap()
}

/// Handshakes with `config`, sends the HTTP/2 preface and reads the header
/// of the server's first frame (its SETTINGS): the server accepted the
/// connection. Returns the stream, or how the connection failed.
pub async fn h2_accepted(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(config)
        .connect(tls::server_name("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut frame_header = [0u8; 9];
    stream
        .read_exact(&mut frame_header)
        .await
        .map_err(|e| e.to_string())?;
    Ok(stream)
}
