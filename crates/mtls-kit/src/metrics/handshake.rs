//! TLS handshakes by outcome and reason, and the connections open now.
//!
//! The accept loop ([`crate::conn`]) reports each handshake to a
//! [`HandshakeRecorder`] and holds an [`OpenConnection`] guard in every
//! connection it hands to tonic, so the gauge falls when hyper drops the
//! connection, however it ends.

use std::io;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rustls::{CertificateError, Error as TlsError};

/// How a handshake ended. The reason is one of a fixed set, so the label
/// stays bounded whatever clients send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeOutcome {
    /// Completed, and the client's identity was read.
    Ok,
    /// No ClientHello, or no complete handshake, in time; or closed while
    /// waiting for its ClientHello to make room for a new connection.
    Timeout,
    /// The client presented no certificate.
    NoCertificate,
    /// The client's certificate does not chain to the client CA bundle.
    UnknownCa,
    /// The client's certificate has expired.
    Expired,
    /// The client's certificate is revoked by a CRL.
    Revoked,
    /// The client's certificate is not for client authentication
    /// (extended key usage).
    BadEku,
    /// Anything else: another TLS error, a reset, not TLS at all, a
    /// certificate the kit could not read an identity from.
    Other,
}

impl HandshakeOutcome {
    /// The `reason` label.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Timeout => "timeout",
            Self::NoCertificate => "no_certificate",
            Self::UnknownCa => "unknown_ca",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
            Self::BadEku => "bad_eku",
            Self::Other => "other",
        }
    }

    /// Classifies the error of a refused handshake. tokio-rustls wraps the
    /// rustls error in an `io::Error`; anything else (a reset, a client that
    /// spoke something other than TLS) is `Other`.
    pub fn of_error(e: &io::Error) -> Self {
        let Some(tls) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<TlsError>())
        else {
            return Self::Other;
        };
        match tls {
            TlsError::NoCertificatesPresented => Self::NoCertificate,
            TlsError::InvalidCertificate(cert) => match cert {
                CertificateError::UnknownIssuer => Self::UnknownCa,
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    Self::Expired
                }
                CertificateError::Revoked => Self::Revoked,
                CertificateError::InvalidPurpose
                | CertificateError::InvalidPurposeContext { .. } => Self::BadEku,
                _ => Self::Other,
            },
            _ => Self::Other,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    outcome: &'static str,
    reason: &'static str,
}

/// The handshake metrics in a registry.
#[derive(Clone)]
pub(crate) struct HandshakeMetrics {
    handshakes: Family<HandshakeLabels, Counter>,
    open: Gauge,
}

impl HandshakeMetrics {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let m = Self {
            handshakes: Family::default(),
            open: Gauge::default(),
        };
        registry.register(
            "mtls_tls_handshakes",
            "TLS handshakes on the gRPC port, by outcome (ok, failed) and reason (ok, timeout, no_certificate, unknown_ca, expired, revoked, bad_eku, other)",
            m.handshakes.clone(),
        );
        registry.register(
            "mtls_connections_open",
            "Authenticated connections open now on the gRPC port",
            m.open.clone(),
        );
        m
    }
}

/// What the accept loop reports to. A disabled recorder does nothing.
#[derive(Clone, Default)]
pub struct HandshakeRecorder(pub(crate) Option<HandshakeMetrics>);

impl HandshakeRecorder {
    /// Counts one handshake.
    pub fn handshake(&self, outcome: HandshakeOutcome) {
        if let Some(m) = &self.0 {
            let labels = HandshakeLabels {
                outcome: if outcome == HandshakeOutcome::Ok {
                    "ok"
                } else {
                    "failed"
                },
                reason: outcome.reason(),
            };
            m.handshakes.get_or_create(&labels).inc();
        }
    }

    /// Counts a connection as open until the guard is dropped.
    pub fn opened(&self) -> OpenConnection {
        OpenConnection(self.0.as_ref().map(|m| {
            m.open.inc();
            m.open.clone()
        }))
    }
}

/// Holds one count of `mtls_connections_open`.
pub struct OpenConnection(Option<Gauge>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        if let Some(g) = &self.0 {
            g.dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrapped(e: TlsError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn refusals_are_classified_by_their_rustls_error() {
        let cases = [
            (TlsError::NoCertificatesPresented, "no_certificate"),
            (
                TlsError::InvalidCertificate(CertificateError::UnknownIssuer),
                "unknown_ca",
            ),
            (
                TlsError::InvalidCertificate(CertificateError::Expired),
                "expired",
            ),
            (
                TlsError::InvalidCertificate(CertificateError::Revoked),
                "revoked",
            ),
            (
                TlsError::InvalidCertificate(CertificateError::InvalidPurpose),
                "bad_eku",
            ),
            (
                TlsError::InvalidCertificate(CertificateError::BadSignature),
                "other",
            ),
            (TlsError::DecryptError, "other"),
        ];
        for (error, reason) in cases {
            assert_eq!(HandshakeOutcome::of_error(&wrapped(error)).reason(), reason);
        }
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(HandshakeOutcome::of_error(&reset), HandshakeOutcome::Other);
    }

    #[test]
    fn the_open_gauge_follows_the_guards() {
        let metrics = super::super::Metrics::new();
        let recorder = metrics.handshakes();
        let a = recorder.opened();
        let b = recorder.opened();
        assert!(metrics.encode_text().contains("mtls_connections_open 2\n"));
        drop(a);
        drop(b);
        assert!(metrics.encode_text().contains("mtls_connections_open 0\n"));
        recorder.handshake(HandshakeOutcome::Timeout);
        assert!(metrics
            .encode_text()
            .contains(r#"mtls_tls_handshakes_total{outcome="failed",reason="timeout"} 1"#));
    }
}
