//! The Subject is rendered exactly as OpenSSL's RFC 2253 printer (which
//! gRPC's C-core uses for principal matching) renders it. Certificates are
//! made by the `openssl` command with awkward subjects, and by rcgen with
//! every ASN.1 string type, and both renderings are compared.

use std::path::Path;
use std::process::Command;

use mtls_kit::identity::PeerIdentity;
use mtls_kit::pki::{CertificateAuthority, LeafSpec};

fn openssl_subject(der_path: &Path) -> String {
    let out = Command::new("openssl")
        .args([
            "x509", "-inform", "DER", "-noout", "-subject", "-nameopt", "RFC2253", "-in",
        ])
        .arg(der_path)
        .output()
        .expect("the openssl command is needed for this test (apt-get install openssl)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.trim_end_matches('\n')
        .strip_prefix("subject=")
        .unwrap()
        .to_owned()
}

#[test]
fn subjects_render_as_openssl_renders_them() {
    let dir = tempfile::tempdir().unwrap();
    let subjects = [
        "/CN=reporting/OU=analytics/O=Example Corp",
        "/O=Org, Inc./OU=a+OU=b/CN=José #1 \"q\"",
        "/CN=#hash/O=semi;colon<lt>gt",
        "/C=US/ST=California/L=San Francisco/O=Ex/OU=Eng/CN=svc/emailAddress=a@b.org",
        "/DC=org/DC=example/UID=u123/CN=x",
        "/CN=a=b+serialNumber=42",
        "/1.2.3.4=custom/CN=y",
        "/title=Dr/GN=Ann/SN=Lee/CN=z",
        "/CN=日本語/O=ünïcödé",
        "/street=1 Main St/postalCode=12345/CN=w",
        "/CN=back\\\\slash/O=plus\\+sign",
        "/CN=trailing /O= leading",
    ];
    for (i, subject) in subjects.iter().enumerate() {
        let der = dir.path().join(format!("{i}.der"));
        let out = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
            ])
            .args([
                "-keyout",
                "/dev/null",
                "-days",
                "1",
                "-utf8",
                "-multivalue-rdn",
                "-outform",
                "DER",
            ])
            .args(["-subj", subject, "-out"])
            .arg(&der)
            .output()
            .expect("the openssl command is needed for this test (apt-get install openssl)");
        assert!(
            out.status.success(),
            "{subject}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ours = PeerIdentity::from_der(&std::fs::read(&der).unwrap()).unwrap();
        assert_eq!(ours.subject(), openssl_subject(&der), "-subj {subject}");
    }
}

#[test]
fn every_string_type_renders_as_openssl_renders_it() {
    use rcgen::{DnType, DnValue};
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::new("ca", 1).unwrap();
    let values = [
        DnValue::Utf8String("café, \"q\"".into()),
        DnValue::PrintableString("Printable 1".try_into().unwrap()),
        DnValue::Ia5String("ia5@example.org".try_into().unwrap()),
        DnValue::TeletexString("t61".try_into().unwrap()),
        DnValue::BmpString("bmp é".try_into().unwrap()),
        DnValue::UniversalString("univ ü".try_into().unwrap()),
    ];
    for (i, value) in values.into_iter().enumerate() {
        let spec = LeafSpec::client("ignored").subject_attributes(vec![
            (DnType::OrganizationName, DnValue::Utf8String("Org".into())),
            (DnType::CommonName, value.clone()),
        ]);
        let cert = ca.issue(&spec).unwrap();
        let der = dir.path().join(format!("{i}.der"));
        std::fs::write(&der, &cert.cert_der).unwrap();
        let ours = PeerIdentity::from_der(&cert.cert_der).unwrap();
        assert_eq!(ours.subject(), openssl_subject(&der), "{value:?}");
    }
}
