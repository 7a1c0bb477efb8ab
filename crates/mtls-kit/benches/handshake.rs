//! What a full mutual-TLS handshake costs, per key exchange group.
//!
//! `cargo bench --bench handshake [-- N]` runs N (default 2000) complete
//! TLS 1.3 handshakes with client certificates, in process over memory
//! buffers (no sockets, no async runtime: only TLS and crypto are timed),
//! with the kit's own server and client configs. Both sides run on one
//! thread, so a figure is client plus server CPU.
//!
//! It times the kit's default (the client offers every group of
//! `tls::provider()`, most preferred first), then a client offering each
//! group alone. Rounds are interleaved (default, group 1, group 2, ...,
//! repeated) so that load from other processes hits every variant alike;
//! the report is the median round. It uses only the kit's public API, so
//! the same file builds against another crypto provider for a
//! before/after comparison.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mtls_kit::pki::{CertificateAuthority, LeafSpec};
use mtls_kit::tls::{self, CertifiedKeyFiles, ClientTlsOptions, ServerTlsOptions, TrustAnchors};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};

const ROUNDS: usize = 10;

fn main() {
    let total: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2000);
    let per_round = (total / ROUNDS).max(1);

    let ca = CertificateAuthority::new("bench CA", 1).expect("CA");
    let server_cert = ca
        .issue(&LeafSpec::server("bench server", &["localhost"]))
        .expect("server certificate");
    let client_cert = ca
        .issue(&LeafSpec::dev_client("example.org", "bench"))
        .expect("client certificate");
    let anchors = TrustAnchors::in_memory(vec![ca.cert_der().clone()], "bench CA");
    let server_id = CertifiedKeyFiles::in_memory(
        vec![server_cert.cert_der.clone()],
        server_cert.key_der(),
        "server",
    );
    let client_id = CertifiedKeyFiles::in_memory(
        vec![client_cert.cert_der.clone()],
        client_cert.key_der(),
        "client",
    );
    let server = tls::server_config(&server_id, &anchors, &[], ServerTlsOptions::default())
        .expect("server config");
    let default_client =
        tls::client_config(&client_id, &anchors, ClientTlsOptions::default()).expect("client");

    // The kit's client, then one client per single group.
    let mut variants: Vec<(String, Arc<ClientConfig>)> =
        vec![("default (kit client)".to_owned(), default_client.clone())];
    for group in tls::provider().kx_groups.iter() {
        let provider = CryptoProvider {
            kx_groups: vec![*group],
            ..(*tls::provider()).clone()
        };
        let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(anchors.certs.iter().cloned().fold(
                rustls::RootCertStore::empty(),
                |mut s, c| {
                    s.add(c).expect("root");
                    s
                },
            ))
            .with_client_auth_cert(vec![client_cert.cert_der.clone()], client_cert.key_der())
            .expect("client auth");
        config.alpn_protocols = default_client.alpn_protocols.clone();
        variants.push((format!("{:?} only", group.name()), Arc::new(config)));
    }

    // Warm up (page faults, lazy initialisation), checking each variant
    // really negotiates what it is named after.
    for (name, client) in &variants {
        let group = handshake(&server, client);
        println!("{name:<28} negotiates {group}");
    }

    let mut rounds: Vec<Vec<Duration>> = vec![Vec::new(); variants.len()];
    for _ in 0..ROUNDS {
        for (i, (_, client)) in variants.iter().enumerate() {
            let start = Instant::now();
            for _ in 0..per_round {
                handshake(&server, client);
            }
            rounds[i].push(start.elapsed() / per_round as u32);
        }
    }
    println!("\n{per_round} handshakes x {ROUNDS} interleaved rounds; median per handshake (client + server CPU):");
    let base = median(&mut rounds[0].clone());
    for ((name, _), times) in variants.iter().zip(&mut rounds) {
        let m = median(times);
        println!(
            "{name:<28} {:>8.1} µs   {:>5.2}x default",
            m.as_secs_f64() * 1e6,
            m.as_secs_f64() / base.as_secs_f64()
        );
    }
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// One full handshake over memory buffers; returns the negotiated group.
fn handshake(server: &Arc<ServerConfig>, client: &Arc<ClientConfig>) -> String {
    let name = tls::server_name("localhost").expect("name");
    let mut c = ClientConnection::new(client.clone(), name).expect("client connection");
    let mut s = ServerConnection::new(server.clone()).expect("server connection");
    let mut buf = Vec::with_capacity(16 * 1024);
    while c.is_handshaking() || s.is_handshaking() {
        buf.clear();
        while c.wants_write() {
            c.write_tls(&mut buf).expect("client write");
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).expect("server read");
        }
        s.process_new_packets().expect("server handshake");
        buf.clear();
        while s.wants_write() {
            s.write_tls(&mut buf).expect("server write");
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).expect("client read");
        }
        c.process_new_packets().expect("client handshake");
    }
    format!(
        "{:?}",
        s.negotiated_key_exchange_group()
            .expect("negotiated group")
            .name()
    )
}
