//! Certificate lifetimes as Unix-time gauges, so that an expiry is in plain
//! sight long before a handshake fails: the server certificate's notAfter,
//! each client CA's notAfter, each CRL's nextUpdate, and the seconds until
//! the soonest of them, computed at scrape time so that one alert rule
//! (`mtls_certificates_soonest_expiry_seconds < 7 * 86400`) covers all.
//!
//! The values come from the bytes the configuration in force was built
//! from, and are replaced on every applied reload ([`super::reload`]).

use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};

/// The lifetimes read from one set of TLS files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lifetimes {
    /// notAfter of the server's leaf certificate.
    pub server_not_after: Option<i64>,
    /// (subject, notAfter) of each client CA, in bundle order.
    pub client_cas: Vec<(String, i64)>,
    /// (file, nextUpdate) of each CRL that has a nextUpdate.
    pub crl_next_updates: Vec<(String, i64)>,
}

impl Lifetimes {
    /// Reads the lifetimes from PEM contents. What does not parse is left
    /// out: these files were already accepted by the TLS config builder,
    /// which reports problems itself.
    pub fn from_pem(server_chain: &[u8], client_ca: &[u8], crls: &[(String, Vec<u8>)]) -> Self {
        let server_not_after = CertificateDer::pem_slice_iter(server_chain)
            .next()
            .and_then(Result::ok)
            .and_then(|der| {
                let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
                Some(cert.validity().not_after.timestamp())
            });
        let client_cas = CertificateDer::pem_slice_iter(client_ca)
            .filter_map(Result::ok)
            .filter_map(|der| {
                let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
                let subject = crate::rfc2253::render(cert.subject());
                Some((subject, cert.validity().not_after.timestamp()))
            })
            .collect();
        let crl_next_updates = crls
            .iter()
            .flat_map(|(file, pem)| {
                CertificateRevocationListDer::pem_slice_iter(pem)
                    .filter_map(Result::ok)
                    .filter_map(|der| {
                        let (_, crl) = x509_parser::parse_x509_crl(&der).ok()?;
                        Some((file.clone(), crl.next_update()?.timestamp()))
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        Self {
            server_not_after,
            client_cas,
            crl_next_updates,
        }
    }

    /// The soonest of every time here.
    pub fn soonest(&self) -> Option<i64> {
        self.server_not_after
            .into_iter()
            .chain(self.client_cas.iter().map(|(_, t)| *t))
            .chain(self.crl_next_updates.iter().map(|(_, t)| *t))
            .min()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CaLabels {
    /// Position in the bundle: two CAs may share a subject (a CA rotated
    /// under the same name), and series must stay distinct.
    index: String,
    subject: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CrlLabels {
    /// The CRL file (several CRLs in one file share it, with an index).
    crl: String,
    index: String,
}

/// The certificate lifetime metrics in a registry.
pub struct CertMetrics {
    server: Gauge,
    client_cas: Family<CaLabels, Gauge>,
    crls: Family<CrlLabels, Gauge>,
    /// Read at scrape time by [`SoonestExpiry`].
    soonest: Arc<Mutex<Option<i64>>>,
    /// Whether the server gauge holds a value (a gauge cannot be unset).
    server_set: Mutex<bool>,
}

impl CertMetrics {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let m = Self {
            server: Gauge::default(),
            client_cas: Family::default(),
            crls: Family::default(),
            soonest: Arc::default(),
            server_set: Mutex::new(false),
        };
        registry.register(
            "mtls_server_certificate_not_after_timestamp_seconds",
            "notAfter of the server certificate in force, as a Unix time",
            m.server.clone(),
        );
        registry.register(
            "mtls_client_ca_not_after_timestamp_seconds",
            "notAfter of each client CA certificate in force (index in the bundle, subject), as a Unix time",
            m.client_cas.clone(),
        );
        registry.register(
            "mtls_crl_next_update_timestamp_seconds",
            "nextUpdate of each CRL in force (file, index in the file), as a Unix time",
            m.crls.clone(),
        );
        registry.register_collector(Box::new(SoonestExpiry(m.soonest.clone())));
        m
    }

    /// Replaces every value with `lifetimes`.
    pub fn set(&self, lifetimes: &Lifetimes) {
        if let Some(t) = lifetimes.server_not_after {
            self.server.set(t);
        }
        *self.server_set.lock().unwrap_or_else(|p| p.into_inner()) =
            lifetimes.server_not_after.is_some();
        // Clear first: a CA or CRL taken out of the files must not linger.
        self.client_cas.clear();
        for (i, (subject, t)) in lifetimes.client_cas.iter().enumerate() {
            let labels = CaLabels {
                index: i.to_string(),
                subject: subject.clone(),
            };
            self.client_cas.get_or_create(&labels).set(*t);
        }
        self.crls.clear();
        let mut per_file = std::collections::HashMap::<&str, usize>::new();
        for (file, t) in &lifetimes.crl_next_updates {
            let n = per_file.entry(file).or_default();
            let labels = CrlLabels {
                crl: file.clone(),
                index: n.to_string(),
            };
            *n += 1;
            self.crls.get_or_create(&labels).set(*t);
        }
        *self.soonest.lock().unwrap_or_else(|p| p.into_inner()) = lifetimes.soonest();
    }
}

/// `mtls_certificates_soonest_expiry_seconds`, computed at each scrape from
/// the current time, so that it counts down between reloads.
#[derive(Debug)]
struct SoonestExpiry(Arc<Mutex<Option<i64>>>);

impl Collector for SoonestExpiry {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(soonest) = *self.0.lock().unwrap_or_else(|p| p.into_inner()) else {
            return Ok(());
        };
        let gauge = ConstGauge::new(soonest - super::unix_now());
        let metric = encoder.encode_descriptor(
            "mtls_certificates_soonest_expiry_seconds",
            "Seconds until the soonest of the server certificate's notAfter, the client CAs' notAfter and the CRLs' nextUpdate (negative once passed)",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(metric)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::pki::{CertificateAuthority, LeafSpec};

    #[test]
    fn lifetimes_are_read_from_the_pem_files_and_replace_the_last_ones() {
        let ca = CertificateAuthority::new("lifetime CA", 1).unwrap();
        let other = CertificateAuthority::new("other CA", 1).unwrap();
        let server = ca.issue(&LeafSpec::server("s", &["localhost"])).unwrap();
        let bundle = format!("{}{}", ca.cert_pem(), other.cert_pem());
        let crl = ca.crl(&[], 1, 1).unwrap();
        let lifetimes = Lifetimes::from_pem(
            server.cert_pem.as_bytes(),
            bundle.as_bytes(),
            &[("crl.pem".to_owned(), crl.pem.clone().into_bytes())],
        );
        let (_, leaf) = x509_parser::parse_x509_certificate(&server.cert_der).unwrap();
        assert_eq!(
            lifetimes.server_not_after,
            Some(leaf.validity().not_after.timestamp())
        );
        assert_eq!(lifetimes.client_cas.len(), 2);
        assert_eq!(lifetimes.crl_next_updates.len(), 1);

        let metrics = Metrics::new();
        let certs = metrics.certs().unwrap();
        certs.set(&lifetimes);
        let text = metrics.encode_text();
        let server_line = format!(
            "mtls_server_certificate_not_after_timestamp_seconds {}\n",
            leaf.validity().not_after.timestamp()
        );
        assert!(text.contains(&server_line), "{text}");
        assert!(
            text.contains(r#"subject="CN=other CA,O=mtls-kit dev""#),
            "{text}"
        );
        assert!(text.contains(r#"mtls_crl_next_update_timestamp_seconds{crl="crl.pem",index="0"}"#));
        let soonest = lifetimes.soonest().unwrap() - crate::metrics::unix_now();
        let soonest_value: i64 = text
            .lines()
            .find_map(|l| l.strip_prefix("mtls_certificates_soonest_expiry_seconds "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            (soonest - soonest_value).abs() <= 2,
            "{soonest} vs {soonest_value}"
        );

        // A reload with one CA and no CRL leaves no stale series.
        certs.set(&Lifetimes::from_pem(
            server.cert_pem.as_bytes(),
            ca.cert_pem().as_bytes(),
            &[],
        ));
        let text = metrics.encode_text();
        assert!(!text.contains("other CA"), "{text}");
        assert!(!text.contains("crl=\"crl.pem\""), "{text}");
    }
}
