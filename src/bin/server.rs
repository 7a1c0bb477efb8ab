//! The server binary: parse flags, set up logging, serve until SIGINT or
//! SIGTERM; or, with `policy ...`, check, explain or test a policy offline
//! against the methods this server serves; with `limits check`, validate a
//! limits file likewise; or, with `methods`, list those methods.
//! Everything else is the kit's.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use inventory_service::{services, DEV_IDENTITIES};
use mtls_kit::client::dynamic;
use mtls_kit::config::ServerArgs;
use mtls_kit::policy_cli::{self, PolicyCommand};
use mtls_kit::quota::cli::{self as limits_cli, LimitsCommand};
use mtls_kit::replica::ReplicaArgs;
use mtls_kit::{app, telemetry};

/// gRPC server with mutual TLS and per-RPC authorization (gRFC A43 policies).
/// Without a subcommand, it serves.
#[derive(Parser, Debug)]
#[command(name = "server", version)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    replica: ReplicaArgs,
    // TEMPLATE: add your service's own flags here, each with an `env`.
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check, explain and test an authorization policy offline (no
    /// listener, no certificates), against the methods this server serves.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Validate a limits file (--limits) offline, against the methods this
    /// server serves.
    #[command(subcommand)]
    Limits(LimitsCommand),
    /// List every method this server serves (its own, health, reflection)
    /// with its call kind and message types. Offline.
    Methods {
        /// One JSON document: {"methods": [{"path", "kind",
        /// "client_streaming", "server_streaming", "input", "output",
        /// "idempotent"}, ...]}.
        #[arg(long)]
        json: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut services = services(&args.server.limits());
    match &args.command {
        Some(Command::Policy(cmd)) => return policy_cli::main(cmd, &services),
        Some(Command::Limits(cmd)) => return limits_cli::main(cmd, &services),
        Some(Command::Methods { json }) => {
            return dynamic::methods_command(&services.descriptor_sets(), *json)
        }
        None => {}
    }
    telemetry::init(args.server.log_format);
    if let Err(e) = services.replica_name(args.replica.name().as_deref()) {
        eprintln!("error: --replica-name: {e}");
        return ExitCode::FAILURE;
    }
    let code = match app::serve(&args.server, &DEV_IDENTITIES, services).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    telemetry::shutdown();
    code
}
