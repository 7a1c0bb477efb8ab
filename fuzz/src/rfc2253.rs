//! RFC 2253 rendering: the input is the DER of an X.509 `Name`; if it is not
//! one, it is tried as a certificate and both its subject and issuer are
//! rendered.
//!
//! Invariants: rendering never panics, is deterministic, produces printable
//! ASCII only (everything else is `\XX`-escaped or hex-dumped), is empty
//! exactly when the name has no attributes, and has exactly one unescaped
//! `,` or `+` between consecutive attributes.

use mtls_kit::rfc2253::render;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::x509::X509Name;

pub fn check(data: &[u8]) {
    if let Ok((_, name)) = X509Name::from_der(data) {
        check_name(&name);
    } else if let Ok((_, cert)) = X509Certificate::from_der(data) {
        check_name(cert.subject());
        check_name(cert.issuer());
    }
}

fn check_name(name: &X509Name<'_>) {
    let out = render(name);
    assert_eq!(out, render(name), "rendering is not deterministic");
    assert!(
        out.bytes().all(|b| (0x20..0x7f).contains(&b)),
        "unescaped non-printable byte in {out:?}"
    );
    let attrs: usize = name.iter().map(|rdn| rdn.iter().count()).sum();
    assert_eq!(out.is_empty(), attrs == 0, "{attrs} attributes rendered as {out:?}");
    if attrs > 0 {
        assert_eq!(
            unescaped_separators(&out),
            attrs - 1,
            "separators in {out:?} do not match {attrs} attributes"
        );
    }
}

/// Counts `,` and `+` not preceded by an escaping `\`.
fn unescaped_separators(s: &str) -> usize {
    let mut count = 0;
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'\\' => {
                bytes.next();
            }
            b',' | b'+' => count += 1,
            _ => {}
        }
    }
    count
}
