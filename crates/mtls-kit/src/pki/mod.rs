//! A development PKI built on rcgen: a CA, a server certificate and one
//! client certificate per development identity.
//!
//! FOR DEVELOPMENT AND TESTS ONLY. Keys are generated on this machine and
//! written unencrypted; certificates live for days. Production certificates
//! come from your real issuer (cert-manager, SPIRE, Vault, ...).
//!
//! The same code makes the in-memory PKI of the tests and the on-disk PKI
//! in `certs/` ([`DevPkiPaths`], [`write_dev_pki`]) that the `certs` tool
//! and the server's first start write.

mod files;

pub use files::{
    issue_client, issue_server, revoke, serial_of, write_dev_pki, write_empty_crl, DevPkiOptions,
    DevPkiPaths,
};

use std::fmt;
use std::fs;
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

/// The SPIFFE trust domain of development identities when a service names
/// none (`--trust-domain`, `SPIFFE_TRUST_DOMAIN`).
pub const DEFAULT_TRUST_DOMAIN: &str = "example.org";

/// Names every development server certificate carries, so that clients on
/// this machine can connect by any of them.
pub const DEFAULT_SERVER_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// How many days a development CA certificate lives by default.
pub const DEFAULT_CA_DAYS: i64 = 30;
/// How many days a development leaf certificate lives by default. A server
/// regenerates its dev PKI at start once the server certificate has
/// expired ([`crate::config::ensure_dev_pki`]).
pub const DEFAULT_LEAF_DAYS: i64 = 7;

/// Errors from making or writing the development PKI.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen could not make a key, a certificate or a CRL (for instance a
    /// URI SAN that is not valid).
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The CA certificate or key read back from disk cannot issue
    /// ([`CertificateAuthority::from_pem_files`]).
    #[error("{}: not a usable CA certificate or key: {reason}", path.display())]
    BadCa {
        /// The certificate or key file at fault.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A certificate or CRL file read back from disk does not parse (a
    /// certificate to revoke, or the CRL to add it to).
    #[error("{}: {reason}", path.display())]
    BadInput {
        /// The file.
        path: PathBuf,
        /// Why it does not parse.
        reason: String,
    },
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
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
    /// basicConstraints CA=true (tests of what a leaf must not be).
    ca: bool,
    /// keyUsage also has keyCertSign (tests of what a leaf must not be).
    cert_signing: bool,
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
            ca: false,
            cert_signing: false,
        }
    }

    /// A client certificate (EKU clientAuth) with `CN=<common_name>`.
    pub fn client(common_name: &str) -> Self {
        Self::new(common_name, Usage::Client)
    }

    /// The development client certificate for `name`: SPIFFE ID
    /// `spiffe://<trust_domain>/<name>` and `CN=<name>,O=mtls-kit dev`.
    pub fn dev_client(trust_domain: &str, name: &str) -> Self {
        Self::client(name)
            .organization("mtls-kit dev")
            .uri(&format!("spiffe://{trust_domain}/{name}"))
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

    /// Sets the subject's `O` (organization).
    pub fn organization(mut self, o: &str) -> Self {
        self.organization = Some(o.to_owned());
        self
    }
    /// Sets the subject's `OU` (organizational unit).
    pub fn organizational_unit(mut self, ou: &str) -> Self {
        self.organizational_unit = Some(ou.to_owned());
        self
    }
    /// Adds a URI SAN, e.g. a SPIFFE ID. One that is not a valid URI
    /// fails at [`CertificateAuthority::issue`].
    pub fn uri(mut self, uri: &str) -> Self {
        self.uris.push(uri.to_owned());
        self
    }
    /// Adds a DNS SAN.
    pub fn dns(mut self, dns: &str) -> Self {
        self.dns.push(dns.to_owned());
        self
    }
    /// Adds an IP address SAN.
    pub fn ip(mut self, ip: IpAddr) -> Self {
        self.ips.push(ip);
        self
    }
    /// Replaces the extended key usage the constructor chose (tests of a
    /// server certificate used as a client's).
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
    /// Marks the certificate as a CA (basicConstraints CA=true), keeping
    /// its other fields: a certificate no leaf should be.
    pub fn ca(mut self) -> Self {
        self.ca = true;
        self
    }
    /// Adds keyCertSign to the key usage: a signing certificate's usage.
    pub fn cert_signing(mut self) -> Self {
        self.cert_signing = true;
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
    /// The certificate, DER.
    pub cert_der: CertificateDer<'static>,
    /// The same certificate, PEM.
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
    if crate::tls::provider()
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
        dn.push(DnType::OrganizationName, "mtls-kit dev");
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

    /// The CA certificate, DER: the trust anchor of both sides.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }
    /// The CA certificate, PEM, as written to `ca.pem`.
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
        params.is_ca = if spec.ca {
            IsCa::Ca(BasicConstraints::Unconstrained)
        } else {
            IsCa::ExplicitNoCa
        };
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if spec.cert_signing {
            params.key_usages.push(KeyUsagePurpose::KeyCertSign);
        }
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
    /// The serial number's big-endian bytes, as the certificate encodes
    /// them ([`serial_of`]).
    pub serial: Vec<u8>,
    /// The revocation time the CRL states.
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
    /// The CRL, DER.
    pub der: rustls_pki_types::CertificateRevocationListDer<'static>,
    /// The same CRL, PEM, as written to `crl.pem`.
    pub pem: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_has_no_key_material() {
        let ca = CertificateAuthority::new("t", 1).unwrap();
        let leaf = ca.issue(&LeafSpec::client("c")).unwrap();
        let shown = format!("{ca:?} {leaf:?}");
        assert!(!shown.contains("PRIVATE KEY"));
        assert!(shown.contains("<redacted>"));
    }
}
