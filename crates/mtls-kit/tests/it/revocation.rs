//! A revoked client certificate cannot connect, cannot resume an earlier
//! session, and loses its open connection within the max connection age.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::store::Key;
use crate::store::StoreClient;
use mtls_kit::pki::Revoked;
use mtls_kit::server::Limits;
use mtls_kit::tls::{self, CertifiedKeyFiles, ClientTlsOptions};
use rustls::HandshakeKind;
use time::OffsetDateTime;
use tonic::Code;

use crate::helpers::{h2_accepted, spawn_file_server, TestPki, POLICY};

/// Connects with `config` until the server speaks (its HTTP/2 settings)
/// or refuses. Returns how the handshake went.
async fn handshake(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<HandshakeKind, String> {
    let stream = h2_accepted(addr, config).await?;
    Ok(stream.get_ref().1.handshake_kind().unwrap())
}

#[tokio::test]
async fn revoked_certificates_are_refused_new_resumed_and_existing_connections() {
    let pki = TestPki::new();
    let limits = Limits {
        max_connection_age: Duration::from_secs(1),
        max_connection_age_grace: Duration::from_secs(1),
        ..Limits::default()
    };
    let fs = spawn_file_server(&pki, POLICY, limits, None).await;
    let victim = pki.client("reader");
    let bystander = pki.client("writer");

    // One client config, reused, with rustls' default client session cache:
    // it would resume if the server let it.
    let identity =
        CertifiedKeyFiles::in_memory(vec![victim.cert_der.clone()], victim.key_der(), "victim");
    let victim_config =
        tls::client_config(&identity, &pki.anchors(), ClientTlsOptions::default()).unwrap();
    assert_eq!(
        handshake(fs.server.addr, victim_config.clone()).await,
        Ok(HandshakeKind::Full)
    );
    // The server issues no tickets and keeps no session cache, so the second
    // connection is a full handshake too: nothing to resume.
    assert_eq!(
        handshake(fs.server.addr, victim_config.clone()).await,
        Ok(HandshakeKind::Full)
    );

    let mut open = StoreClient::new(fs.server.connect(&victim).await.unwrap());
    assert_eq!(
        open.get(Key { key: "x".into() }).await.unwrap_err().code(),
        Code::NotFound
    );

    // Revoke, as `certs revoke` does: a new CRL from the CA.
    let serial = x509_parser::parse_x509_certificate(&victim.cert_der)
        .unwrap()
        .1
        .raw_serial()
        .to_vec();
    let crl = pki
        .ca
        .crl(
            &[Revoked {
                serial,
                at: OffsetDateTime::now_utc(),
            }],
            2,
            1,
        )
        .unwrap();
    fs.replace(&fs.paths().crl, crl.pem.as_bytes());
    fs.reloader.reload();
    assert_eq!(
        fs.reloader.in_force(&fs.paths().crl).unwrap(),
        crl.pem.as_bytes()
    );
    let revoked_at = Instant::now();

    // New connection, and the same client config that held a session.
    let refused = handshake(fs.server.addr, victim_config).await.unwrap_err();
    assert!(refused.contains("CertificateRevoked"), "{refused}");
    let err = match fs.server.connect(&victim).await {
        Err(e) => e.to_string(),
        Ok(ch) => format!(
            "{:?}",
            StoreClient::new(ch).get(Key::default()).await.unwrap_err()
        ),
    };
    assert!(!err.contains("PermissionDenied"), "{err}");

    // Others are unaffected.
    let mut other = StoreClient::new(fs.server.connect(&bystander).await.unwrap());
    assert_eq!(
        other.get(Key { key: "x".into() }).await.unwrap_err().code(),
        Code::NotFound
    );

    // The connection opened before the revocation is closed at its max age
    // (plus grace); after that the victim's calls fail for good.
    let mut ticks = tokio::time::interval(Duration::from_millis(50));
    let cut_off = loop {
        ticks.tick().await;
        match open.get(Key { key: "x".into() }).await {
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => break (s, revoked_at.elapsed()),
            Ok(_) => unreachable!(),
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(15),
            "the revoked client kept its connection"
        );
    };
    println!(
        "revoked client's open connection cut off {:?} after the revocation",
        cut_off.1
    );
    assert!(
        cut_off.1 <= Duration::from_secs(5),
        "cut off after {:?} (max age 1 s + grace 1 s)",
        cut_off.1
    );
    assert_ne!(cut_off.0.code(), Code::PermissionDenied);
    for _ in 0..3 {
        let status = open.get(Key { key: "x".into() }).await.unwrap_err();
        assert_ne!(
            status.code(),
            Code::NotFound,
            "the revoked client got through again: {status:?}"
        );
    }
}
