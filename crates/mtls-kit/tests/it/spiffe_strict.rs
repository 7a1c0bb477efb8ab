//! Strict SPIFFE mode: with a trust domain set, a client certificate that
//! chains to the CA but is not an X.509-SVID of that trust domain is refused
//! in the handshake, and the server logs why. Without it, the same
//! certificates are accepted (and left to the policy).

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use mtls_kit::authz::SharedPolicy;
use mtls_kit::pki::{IssuedCert, LeafSpec};
use mtls_kit::policy::Policy;
use mtls_kit::server::{Limits, ServerParts};
use mtls_kit::testing;
use mtls_kit::tls::{self, CertifiedKeyFiles, ClientTlsOptions, ServerTlsOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::helpers::{LogCapture, TestPki, TestStore, POLICY};

const STRICT_REFUSAL: &str =
    "client certificate refused: not an X.509-SVID of the trust domain (strict SPIFFE mode)";

/// The test store behind a server whose strict mode is `trust_domain`.
async fn server(pki: &TestPki, trust_domain: Option<&str>) -> testing::TestServer {
    let identity = CertifiedKeyFiles::in_memory(
        vec![pki.server.cert_der.clone()],
        pki.server.key_der(),
        "server",
    );
    let opts = ServerTlsOptions {
        spiffe_trust_domain: trust_domain.map(str::to_owned),
        ..ServerTlsOptions::default()
    };
    let tls = tls::server_config(&identity, &pki.anchors(), &[], opts).unwrap();
    let policy: SharedPolicy = Arc::new(ArcSwap::from_pointee(Policy::from_json(POLICY).unwrap()));
    let limits = Limits::default();
    let parts = ServerParts {
        tls: Arc::new(ArcSwap::new(tls)),
        policy,
        limits,
        dry_run: false,
        quota: Arc::default(),
    };
    let services = TestStore::default().services(&limits);
    testing::TestServer::start(parts, services, pki.anchors()).await
}

/// Handshakes as `cert` and waits for the server's first HTTP/2 frame:
/// `Ok` if the server accepted the client, else the error (the alert).
async fn connect_as(addr: SocketAddr, pki: &TestPki, cert: &IssuedCert) -> Result<(), String> {
    let identity =
        CertifiedKeyFiles::in_memory(vec![cert.cert_der.clone()], cert.key_der(), "client");
    let config = tls::client_config(&identity, &pki.anchors(), ClientTlsOptions::default())
        .map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(addr).await.unwrap();
    // In TLS 1.3 the client finishes before the server has judged its
    // certificate: the verdict arrives on the first read.
    let mut stream = TlsConnector::from(config)
        .connect(tls::server_name("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let _ = stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    let mut frame_header = [0u8; 9];
    stream
        .read_exact(&mut frame_header)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Certificates from the server's own CA that are not X.509-SVIDs of
/// `example.org`, with the reason the server must log.
fn non_svids(pki: &TestPki) -> Vec<(&'static str, IssuedCert, &'static str)> {
    let issue = |spec: LeafSpec| pki.ca.issue(&spec).unwrap();
    vec![
        (
            "two URI SANs",
            issue(
                LeafSpec::client("two")
                    .uri("spiffe://example.org/reader")
                    .uri("spiffe://example.org/writer"),
            ),
            "2 URI SANs",
        ),
        (
            "no URI SAN",
            issue(LeafSpec::client("reader")),
            "no URI SAN",
        ),
        (
            "another trust domain",
            issue(LeafSpec::dev_client("other.example", "reader")),
            "is not in trust domain \"example.org\"",
        ),
        (
            "not a SPIFFE URI",
            issue(LeafSpec::client("reader").uri("https://example.org/reader")),
            "is not a valid SPIFFE ID",
        ),
    ]
}

#[tokio::test]
async fn strict_mode_refuses_certificates_that_are_not_svids_and_says_why() {
    let (logs, _guard) = LogCapture::start();
    let pki = TestPki::new();
    let server = server(&pki, Some("example.org")).await;

    for (what, cert, reason) in non_svids(&pki) {
        let err = connect_as(server.addr, &pki, &cert).await.expect_err(what);
        assert!(
            err.contains("received fatal alert: CertificateUnknown"),
            "{what}: {err}"
        );
        let refusals = logs.matching(&[("message", STRICT_REFUSAL), ("level", "WARN")]);
        assert!(
            refusals
                .iter()
                .any(|e| e["reason"].as_str().is_some_and(|r| r.contains(reason))),
            "{what}: no refusal log saying {reason:?}: {refusals:#?}"
        );
    }

    // A CA certificate is refused by the chain check already (before the
    // SVID rules run); the accept loop logs webpki's reason.
    let ca_cert = pki
        .ca
        .issue(&LeafSpec::dev_client("example.org", "reader").ca())
        .unwrap();
    let err = connect_as(server.addr, &pki, &ca_cert).await.unwrap_err();
    assert!(err.contains("fatal alert"), "CA certificate: {err}");
    assert!(
        logs.matching(&[("message", "TLS handshake refused")])
            .iter()
            .any(|e| e["error"]
                .as_str()
                .is_some_and(|r| r.contains("CaUsedAsEndEntity"))),
        "no log line saying the CA certificate was refused as an end entity"
    );

    // An SVID of the trust domain still gets in.
    assert_eq!(
        connect_as(server.addr, &pki, &pki.client("reader")).await,
        Ok(())
    );
}

#[tokio::test]
async fn without_strict_mode_the_same_certificates_are_accepted() {
    let (logs, _guard) = LogCapture::start();
    let pki = TestPki::new();
    let server = server(&pki, None).await;
    for (what, cert, _) in non_svids(&pki) {
        assert_eq!(connect_as(server.addr, &pki, &cert).await, Ok(()), "{what}");
    }
    assert!(logs.matching(&[("message", STRICT_REFUSAL)]).is_empty());
    // webpki's own rule, not strict mode's: a CA is never a client leaf.
    let ca_cert = pki
        .ca
        .issue(&LeafSpec::dev_client("example.org", "reader").ca())
        .unwrap();
    assert!(connect_as(server.addr, &pki, &ca_cert).await.is_err());
}
