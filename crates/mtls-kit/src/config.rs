//! The server's configuration: command-line flags, each with an environment
//! variable (12-factor), and the startup checks that turn them into
//! [`ServerParts`].
//!
//! Every file is read and every setting checked before the server listens;
//! all problems are reported together, each naming its file and field.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::certs_cli::{parse_trust_domain, DevIdentities};
use crate::metrics::{MetricsListen, DEFAULT_METRICS_LISTEN};
use crate::pki::{self, DevPkiOptions, DevPkiPaths};
use crate::policy::{PathCheck, ServedMethods};
use crate::reload::{ServerReloader, ServerSources, WatchSettings};
use crate::server::{Limits, ServerParts};
use crate::telemetry::LogFormat;
use crate::tls::{self, MinTlsVersion, ServerTlsOptions};

/// Where the development PKI lives when no TLS files are named.
pub const DEV_PKI_DIR: &str = "certs";
/// Where a service keeps its policy.
pub const DEFAULT_POLICY: &str = "config/policy.json";

/// The kit's server flags. A service flattens them into its own command
/// line (`#[command(flatten)]`) next to flags of its own.
///
/// With no --cert/--key/--client-ca, the development PKI in certs/ is used,
/// and generated first if it is not there.
#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// Address to listen on.
    #[arg(long, env = "SERVER_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Server certificate chain (PEM, leaf first). [default: certs/server.pem]
    #[arg(long, env = "SERVER_CERT", requires_all = ["key", "client_ca"])]
    pub cert: Option<PathBuf>,

    /// Server private key (PEM). [default: certs/server.key]
    #[arg(long, env = "SERVER_KEY", requires_all = ["cert", "client_ca"])]
    pub key: Option<PathBuf>,

    /// CA bundle (PEM) that client certificates must chain to. [default: certs/ca.pem]
    #[arg(long, env = "SERVER_CLIENT_CA", requires_all = ["cert", "key"])]
    pub client_ca: Option<PathBuf>,

    /// SPIFFE trust domain of the development PKI's identities, when the
    /// server generates one; with the dev PKI, also the default of
    /// --spiffe-trust-domain. [default: the service's]
    #[arg(long, env = "SPIFFE_TRUST_DOMAIN", value_parser = parse_trust_domain)]
    pub trust_domain: Option<String>,

    /// Strict SPIFFE mode: a client certificate must be an X.509-SVID of
    /// this trust domain (exactly one URI SAN, a SPIFFE ID in it, not a
    /// CA), or the handshake is refused. [default: with the dev PKI, its
    /// trust domain (--trust-domain); with --cert/--key/--client-ca, off]
    #[arg(long, env = "SERVER_SPIFFE_TRUST_DOMAIN", value_parser = parse_trust_domain)]
    pub spiffe_trust_domain: Option<String>,

    /// Authorization policy (gRPC A43 JSON).
    #[arg(long, env = "SERVER_POLICY", default_value = DEFAULT_POLICY)]
    pub policy: PathBuf,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// Lowest TLS version accepted.
    #[arg(
        long,
        env = "SERVER_MIN_TLS_VERSION",
        value_enum,
        default_value = "1.3"
    )]
    pub min_tls_version: MinTlsVersion,

    /// Seconds a client has to complete the TLS handshake.
    #[arg(long, env = "SERVER_HANDSHAKE_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub handshake_timeout_secs: u64,

    /// Seconds a client has, from accept, to send its whole ClientHello
    /// (capped by the handshake timeout).
    #[arg(long, env = "SERVER_CLIENT_HELLO_TIMEOUT_SECS", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub client_hello_timeout_secs: u64,

    /// Seconds a client has, after the TLS handshake, to send the HTTP/2
    /// connection preface.
    #[arg(long, env = "SERVER_PREFACE_TIMEOUT_SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub preface_timeout_secs: u64,

    /// Connections accepted but not through their TLS handshake yet (also
    /// the listen backlog); when full, the oldest one still waiting for its
    /// ClientHello is closed to make room.
    #[arg(long, env = "SERVER_MAX_PENDING_HANDSHAKES", default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_pending_handshakes: u64,

    /// Concurrent RPCs (HTTP/2 streams) per connection.
    #[arg(long, env = "SERVER_MAX_CONCURRENT_STREAMS", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_streams: u32,

    /// Streams the server may reset for errors per connection before closing it (CVE-2025-8671).
    #[arg(long, env = "SERVER_MAX_LOCAL_ERROR_RESETS", default_value_t = 256)]
    pub max_local_error_resets: usize,

    /// Largest request or response message in bytes.
    #[arg(long, env = "SERVER_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// Seconds in-flight RPCs get to finish after SIGINT/SIGTERM.
    #[arg(long, env = "SERVER_DRAIN_TIMEOUT_SECS", default_value_t = 10)]
    pub drain_timeout_secs: u64,

    /// Certificate revocation list (PEM) to check client certificates
    /// against. Repeatable; in the environment, comma-separated. A file
    /// named here must exist at startup. With the dev PKI, certs/crl.pem is
    /// always loaded too. [default: none; with the dev PKI, certs/crl.pem]
    #[arg(long = "crl", env = "SERVER_CRL", value_delimiter = ',')]
    pub crls: Vec<PathBuf>,

    /// Seconds after which a connection is closed gracefully (GOAWAY), so
    /// that clients re-handshake under the current certificates, CA bundle
    /// and CRLs.
    #[arg(long, env = "SERVER_MAX_CONNECTION_AGE_SECS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connection_age_secs: u64,

    /// Percent by which each connection's max age is moved, either way at
    /// random, so that clients that connected together do not reconnect
    /// together.
    #[arg(long, env = "SERVER_MAX_CONNECTION_AGE_JITTER_PERCENT", default_value_t = 10, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub max_connection_age_jitter_percent: u8,

    /// Seconds a connection past its max age gets to finish its RPCs before
    /// it is closed forcibly.
    #[arg(
        long,
        env = "SERVER_MAX_CONNECTION_AGE_GRACE_SECS",
        default_value_t = 30
    )]
    pub max_connection_age_grace_secs: u64,

    /// Per-identity limits (JSON): rates and calls in flight by principal
    /// and method, a total, and the fair share. Reloaded like the policy.
    /// Without it, each identity gets a fair share only (64 calls at once).
    #[arg(long, env = "SERVER_LIMITS")]
    pub limits: Option<PathBuf>,

    /// Evaluate and log every decision, but let denied RPCs through (logged
    /// as "would-deny"). For rolling out a new policy safely.
    #[arg(long, env = "SERVER_DRY_RUN")]
    pub dry_run: bool,

    /// Refuse a policy (at startup, and on reload, keeping the old one) with
    /// a path that matches no method this server serves, instead of loading
    /// it with a warning. Off by default: every policy gRPC accepts loads.
    #[arg(long, env = "SERVER_STRICT_POLICY_PATHS")]
    pub strict_policy_paths: bool,

    /// Reload on file system events for the certificate, key, CA, CRL and
    /// policy files.
    #[arg(long, env = "SERVER_WATCH_FILES", default_value_t = true, action = clap::ArgAction::Set)]
    pub watch_files: bool,

    /// Also re-read those files every this many seconds (0: never). A
    /// fallback for file systems without events.
    #[arg(long, env = "SERVER_POLL_INTERVAL_SECS", default_value_t = 5)]
    pub poll_interval_secs: u64,

    /// Address of the Prometheus metrics endpoint (plain HTTP, GET
    /// /metrics), apart from the gRPC port; "off" turns metrics off.
    #[arg(long, env = "SERVER_METRICS_LISTEN", default_value = DEFAULT_METRICS_LISTEN)]
    pub metrics_listen: MetricsListen,
}

/// Startup problems, all of them at once.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let [only] = self.0.as_slice() {
            return f.write_str(only);
        }
        write!(f, "{} configuration errors:", self.0.len())?;
        for e in &self.0 {
            write!(f, "\n  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The TLS files the server will use.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The server's certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
    /// The CA bundle (PEM) client certificates must chain to.
    pub client_ca: PathBuf,
    /// The development PKI's CRL (`certs revoke` writes it), loaded and
    /// watched like a --crl; `None` with explicitly named files.
    pub dev_crl: Option<PathBuf>,
    /// The development PKI's trust domain, the default of strict SPIFFE
    /// mode; `None` with explicitly named files.
    pub dev_trust_domain: Option<String>,
}

impl ServerArgs {
    /// The transport limits these flags set. The ones without a flag
    /// (header list size, keepalive, early answers) keep their
    /// [`Limits::default`]. Not to be confused with the `limits` field,
    /// the per-identity limits file.
    pub fn limits(&self) -> Limits {
        Limits {
            handshake_timeout: Duration::from_secs(self.handshake_timeout_secs),
            client_hello_timeout: Duration::from_secs(self.client_hello_timeout_secs),
            preface_timeout: Duration::from_secs(self.preface_timeout_secs),
            max_pending_handshakes: usize::try_from(self.max_pending_handshakes)
                .unwrap_or(usize::MAX),
            max_concurrent_streams: self.max_concurrent_streams,
            max_local_error_reset_streams: self.max_local_error_resets,
            max_message_size: self.max_message_bytes,
            drain_timeout: Duration::from_secs(self.drain_timeout_secs),
            max_connection_age: Duration::from_secs(self.max_connection_age_secs),
            max_connection_age_jitter: f64::from(self.max_connection_age_jitter_percent) / 100.0,
            max_connection_age_grace: Duration::from_secs(self.max_connection_age_grace_secs),
            ..Limits::default()
        }
    }

    /// When the server reloads its files: on file events if
    /// `--watch-files`, every `--poll-interval-secs` unless 0, and always
    /// on SIGHUP.
    pub fn watch_settings(&self) -> WatchSettings {
        WatchSettings {
            file_events: self.watch_files,
            poll_interval: (self.poll_interval_secs > 0)
                .then(|| Duration::from_secs(self.poll_interval_secs)),
            sighup: true,
        }
    }

    /// The TLS files named on the command line, or the development PKI
    /// for `identities` (generated if absent).
    pub fn tls_files(&self, identities: &DevIdentities) -> Result<TlsFiles, ConfigErrors> {
        match (&self.cert, &self.key, &self.client_ca) {
            (Some(cert), Some(key), Some(client_ca)) => Ok(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: client_ca.clone(),
                dev_crl: None,
                dev_trust_domain: None,
            }),
            // clap's `requires_all` makes these three all-or-nothing.
            _ => ensure_dev_pki(
                Path::new(DEV_PKI_DIR),
                &identities.pki_options(self.trust_domain.as_deref()),
            ),
        }
    }
}

/// Uses the development PKI in `dir`, generating it when none of its
/// server files exist or when its server certificate has expired (dev
/// certificates live for days). A partial PKI is an error rather than
/// something to overwrite silently.
///
/// Revocation is on in development: the PKI's `crl.pem` is always used, so
/// that `certs revoke NAME` takes effect on the running server. A PKI made
/// before the CRL existed (or whose CRL was deleted) gets an empty one,
/// signed by its CA; without the CA key no CRL can be signed (nor any
/// certificate revoked), and the server runs without one, saying so.
pub fn ensure_dev_pki(dir: &Path, opts: &DevPkiOptions) -> Result<TlsFiles, ConfigErrors> {
    let paths = DevPkiPaths::new(dir);
    let mut files = TlsFiles {
        cert: paths.cert("server"),
        key: paths.key("server"),
        client_ca: paths.ca_cert(),
        dev_crl: None,
        dev_trust_domain: Some(opts.trust_domain.clone()),
    };
    let present = [&files.cert, &files.key, &files.client_ca].map(|p| p.exists());
    let regenerate = match present {
        [false, false, false] => {
            info!(dir = %dir.display(), "no TLS files given and no development PKI found: generating one (for development only)");
            true
        }
        [true, true, true] => match server_cert_expired(&files.cert) {
            Some(true) => {
                warn!(cert = %files.cert.display(), "the development server certificate has expired: regenerating the development PKI");
                true
            }
            _ => false,
        },
        _ => {
            let missing: Vec<String> = [&files.cert, &files.key, &files.client_ca]
                .iter()
                .zip(present)
                .filter(|(_, p)| !p)
                .map(|(f, _)| f.display().to_string())
                .collect();
            return Err(ConfigErrors(vec![format!(
                "the development PKI in {} is incomplete (missing {}); run `cargo run --bin certs -- init --force` to recreate it",
                dir.display(),
                missing.join(", ")
            )]));
        }
    };
    if regenerate {
        let written = pki::write_dev_pki(&paths, opts)
            .map_err(|e| ConfigErrors(vec![format!("generating the development PKI: {e}")]))?;
        info!(files = written.len(), dir = %dir.display(), "development PKI written; private keys are mode 0600");
    }
    files.dev_crl = ensure_dev_crl(&paths, opts)?;
    Ok(files)
}

/// The dev PKI's CRL, made empty if absent and the CA key is there.
fn ensure_dev_crl(
    paths: &DevPkiPaths,
    opts: &DevPkiOptions,
) -> Result<Option<PathBuf>, ConfigErrors> {
    let crl = paths.crl();
    if crl.exists() {
        return Ok(Some(crl));
    }
    if !paths.ca_key().exists() {
        warn!(crl = %crl.display(), ca_key = %paths.ca_key().display(), "no development CRL and no CA key to sign one: client certificates are not revocation-checked");
        return Ok(None);
    }
    let ca = pki::CertificateAuthority::from_pem_files(&paths.ca_cert(), &paths.ca_key())
        .map_err(|e| ConfigErrors(vec![format!("making the development CRL: {e}")]))?;
    pki::write_empty_crl(&ca, paths, opts.leaf_days)
        .map_err(|e| ConfigErrors(vec![format!("making the development CRL: {e}")]))?;
    info!(crl = %crl.display(), "no development CRL found: wrote an empty one (certs revoke adds to it)");
    Ok(Some(crl))
}

/// Whether `a` and `b` name the same file (so the dev CRL named with --crl
/// too is not loaded twice).
fn same_file(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
}

/// Strict SPIFFE mode holds clients to the X.509-SVID rules; the server's
/// own certificate is verified by clients by name only, so one that is not
/// an SVID still serves. Say so once, at startup, so that it is a choice.
fn warn_unless_svid(cert: &Path, trust_domain: &str) {
    let Ok(chain) = tls::read_certs(cert, "certificate") else {
        return; // unreachable after a successful load; nothing to add
    };
    if let Some(Err(reason)) = chain
        .first()
        .map(|leaf| crate::spiffe_verifier::check_svid(leaf, trust_domain))
    {
        warn!(cert = %cert.display(), %trust_domain, %reason, "the server certificate is not an X.509-SVID of the trust domain; clients verify it by name (DNS/IP SANs) only");
    }
}

fn server_cert_expired(path: &Path) -> Option<bool> {
    let certs = tls::read_certs(path, "certificate").ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(certs.first()?).ok()?;
    Some(!cert.validity().is_valid())
}

/// Reads and checks everything the server needs. Reports every problem,
/// not just the first. The policy's paths are checked against `served`
/// (the methods the server serves). The returned reloader re-reads the same
/// files later, with the same checks.
pub fn load(
    args: &ServerArgs,
    identities: &DevIdentities,
    served: ServedMethods,
) -> Result<(ServerParts, Arc<ServerReloader>), ConfigErrors> {
    let files = args.tls_files(identities)?;
    let mut crls = args.crls.clone();
    if let Some(dev_crl) = &files.dev_crl {
        if !crls.iter().any(|c| same_file(c, dev_crl)) {
            crls.push(dev_crl.clone());
        }
    }
    let spiffe_trust_domain = args
        .spiffe_trust_domain
        .clone()
        .or(files.dev_trust_domain.clone());
    let sources = ServerSources {
        cert: files.cert.clone(),
        key: files.key.clone(),
        client_ca: files.client_ca.clone(),
        crls: crls.clone(),
        policy: args.policy.clone(),
        limits: args.limits.clone(),
        policy_check: PathCheck {
            served: Some(Arc::new(served)),
            strict: args.strict_policy_paths,
        },
        tls: ServerTlsOptions {
            min_version: args.min_tls_version,
            spiffe_trust_domain: spiffe_trust_domain.clone(),
        },
    };
    let loaded = ServerReloader::load(sources).map_err(ConfigErrors)?;
    if let Some(trust_domain) = &spiffe_trust_domain {
        warn_unless_svid(&files.cert, trust_domain);
    }
    let policy = loaded.policy.load();
    let (deny, allow) = policy.rule_counts();
    info!(
        policy = %args.policy.display(), name = policy.name(), deny_rules = deny, allow_rules = allow,
        cert = %files.cert.display(), client_ca = %files.client_ca.display(), crls = crls.len(),
        spiffe_trust_domain = spiffe_trust_domain.as_deref().unwrap_or("(off)"),
        dry_run = args.dry_run,
        "configuration loaded"
    );
    if args.dry_run {
        warn!("dry-run mode: denied RPCs are logged as would-deny and let through");
    }
    let quota = loaded.limiter.config();
    info!(
        limits = %args.limits.as_ref().map_or("(none: fair share only)".into(), |p| p.display().to_string()),
        entries = quota.entries.len(),
        fair_share_per_identity = quota.fair_share.enabled.then_some(quota.fair_share.max_in_flight_per_identity),
        dry_run = quota.dry_run,
        "limits loaded"
    );
    if quota.dry_run {
        warn!("limits dry run: calls over a limit are logged and counted, and let through");
    }
    Ok((
        ServerParts {
            tls: loaded.tls,
            policy: loaded.policy.clone(),
            limits: args.limits(),
            dry_run: args.dry_run,
            quota: loaded.limiter.clone(),
        },
        loaded.reloader,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{CertificateAuthority, LeafSpec};

    fn opts() -> DevPkiOptions {
        DevPkiOptions {
            identities: vec!["alice".into()],
            ..DevPkiOptions::default()
        }
    }

    #[test]
    fn the_dev_pki_is_made_when_absent_and_kept_when_present() {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        let files = ensure_dev_pki(&certs, &opts()).unwrap();
        assert!(files.cert.exists() && files.key.exists() && files.client_ca.exists());
        let first = std::fs::read(&files.cert).unwrap();
        ensure_dev_pki(&certs, &opts()).unwrap();
        assert_eq!(
            std::fs::read(&files.cert).unwrap(),
            first,
            "a valid PKI was replaced"
        );
    }

    #[test]
    fn an_incomplete_dev_pki_is_an_error_naming_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let files = ensure_dev_pki(dir.path(), &opts()).unwrap();
        std::fs::remove_file(&files.key).unwrap();
        let e = ensure_dev_pki(dir.path(), &opts()).unwrap_err().to_string();
        assert!(
            e.contains("incomplete") && e.contains("server.key") && e.contains("--force"),
            "{e}"
        );
    }

    #[test]
    fn a_dev_pki_without_a_crl_gets_an_empty_one_unless_the_ca_key_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let crl = ensure_dev_pki(dir.path(), &opts())
            .unwrap()
            .dev_crl
            .unwrap();
        std::fs::remove_file(&crl).unwrap();
        let again = ensure_dev_pki(dir.path(), &opts()).unwrap();
        assert_eq!(again.dev_crl.as_deref(), Some(crl.as_path()));
        tls::parse_crls(&std::fs::read(&crl).unwrap(), &crl).unwrap();

        // Without the CA key no CRL can be signed: serve without one.
        std::fs::remove_file(&crl).unwrap();
        std::fs::remove_file(DevPkiPaths::new(dir.path()).ca_key()).unwrap();
        assert_eq!(ensure_dev_pki(dir.path(), &opts()).unwrap().dev_crl, None);
        assert!(!crl.exists());
    }

    #[test]
    fn an_expired_dev_server_certificate_is_regenerated() {
        let dir = tempfile::tempdir().unwrap();
        let files = ensure_dev_pki(dir.path(), &opts()).unwrap();
        let ca = CertificateAuthority::new("old", 1).unwrap();
        let now = time::OffsetDateTime::now_utc();
        let expired = ca
            .issue(
                &LeafSpec::server("old", &["localhost"])
                    .valid_between(now - time::Duration::days(9), now - time::Duration::days(2)),
            )
            .unwrap();
        std::fs::write(&files.cert, &expired.cert_pem).unwrap();
        ensure_dev_pki(dir.path(), &opts()).unwrap();
        assert_eq!(server_cert_expired(&files.cert), Some(false));
    }
}
