//! Logging and tracing setup.
//!
//! Output goes to stderr so that a program's stdout (the client's results)
//! stays clean. The level comes from `RUST_LOG` (default `info`). With the
//! `otel` feature, spans are also exported over OTLP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set (see `tracing_otel`).

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Human,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Installs the global subscriber. Safe to call more than once (later
/// calls do nothing), which keeps tests that share a process simple.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal, never into files or pipes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let fmt = match format {
        LogFormat::Human => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
    };
    // Filters per layer, not one global filter: the per-RPC span is at
    // DEBUG, so with the default `info` nothing subscribes to it and it
    // costs nothing (formatting its fields for the log layer was most of
    // the span's cost per RPC), while the OpenTelemetry layer, when on,
    // still receives it.
    let registry = tracing_subscriber::registry().with(fmt.with_filter(filter));
    #[cfg(feature = "otel")]
    let registry = registry
        .with(crate::tracing_otel::layer_from_env().map(|otel| otel.with_filter(otel_filter())));
    let _ = registry.try_init();
}

/// What the OpenTelemetry layer exports: what `RUST_LOG` enables, and
/// always the per-RPC span (`grpc.request`, at DEBUG).
#[cfg(feature = "otel")]
fn otel_filter() -> EnvFilter {
    let base = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
    let span = format!("{}[grpc.request]=debug", crate::metrics::rpc::SPAN_TARGET);
    EnvFilter::try_new(format!("{base},{span}"))
        .unwrap_or_else(|_| EnvFilter::new(format!("info,{span}")))
}

/// Flushes what telemetry buffers (exported spans). Call before exit.
pub fn shutdown() {
    #[cfg(feature = "otel")]
    crate::tracing_otel::shutdown();
}
