//! Prometheus metrics: the registry, the kit's own metrics, and the hooks
//! the rest of the kit calls to feed them.
//!
//! * [`Metrics`]: a cheap handle on one registry. [`Services`] carries one,
//!   so a service registers its own metrics next to the kit's
//!   ([`Metrics::register`]) and every server has its own registry (tests
//!   running in parallel never see each other's counts);
//! * [`rpc`]: the tower layer that counts and times every RPC by gRPC
//!   status, makes its tracing span, and records authorization decisions;
//! * [`handshake`]: TLS handshakes by outcome and reason, and the
//!   connections open now;
//! * [`certs`]: certificate and CRL lifetimes, and the seconds until the
//!   soonest of them ends (computed at scrape time);
//! * [`reload`]: reloads by group and outcome, and the policy in force;
//! * `quota`: calls refused by limit and reason, and fair-share waits;
//! * [`http`]: the endpoint (`GET /metrics`) on a listener of its own.
//!
//! A disabled handle ([`Metrics::disabled`], what `--metrics-listen off`
//! gives) records nothing: every hook is a branch on `None`.
//!
//! [`Services`]: crate::server::Services

pub mod certs;
pub mod handshake;
pub mod http;
pub(crate) mod quota;
pub mod reload;
pub mod rpc;
#[cfg(feature = "testing")]
pub mod scrape;

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::registry::{Metric, Registry};

/// A handle on a metrics registry and the kit's metrics in it. Cloning
/// shares them.
#[derive(Clone)]
pub struct Metrics(Option<Arc<Inner>>);

struct Inner {
    /// Behind a mutex only so that services can register metrics after the
    /// handle is shared; recording never takes it, only registering and
    /// scraping do.
    registry: Mutex<Registry>,
    rpc: rpc::RpcMetrics,
    handshake: handshake::HandshakeMetrics,
    certs: certs::CertMetrics,
    reload: reload::ReloadMetrics,
    quota: quota::QuotaMetrics,
}

impl Default for Metrics {
    /// A new, enabled registry holding the kit's metrics.
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("enabled", &self.is_enabled())
            .finish()
    }
}

impl Metrics {
    /// A new registry with the kit's metrics registered in it.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let inner = Inner {
            rpc: rpc::RpcMetrics::register(&mut registry),
            handshake: handshake::HandshakeMetrics::register(&mut registry),
            certs: certs::CertMetrics::register(&mut registry),
            reload: reload::ReloadMetrics::register(&mut registry),
            quota: quota::QuotaMetrics::register(&mut registry),
            registry: Mutex::new(registry),
        };
        Self(Some(Arc::new(inner)))
    }

    /// A handle that records nothing and has nothing to expose.
    pub fn disabled() -> Self {
        Self(None)
    }

    /// Whether this handle records (false for [`Metrics::disabled`]).
    pub fn is_enabled(&self) -> bool {
        self.0.is_some()
    }

    /// Registers a service's own metric in the same registry, exposed on
    /// the same endpoint. Keep the handle you pass in (metrics are shared
    /// handles) and update it from your handlers. Does nothing on a
    /// disabled handle.
    ///
    /// ```
    /// use prometheus_client::metrics::counter::Counter;
    /// let metrics = mtls_kit::metrics::Metrics::new();
    /// let items_added = Counter::<u64>::default();
    /// metrics.register("myservice_items_added", "Items added", items_added.clone());
    /// items_added.inc();
    /// assert!(metrics.encode_text().contains("myservice_items_added_total 1"));
    /// ```
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        if let Some(mut registry) = self.registry() {
            registry.register(name, help, metric);
        }
    }

    /// The registry itself, for what [`Metrics::register`] does not cover
    /// (units, sub-registries, collectors). `None` when disabled.
    pub fn registry(&self) -> Option<MutexGuard<'_, Registry>> {
        let inner = self.0.as_ref()?;
        Some(inner.registry.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The Prometheus text exposition format (0.0.4) of every metric.
    pub fn encode_text(&self) -> String {
        let mut out = String::new();
        if let Some(registry) = self.registry() {
            // Writing into a String cannot fail.
            let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        }
        out
    }

    /// The OpenMetrics text format of every metric.
    pub fn encode_openmetrics(&self) -> String {
        let mut out = String::new();
        if let Some(registry) = self.registry() {
            let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        }
        out
    }

    fn inner(&self) -> Option<&Inner> {
        self.0.as_deref()
    }

    /// The hooks of the accept loop.
    pub fn handshakes(&self) -> handshake::HandshakeRecorder {
        handshake::HandshakeRecorder(self.inner().map(|i| i.handshake.clone()))
    }

    /// The certificate lifetime gauges.
    pub fn certs(&self) -> Option<&certs::CertMetrics> {
        self.inner().map(|i| &i.certs)
    }

    pub(crate) fn rpc(&self) -> Option<&rpc::RpcMetrics> {
        self.inner().map(|i| &i.rpc)
    }

    pub(crate) fn quota(&self) -> Option<&quota::QuotaMetrics> {
        self.inner().map(|i| &i.quota)
    }

    pub(crate) fn reloads(&self) -> Option<&reload::ReloadMetrics> {
        self.inner().map(|i| &i.reload)
    }
}

/// Where the metrics endpoint listens: an address, or off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsListen(pub Option<SocketAddr>);

/// The default: on, on loopback only, at Prometheus' customary exporter
/// port range (9464 is OpenTelemetry's Prometheus exporter port).
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";

impl FromStr for MetricsListen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() || s.eq_ignore_ascii_case("off") {
            return Ok(Self(None));
        }
        s.parse().map(|a| Self(Some(a))).map_err(|e| {
            format!("{s:?} is neither an address (host:port, e.g. 127.0.0.1:9464) nor \"off\": {e}")
        })
    }
}

impl fmt::Display for MetricsListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("off"),
        }
    }
}

/// The current Unix time, in seconds.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_listen_parses_an_address_or_off() {
        assert_eq!(
            "127.0.0.1:0".parse::<MetricsListen>().unwrap().0,
            Some("127.0.0.1:0".parse().unwrap())
        );
        assert_eq!("off".parse::<MetricsListen>().unwrap().0, None);
        assert_eq!("".parse::<MetricsListen>().unwrap().0, None);
        let e = "localhost".parse::<MetricsListen>().unwrap_err();
        assert!(e.contains("off"), "{e}");
    }

    #[test]
    fn a_disabled_handle_exposes_nothing() {
        let m = Metrics::disabled();
        m.register(
            "x",
            "x",
            prometheus_client::metrics::counter::Counter::<u64>::default(),
        );
        assert_eq!(m.encode_text(), "");
    }
}
