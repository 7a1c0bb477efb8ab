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
    /// server generates one. [default: the service's]
    #[arg(long, env = "SPIFFE_TRUST_DOMAIN", value_parser = parse_trust_domain)]
    pub trust_domain: Option<String>,

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
    /// against. Repeatable; in the environment, comma-separated.
    #[arg(long = "crl", env = "SERVER_CRL", value_delimiter = ',')]
    pub crls: Vec<PathBuf>,

    /// Seconds after which a connection is closed gracefully (GOAWAY), so
    /// that clients re-handshake under the current certificates, CA bundle
    /// and CRLs.
    #[arg(long, env = "SERVER_MAX_CONNECTION_AGE_SECS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connection_age_secs: u64,

    /// Seconds a connection past its max age gets to finish its RPCs before
    /// it is closed forcibly.
    #[arg(
        long,
        env = "SERVER_MAX_CONNECTION_AGE_GRACE_SECS",
        default_value_t = 30
    )]
    pub max_connection_age_grace_secs: u64,

    /// Evaluate and log every decision, but let denied RPCs through (logged
    /// as "would-deny"). For rolling out a new policy safely.
    #[arg(long, env = "SERVER_DRY_RUN")]
    pub dry_run: bool,

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
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

impl ServerArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            handshake_timeout: Duration::from_secs(self.handshake_timeout_secs),
            max_concurrent_streams: self.max_concurrent_streams,
            max_local_error_reset_streams: self.max_local_error_resets,
            max_message_size: self.max_message_bytes,
            drain_timeout: Duration::from_secs(self.drain_timeout_secs),
            max_connection_age: Duration::from_secs(self.max_connection_age_secs),
            max_connection_age_grace: Duration::from_secs(self.max_connection_age_grace_secs),
            ..Limits::default()
        }
    }

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
pub fn ensure_dev_pki(dir: &Path, opts: &DevPkiOptions) -> Result<TlsFiles, ConfigErrors> {
    let paths = DevPkiPaths::new(dir);
    let files = TlsFiles {
        cert: paths.cert("server"),
        key: paths.key("server"),
        client_ca: paths.ca_cert(),
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
    Ok(files)
}

fn server_cert_expired(path: &Path) -> Option<bool> {
    let certs = tls::read_certs(path, "certificate").ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(certs.first()?).ok()?;
    Some(!cert.validity().is_valid())
}

/// Reads and checks everything the server needs. Reports every problem,
/// not just the first. The returned reloader re-reads the same files later.
pub fn load(
    args: &ServerArgs,
    identities: &DevIdentities,
) -> Result<(ServerParts, Arc<ServerReloader>), ConfigErrors> {
    let files = args.tls_files(identities)?;
    let sources = ServerSources {
        cert: files.cert.clone(),
        key: files.key.clone(),
        client_ca: files.client_ca.clone(),
        crls: args.crls.clone(),
        policy: args.policy.clone(),
        tls: ServerTlsOptions {
            min_version: args.min_tls_version,
        },
    };
    let loaded = ServerReloader::load(sources).map_err(ConfigErrors)?;
    let policy = loaded.policy.load();
    let (deny, allow) = policy.rule_counts();
    info!(
        policy = %args.policy.display(), name = policy.name(), deny_rules = deny, allow_rules = allow,
        cert = %files.cert.display(), client_ca = %files.client_ca.display(), crls = args.crls.len(),
        dry_run = args.dry_run,
        "configuration loaded"
    );
    if args.dry_run {
        warn!("dry-run mode: denied RPCs are logged as would-deny and let through");
    }
    Ok((
        ServerParts {
            tls: loaded.tls,
            policy: loaded.policy.clone(),
            limits: args.limits(),
            dry_run: args.dry_run,
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
