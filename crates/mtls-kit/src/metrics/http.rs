//! The metrics endpoint: `GET /metrics` over plain HTTP/1.1 on a listener
//! of its own, apart from the gRPC port (which only speaks mutual TLS).
//!
//! It answers in the OpenMetrics text format when the scraper asks for it
//! (Prometheus does, in its `Accept` header) and in the classic Prometheus
//! text format otherwise (curl, older scrapers). Anything else is 404.
//!
//! Plain HTTP is meant for loopback or a pod-local network; see the
//! "Metrics" in docs/operations.md for exposing it further.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::debug;

use super::{Metrics, MetricsListen};
use crate::server::Services;

/// Scrapes served at once; more wait for a slot. Scrapes are cheap, and
/// this keeps a misbehaving client from tying up the server's threads.
const MAX_CONNECTIONS: usize = 16;

/// A client that has not sent its request headers by then is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Starts the endpoint as `--metrics-listen` says: binds (so that a port
/// already in use stops startup with an error naming the flag), logs the
/// bound address (`metrics_addr`, what scripts read with port 0) and serves
/// `services`' registry in a task; abort the task to stop. When off, turns
/// recording off too, so that metrics cost nothing.
pub async fn start(
    listen: MetricsListen,
    services: &mut Services,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(addr) = listen.0 else {
        services.set_metrics(Metrics::disabled());
        tracing::info!("metrics endpoint off");
        return Ok(None);
    };
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("--metrics-listen {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(metrics_addr = %bound, "serving metrics on http://{bound}/metrics");
    Ok(Some(tokio::spawn(serve(
        listener,
        services.metrics().clone(),
    ))))
}

/// Serves `metrics` on `listener` until the future is dropped (abort its
/// task to stop). Bind the listener first, so the address is known (and
/// `127.0.0.1:0` works in tests) before anything is served.
pub async fn serve(listener: TcpListener, metrics: Metrics) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, remote) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: back off rather than spin.
                debug!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(answer(&metrics, &req)) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(true)
                .serve_connection(TokioIo::new(tcp), service);
            if let Err(e) = connection.await {
                debug!(%remote, error = %e, "metrics endpoint: connection ended with an error");
            }
        });
    }
}

fn answer<B>(metrics: &Metrics, req: &http::Request<B>) -> http::Response<Full<Bytes>> {
    let status = |code: http::StatusCode, text: &'static str| {
        let mut response = http::Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *response.status_mut() = code;
        response
    };
    if req.uri().path() != "/metrics" {
        return status(http::StatusCode::NOT_FOUND, "not found; try /metrics\n");
    }
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        return status(http::StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    let openmetrics = req
        .headers()
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let (body, content_type) = if openmetrics {
        (metrics.encode_openmetrics(), OPENMETRICS)
    } else {
        (metrics.encode_text(), PROMETHEUS_TEXT)
    };
    let mut response = http::Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn off_serves_nothing_and_records_nothing() {
        let mut services = Services::new();
        let task = start(MetricsListen(None), &mut services).await.unwrap();
        assert!(task.is_none());
        assert!(!services.metrics().is_enabled());
    }

    #[tokio::test]
    async fn a_port_in_use_is_an_error_naming_the_flag() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let mut services = Services::new();
        let e = start(MetricsListen(Some(addr)), &mut services)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--metrics-listen"), "{e}");
    }
}
