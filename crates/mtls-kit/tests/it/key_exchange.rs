//! Key exchange: the kit's client and server agree on the post-quantum
//! hybrid X25519MLKEM768; peers without it still connect, on X25519 or on
//! P-256 (what gRPC C++ 1.51 on Debian's OpenSSL offers).

use std::sync::Arc;

use mtls_kit::tls;
use rustls::crypto::aws_lc_rs::kx_group;
use rustls::crypto::{CryptoProvider, SupportedKxGroup};
use rustls::{ClientConfig, NamedGroup};

use crate::helpers::{client_tls, h2_accepted, spawn_server, TestPki, POLICY};

/// The key exchange group of a connection the server accepted.
async fn negotiated_group(
    addr: std::net::SocketAddr,
    config: Arc<ClientConfig>,
) -> Result<NamedGroup, String> {
    let stream = h2_accepted(addr, config).await?;
    let group = stream.get_ref().1.negotiated_key_exchange_group();
    Ok(group.ok_or("no key exchange group")?.name())
}

/// A rustls client like the kit's, but offering only `groups`: an older
/// peer.
fn client_offering(pki: &TestPki, groups: &[&'static dyn SupportedKxGroup]) -> Arc<ClientConfig> {
    let provider = CryptoProvider {
        kx_groups: groups.to_vec(),
        ..(*tls::provider()).clone()
    };
    let cert = pki.client("reader");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.cert_der().clone()).unwrap();
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![cert.cert_der.clone()], cert.key_der())
        .unwrap();
    config.alpn_protocols = vec![tls::ALPN_H2.to_vec()];
    Arc::new(config)
}

#[test]
fn the_kit_prefers_the_hybrid_then_x25519_then_p256() {
    let names: Vec<NamedGroup> = tls::provider().kx_groups.iter().map(|g| g.name()).collect();
    assert_eq!(
        names,
        [
            NamedGroup::X25519MLKEM768,
            NamedGroup::X25519,
            NamedGroup::secp256r1
        ]
    );
}

#[tokio::test]
async fn the_kit_client_negotiates_x25519mlkem768_with_the_server() {
    let pki = TestPki::new();
    let server = spawn_server(&pki, POLICY).await;
    let config = client_tls(&pki, &pki.client("reader"));
    assert_eq!(
        negotiated_group(server.addr, config).await,
        Ok(NamedGroup::X25519MLKEM768)
    );
}

#[tokio::test]
async fn older_clients_fall_back_to_x25519_or_p256() {
    let pki = TestPki::new();
    let server = spawn_server(&pki, POLICY).await;
    assert_eq!(
        negotiated_group(server.addr, client_offering(&pki, &[kx_group::SECP256R1])).await,
        Ok(NamedGroup::secp256r1),
        "a P-256-only client (like gRPC C++ 1.51 on Debian's OpenSSL)"
    );
    assert_eq!(
        negotiated_group(server.addr, client_offering(&pki, &[kx_group::X25519])).await,
        Ok(NamedGroup::X25519)
    );
    // The client's order decides (a rustls server takes the first offered
    // group it supports): that is why the kit's client lists the hybrid first.
    let both = client_offering(&pki, &[kx_group::X25519, kx_group::X25519MLKEM768]);
    assert_eq!(
        negotiated_group(server.addr, both).await,
        Ok(NamedGroup::X25519)
    );
}
