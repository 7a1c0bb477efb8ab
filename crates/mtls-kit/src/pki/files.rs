//! The development PKI on disk: the files `certs/` holds, written atomically
//! with private keys 0600, and the CRL `certs revoke` maintains.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use super::{
    io_err, CertificateAuthority, IssuedCert, LeafSpec, PkiError, Revoked, DEFAULT_CA_DAYS,
    DEFAULT_LEAF_DAYS, DEFAULT_SERVER_NAMES, DEFAULT_TRUST_DOMAIN,
};

/// The serial number of the first certificate in a PEM file.
pub fn serial_of(cert_path: &Path) -> Result<Vec<u8>, PkiError> {
    let pem = fs::read(cert_path).map_err(io_err(cert_path))?;
    let bad = |reason: String| PkiError::BadInput {
        path: cert_path.to_owned(),
        reason,
    };
    let der = CertificateDer::from_pem_slice(&pem).map_err(|e| bad(e.to_string()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| bad(e.to_string()))?;
    Ok(cert.raw_serial().to_vec())
}

/// The entries and number of an existing CRL file; empty if there is none.
fn read_crl(path: &Path) -> Result<(Vec<Revoked>, u64), PkiError> {
    let pem = match fs::read(path) {
        Ok(pem) => pem,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(io_err(path)(e)),
    };
    let bad = |reason: String| PkiError::BadInput {
        path: path.to_owned(),
        reason,
    };
    let der = rustls_pki_types::CertificateRevocationListDer::from_pem_slice(&pem)
        .map_err(|e| bad(e.to_string()))?;
    let (_, crl) = x509_parser::parse_x509_crl(&der).map_err(|e| bad(e.to_string()))?;
    let entries = crl
        .iter_revoked_certificates()
        .map(|r| Revoked {
            serial: r.raw_serial().to_vec(),
            at: r.revocation_date.to_datetime(),
        })
        .collect();
    let number = crl
        .crl_number()
        .and_then(|n| u64::try_from(n.clone()).ok())
        .unwrap_or(0);
    Ok((entries, number))
}

/// Adds the certificate at `cert_path` to the development CRL
/// (`<dir>/crl.pem`), re-signing it with the CA. Returns the CRL's path.
pub fn revoke(
    ca: &CertificateAuthority,
    paths: &DevPkiPaths,
    cert_path: &Path,
    days: i64,
) -> Result<PathBuf, PkiError> {
    let serial = serial_of(cert_path)?;
    let crl_path = paths.crl();
    let (mut entries, number) = read_crl(&crl_path)?;
    if !entries.iter().any(|r| r.serial == serial) {
        entries.push(Revoked {
            serial,
            at: OffsetDateTime::now_utc(),
        });
    }
    let crl = ca.crl(&entries, number + 1, days)?;
    write_public(&crl_path, &crl.pem)?;
    Ok(crl_path)
}

/// Where the files of the on-disk development PKI live.
#[derive(Clone, Debug)]
pub struct DevPkiPaths {
    /// The directory that holds them all (`certs/` for a service).
    pub dir: PathBuf,
}

impl DevPkiPaths {
    /// The PKI in `dir`. Only names the files: nothing is read or written.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    /// The CA certificate, `ca.pem`: the bundle both sides trust.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    /// The CA's private key, `ca.key` (mode 0600): needed to issue
    /// certificates and to sign CRLs.
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    /// The certificate of `name` (`server` or a client identity),
    /// `<name>.pem`.
    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }
    /// The private key of `name`, `<name>.key` (mode 0600).
    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }
    /// The CRL `certs revoke` maintains.
    pub fn crl(&self) -> PathBuf {
        self.dir.join("crl.pem")
    }
}

/// Options for [`write_dev_pki`].
#[derive(Clone, Debug)]
pub struct DevPkiOptions {
    /// The SPIFFE trust domain of the client identities. Default
    /// [`DEFAULT_TRUST_DOMAIN`].
    pub trust_domain: String,
    /// The client identities to issue, each as `spiffe://<trust_domain>/<name>`
    /// and `CN=<name>`. Default none: the service names its own.
    pub identities: Vec<String>,
    /// Extra server names (a compose service name, a host name) besides
    /// [`DEFAULT_SERVER_NAMES`].
    pub extra_server_names: Vec<String>,
    /// Default [`DEFAULT_CA_DAYS`].
    pub ca_days: i64,
    /// Default [`DEFAULT_LEAF_DAYS`].
    pub leaf_days: i64,
}

impl Default for DevPkiOptions {
    fn default() -> Self {
        Self {
            trust_domain: DEFAULT_TRUST_DOMAIN.to_owned(),
            identities: Vec::new(),
            extra_server_names: Vec::new(),
            ca_days: DEFAULT_CA_DAYS,
            leaf_days: DEFAULT_LEAF_DAYS,
        }
    }
}

/// Writes a complete development PKI into `paths.dir`: `ca.pem`/`ca.key`,
/// `server.pem`/`server.key`, `<identity>.pem`/`.key` for every entry of
/// `opts.identities`, and an empty `crl.pem`. Replaces whatever is there.
/// Returns the files written.
pub fn write_dev_pki(paths: &DevPkiPaths, opts: &DevPkiOptions) -> Result<Vec<PathBuf>, PkiError> {
    fs::create_dir_all(&paths.dir).map_err(io_err(&paths.dir))?;
    // A name of its own per PKI: a verifier looks up the issuer by name, so
    // with one shared name a client of another dev PKI would fail on a bad
    // signature ("decrypt error") instead of the clear "unknown CA".
    let created = OffsetDateTime::now_utc().unix_timestamp_nanos();
    let ca = CertificateAuthority::new(&format!("mtls-kit dev CA {created:x}"), opts.ca_days)?;
    let mut written = Vec::new();
    write_public(&paths.ca_cert(), ca.cert_pem())?;
    write_private(&paths.ca_key(), &ca.key_pem())?;
    written.extend([paths.ca_cert(), paths.ca_key()]);

    written.extend(issue_server(
        &ca,
        paths,
        &opts.extra_server_names,
        opts.leaf_days,
    )?);
    for name in &opts.identities {
        written.extend(issue_client(
            &ca,
            paths,
            &opts.trust_domain,
            name,
            opts.leaf_days,
        )?);
    }
    // An empty CRL: the server loads it from the start, and `certs revoke`
    // has something to add to.
    written.push(write_empty_crl(&ca, paths, opts.leaf_days)?);
    Ok(written)
}

/// Writes an empty CRL (number 1), signed by `ca`, to `paths.crl()`.
pub fn write_empty_crl(
    ca: &CertificateAuthority,
    paths: &DevPkiPaths,
    days: i64,
) -> Result<PathBuf, PkiError> {
    write_public(&paths.crl(), &ca.crl(&[], 1, days)?.pem)?;
    Ok(paths.crl())
}

/// Issues `server.pem`/`server.key` from `ca` with the default names plus
/// `extra_names`.
pub fn issue_server(
    ca: &CertificateAuthority,
    paths: &DevPkiPaths,
    extra_names: &[String],
    days: i64,
) -> Result<[PathBuf; 2], PkiError> {
    let mut names: Vec<&str> = DEFAULT_SERVER_NAMES.to_vec();
    names.extend(extra_names.iter().map(String::as_str));
    let server = ca.issue(&LeafSpec::server("mtls-kit dev server", &names).valid_for_days(days))?;
    write_pair(paths, "server", &server)
}

/// Issues `<name>.pem`/`<name>.key` for a development client identity.
pub fn issue_client(
    ca: &CertificateAuthority,
    paths: &DevPkiPaths,
    trust_domain: &str,
    name: &str,
    days: i64,
) -> Result<[PathBuf; 2], PkiError> {
    let cert = ca.issue(&LeafSpec::dev_client(trust_domain, name).valid_for_days(days))?;
    write_pair(paths, name, &cert)
}

fn write_pair(
    paths: &DevPkiPaths,
    name: &str,
    cert: &IssuedCert,
) -> Result<[PathBuf; 2], PkiError> {
    let (c, k) = (paths.cert(name), paths.key(name));
    // Key first: a reader that sees the new certificate must find its key.
    write_private(&k, cert.key_pem())?;
    write_public(&c, &cert.cert_pem)?;
    Ok([c, k])
}

fn write_public(path: &Path, contents: &str) -> Result<(), PkiError> {
    write_atomic(path, contents, 0o644)
}

/// Private keys are created 0600 from the start (never world-readable, not
/// even briefly) and moved into place atomically.
fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    write_atomic(path, contents, 0o600)
}

fn write_atomic(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{}.tmp", file_name.unwrap_or_default()));
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let result = (|| {
        // A stale temp file may have other permissions; start afresh.
        let _ = fs::remove_file(&tmp);
        let mut f = options.open(&tmp)?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_pki_files_and_key_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let paths = DevPkiPaths::new(dir.path());
        let written = write_dev_pki(
            &paths,
            &DevPkiOptions {
                identities: vec!["alice".into(), "bob".into()],
                extra_server_names: vec!["server".into()],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(written.len(), 5 + 2 * 2);
        for f in &written {
            let meta = fs::metadata(f).unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let expected = if f.extension().unwrap() == "key" {
                    0o600
                } else {
                    0o644
                };
                assert_eq!(
                    meta.permissions().mode() & 0o777,
                    expected,
                    "{}",
                    f.display()
                );
            }
            assert!(meta.len() > 0);
        }
        // The server certificate carries the extra name.
        let pem = fs::read(paths.cert("server")).unwrap();
        let der = CertificateDer::from_pem_slice(&pem).unwrap();
        let id = crate::identity::PeerIdentity::from_der(&der).unwrap();
        assert_eq!(id.dns_sans(), ["localhost", "server"]);

        // The CA can be reloaded from disk and issue more certificates that
        // chain to the same root.
        let ca = CertificateAuthority::from_pem_files(&paths.ca_cert(), &paths.ca_key()).unwrap();
        let leaf = ca
            .issue(&LeafSpec::dev_client("example.org", "late"))
            .unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&leaf.cert_der).unwrap();
        let (_, root) = x509_parser::parse_x509_certificate(ca.cert_der()).unwrap();
        assert_eq!(parsed.issuer(), root.subject());
    }

    #[test]
    fn each_dev_pki_has_a_ca_of_its_own_name() {
        let subject = || {
            let dir = tempfile::tempdir().unwrap();
            let paths = DevPkiPaths::new(dir.path());
            write_dev_pki(&paths, &DevPkiOptions::default()).unwrap();
            let pem = fs::read(paths.ca_cert()).unwrap();
            let der = CertificateDer::from_pem_slice(&pem).unwrap();
            let (_, ca) = x509_parser::parse_x509_certificate(&der).unwrap();
            ca.subject().to_string()
        };
        let (a, b) = (subject(), subject());
        assert!(a.contains("CN=mtls-kit dev CA "), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn revoking_accumulates_serials_in_a_signed_crl() {
        let dir = tempfile::tempdir().unwrap();
        let paths = DevPkiPaths::new(dir.path());
        let opts = DevPkiOptions {
            identities: vec!["reader".into(), "writer".into()],
            ..Default::default()
        };
        write_dev_pki(&paths, &opts).unwrap();
        let ca = CertificateAuthority::from_pem_files(&paths.ca_cert(), &paths.ca_key()).unwrap();
        revoke(&ca, &paths, &paths.cert("reader"), 7).unwrap();
        revoke(&ca, &paths, &paths.cert("writer"), 7).unwrap();
        // Revoking twice does not duplicate the entry.
        let crl_path = revoke(&ca, &paths, &paths.cert("writer"), 7).unwrap();
        let (entries, number) = read_crl(&crl_path).unwrap();
        assert_eq!(number, 4, "init wrote CRL number 1");
        let serials: Vec<_> = entries.into_iter().map(|r| r.serial).collect();
        assert_eq!(
            serials,
            [
                serial_of(&paths.cert("reader")).unwrap(),
                serial_of(&paths.cert("writer")).unwrap()
            ]
        );
        let pem = fs::read(&crl_path).unwrap();
        let der = rustls_pki_types::CertificateRevocationListDer::from_pem_slice(&pem).unwrap();
        let (_, crl) = x509_parser::parse_x509_crl(&der).unwrap();
        let (_, root) = x509_parser::parse_x509_certificate(ca.cert_der()).unwrap();
        assert_eq!(crl.issuer(), root.subject());
    }
}
