//! How the load generator reaches a server: mutual TLS through the kit's own
//! client (the one services built on the template use), plaintext HTTP/2,
//! or a bare TLS handshake with no HTTP/2 at all (the rustls baseline).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use mtls_kit::client::{self, ClientSettings};
use mtls_kit::tls::{self, CertifiedKeyFiles, ClientTlsOptions, TrustAnchors};
use rustls_pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

/// What a side of a benchmark speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// gRPC over mutual TLS (the template's client).
    Tls,
    /// gRPC over plaintext HTTP/2.
    Plain,
    /// A mutual-TLS handshake only, then wait for the server to close: the
    /// bare-rustls baseline of the new-connection mode.
    Handshake,
}

/// A connector for one [`Kind`], with the client credentials loaded once.
#[derive(Clone)]
pub struct Connector {
    kind: Kind,
    addr: SocketAddr,
    tls: Option<Arc<ArcSwap<rustls::ClientConfig>>>,
    server_name: ServerName<'static>,
}

impl Connector {
    /// Credentials come from a PKI directory written by `loadbench pki`
    /// (`ca.pem`, `loadgen.pem`, `loadgen.key`); the server must present a
    /// certificate for `localhost`.
    pub fn new(kind: Kind, addr: SocketAddr, pki: &Path) -> anyhow::Result<Self> {
        Self::as_identity(kind, addr, pki, crate::pki::LOADGEN)
    }

    /// As [`Connector::new`], calling as client identity `name` of the PKI
    /// (`<name>.pem`, `<name>.key`): the fairness row's second caller.
    pub fn as_identity(
        kind: Kind,
        addr: SocketAddr,
        pki: &Path,
        name: &str,
    ) -> anyhow::Result<Self> {
        let tls = match kind {
            Kind::Plain => None,
            Kind::Tls | Kind::Handshake => {
                let identity = CertifiedKeyFiles::read(
                    &pki.join(crate::pki::cert_file(name)),
                    &pki.join(crate::pki::key_file(name)),
                )
                .with_context(|| format!("client identity {name}"))?;
                let ca = TrustAnchors::read(&pki.join(crate::pki::CA_CERT))?;
                let config = tls::client_config(&identity, &ca, ClientTlsOptions::default())?;
                Some(Arc::new(ArcSwap::new(config)))
            }
        };
        Ok(Self {
            kind,
            addr,
            tls,
            server_name: ServerName::try_from("localhost")?,
        })
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// One new HTTP/2 connection (TCP, TLS if any, preface).
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        match &self.tls {
            Some(tls) if self.kind == Kind::Tls => {
                let settings = ClientSettings::new(self.addr.to_string(), self.server_name.clone());
                Ok(client::connect(&settings, tls.clone()).await?)
            }
            _ => Ok(Endpoint::from_shared(format!("http://{}", self.addr))?
                .tcp_nodelay(true)
                .connect()
                .await
                .with_context(|| format!("connecting to {}", self.addr))?),
        }
    }

    /// A full mutual-TLS handshake, then reads until the server closes: the
    /// server has finished (and verified the client) by then.
    pub async fn handshake(&self) -> anyhow::Result<()> {
        let config = self
            .tls
            .as_ref()
            .context("a handshake needs TLS credentials")?
            .load_full();
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let mut stream = tokio_rustls::TlsConnector::from(config)
            .connect(self.server_name.clone(), tcp)
            .await?;
        let mut sink = [0u8; 64];
        while stream.read(&mut sink).await? != 0 {}
        Ok(())
    }
}
