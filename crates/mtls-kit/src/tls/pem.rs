//! TLS material as read from PEM: certificate chains and keys, CA bundles
//! and CRLs. Every error names the file it came from; input caught
//! half-written is refused rather than partly used.

use std::fmt;
use std::path::{Path, PathBuf};

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use super::TlsError;

/// A certificate chain and its private key, as read from PEM files.
pub struct CertifiedKeyFiles {
    /// The certificate chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key. Never printed: `Debug` redacts it.
    pub key: PrivateKeyDer<'static>,
    /// Where the chain came from, for error messages.
    pub cert_path: PathBuf,
    /// Where the key came from, for error messages.
    pub key_path: PathBuf,
}

impl CertifiedKeyFiles {
    /// Reads a PEM certificate chain (leaf first) and a PEM private key
    /// (PKCS#8, PKCS#1 or SEC1).
    pub fn read(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        Ok(Self {
            chain: read_certs(cert_path, "certificate")?,
            key: read_key(key_path)?,
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
        })
    }

    /// Parses PEM contents already read from `cert_path` and `key_path`.
    pub fn from_pem(
        cert_path: &Path,
        cert_pem: &[u8],
        key_path: &Path,
        key_pem: &[u8],
    ) -> Result<Self, TlsError> {
        Ok(Self {
            chain: parse_certs(cert_pem, cert_path, "certificate")?,
            key: parse_key(key_pem, key_path)?,
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
        })
    }

    /// Wraps in-memory material (tests); `label` stands in for the paths in
    /// error messages.
    pub fn in_memory(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        label: &str,
    ) -> Self {
        Self {
            chain,
            key,
            cert_path: PathBuf::from(format!("<{label} certificate>")),
            key_path: PathBuf::from(format!("<{label} key>")),
        }
    }
}

impl CertifiedKeyFiles {
    /// The error for a certificate and key rustls will not use together.
    pub(crate) fn unusable(&self, source: rustls::Error) -> TlsError {
        TlsError::CertKey {
            cert: self.cert_path.clone(),
            key: self.key_path.clone(),
            source,
        }
    }
}

// Hand-written: the key must never reach a log line.
impl fmt::Debug for CertifiedKeyFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertifiedKeyFiles")
            .field("cert_path", &self.cert_path)
            .field("chain_len", &self.chain.len())
            .field("key_path", &self.key_path)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// A set of trusted CA certificates, as read from a PEM bundle.
#[derive(Clone, Debug)]
pub struct TrustAnchors {
    /// The CA certificates, in file order.
    pub certs: Vec<CertificateDer<'static>>,
    /// Where they came from, for error messages.
    pub path: PathBuf,
}

impl TrustAnchors {
    /// Reads every certificate of a PEM bundle. Refuses a file with none
    /// or one cut short; whether each is a usable CA is only checked when
    /// a config is built ([`TlsError::BadCa`]).
    pub fn read(path: &Path) -> Result<Self, TlsError> {
        Ok(Self {
            certs: read_certs(path, "CA certificate")?,
            path: path.to_owned(),
        })
    }

    /// Parses a PEM bundle already read from `path`, as [`Self::read`]
    /// does.
    pub fn from_pem(path: &Path, pem: &[u8]) -> Result<Self, TlsError> {
        Ok(Self {
            certs: parse_certs(pem, path, "CA certificate")?,
            path: path.to_owned(),
        })
    }

    /// Wraps in-memory CA certificates (tests); `label` stands in for the
    /// path in error messages.
    pub fn in_memory(certs: Vec<CertificateDer<'static>>, label: &str) -> Self {
        Self {
            certs,
            path: PathBuf::from(format!("<{label}>")),
        }
    }

    pub(crate) fn root_store(&self) -> Result<RootCertStore, TlsError> {
        let mut store = RootCertStore::empty();
        for cert in &self.certs {
            store.add(cert.clone()).map_err(|source| TlsError::BadCa {
                path: self.path.clone(),
                what: "a certificate in the bundle",
                source,
            })?;
        }
        Ok(store)
    }
}

/// Reads every certificate of a PEM file. Refuses a file with none.
pub fn read_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    parse_certs(&read(path)?, path, what)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Parses every certificate of PEM `bytes` read from `path`. Refuses input
/// with none, and input whose last block is cut short (a file caught
/// half-written).
pub fn parse_certs(
    bytes: &[u8],
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    parse_all(bytes, path, what)
}

/// Every PEM item of type `T` in `bytes`; at least one.
fn parse_all<T: PemObject>(
    bytes: &[u8],
    path: &Path,
    what: &'static str,
) -> Result<Vec<T>, TlsError> {
    check_complete(bytes, path)?;
    let items = T::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if items.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_owned(),
            what,
        });
    }
    Ok(items)
}

/// A file caught half-written ends inside a PEM block. Say so plainly
/// rather than with the PEM parser's message, and never take what parsed
/// before the cut as a smaller, valid bundle.
fn check_complete(bytes: &[u8], path: &Path) -> Result<(), TlsError> {
    let text = String::from_utf8_lossy(bytes);
    if text.matches("-----BEGIN ").count() != text.matches("-----END ").count() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            reason: "a PEM block has no END line (file truncated or still being written?)"
                .to_owned(),
        });
    }
    Ok(())
}

/// Parses every CRL of PEM `bytes` read from `path`.
pub fn parse_crls(
    bytes: &[u8],
    path: &Path,
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    parse_all(bytes, path, "certificate revocation list")
}

/// Reads the first private key of a PEM file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    parse_key(&read(path)?, path)
}

/// Parses the first private key of PEM `bytes` read from `path`.
pub fn parse_key(bytes: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            path: path.to_owned(),
            what: "private key",
        },
        other => TlsError::Pem {
            path: path.to_owned(),
            reason: other.to_string(),
        },
    })
}

/// Certificate revocation lists, as read from one PEM file.
#[derive(Clone, Debug)]
pub struct RevocationLists {
    /// The lists, in file order.
    pub crls: Vec<CertificateRevocationListDer<'static>>,
    /// Where they came from, for error messages.
    pub path: PathBuf,
}

impl RevocationLists {
    /// Parses the PEM contents already read from `path`. Refuses input with
    /// no CRL or cut short; a list's signature and issuer are only checked
    /// when a server config is built ([`TlsError::Crl`]).
    pub fn from_pem(path: &Path, pem: &[u8]) -> Result<Self, TlsError> {
        Ok(Self {
            crls: parse_crls(pem, path)?,
            path: path.to_owned(),
        })
    }
}
