//! Trace propagation (feature `otel`): a call made inside a client span
//! carries `traceparent`, and the server's RPC span joins that trace. Spans
//! are exported to memory, so no collector is needed; what is not tested
//! here is the OTLP exporter's network round trip to a real collector.
//!
//!     cargo test -p mtls-kit --features otel --test otel

use std::time::Duration;

use mtls_kit::client::cli::request;
use mtls_kit::server::Services;
use mtls_kit::testing::{TestPki, TestServer};
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry::Value;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

fn attribute(span: &SpanData, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.clone())
}

/// Waits for the exporter to hold a span named `name` whose trace is not
/// one of `seen`.
async fn exported(exporter: &InMemorySpanExporter, name: &str, skip: &[TraceId]) -> SpanData {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let spans = exporter.get_finished_spans().unwrap();
        if let Some(span) = spans
            .into_iter()
            .find(|s| s.name == name && !skip.contains(&s.span_context.trace_id()))
        {
            return span;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no span {name} exported"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_server_span_joins_the_callers_trace() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber =
        tracing_subscriber::registry().with(mtls_kit::tracing_otel::layer_for(provider));
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let pki = TestPki::new("example.org");
    let policy = r#"{"name": "p", "allow_rules": [{"name": "health", "request": {"paths": ["/grpc.health.v1.Health/*"]}}]}"#;
    let server = TestServer::spawn(&pki, policy, Services::new()).await;
    let channel = server.connect(&pki.client("reader")).await.unwrap();
    let timeout = Duration::from_secs(10);

    let client_span = tracing::info_span!("client call", otel.kind = "client");
    let mut health = HealthClient::new(channel.clone());
    // As in the client binary, the request is made inside the client span
    // (`request` reads the current span's context).
    let req = client_span.in_scope(|| request(HealthCheckRequest::default(), timeout));
    health
        .check(req)
        .instrument(client_span.clone())
        .await
        .unwrap();
    drop(client_span);

    let client = exported(&exporter, "client call", &[]).await;
    let server_span = exported(&exporter, "grpc.health.v1.Health/Check", &[]).await;
    assert_eq!(
        server_span.span_context.trace_id(),
        client.span_context.trace_id(),
        "the server span is in another trace"
    );
    assert_eq!(server_span.parent_span_id, client.span_context.span_id());
    assert!(server_span.parent_span_is_remote);
    assert_eq!(
        attribute(&server_span, "peer"),
        Some(Value::from("spiffe://example.org/reader"))
    );
    assert_eq!(
        attribute(&server_span, "decision"),
        Some(Value::from("allow"))
    );
    assert_eq!(
        attribute(&server_span, "grpc.status"),
        Some(Value::from("OK"))
    );
    assert_eq!(
        attribute(&server_span, "method"),
        Some(Value::from("/grpc.health.v1.Health/Check"))
    );

    // Without a caller's span there is nothing to join: a trace of its own.
    health
        .check(request(HealthCheckRequest::default(), timeout))
        .await
        .unwrap();
    let alone = exported(
        &exporter,
        "grpc.health.v1.Health/Check",
        &[client.span_context.trace_id()],
    )
    .await;
    assert_eq!(alone.parent_span_id, SpanId::INVALID);
}
