//! The baselines the template is measured against, built into the
//! benchmark so that they are the same on every machine:
//!
//! - plain tonic: `Server::builder()` with a trivial health handler, over
//!   plaintext or tonic's own `ServerTlsConfig` (mutual TLS, same crypto
//!   provider as the kit); no identity, no policy, no metrics;
//! - bare rustls: a TCP listener that runs rustls' mutual-auth handshake
//!   with the stock `WebPkiClientVerifier` and closes: the most a server
//!   core can do for new connections.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Context;
use rustls::server::WebPkiClientVerifier;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::pki;

/// Answers every Check with SERVING: the same bytes the kit's health
/// service sends, with no work behind them.
struct Trivial;

type WatchStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<HealthCheckResponse, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl Health for Trivial {
    async fn check(
        &self,
        _: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(HealthCheckResponse {
            status: ServingStatus::Serving as i32,
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        _: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<WatchStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("watch"))
    }
}

/// Binds `addr`, saying which address in the error.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))
}

/// Plain tonic on `listener` until `stop`; mutual TLS when `pki_dir` is
/// given.
pub async fn serve_tonic(
    listener: TcpListener,
    pki_dir: Option<&Path>,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut builder = Server::builder();
    if let Some(dir) = pki_dir {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
        };
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(
                read(pki::SERVER_CERT)?,
                read(pki::SERVER_KEY)?,
            ))
            .client_ca_root(Certificate::from_pem(read(pki::CA_CERT)?));
        builder = builder.tls_config(tls).context("tonic's TLS config")?;
    }
    eprintln!("plain tonic listening on {}", listener.local_addr()?);
    builder
        .add_service(HealthServer::new(Trivial))
        // What `Server::serve(addr)` does: TCP_NODELAY on every connection
        // (tonic's default), which `serve_with_incoming` alone would skip.
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), stop)
        .await?;
    Ok(())
}

/// Bare rustls mutual-auth handshakes on `listener` until `stop`: verify
/// the client, send close_notify, close. Session tickets are off, as in the
/// kit, so every handshake is a full one.
pub async fn serve_rustls(
    listener: TcpListener,
    pki_dir: &Path,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let identity = mtls_kit::tls::CertifiedKeyFiles::read(
        &pki_dir.join(pki::SERVER_CERT),
        &pki_dir.join(pki::SERVER_KEY),
    )?;
    let ca = mtls_kit::tls::TrustAnchors::read(&pki_dir.join(pki::CA_CERT))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in ca.certs {
        roots.add(cert)?;
    }
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots)).build()?;
    let mut config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    config.send_tls13_tickets = 0;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    eprintln!("bare rustls listening on {}", listener.local_addr()?);
    let accept = async {
        loop {
            let (tcp, _) = match listener.accept().await {
                Ok(c) => c,
                Err(_) => continue,
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let _ = tls.shutdown().await;
                }
            });
        }
    };
    tokio::select! {
        () = accept => Ok(()),
        () = stop => Ok(()),
    }
}
