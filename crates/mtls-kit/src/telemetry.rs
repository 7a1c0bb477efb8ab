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
    let registry = tracing_subscriber::registry().with(filter).with(fmt);
    #[cfg(feature = "otel")]
    let registry = registry.with(crate::tracing_otel::layer_from_env());
    let _ = registry.try_init();
}

/// Flushes what telemetry buffers (exported spans). Call before exit.
pub fn shutdown() {
    #[cfg(feature = "otel")]
    crate::tracing_otel::shutdown();
}
