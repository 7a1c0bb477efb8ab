//! Strict SPIFFE mode: a client certificate must be an X.509-SVID of one
//! trust domain, checked during the TLS handshake.
//!
//! [`SpiffeClientVerifier`] wraps rustls' WebPKI client verifier, so the
//! chain, validity, EKU and CRL checks stay exactly as they are; only a
//! certificate that passed them is then held to the X.509-SVID rules
//! ([`check_svid`]). A refusal is logged with its reason and ends the
//! handshake with a fatal alert: no RPC is ever read from such a peer.
//!
//! The rules, from the SPIFFE X.509-SVID specification:
//!
//! * exactly one URI SAN, and it is a valid SPIFFE ID;
//! * in the configured trust domain;
//! * a leaf: basicConstraints CA is false (or absent);
//! * keyUsage present, with digitalSignature, and without keyCertSign or
//!   cRLSign (those belong to signing certificates).

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::identity::SpiffeId;

/// Why a certificate is not an X.509-SVID of the expected trust domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    /// The certificate, or its SAN, basicConstraints or keyUsage extension,
    /// does not parse (a duplicated extension included); the parser's
    /// message.
    #[error("not valid X.509: {0}")]
    Parse(String),
    /// No URI SAN, so no SPIFFE ID.
    #[error("no URI SAN (an X.509-SVID carries exactly one, its SPIFFE ID)")]
    NoUriSan,
    /// More than one URI SAN (how many): the identity would be ambiguous.
    #[error("{0} URI SANs (an X.509-SVID carries exactly one, its SPIFFE ID)")]
    ManyUriSans(usize),
    /// The one URI SAN (given) is not a valid SPIFFE ID.
    #[error("URI SAN {0:?} is not a valid SPIFFE ID")]
    NotSpiffe(String),
    /// A valid SPIFFE ID, of another trust domain.
    #[error("SPIFFE ID {id:?} is not in trust domain {expected:?}")]
    OtherTrustDomain {
        /// The certificate's SPIFFE ID.
        id: String,
        /// The trust domain required.
        expected: String,
    },
    /// The certificate is a CA (basicConstraints CA=true), not a leaf.
    #[error("a CA certificate (basicConstraints CA=true) cannot be an X.509-SVID leaf")]
    Ca,
    /// keyUsage is missing, lacks digitalSignature, or has a signing
    /// certificate's usages; the text says which.
    #[error("keyUsage {0}")]
    KeyUsage(&'static str),
}

/// Checks that `der` is an X.509-SVID leaf in `trust_domain`; returns its
/// SPIFFE ID. Pure: no chain or signature checks (the wrapped verifier
/// does those).
pub fn check_svid(der: &[u8], trust_domain: &str) -> Result<SpiffeId, SvidError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| SvidError::Parse(e.to_string()))?;
    // A malformed or duplicated extension is an error, never "absent".
    let san = cert
        .subject_alternative_name()
        .map_err(|e| SvidError::Parse(e.to_string()))?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    let uri = match uris.as_slice() {
        [] => return Err(SvidError::NoUriSan),
        [one] => *one,
        many => return Err(SvidError::ManyUriSans(many.len())),
    };
    let id = SpiffeId::parse(uri).ok_or_else(|| SvidError::NotSpiffe(uri.to_owned()))?;
    if id.trust_domain() != trust_domain {
        return Err(SvidError::OtherTrustDomain {
            id: uri.to_owned(),
            expected: trust_domain.to_owned(),
        });
    }
    let constraints = cert
        .basic_constraints()
        .map_err(|e| SvidError::Parse(e.to_string()))?;
    if constraints.is_some_and(|bc| bc.value.ca) {
        return Err(SvidError::Ca);
    }
    let usage = cert
        .key_usage()
        .map_err(|e| SvidError::Parse(e.to_string()))?
        .ok_or(SvidError::KeyUsage("is missing"))?;
    if !usage.value.digital_signature() {
        return Err(SvidError::KeyUsage("lacks digitalSignature"));
    }
    if usage.value.key_cert_sign() || usage.value.crl_sign() {
        return Err(SvidError::KeyUsage(
            "has keyCertSign or cRLSign (a signing certificate's usages)",
        ));
    }
    Ok(id)
}

/// A client verifier that runs `inner` (chain, validity, CRLs), then
/// requires an X.509-SVID of `trust_domain`.
pub struct SpiffeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl SpiffeClientVerifier {
    /// Wraps `inner` (normally rustls' WebPKI client verifier, with the
    /// client CA bundle and CRLs) to also require `trust_domain`.
    pub fn new(inner: Arc<dyn ClientCertVerifier>, trust_domain: &str) -> Self {
        Self {
            inner,
            trust_domain: trust_domain.to_owned(),
        }
    }
}

impl fmt::Debug for SpiffeClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeClientVerifier")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Chain and revocation first: the SVID rules are only worth
        // checking (and logging) for a certificate our CA actually issued.
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        match check_svid(end_entity, &self.trust_domain) {
            Ok(_) => Ok(verified),
            Err(reason) => {
                // WARN: the certificate chains to a CA we trust, so this is
                // a misissued certificate or a misconfigured client, not noise.
                tracing::warn!(
                    %reason, trust_domain = %self.trust_domain,
                    "client certificate refused: not an X.509-SVID of the trust domain (strict SPIFFE mode)"
                );
                // `Other` carries the reason into the handshake error (and
                // the accept loop's log); the peer gets a bad_certificate alert.
                Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                    OtherError(Arc::new(reason)),
                )))
            }
        }
    }

    // Everything else is the wrapped verifier's.
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }
    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{CertificateAuthority, LeafSpec};

    fn check(spec: LeafSpec) -> Result<SpiffeId, SvidError> {
        let ca = CertificateAuthority::new("ca", 1).unwrap();
        check_svid(&ca.issue(&spec).unwrap().cert_der, "example.org")
    }

    #[test]
    fn a_dev_client_certificate_is_an_svid() {
        let id = check(LeafSpec::dev_client("example.org", "reader")).unwrap();
        assert_eq!(id.path(), "/reader");
    }

    #[test]
    fn each_svid_rule_is_enforced() {
        let c = LeafSpec::client;
        assert_eq!(check(c("x")), Err(SvidError::NoUriSan));
        assert_eq!(
            check(
                c("x")
                    .uri("spiffe://example.org/a")
                    .uri("spiffe://example.org/b")
            ),
            Err(SvidError::ManyUriSans(2))
        );
        assert!(matches!(
            check(c("x").uri("https://example.org/a")),
            Err(SvidError::NotSpiffe(_))
        ));
        assert!(matches!(
            check(LeafSpec::dev_client("other.org", "a")),
            Err(SvidError::OtherTrustDomain { .. })
        ));
        // webpki already refuses a CA as a client's end entity; this is the
        // SVID rule itself, for defence in depth.
        assert_eq!(
            check(LeafSpec::dev_client("example.org", "a").ca()),
            Err(SvidError::Ca)
        );
        assert!(matches!(
            check(LeafSpec::dev_client("example.org", "a").cert_signing()),
            Err(SvidError::KeyUsage(_))
        ));
    }

    #[test]
    fn a_ca_certificate_itself_is_not_an_svid() {
        let ca = CertificateAuthority::new("ca", 1).unwrap();
        // The dev CA has no URI SAN, which is refused before anything else.
        assert_eq!(
            check_svid(ca.cert_der(), "example.org"),
            Err(SvidError::NoUriSan)
        );
    }
}
