//! The server binary: parse flags, set up logging, serve until SIGINT or
//! SIGTERM. Everything else is the kit's.

use std::process::ExitCode;

use clap::Parser;
use inventory_service::{services, DEV_IDENTITIES};
use mtls_kit::config::ServerArgs;
use mtls_kit::replica::ReplicaArgs;
use mtls_kit::{app, telemetry};

/// gRPC server with mutual TLS and per-RPC authorization (gRFC A43 policies).
#[derive(Parser, Debug)]
#[command(name = "server", version)]
struct Args {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    replica: ReplicaArgs,
    // TEMPLATE: add your service's own flags here, each with an `env`.
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    telemetry::init(args.server.log_format);
    let mut services = services(&args.server.limits());
    if let Err(e) = services.replica_name(args.replica.name().as_deref()) {
        eprintln!("error: --replica-name: {e}");
        return ExitCode::FAILURE;
    }
    match app::serve(&args.server, &DEV_IDENTITIES, services).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
