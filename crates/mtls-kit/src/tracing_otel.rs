//! OpenTelemetry (feature `otel`): export of the `tracing` spans over OTLP,
//! and W3C trace context (`traceparent`) carried from client to server.
//!
//! Export is switched on at run time by the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
//! variable; the exporter (gRPC, `opentelemetry-otlp` over tonic) reads the
//! other standard `OTEL_*` variables itself. The service name is
//! `OTEL_SERVICE_NAME`, or else the binary's name.
//!
//! Propagation needs no exporter on the server's side: each RPC span
//! ([`crate::metrics::rpc`]) takes the incoming `traceparent` as its parent,
//! so it joins the caller's trace in whatever backend both export to.

use std::sync::OnceLock;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// The provider installed by [`layer_from_env`], shut down (and so flushed)
/// by [`shutdown`].
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Whether the environment asks for OTLP export.
pub fn export_requested() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|s| !s.trim().is_empty()))
}

/// The layer that exports spans over OTLP, if the environment asks for it.
/// Must run inside a tokio runtime (the exporter's channel lives there).
pub fn layer_from_env<S>() -> Option<impl Layer<S>>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    if !export_requested() {
        return None;
    }
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
    {
        Ok(exporter) => exporter,
        Err(e) => {
            // Logging is not up yet; tracing export is not worth failing
            // the process for.
            eprintln!("warning: OpenTelemetry export disabled: {e}");
            return None;
        }
    };
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        let binary = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "mtls-kit".to_owned());
        resource = resource.with_service_name(binary);
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    Some(layer_for(provider))
}

/// The `tracing` layer exporting to `provider` (which [`shutdown`] will
/// flush). Tests pass a provider with an in-memory exporter.
pub fn layer_for<S>(provider: SdkTracerProvider) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let tracer = provider.tracer("mtls-kit");
    let _ = PROVIDER.set(provider);
    tracing_opentelemetry::layer().with_tracer(tracer)
}

/// Flushes and stops the exporter, if one was installed. Call before the
/// process exits, or the last spans are lost.
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        if let Err(e) = provider.shutdown() {
            eprintln!("warning: OpenTelemetry shutdown: {e}");
        }
    }
}

/// Makes `traceparent` (W3C trace context) in `headers`, if any, the
/// parent of `span`.
pub fn set_parent_from_headers(span: &tracing::Span, headers: &http::HeaderMap) {
    if !headers.contains_key("traceparent") {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    // Fails only when no OpenTelemetry layer is installed: nothing to join.
    let _ = span.set_parent(parent);
}

/// Writes the current span's trace context into `metadata` as
/// `traceparent`, so the server's span joins the caller's trace. Writes
/// nothing when the current span is not exported.
pub fn inject_current(metadata: &mut tonic::metadata::MetadataMap) {
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut Metadata(metadata));
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct Metadata<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for Metadata<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            value.parse(),
        ) {
            self.0.insert(key, value);
        }
    }
}
