//! Connections without an acceptable client certificate are refused during
//! the TLS handshake, so no RPC ever reaches the authorization layer or a
//! handler; and the client refuses a server it cannot verify.

use std::sync::Arc;

use crate::store::Key;
use crate::store::StoreClient;
use mtls_kit::pki::{CertificateAuthority, IssuedCert, LeafSpec, Usage};
use mtls_kit::tls::{self, CertifiedKeyFiles, ClientTlsOptions};
use rustls::ClientConfig;
use time::{Duration, OffsetDateTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::helpers::{spawn_server, TestPki, TestServer, POLICY};

/// Completes the client side of the handshake (in TLS 1.3 the client
/// finishes before the server has judged its certificate), then reads: the
/// server's verdict arrives as a fatal alert.
async fn server_alert(server: &TestServer, config: Arc<ClientConfig>) -> String {
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let name = tls::server_name("localhost").unwrap();
    let mut stream = match TlsConnector::from(config).connect(name, tcp).await {
        Ok(s) => s,
        Err(e) => return e.to_string(),
    };
    // HTTP/2 preface, as a gRPC client would send first.
    let _ = stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    let mut buf = [0u8; 64];
    match stream.read(&mut buf).await {
        Ok(0) => "closed without an alert".to_owned(),
        Ok(n) => panic!("server answered {n} bytes to a client it should have refused"),
        Err(e) => e.to_string(),
    }
}

fn client_config(pki: &TestPki, cert: &IssuedCert) -> Arc<ClientConfig> {
    let identity =
        CertifiedKeyFiles::in_memory(vec![cert.cert_der.clone()], cert.key_der(), "client");
    tls::client_config(&identity, &pki.anchors(), ClientTlsOptions::default()).unwrap()
}

/// A client that trusts the server but presents no certificate. Built by
/// hand because the product code never builds such a config.
fn anonymous_config(pki: &TestPki) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.cert_der().clone()).unwrap();
    let mut config = ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// The RPC fails too, when made through the real client code.
async fn rpc_fails(server: &TestServer, cert: &IssuedCert) {
    let result = match server.connect(cert).await {
        Err(e) => Err(e.to_string()),
        Ok(channel) => StoreClient::new(channel)
            .get(Key { key: "x".into() })
            .await
            .map_err(|s| format!("{s:?}")),
    };
    let err = result.expect_err("an RPC succeeded with a refused certificate");
    assert!(
        !err.contains("PermissionDenied"),
        "refused by policy, not by TLS: {err}"
    );
}

#[tokio::test]
async fn refused_client_certificates() {
    let pki = TestPki::new();
    let server = spawn_server(&pki, POLICY).await;
    let now = OffsetDateTime::now_utc();
    let other_ca = CertificateAuthority::new("another CA", 1).unwrap();

    let cases: Vec<(&str, IssuedCert, &str)> = vec![
        (
            "certificate from another CA",
            other_ca
                .issue(&LeafSpec::dev_client("example.org", "admin"))
                .unwrap(),
            "UnknownCA",
        ),
        (
            "expired certificate",
            pki.ca
                .issue(
                    &LeafSpec::dev_client("example.org", "admin")
                        .valid_between(now - Duration::days(10), now - Duration::days(1)),
                )
                .unwrap(),
            "CertificateExpired",
        ),
        (
            "not yet valid certificate",
            pki.ca
                .issue(
                    &LeafSpec::dev_client("example.org", "admin")
                        .valid_between(now + Duration::days(1), now + Duration::days(10)),
                )
                .unwrap(),
            "CertificateExpired",
        ),
        (
            "serverAuth-only EKU",
            pki.ca
                .issue(&LeafSpec::dev_client("example.org", "admin").usage(Usage::Server))
                .unwrap(),
            "UnsupportedCertificate",
        ),
    ];
    for (what, cert, alert) in &cases {
        let got = server_alert(&server, client_config(&pki, cert)).await;
        assert!(
            got.contains(alert),
            "{what}: expected alert {alert}, got {got:?}"
        );
        rpc_fails(&server, cert).await;
    }

    let got = server_alert(&server, anonymous_config(&pki)).await;
    assert!(
        got.contains("CertificateRequired"),
        "no client certificate: got {got:?}"
    );

    assert_eq!(server.store.handler_calls(), 0);

    // The same server still serves a good certificate.
    let mut admin = StoreClient::new(server.connect(&pki.client("admin")).await.unwrap());
    let status = admin.get(Key { key: "x".into() }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(server.store.handler_calls(), 1);
}

#[tokio::test]
async fn client_refuses_a_server_whose_name_does_not_match() {
    let pki = TestPki::new();
    let server = spawn_server(&pki, POLICY).await;
    let err = server
        .connect_named(&pki.client("admin"), "payments.internal")
        .await
        .expect_err("connected to a server with the wrong name");
    let text = mtls_kit::client::describe_error(&err);
    assert!(
        text.contains("not valid for name \"payments.internal\""),
        "{text}"
    );
    assert_eq!(server.store.handler_calls(), 0);
}

#[tokio::test]
async fn client_refuses_a_server_from_an_untrusted_ca() {
    let pki = TestPki::new();
    let server = spawn_server(&pki, POLICY).await;
    // A client that trusts only some other CA.
    let other = CertificateAuthority::new("some other CA", 1).unwrap();
    let anchors = tls::TrustAnchors::in_memory(vec![other.cert_der().clone()], "other CA");
    let cert = pki.client("admin");
    let identity =
        CertifiedKeyFiles::in_memory(vec![cert.cert_der.clone()], cert.key_der(), "client");
    let config = tls::client_config(&identity, &anchors, ClientTlsOptions::default()).unwrap();
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let err = TlsConnector::from(config)
        .connect(tls::server_name("localhost").unwrap(), tcp)
        .await
        .expect_err("trusted a server from an unknown CA");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
}
