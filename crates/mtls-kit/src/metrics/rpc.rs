//! Per-RPC observation: a tower layer around the whole router (outside the
//! authorization layer) that, for every RPC,
//!
//! * opens a `tracing` span (`grpc.request`) carrying the method, the
//!   peer's display name, the authorization decision and the gRPC status,
//!   parented on the caller's W3C `traceparent` when built with `otel`;
//! * counts it by service, method and gRPC status code
//!   (`grpc_server_handled_total`) and times it
//!   (`grpc_server_handling_seconds`), as grpc-go's and grpc-java's
//!   Prometheus instrumentation name them;
//! * lets the authorization layer record its decision ([`decided`]) by
//!   policy, decision and rule.
//!
//! The status of an RPC is only known at its end: in the response headers
//! for a trailers-only answer (a denial, an unknown method), otherwise in
//! the trailers after the last message. So the response body is wrapped
//! and the RPC is counted when its trailers go out, or, if the body is
//! dropped before that (the client went away), as `CANCELLED`. Streaming
//! RPCs are timed to their end.
//!
//! Method labels come only from the services' descriptors: a path no
//! registered service declares is counted as service and method `unknown`,
//! so a client cannot grow the label set by calling made-up methods.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use prost::Message;
use tonic::body::Body;
use tower::{Layer, Service};
use tracing::field::Empty;

use super::Metrics;
use crate::client::code_name;
use crate::conn::PeerInfo;
use crate::policy::{Decision, Policy};

/// The target of the per-RPC span (for filters: `RUST_LOG=mtls_kit::metrics::rpc=debug`).
#[cfg(feature = "otel")]
pub(crate) const SPAN_TARGET: &str = module_path!();

/// A label value shared between series without copying.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Name(Arc<str>);

impl EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&&*self.0, encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    grpc_service: Name,
    grpc_method: Name,
    grpc_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandledLabels {
    grpc_service: Name,
    grpc_method: Name,
    grpc_type: &'static str,
    grpc_code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    policy: String,
    decision: &'static str,
    rule: String,
}

/// Latency buckets, in seconds: from sub-millisecond unary calls on a
/// local network to streams of minutes.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// The RPC metrics in a registry.
pub(crate) struct RpcMetrics {
    started: Family<MethodLabels, Counter>,
    handled: Family<HandledLabels, Counter>,
    handling: Family<MethodLabels, Histogram, fn() -> Histogram>,
    decisions: Family<DecisionLabels, Counter>,
    decision_cache: DecisionCache,
}

/// The decision counters already looked up, so that an RPC neither builds
/// (allocates) nor hashes a label set to find its counter. Keyed by where
/// the policy's and the rule's names are in memory, which is stable while a
/// policy is in force; an entry counts only if its names still equal the
/// decision's, since a reloaded policy may reuse an address.
#[derive(Default)]
struct DecisionCache(std::sync::RwLock<HashMap<DecisionKey, (DecisionLabels, Counter)>>);

#[derive(Clone, Copy, Hash, PartialEq, Eq)]
struct DecisionKey {
    policy: usize,
    rule: usize,
    rule_len: usize,
    decision: &'static str,
}

/// Entries before the cache starts afresh: enough for the rules that decide
/// most RPCs, bounded for policies of many rules.
const DECISION_CACHE_MAX: usize = 1024;

impl RpcMetrics {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let m = Self {
            started: Family::default(),
            handled: Family::default(),
            handling: Family::new_with_constructor(histogram as fn() -> Histogram),
            decisions: Family::default(),
            decision_cache: DecisionCache::default(),
        };
        registry.register(
            "grpc_server_started",
            "RPCs started on the server, by service, method and type",
            m.started.clone(),
        );
        registry.register(
            "grpc_server_handled",
            "RPCs completed on the server, by service, method, type and gRPC status code",
            m.handled.clone(),
        );
        registry.register(
            "grpc_server_handling_seconds",
            "Time from the request's arrival to the end of the response (the last message of a stream), by service, method and type",
            m.handling.clone(),
        );
        registry.register(
            "mtls_authz_decisions",
            "Authorization decisions, by policy name, decision (allow, deny, would-deny) and the rule that decided (empty when no rule matched)",
            m.decisions.clone(),
        );
        m
    }

    /// Counts one decision of `policy` by `rule` ("" when none matched).
    fn count_decision(&self, policy: &str, decision: &'static str, rule: &str) {
        let key = DecisionKey {
            policy: policy.as_ptr() as usize,
            rule: rule.as_ptr() as usize,
            rule_len: rule.len(),
            decision,
        };
        if let Ok(cache) = self.decision_cache.0.read() {
            if let Some((labels, counter)) = cache.get(&key) {
                if labels.policy == policy && labels.rule == rule {
                    counter.inc();
                    return;
                }
            }
        }
        let labels = DecisionLabels {
            policy: policy.to_owned(),
            decision,
            rule: rule.to_owned(),
        };
        let counter = self.decisions.get_or_create(&labels).clone();
        counter.inc();
        if let Ok(mut cache) = self.decision_cache.0.write() {
            if cache.len() >= DECISION_CACHE_MAX {
                cache.clear();
            }
            cache.insert(key, (labels, counter));
        }
    }
}

/// The methods the server's services declare, by path.
#[derive(Debug, Default)]
pub struct KnownMethods {
    by_path: HashMap<String, MethodLabels>,
}

impl KnownMethods {
    /// Reads the methods from encoded `FileDescriptorSet`s. A set that does
    /// not decode is skipped: its methods are then counted as `unknown`.
    pub fn from_descriptor_sets<'a>(sets: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut by_path = HashMap::new();
        for set in sets {
            let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
                continue;
            };
            for file in &set.file {
                let package = file.package();
                for service in &file.service {
                    let full: Arc<str> = if package.is_empty() {
                        service.name().into()
                    } else {
                        format!("{package}.{}", service.name()).into()
                    };
                    for method in &service.method {
                        let kind = match (method.client_streaming(), method.server_streaming()) {
                            (false, false) => "unary",
                            (true, false) => "client_stream",
                            (false, true) => "server_stream",
                            (true, true) => "bidi_stream",
                        };
                        by_path.insert(
                            format!("/{full}/{}", method.name()),
                            MethodLabels {
                                grpc_service: Name(full.clone()),
                                grpc_method: Name(method.name().into()),
                                grpc_type: kind,
                            },
                        );
                    }
                }
            }
        }
        Self { by_path }
    }
}

fn unknown_method() -> MethodLabels {
    let unknown = Name(Arc::from("unknown"));
    MethodLabels {
        grpc_service: unknown.clone(),
        grpc_method: unknown,
        grpc_type: "unknown",
    }
}

/// A method as the layer sees it: its labels, and its series in this
/// layer's registry, looked up on its first RPC and kept. Every later RPC
/// then counts with an atomic add on a handle it already holds, instead of
/// hashing a label set into the family's map (measured: the lookups were
/// most of the metrics' cost per RPC).
struct Method {
    labels: MethodLabels,
    series: OnceLock<MethodSeries>,
}

struct MethodSeries {
    started: Counter,
    handling: Histogram,
    /// By gRPC status code (0..=16), each made on first use, so only codes
    /// that happened are exposed.
    handled: [OnceLock<Counter>; 17],
}

impl Method {
    fn new(labels: MethodLabels) -> Arc<Self> {
        Arc::new(Self {
            labels,
            series: OnceLock::new(),
        })
    }

    fn series(&self, m: &RpcMetrics) -> &MethodSeries {
        self.series.get_or_init(|| MethodSeries {
            started: m.started.get_or_create(&self.labels).clone(),
            handling: m.handling.get_or_create(&self.labels).clone(),
            handled: Default::default(),
        })
    }

    fn handled(&self, m: &RpcMetrics, code: tonic::Code) -> &Counter {
        let slot = &self.series(m).handled[(code as usize).min(16)];
        slot.get_or_init(|| {
            let MethodLabels {
                grpc_service,
                grpc_method,
                grpc_type,
            } = self.labels.clone();
            m.handled
                .get_or_create(&HandledLabels {
                    grpc_service,
                    grpc_method,
                    grpc_type,
                    grpc_code: code_name(code),
                })
                .clone()
        })
    }
}

/// The methods of one layer, by path.
struct Methods {
    by_path: HashMap<String, Arc<Method>>,
    unknown: Arc<Method>,
}

impl Methods {
    fn get(&self, path: &str) -> &Arc<Method> {
        self.by_path.get(path).unwrap_or(&self.unknown)
    }
}

/// Adds [`Rpc`] around the router.
#[derive(Clone)]
pub struct RpcLayer {
    metrics: Metrics,
    methods: Arc<Methods>,
}

impl RpcLayer {
    /// Records into `metrics`. Only `methods` get labels of their own;
    /// every other path is counted as `unknown`.
    pub fn new(metrics: Metrics, methods: KnownMethods) -> Self {
        // Series handles belong to one registry: each layer keeps its own.
        let methods = Methods {
            by_path: methods
                .by_path
                .into_iter()
                .map(|(path, labels)| (path, Method::new(labels)))
                .collect(),
            unknown: Method::new(unknown_method()),
        };
        Self {
            metrics,
            methods: Arc::new(methods),
        }
    }
}

impl<S> Layer<S> for RpcLayer {
    type Service = Rpc<S>;
    fn layer(&self, inner: S) -> Rpc<S> {
        Rpc {
            inner,
            metrics: self.metrics.clone(),
            methods: self.methods.clone(),
        }
    }
}

/// See the module docs.
#[derive(Clone)]
pub struct Rpc<S> {
    inner: S,
    metrics: Metrics,
    methods: Arc<Methods>,
}

/// What the authorization layer finds in the request to report its
/// decision to.
#[derive(Clone)]
struct Observation {
    span: tracing::Span,
    metrics: Metrics,
}

/// Records an authorization decision on the RPC's span and counter. The
/// authorization layer calls it; a request that did not come through
/// [`RpcLayer`] has nothing to record to.
pub fn decided(
    extensions: &http::Extensions,
    policy: &Policy,
    decision: &Decision<'_>,
    dry_run: bool,
) {
    let Some(obs) = extensions.get::<Observation>() else {
        return;
    };
    let outcome = match (decision.is_allowed(), dry_run) {
        (true, _) => "allow",
        (false, false) => "deny",
        (false, true) => "would-deny",
    };
    let rule = decision.rule().unwrap_or("");
    obs.span.record("decision", outcome);
    obs.span.record("rule", rule);
    if let Some(m) = obs.metrics.rpc() {
        m.count_decision(policy.name(), outcome, rule);
    }
}

type HttpResponse = http::Response<Body>;

impl<S, B> Service<http::Request<B>> for Rpc<S>
where
    S: Service<http::Request<B>, Response = HttpResponse>,
{
    type Response = HttpResponse;
    type Error = S::Error;
    type Future = RpcFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let start = Instant::now();
        let path = req.uri().path();
        let method = self.methods.get(path).clone();
        // A DEBUG span: with the default `info` logs nothing subscribes to
        // it and it costs nothing; OpenTelemetry export (and RUST_LOG=debug)
        // turn it on. The name is fixed; OpenTelemetry takes `otel.name`,
        // the declared method (never a made-up path a client sent).
        let span = tracing::debug_span!(
            "grpc.request",
            otel.name = %format_args!("{}/{}", method.labels.grpc_service.0, method.labels.grpc_method.0),
            otel.kind = "server",
            method = path,
            peer = Empty,
            decision = Empty,
            rule = Empty,
            grpc.status = Empty,
        );
        if !span.is_disabled() {
            if let Some(peer) = req.extensions().get::<PeerInfo>() {
                span.record("peer", peer.identity.display_name());
            }
        }
        #[cfg(feature = "otel")]
        crate::tracing_otel::set_parent_from_headers(&span, req.headers());

        if let Some(m) = self.metrics.rpc() {
            method.series(m).started.inc();
        }
        req.extensions_mut().insert(Observation {
            span: span.clone(),
            metrics: self.metrics.clone(),
        });
        let inner = span.in_scope(|| self.inner.call(req));
        RpcFuture {
            inner,
            finish: Some(Finish {
                start,
                method,
                span,
                metrics: self.metrics.clone(),
            }),
        }
    }
}

/// Counts and closes one RPC, once.
struct Finish {
    start: Instant,
    method: Arc<Method>,
    span: tracing::Span,
    metrics: Metrics,
}

impl Finish {
    fn done(self, code: tonic::Code) {
        let name = code_name(code);
        self.span.record("grpc.status", name);
        if let Some(m) = self.metrics.rpc() {
            self.method.handled(m, code).inc();
            self.method
                .series(m)
                .handling
                .observe(self.start.elapsed().as_secs_f64());
        }
        let _entered = self.span.enter();
        tracing::debug!(
            grpc.status = name,
            elapsed_us = self.start.elapsed().as_micros() as u64,
            "RPC finished"
        );
    }
}

/// The `grpc-status` of a header or trailer map, if it has one.
fn status_in(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let value = headers.get(crate::settle::GRPC_STATUS)?;
    let code: i32 = value.to_str().ok()?.parse().ok()?;
    Some(tonic::Code::from_i32(code))
}

pin_project_lite::pin_project! {
    /// The response future: wraps the body of the response it yields.
    pub struct RpcFuture<F> {
        #[pin]
        inner: F,
        finish: Option<Finish>,
    }
}

impl<F, E> Future for RpcFuture<F>
where
    F: Future<Output = Result<HttpResponse, E>>,
{
    type Output = Result<HttpResponse, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _entered = this.finish.as_ref().map(|f| f.span.enter());
            ready!(this.inner.poll(cx))
        };
        let Some(finish) = this.finish.take() else {
            return Poll::Ready(result);
        };
        let response = match result {
            Ok(response) => response,
            Err(e) => {
                finish.done(tonic::Code::Unknown);
                return Poll::Ready(Err(e));
            }
        };
        // Trailers-only: the status is in the headers and the body is empty.
        if let Some(code) = status_in(response.headers()) {
            finish.done(code);
            return Poll::Ready(Ok(response));
        }
        let (parts, body) = response.into_parts();
        if body.is_end_stream() {
            // No status and nothing to come: not a gRPC answer.
            finish.done(tonic::Code::Unknown);
            return Poll::Ready(Ok(http::Response::from_parts(parts, body)));
        }
        let body = Body::new(ObservedBody {
            inner: body,
            finish: Some(finish),
        });
        Poll::Ready(Ok(http::Response::from_parts(parts, body)))
    }
}

/// A response body that finishes its RPC at the trailers (or on drop).
struct ObservedBody {
    inner: Body,
    finish: Option<Finish>,
}

impl HttpBody for ObservedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        let code = match &frame {
            Some(Ok(frame)) => frame
                .trailers_ref()
                .map(|t| status_in(t).unwrap_or(tonic::Code::Unknown)),
            Some(Err(_)) | None => Some(tonic::Code::Unknown),
        };
        if let Some(code) = code {
            if let Some(finish) = self.finish.take() {
                finish.done(code);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        // The response did not reach its trailers: the client cancelled or
        // the connection went away.
        if let Some(finish) = self.finish.take() {
            finish.done(tonic::Code::Cancelled);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::metrics::Metrics;

    /// The counter lines of `mtls_authz_decisions` in an exposition.
    fn decisions(m: &Metrics) -> Vec<String> {
        let mut lines: Vec<String> = m
            .encode_text()
            .lines()
            .filter(|l| l.starts_with("mtls_authz_decisions_total{"))
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines
    }

    #[test]
    fn cached_decision_counters_follow_the_names_not_the_addresses() {
        let m = Metrics::new();
        let rpc = m.rpc().unwrap();
        let policy = String::from("p1");
        // The same rule name at the same address, then changed in place (as
        // a reloaded policy may reuse memory): the second must not be counted
        // under the first's name.
        let mut rule = String::from("rule-a");
        rpc.count_decision(&policy, "allow", &rule);
        rpc.count_decision(&policy, "allow", &rule);
        rule.replace_range(.., "rule-b");
        rpc.count_decision(&policy, "allow", &rule);
        // Equal names elsewhere in memory share a series.
        rpc.count_decision("p1", "allow", "rule-a");
        rpc.count_decision(&policy, "deny", "");
        assert_eq!(
            decisions(&m),
            [
                r#"mtls_authz_decisions_total{policy="p1",decision="allow",rule="rule-a"} 3"#,
                r#"mtls_authz_decisions_total{policy="p1",decision="allow",rule="rule-b"} 1"#,
                r#"mtls_authz_decisions_total{policy="p1",decision="deny",rule=""} 1"#,
            ]
        );
    }

    #[test]
    fn the_decision_cache_stays_bounded_and_counts_stay_right() {
        let m = Metrics::new();
        let rpc = m.rpc().unwrap();
        let rules: Vec<String> = (0..super::DECISION_CACHE_MAX + 10)
            .map(|i| format!("r{i}"))
            .collect();
        for _ in 0..2 {
            for r in &rules {
                rpc.count_decision("p", "allow", r);
            }
        }
        assert!(rpc.decision_cache.0.read().unwrap().len() <= super::DECISION_CACHE_MAX);
        let lines = decisions(&m);
        assert_eq!(lines.len(), rules.len());
        assert!(lines.iter().all(|l| l.ends_with("} 2")), "{lines:?}");
    }
}
