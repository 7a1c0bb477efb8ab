//! The one place that reads PEM files and builds rustls configurations, for
//! both the server and the client.
//!
//! Both sides use the same crypto provider ([`provider`]), the same protocol
//! versions and ALPN `h2`, so the two can never drift apart.
//!
//! Crypto provider: *aws-lc-rs* (rustls' default), the only one in the
//! build. It brings post-quantum hybrid key exchange (X25519MLKEM768, see
//! [`KX_GROUPS`]) and a FIPS 140-3 validated build (feature `fips`, see
//! docs/operations.md, "Building"). It builds with a C compiler alone on Linux x86_64/aarch64.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::crypto::aws_lc_rs::{self, kx_group};
use rustls::crypto::{CryptoProvider, SupportedKxGroup};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{ClientConfig, ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::ServerName;

use crate::spiffe_verifier::SpiffeClientVerifier;

// Reading PEM files: its own file, so that this one is about configs.
mod pem;
// Certificate and CRL signatures verified once per process.
pub mod signature_memo;
pub use pem::{
    parse_certs, parse_crls, parse_key, read_certs, read_key, CertifiedKeyFiles, RevocationLists,
    TrustAnchors,
};

/// ALPN protocol id of HTTP/2. gRPC C-core clients (Python grpcio, C++,
/// Ruby, ...) refuse a TLS server that does not select it.
pub const ALPN_H2: &[u8] = b"h2";

/// Errors from reading TLS material or building a config. Every variant
/// that concerns a file names it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read (missing, unreadable).
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why reading it failed.
        source: std::io::Error,
    },
    /// A file is not valid PEM, or ends inside a PEM block (truncated or
    /// still being written).
    #[error("{}: not valid PEM: {reason}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A file is valid PEM but holds nothing of the kind expected.
    #[error("{}: no {what} found in the file", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
        /// What was looked for, e.g. `"certificate"` or `"private key"`.
        what: &'static str,
    },
    /// A certificate of a CA bundle cannot be used as a trust anchor.
    #[error("{}: {what} is not a usable CA certificate: {source}", path.display())]
    BadCa {
        /// The CA bundle.
        path: PathBuf,
        /// Which part of the bundle was refused.
        what: &'static str,
        /// Why rustls refused it.
        source: rustls::Error,
    },
    /// rustls will not use this certificate chain with this private key:
    /// they do not match, or the key is of an unsupported kind.
    #[error("certificate {} and key {} do not match or are unusable: {source}", cert.display(), key.display())]
    CertKey {
        /// The certificate chain's file.
        cert: PathBuf,
        /// The private key's file.
        key: PathBuf,
        /// Why rustls refused them.
        source: rustls::Error,
    },
    /// The client certificate verifier could not be built from the client
    /// CA bundle (and CRLs, when no single CRL file is to blame).
    #[error("client CA {}: {source}", path.display())]
    Verifier {
        /// The client CA bundle.
        path: PathBuf,
        /// Why the verifier could not be built.
        source: rustls::server::VerifierBuilderError,
    },
    /// A CRL file holds a revocation list rustls cannot use.
    #[error("CRL {}: {source}", path.display())]
    Crl {
        /// The CRL file.
        path: PathBuf,
        /// Why its list was refused.
        source: rustls::server::VerifierBuilderError,
    },
    /// The name to expect in the server's certificate is neither a DNS
    /// name nor an IP address ([`server_name`]).
    #[error("invalid server name {name:?}: {reason}")]
    ServerName {
        /// The name as given.
        name: String,
        /// Why it is not a valid server name.
        reason: String,
    },
    /// Any other refusal from rustls while building a config, e.g. a
    /// protocol version the crypto provider cannot do.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Key exchange groups, most preferred first, for both sides.
///
/// * X25519MLKEM768 first: a hybrid of X25519 and ML-KEM-768, so that
///   traffic recorded today cannot be decrypted later by a quantum computer
///   ("harvest now, decrypt later"), while staying at least as strong as
///   X25519 if ML-KEM turns out weak. A rustls server takes the first
///   group in the *client's* list that it supports, so this order matters
///   most on the client side; every client built here offers the hybrid
///   first.
/// * X25519 next, for peers without ML-KEM.
/// * P-256 last, for older peers: gRPC C++ 1.51 on Debian's OpenSSL offers
///   nothing else.
///
/// Spelled out rather than taken from rustls' defaults: with rustls'
/// default features off (as here), its `prefer-post-quantum` feature is off
/// too and X25519MLKEM768 would come *last*, i.e. never be chosen against
/// a peer that offers X25519. P-384 is left out: no peer of ours needs it.
pub static KX_GROUPS: &[&dyn SupportedKxGroup] = &[
    kx_group::X25519MLKEM768,
    kx_group::X25519,
    kx_group::SECP256R1,
];

/// The crypto provider both sides use: aws-lc-rs with [`KX_GROUPS`], and
/// certificate and CRL signatures remembered once verified
/// ([`signature_memo`]).
///
/// In a FIPS build (`--features fips`), groups that are not FIPS-approved
/// (X25519 alone) are dropped, as rustls' own FIPS defaults do.
pub fn provider() -> Arc<CryptoProvider> {
    let mut kx_groups = KX_GROUPS.to_vec();
    if cfg!(feature = "fips") {
        kx_groups.retain(|group| group.fips());
    }
    Arc::new(CryptoProvider {
        kx_groups,
        signature_verification_algorithms: signature_memo::algorithms(),
        ..aws_lc_rs::default_provider()
    })
}

/// Which TLS versions to offer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum MinTlsVersion {
    /// TLS 1.3 only (the default).
    #[default]
    #[value(name = "1.3")]
    Tls13,
    /// TLS 1.2 and 1.3, for peers that cannot do 1.3.
    #[value(name = "1.2")]
    Tls12,
}

static TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
static TLS13_AND_12: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

impl MinTlsVersion {
    fn versions(self) -> &'static [&'static SupportedProtocolVersion] {
        match self {
            MinTlsVersion::Tls13 => TLS13_ONLY,
            MinTlsVersion::Tls12 => TLS13_AND_12,
        }
    }
}

/// Server-side TLS settings.
#[derive(Clone, Debug, Default)]
pub struct ServerTlsOptions {
    /// The oldest TLS version accepted. Default: TLS 1.3 only.
    pub min_version: MinTlsVersion,
    /// Strict SPIFFE mode: when set, a client certificate must also be an
    /// X.509-SVID of this trust domain ([`crate::spiffe_verifier`]).
    /// Default: off.
    pub spiffe_trust_domain: Option<String>,
}

/// Builds the server config: the server's certificate, a client
/// certificate *required* and verified against `client_ca` and checked
/// against `crls`, ALPN h2, and no session resumption.
///
/// Revocation: every certificate in the chain is checked against the CRLs
/// of its issuer. A certificate whose issuer has no CRL configured is not
/// revocation-checked (rather than refused), so that adding a CA without a
/// CRL does not lock out its clients.
///
/// With `opts.spiffe_trust_domain`, a client certificate that passes those
/// checks must also be an X.509-SVID of that trust domain.
///
/// Resumption is off because a resumed TLS 1.3 session restores the client
/// certificate from the ticket without verifying it again: a certificate
/// revoked, or a CA removed, after the first handshake would get back in.
/// A full mutual-TLS handshake costs well under a millisecond of server CPU
/// and happens once per connection, not per RPC.
pub fn server_config(
    identity: &CertifiedKeyFiles,
    client_ca: &TrustAnchors,
    crls: &[RevocationLists],
    opts: ServerTlsOptions,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let roots = Arc::new(client_ca.root_store()?);
    let mut builder = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
    if !crls.is_empty() {
        builder = builder.allow_unknown_revocation_status();
    }
    for list in crls {
        builder = builder.with_crls(list.crls.iter().cloned());
    }
    let verifier = builder.build().map_err(|source| match source {
        // Only on failure: find which file holds the bad CRL, to name it.
        rustls::server::VerifierBuilderError::InvalidCrl(_) => crls
            .iter()
            .find_map(|list| {
                let roots = Arc::new(client_ca.root_store().ok()?);
                WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                    .with_crls(list.crls.iter().cloned())
                    .build()
                    .err()
                    .map(|source| TlsError::Crl {
                        path: list.path.clone(),
                        source,
                    })
            })
            .unwrap_or(TlsError::Verifier {
                path: client_ca.path.clone(),
                source,
            }),
        source => TlsError::Verifier {
            path: client_ca.path.clone(),
            source,
        },
    })?;
    let verifier: Arc<dyn ClientCertVerifier> = match &opts.spiffe_trust_domain {
        Some(trust_domain) => Arc::new(SpiffeClientVerifier::new(verifier, trust_domain)),
        None => verifier,
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(opts.min_version.versions())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|source| identity.unusable(source))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Client-side TLS settings.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClientTlsOptions {
    /// The oldest TLS version offered. Default: TLS 1.3 only.
    pub min_version: MinTlsVersion,
}

/// Builds the client config: present `identity`, verify the server against
/// `server_ca` only (no system roots), ALPN h2.
pub fn client_config(
    identity: &CertifiedKeyFiles,
    server_ca: &TrustAnchors,
    opts: ClientTlsOptions,
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(opts.min_version.versions())?
        .with_root_certificates(server_ca.root_store()?)
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|source| identity.unusable(source))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// Parses the name the client expects in the server's certificate (a DNS
/// name or an IP address).
pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_owned()).map_err(|e| TlsError::ServerName {
        name: name.to_owned(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{CertificateAuthority, LeafSpec};
    use rustls_pki_types::CertificateDer;

    #[test]
    fn file_errors_name_the_file_and_cause() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let e = read_certs(&missing, "certificate").unwrap_err().to_string();
        assert!(e.contains("nope.pem") && e.contains("No such file"), "{e}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "hello\n").unwrap();
        let e = read_certs(&empty, "certificate").unwrap_err().to_string();
        assert_eq!(
            e,
            format!("{}: no certificate found in the file", empty.display())
        );
        let e = read_key(&empty).unwrap_err().to_string();
        assert_eq!(
            e,
            format!("{}: no private key found in the file", empty.display())
        );
    }

    #[test]
    fn mismatched_certificate_and_key_are_refused() {
        let ca = CertificateAuthority::new("ca", 1).unwrap();
        let a = ca.issue(&LeafSpec::server("a", &["localhost"])).unwrap();
        let b = ca.issue(&LeafSpec::server("b", &["localhost"])).unwrap();
        let mixed = CertifiedKeyFiles::in_memory(vec![a.cert_der.clone()], b.key_der(), "server");
        let anchors = TrustAnchors::in_memory(vec![ca.cert_der().clone()], "ca");
        let e = server_config(&mixed, &anchors, &[], ServerTlsOptions::default()).unwrap_err();
        assert!(matches!(e, TlsError::CertKey { .. }), "{e}");
        assert!(e.to_string().contains("<server certificate>"), "{e}");
    }

    #[test]
    fn server_config_requires_client_certs_and_offers_h2_without_resumption() {
        let ca = CertificateAuthority::new("ca", 1).unwrap();
        let s = ca.issue(&LeafSpec::server("s", &["localhost"])).unwrap();
        let cfg = server_config(
            &CertifiedKeyFiles::in_memory(vec![s.cert_der.clone()], s.key_der(), "server"),
            &TrustAnchors::in_memory(vec![ca.cert_der().clone()], "ca"),
            &[],
            ServerTlsOptions::default(),
        )
        .unwrap();
        assert_eq!(cfg.alpn_protocols, vec![b"h2".to_vec()]);
        assert_eq!(cfg.send_tls13_tickets, 0);
        let debug = format!(
            "{:?}",
            CertifiedKeyFiles::in_memory(vec![s.cert_der.clone()], s.key_der(), "server")
        );
        assert!(debug.contains("<redacted>") && !debug.contains("PRIVATE"));
    }

    /// Handshakes over an in-memory pipe; returns the negotiated version.
    async fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
    ) -> Result<rustls::ProtocolVersion, String> {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let accept = tokio_rustls::TlsAcceptor::from(server).accept(a);
        let connect =
            tokio_rustls::TlsConnector::from(client).connect(server_name("localhost").unwrap(), b);
        let (s, c) = tokio::join!(accept, connect);
        let _client = c.map_err(|e| e.to_string())?;
        let server = s.map_err(|e| e.to_string())?;
        Ok(server.get_ref().1.protocol_version().unwrap())
    }

    /// The CA's signature on `cert`, as webpki hands it to the algorithm.
    fn ca_signature_parts(
        cert: &CertificateDer<'_>,
        ca: &CertificateDer<'_>,
    ) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        use x509_parser::prelude::*;
        let (_, cert) = X509Certificate::from_der(cert).unwrap();
        let (_, ca) = X509Certificate::from_der(ca).unwrap();
        (
            ca.public_key().subject_public_key.data.to_vec(),
            cert.tbs_certificate.as_ref().to_vec(),
            cert.signature_value.data.to_vec(),
        )
    }

    #[tokio::test]
    async fn remembered_signatures_skip_neither_revocation_nor_a_forged_signature() {
        use crate::pki::Revoked;
        let ca = CertificateAuthority::new("ca", 1).unwrap();
        let s = ca.issue(&LeafSpec::server("s", &["localhost"])).unwrap();
        let good = ca
            .issue(&LeafSpec::dev_client("example.org", "good"))
            .unwrap();
        let bad = ca
            .issue(&LeafSpec::dev_client("example.org", "bad"))
            .unwrap();
        let anchors = TrustAnchors::in_memory(vec![ca.cert_der().clone()], "ca");
        let server_id =
            CertifiedKeyFiles::in_memory(vec![s.cert_der.clone()], s.key_der(), "server");
        let server_with = |revoked: &[Revoked]| {
            let crl = ca.crl(revoked, 1, 1).unwrap();
            let crls = RevocationLists::from_pem(std::path::Path::new("<crl>"), crl.pem.as_bytes())
                .unwrap();
            server_config(&server_id, &anchors, &[crls], ServerTlsOptions::default()).unwrap()
        };
        let client = |cert: &crate::pki::IssuedCert, der: CertificateDer<'static>| {
            let id = CertifiedKeyFiles::in_memory(vec![der], cert.key_der(), "client");
            client_config(&id, &anchors, ClientTlsOptions::default()).unwrap()
        };
        let sha256 = || {
            provider()
                .signature_verification_algorithms
                .mapping
                .iter()
                .find(|(scheme, _)| *scheme == rustls::SignatureScheme::ECDSA_NISTP256_SHA256)
                .unwrap()
                .1[0]
        };

        // Both certificates connect, and their CA signatures are remembered.
        let none = server_with(&[]);
        for cert in [&good, &bad] {
            let tls = handshake(none.clone(), client(cert, cert.cert_der.clone())).await;
            assert_eq!(tls, Ok(rustls::ProtocolVersion::TLSv1_3));
            let (key, tbs, sig) = ca_signature_parts(&cert.cert_der, ca.cert_der());
            assert!(signature_memo::process_memo_contains(
                sha256(),
                &key,
                &tbs,
                &sig
            ));
        }

        // Revoked after it was remembered: refused at its next handshake.
        let revoked = server_with(&[Revoked {
            serial: {
                use x509_parser::prelude::*;
                X509Certificate::from_der(&bad.cert_der)
                    .unwrap()
                    .1
                    .raw_serial()
                    .to_vec()
            },
            at: time::OffsetDateTime::now_utc() - time::Duration::minutes(1),
        }]);
        let refused = handshake(revoked.clone(), client(&bad, bad.cert_der.clone())).await;
        let refused = refused.unwrap_err();
        assert!(refused.contains("Revoked"), "{refused}");
        assert!(handshake(revoked, client(&good, good.cert_der.clone()))
            .await
            .is_ok());

        // The remembered certificate with its signature altered: refused.
        let mut forged = good.cert_der.to_vec();
        let last = forged.len() - 1;
        forged[last] ^= 0x01;
        let refused = handshake(none, client(&good, CertificateDer::from(forged))).await;
        assert!(refused.is_err(), "a forged signature was accepted");
    }

    #[tokio::test]
    async fn tls_1_3_only_unless_1_2_is_allowed() {
        let ca = CertificateAuthority::new("ca", 1).unwrap();
        let s = ca.issue(&LeafSpec::server("s", &["localhost"])).unwrap();
        let c = ca.issue(&LeafSpec::dev_client("example.org", "c")).unwrap();
        let anchors = TrustAnchors::in_memory(vec![ca.cert_der().clone()], "ca");
        let server_id =
            CertifiedKeyFiles::in_memory(vec![s.cert_der.clone()], s.key_der(), "server");
        let client_id =
            CertifiedKeyFiles::in_memory(vec![c.cert_der.clone()], c.key_der(), "client");
        let server_for = |min_version| {
            let opts = ServerTlsOptions {
                min_version,
                ..ServerTlsOptions::default()
            };
            server_config(&server_id, &anchors, &[], opts).unwrap()
        };
        let client_for = |min_version| {
            client_config(&client_id, &anchors, ClientTlsOptions { min_version }).unwrap()
        };

        // A client that can only do TLS 1.2.
        let mut legacy = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(anchors.root_store().unwrap())
            .with_client_auth_cert(vec![c.cert_der.clone()], c.key_der())
            .unwrap();
        legacy.alpn_protocols = vec![ALPN_H2.to_vec()];
        let legacy = Arc::new(legacy);

        let default = server_for(MinTlsVersion::default());
        assert_eq!(
            handshake(default.clone(), client_for(MinTlsVersion::Tls12)).await,
            Ok(rustls::ProtocolVersion::TLSv1_3)
        );
        let refused = handshake(default, legacy.clone()).await.unwrap_err();
        assert!(
            refused.contains("ProtocolVersion") || refused.contains("version"),
            "{refused}"
        );
        assert_eq!(
            handshake(server_for(MinTlsVersion::Tls12), legacy).await,
            Ok(rustls::ProtocolVersion::TLSv1_2)
        );
    }
}
