//! The peer identity: what a verified client certificate says about who is
//! calling.
//!
//! rustls has already verified the chain by the time this module runs; here
//! the leaf certificate is only *read*. The result is the set of names that
//! gRPC's authorization policy (gRFC A43) matches `source.principals`
//! against: URI SANs, then DNS SANs, then the Subject rendered the way gRPC's
//! C-core renders it (OpenSSL's RFC 2253 form).
//!
//! Identity never comes from request metadata: the only constructor takes a
//! certificate.

use std::fmt;

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::rfc2253;

/// Why a peer certificate could not be turned into an identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The connection carried no client certificate.
    #[error("the peer presented no certificate")]
    NoCertificate,
    /// The leaf certificate is not parseable X.509.
    #[error("the peer certificate is not valid X.509: {0}")]
    Parse(String),
}

/// A SPIFFE ID (`spiffe://trust-domain/path`), parsed from a URI SAN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpiffeId {
    trust_domain: String,
    path: String,
}

impl SpiffeId {
    /// Parses a SPIFFE ID as the SPIFFE specification defines it: scheme
    /// `spiffe`, a trust domain of lowercase letters, digits, `.`, `-` and
    /// `_`, and an optional path of non-empty segments of letters, digits,
    /// `.`, `-` and `_` (but not `.` or `..`). No port, user info, query or
    /// fragment. Returns `None` for anything else.
    pub fn parse(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix("spiffe://")?;
        let (trust_domain, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let td_ok = !trust_domain.is_empty()
            && trust_domain
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
        if !td_ok {
            return None;
        }
        if !path.is_empty() {
            for segment in path[1..].split('/') {
                let ok = !segment.is_empty()
                    && segment != "."
                    && segment != ".."
                    && segment
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
                if !ok {
                    return None;
                }
            }
        }
        Some(Self {
            trust_domain: trust_domain.to_owned(),
            path: path.to_owned(),
        })
    }

    /// The trust domain, for example `example.org`.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The path, for example `/reader`; empty for a bare trust domain ID.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether `uri` is this ID, written exactly as it parsed.
    pub fn is(&self, uri: &str) -> bool {
        uri.strip_prefix("spiffe://")
            .and_then(|rest| rest.strip_prefix(self.trust_domain.as_str()))
            .is_some_and(|path| path == self.path)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}{}", self.trust_domain, self.path)
    }
}

/// Who the peer is, as read from its verified leaf certificate.
///
/// Built once per connection (right after the handshake), shared by every
/// RPC on that connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    uri_sans: Vec<String>,
    spiffe_id: Option<SpiffeId>,
    dns_sans: Vec<String>,
    subject: String,
}

impl PeerIdentity {
    /// Reads the identity from a DER-encoded leaf certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| IdentityError::Parse(e.to_string()))?;
        let mut uri_sans = Vec::new();
        let mut dns_sans = Vec::new();
        let san = cert
            .subject_alternative_name()
            .map_err(|e| IdentityError::Parse(e.to_string()))?;
        if let Some(san) = san {
            for name in &san.value.general_names {
                // IP and e-mail SANs are never principals in gRPC's matching.
                match name {
                    GeneralName::URI(uri) => uri_sans.push((*uri).to_owned()),
                    GeneralName::DNSName(dns) => dns_sans.push((*dns).to_owned()),
                    _ => {}
                }
            }
        }
        // The SPIFFE specification allows exactly one URI SAN in an SVID; we
        // expose the first URI SAN that parses as one.
        let spiffe_id = uri_sans.iter().find_map(|u| SpiffeId::parse(u));
        Ok(Self {
            subject: rfc2253::render(cert.subject()),
            uri_sans,
            spiffe_id,
            dns_sans,
        })
    }

    /// Reads the identity from the first certificate of a verified chain
    /// (the leaf).
    pub fn from_chain<C: AsRef<[u8]>>(chain: &[C]) -> Result<Self, IdentityError> {
        let leaf = chain.first().ok_or(IdentityError::NoCertificate)?;
        Self::from_der(leaf.as_ref())
    }

    /// An identity with the given names, without a certificate. For tests
    /// and benchmarks of the policy engine; a server only ever builds
    /// identities with [`Self::from_der`].
    pub fn from_names(uri_sans: &[&str], dns_sans: &[&str], subject: &str) -> Self {
        let uri_sans: Vec<String> = uri_sans.iter().map(|s| s.to_string()).collect();
        Self {
            spiffe_id: uri_sans.iter().find_map(|u| SpiffeId::parse(u)),
            uri_sans,
            dns_sans: dns_sans.iter().map(|s| s.to_string()).collect(),
            subject: subject.to_owned(),
        }
    }

    /// Every URI SAN, in certificate order.
    pub fn uri_sans(&self) -> &[String] {
        &self.uri_sans
    }

    /// The SPIFFE ID, if a URI SAN is one.
    pub fn spiffe_id(&self) -> Option<&SpiffeId> {
        self.spiffe_id.as_ref()
    }

    /// Every DNS SAN, in certificate order.
    pub fn dns_sans(&self) -> &[String] {
        &self.dns_sans
    }

    /// The Subject in OpenSSL's RFC 2253 form, e.g.
    /// `CN=reporting,OU=analytics,O=Example Corp`. Empty for an empty subject.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The names `source.principals` patterns are matched against, in gRPC's
    /// order: URI SANs, then DNS SANs, then the Subject. A pattern matches
    /// the peer if it matches any of them.
    pub fn principal_names(&self) -> impl Iterator<Item = &str> + Clone {
        self.uri_sans
            .iter()
            .chain(&self.dns_sans)
            .map(String::as_str)
            .chain(std::iter::once(self.subject.as_str()))
    }

    /// The single most specific name, for logs: the SPIFFE ID, else the first
    /// URI SAN, else the first DNS SAN, else the Subject.
    pub fn display_name(&self) -> &str {
        // Called for every RPC's span: compare with the ID parsed at
        // handshake time instead of parsing every URI SAN again.
        let spiffe = self
            .spiffe_id
            .as_ref()
            .and_then(|id| self.uri_sans.iter().find(|u| id.is(u)));
        spiffe
            .or(self.uri_sans.first())
            .or(self.dns_sans.first())
            .map(String::as_str)
            .unwrap_or(&self.subject)
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.display_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_parse_per_the_spec() {
        let id = SpiffeId::parse("spiffe://example.org/ns/dev/sa/reader").unwrap();
        assert_eq!(id.trust_domain(), "example.org");
        assert_eq!(id.path(), "/ns/dev/sa/reader");
        assert_eq!(id.to_string(), "spiffe://example.org/ns/dev/sa/reader");
        assert_eq!(SpiffeId::parse("spiffe://example.org").unwrap().path(), "");

        for bad in [
            "https://example.org/reader",
            "spiffe://",
            "spiffe://Example.org/x",
            "spiffe://example.org:8443/x",
            "spiffe://user@example.org/x",
            "spiffe://example.org/",
            "spiffe://example.org//x",
            "spiffe://example.org/a/../b",
            "spiffe://example.org/x?y=1",
            "spiffe://example.org/x#frag",
        ] {
            assert_eq!(SpiffeId::parse(bad), None, "{bad} must not parse");
        }
    }

    #[test]
    fn identity_reads_sans_and_subject_from_a_certificate() {
        let ca = crate::pki::CertificateAuthority::new("Test CA", 1).unwrap();
        let leaf = ca
            .issue(
                &crate::pki::LeafSpec::client("reporting")
                    .organizational_unit("analytics")
                    .organization("Example Corp")
                    .uri("spiffe://example.org/reporting")
                    .uri("https://not-spiffe.example.org/x")
                    .dns("reporting.internal")
                    .ip("10.0.0.1".parse().unwrap()),
            )
            .unwrap();
        let id = PeerIdentity::from_der(leaf.cert_der.as_ref()).unwrap();
        assert_eq!(
            id.uri_sans(),
            [
                "spiffe://example.org/reporting",
                "https://not-spiffe.example.org/x"
            ]
        );
        assert_eq!(
            id.spiffe_id().unwrap().to_string(),
            "spiffe://example.org/reporting"
        );
        assert_eq!(id.dns_sans(), ["reporting.internal"]);
        assert_eq!(id.subject(), "CN=reporting,OU=analytics,O=Example Corp");
        assert_eq!(
            id.principal_names().collect::<Vec<_>>(),
            [
                "spiffe://example.org/reporting",
                "https://not-spiffe.example.org/x",
                "reporting.internal",
                "CN=reporting,OU=analytics,O=Example Corp"
            ]
        );
        assert_eq!(id.display_name(), "spiffe://example.org/reporting");
        // The SPIFFE ID wins even when another URI SAN comes first.
        let id = PeerIdentity::from_names(
            &["https://a.example/x", "spiffe://example.org/b"],
            &["b.internal"],
            "CN=b",
        );
        assert_eq!(id.display_name(), "spiffe://example.org/b");
        let id = PeerIdentity::from_names(&[], &["b.internal"], "CN=b");
        assert_eq!(id.display_name(), "b.internal");
        let id = PeerIdentity::from_names(&[], &[], "CN=b");
        assert_eq!(id.display_name(), "CN=b");
    }

    #[test]
    fn garbage_and_empty_chains_are_errors() {
        assert!(matches!(
            PeerIdentity::from_der(b"not a certificate"),
            Err(IdentityError::Parse(_))
        ));
        let empty: [&[u8]; 0] = [];
        assert!(matches!(
            PeerIdentity::from_chain(&empty),
            Err(IdentityError::NoCertificate)
        ));
    }
}
