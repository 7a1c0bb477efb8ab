//! Identity extraction: the input is a (leaf) certificate's DER.
//!
//! Invariants: `PeerIdentity::from_der` never panics and agrees with
//! `from_chain` on a one-certificate chain; a parsed identity's Subject is
//! exactly `rfc2253::render` of the certificate's subject; the principal
//! names are the URI SANs, then the DNS SANs, then the Subject; the display
//! name is one of them; the SPIFFE ID is one of the URI SANs and survives a
//! print/parse round trip.

use mtls_kit::identity::{PeerIdentity, SpiffeId};
use mtls_kit::rfc2253;
use x509_parser::prelude::{FromDer, X509Certificate};

pub fn check(data: &[u8]) {
    let result = PeerIdentity::from_der(data);
    let from_chain = PeerIdentity::from_chain(&[data]);
    assert_eq!(
        result.as_ref().ok(),
        from_chain.as_ref().ok(),
        "from_der and from_chain disagree"
    );
    let Ok(id) = result else { return };

    let (_, cert) = X509Certificate::from_der(data).expect("from_der accepted a non-certificate");
    assert_eq!(id.subject(), rfc2253::render(cert.subject()));

    let names: Vec<&str> = id.principal_names().collect();
    assert_eq!(names.len(), id.uri_sans().len() + id.dns_sans().len() + 1);
    assert_eq!(names.last().copied(), Some(id.subject()));
    assert!(
        names.contains(&id.display_name()),
        "display name {:?} is not a principal name",
        id.display_name()
    );

    if let Some(spiffe) = id.spiffe_id() {
        let text = spiffe.to_string();
        assert!(id.uri_sans().iter().any(|u| *u == text), "SPIFFE ID {text} is not a URI SAN");
        assert_eq!(SpiffeId::parse(&text).as_ref(), Some(spiffe));
        assert_eq!(id.display_name(), text);
    }
    for uri in id.uri_sans() {
        if let Some(parsed) = SpiffeId::parse(uri) {
            assert_eq!(parsed.to_string(), *uri, "SPIFFE ID does not round-trip");
        }
    }
}
