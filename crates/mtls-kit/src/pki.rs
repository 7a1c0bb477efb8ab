//! A development PKI built on rcgen: a CA, a server certificate and one
//! client certificate per development identity.
//!
//! FOR DEVELOPMENT AND TESTS ONLY. Keys are generated on this machine and
//! written unencrypted; certificates live for days. Production certificates
//! come from your real issuer (cert-manager, SPIRE, Vault, ...).
//!
//! The same code makes the in-memory PKI of the tests and the on-disk PKI in
//! `certs/` that the `certs` binary and the server's first start write.

use std::fmt;
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

/// The SPIFFE trust domain of the development identities.
pub const DEV_TRUST_DOMAIN: &str = "example.org";

/// The development client identities `certs init` issues, each with a
/// SPIFFE ID `spiffe://example.org/<name>` and `CN=<name>`. The shipped
/// `config/policy.json` grants each a different set of RPCs.
///
/// TEMPLATE: add your own service identities here and in the policy.
pub const DEV_IDENTITIES: &[&str] = &["reader", "writer", "admin", "outsider"];

/// Names every development server certificate carries, so that clients on
/// this machine can connect by any of them.
pub const DEFAULT_SERVER_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// How long development CA and leaf certificates live by default.
pub const DEFAULT_CA_DAYS: i64 = 30;
pub const DEFAULT_LEAF_DAYS: i64 = 7;

/// Errors from making or writing the development PKI.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a usable CA certificate or key: {reason}", path.display())]
    BadCa { path: PathBuf, reason: String },
    #[error("{}: {reason}", path.display())]
    BadInput { path: PathBuf, reason: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Which extended key usage a leaf certificate carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// `clientAuth` only: a workload calling a server.
    Client,
    /// `serverAuth` only: a server. rustls refuses it as a client certificate.
    Server,
}

/// What to put in a leaf certificate.
#[derive(Clone, Debug)]
pub struct LeafSpec {
    common_name: String,
    organization: Option<String>,
    organizational_unit: Option<String>,
    uris: Vec<String>,
    dns: Vec<String>,
    ips: Vec<IpAddr>,
    usage: Usage,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    /// Replaces the CN/O/OU subject when set (tests of subject rendering).
    subject: Option<Vec<(DnType, DnValue)>>,
}

impl LeafSpec {
    fn new(common_name: &str, usage: Usage) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            common_name: common_name.to_owned(),
            organization: None,
            organizational_unit: None,
            uris: Vec::new(),
            dns: Vec::new(),
            ips: Vec::new(),
            usage,
            // A few minutes of slack for clocks that disagree.
            not_before: now - Duration::minutes(5),
            not_after: now + Duration::days(DEFAULT_LEAF_DAYS),
            subject: None,
        }
    }

    /// A client certificate (EKU clientAuth) with `CN=<common_name>`.
    pub fn client(common_name: &str) -> Self {
        Self::new(common_name, Usage::Client)
    }

    /// The development client certificate for `name`: SPIFFE ID
    /// `spiffe://example.org/<name>` and `CN=<name>,O=mtls-template dev`.
    pub fn dev_client(name: &str) -> Self {
        Self::client(name)
            .organization("mtls-template dev")
            .uri(&format!("spiffe://{DEV_TRUST_DOMAIN}/{name}"))
    }

    /// A server certificate (EKU serverAuth) for `names`: each parseable IP
    /// address becomes an IP SAN, everything else a DNS SAN.
    pub fn server<S: AsRef<str>>(common_name: &str, names: &[S]) -> Self {
        let mut spec = Self::new(common_name, Usage::Server);
        for name in names {
            let name = name.as_ref();
            match name.parse::<IpAddr>() {
                Ok(ip) => spec.ips.push(ip),
                Err(_) => spec.dns.push(name.to_owned()),
            }
        }
        spec
    }

    pub fn organization(mut self, o: &str) -> Self {
        self.organization = Some(o.to_owned());
        self
    }
    pub fn organizational_unit(mut self, ou: &str) -> Self {
        self.organizational_unit = Some(ou.to_owned());
        self
    }
    pub fn uri(mut self, uri: &str) -> Self {
        self.uris.push(uri.to_owned());
        self
    }
    pub fn dns(mut self, dns: &str) -> Self {
        self.dns.push(dns.to_owned());
        self
    }
    pub fn ip(mut self, ip: IpAddr) -> Self {
        self.ips.push(ip);
        self
    }
    pub fn usage(mut self, usage: Usage) -> Self {
        self.usage = usage;
        self
    }
    /// Sets the validity window explicitly (tests use this for expired and
    /// not-yet-valid certificates).
    pub fn valid_between(mut self, not_before: OffsetDateTime, not_after: OffsetDateTime) -> Self {
        self.not_before = not_before;
        self.not_after = not_after;
        self
    }
    /// Uses exactly these subject attributes, in this order, instead of the
    /// common name and organization fields.
    pub fn subject_attributes(mut self, attributes: Vec<(DnType, DnValue)>) -> Self {
        self.subject = Some(attributes);
        self
    }
    /// Valid from a few minutes ago for `days` days.
    pub fn valid_for_days(mut self, days: i64) -> Self {
        self.not_after = OffsetDateTime::now_utc() + Duration::days(days);
        self
    }
}

/// A certificate and its freshly generated private key.
pub struct IssuedCert {
    pub cert_der: CertificateDer<'static>,
    pub cert_pem: String,
    key_der: PrivatePkcs8KeyDer<'static>,
    key_pem: String,
}

impl IssuedCert {
    /// The private key, for building a rustls config in memory.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key_der.clone_key())
    }
    /// The private key as PKCS#8 PEM, for writing to a 0600 file.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }
}

// Hand-written so that no key material ends up in logs or panic messages.
impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_der_len", &self.cert_der.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

/// A CA that can issue leaf certificates.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("cert_der_len", &self.cert_der.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // A CSPRNG failure here means the OS cannot give randomness at all; the
    // serial then still differs per certificate through the timestamp.
    if rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .is_err()
    {
        let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
        bytes.copy_from_slice(&nanos.to_be_bytes());
    }
    bytes[0] &= 0x7f; // keep it positive
    SerialNumber::from_slice(&bytes)
}

impl CertificateAuthority {
    /// A new self-signed CA valid for `days` days.
    pub fn new(common_name: &str, days: i64) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "mtls-template dev");
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + Duration::days(days);
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads an existing CA from its certificate and key PEM (as written by
    /// [`write_dev_pki`]), to issue more certificates from it.
    pub fn from_pem_files(cert_path: &Path, key_path: &Path) -> Result<Self, PkiError> {
        let cert_pem = fs::read_to_string(cert_path).map_err(io_err(cert_path))?;
        let key_pem = fs::read_to_string(key_path).map_err(io_err(key_path))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| PkiError::BadCa {
            path: key_path.to_owned(),
            reason: e.to_string(),
        })?;
        let bad_cert = |reason: String| PkiError::BadCa {
            path: cert_path.to_owned(),
            reason,
        };
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| bad_cert(e.to_string()))?;
        let issuer = Issuer::from_ca_cert_der(&der, key).map_err(|e| bad_cert(e.to_string()))?;
        Ok(Self {
            issuer,
            cert_der: der,
            cert_pem,
        })
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }
    /// The CA's private key as PEM.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Issues a leaf certificate with a new P-256 key.
    pub fn issue(&self, spec: &LeafSpec) -> Result<IssuedCert, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if let Some(o) = &spec.organization {
            dn.push(DnType::OrganizationName, o.as_str());
        }
        if let Some(ou) = &spec.organizational_unit {
            dn.push(DnType::OrganizationalUnitName, ou.as_str());
        }
        dn.push(DnType::CommonName, spec.common_name.as_str());
        if let Some(attributes) = &spec.subject {
            dn = DistinguishedName::new();
            for (ty, value) in attributes {
                dn.push(ty.clone(), value.clone());
            }
        }
        params.distinguished_name = dn;
        for uri in &spec.uris {
            params
                .subject_alt_names
                .push(SanType::URI(uri.as_str().try_into()?));
        }
        for dns in &spec.dns {
            params
                .subject_alt_names
                .push(SanType::DnsName(dns.as_str().try_into()?));
        }
        for ip in &spec.ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![match spec.usage {
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
        }];
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_der: PrivatePkcs8KeyDer::from(key.serialize_der()),
            key_pem: key.serialize_pem(),
        })
    }
}

/// One revoked certificate: its serial number and when it was revoked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revoked {
    pub serial: Vec<u8>,
    pub at: OffsetDateTime,
}

impl CertificateAuthority {
    /// Signs a CRL listing `revoked`, valid for `days` days.
    pub fn crl(
        &self,
        revoked: &[Revoked],
        crl_number: u64,
        days: i64,
    ) -> Result<IssuedCrl, PkiError> {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - Duration::minutes(5),
            next_update: now + Duration::days(days),
            crl_number: SerialNumber::from(crl_number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|r| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&r.serial),
                    revocation_time: r.at,
                    reason_code: Some(RevocationReason::Unspecified),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer)?;
        Ok(IssuedCrl {
            der: crl.der().clone(),
            pem: crl.pem()?,
        })
    }
}

/// A signed certificate revocation list.
#[derive(Clone, Debug)]
pub struct IssuedCrl {
    pub der: rustls_pki_types::CertificateRevocationListDer<'static>,
    pub pem: String,
}

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
    pub dir: PathBuf,
}

impl DevPkiPaths {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }
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
    /// Extra server names (a compose service name, a host name) besides
    /// [`DEFAULT_SERVER_NAMES`].
    pub extra_server_names: Vec<String>,
    pub ca_days: i64,
    pub leaf_days: i64,
}

impl Default for DevPkiOptions {
    fn default() -> Self {
        Self {
            extra_server_names: Vec::new(),
            ca_days: DEFAULT_CA_DAYS,
            leaf_days: DEFAULT_LEAF_DAYS,
        }
    }
}

/// Writes a complete development PKI into `paths.dir`: `ca.pem`/`ca.key`,
/// `server.pem`/`server.key`, `<identity>.pem`/`.key` for every
/// [`DEV_IDENTITIES`] entry, and an empty `crl.pem`. Replaces whatever is there. Returns the files
/// written.
pub fn write_dev_pki(paths: &DevPkiPaths, opts: &DevPkiOptions) -> Result<Vec<PathBuf>, PkiError> {
    fs::create_dir_all(&paths.dir).map_err(io_err(&paths.dir))?;
    let ca = CertificateAuthority::new("mtls-template dev CA", opts.ca_days)?;
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
    for name in DEV_IDENTITIES {
        written.extend(issue_client(&ca, paths, name, opts.leaf_days)?);
    }
    // An empty CRL, so that `server --crl certs/crl.pem` works from the
    // start and `certs revoke` has something to add to.
    write_public(&paths.crl(), &ca.crl(&[], 1, opts.leaf_days)?.pem)?;
    written.push(paths.crl());
    Ok(written)
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
    let server =
        ca.issue(&LeafSpec::server("mtls-template dev server", &names).valid_for_days(days))?;
    write_pair(paths, "server", &server)
}

/// Issues `<name>.pem`/`<name>.key` for a development client identity.
pub fn issue_client(
    ca: &CertificateAuthority,
    paths: &DevPkiPaths,
    name: &str,
    days: i64,
) -> Result<[PathBuf; 2], PkiError> {
    let cert = ca.issue(&LeafSpec::dev_client(name).valid_for_days(days))?;
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
                extra_server_names: vec!["server".into()],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(written.len(), 5 + 2 * DEV_IDENTITIES.len());
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
        let leaf = ca.issue(&LeafSpec::dev_client("late")).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&leaf.cert_der).unwrap();
        let (_, root) = x509_parser::parse_x509_certificate(ca.cert_der()).unwrap();
        assert_eq!(parsed.issuer(), root.subject());
    }

    #[test]
    fn revoking_accumulates_serials_in_a_signed_crl() {
        let dir = tempfile::tempdir().unwrap();
        let paths = DevPkiPaths::new(dir.path());
        write_dev_pki(&paths, &DevPkiOptions::default()).unwrap();
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

    #[test]
    fn debug_output_has_no_key_material() {
        let ca = CertificateAuthority::new("t", 1).unwrap();
        let leaf = ca.issue(&LeafSpec::client("c")).unwrap();
        let shown = format!("{ca:?} {leaf:?}");
        assert!(!shown.contains("PRIVATE KEY"));
        assert!(shown.contains("<redacted>"));
    }
}
