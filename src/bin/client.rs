//! The client binary: call any method the server serves, as a chosen
//! identity, with requests and replies as JSON. A failed call prints its
//! gRPC status and exits 1. `load` keeps calls going at a steady rate or a
//! steady number in flight (see `load.rs`).
//!
//! It names no RPC of the service: the methods come from the descriptor
//! sets the service registers (`services()`), so this file needs no edit
//! when the proto changes.

// Beside this file, in client/, so that cargo does not take it for a binary.
#[path = "client/load.rs"]
mod load;

use std::io::Read;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Parser, Subcommand};
use inventory_service::services;
use mtls_kit::client::cli::{self, ClientArgs};
use mtls_kit::client::dynamic::{self, DynamicMessage, Method, Schema};
use mtls_kit::client::retry::{self, Idempotency};
use mtls_kit::client::BalancedChannel;
use mtls_kit::policy_cli::explain;
use mtls_kit::server::Limits;
use mtls_kit::telemetry;
use tokio::io::AsyncBufReadExt;
use tokio_stream::wrappers::LinesStream;
use tokio_stream::StreamExt;
use tonic::metadata::MetadataMap;

/// Calls the service over mutual TLS as a chosen identity.
#[derive(Parser, Debug)]
#[command(name = "client", version)]
struct Args {
    #[command(flatten)]
    client: ClientArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List every method the server serves, with its call kind and message
    /// types. Offline.
    Methods {
        /// One JSON document (as `server methods --json`).
        #[arg(long)]
        json: bool,
    },
    /// Call one method. Prints each reply as a line of JSON.
    Call(CallArgs),
    /// Calls over every replica, at a steady rate (--rate) or a steady
    /// number in flight (--in-flight), with running totals (calls,
    /// failures by code and kind, retries, per-replica split) as JSON lines.
    Load(load::LoadArgs),
    /// grpc.health.v1 Check; exits 0 only if SERVING.
    Health {
        /// Service to check; empty for the server as a whole.
        #[arg(long, default_value = "")]
        service: String,
    },
}

#[derive(clap::Args, Debug)]
struct CallArgs {
    /// The method: `/package.Service/Method`, or any unambiguous tail of it
    /// (`Service/Method`, `Method`). `methods` lists them.
    method: String,
    /// The request as JSON (the proto3 JSON mapping). `-` reads requests
    /// from standard input, one JSON object per line: every line is one
    /// message of a client or bidi stream, and a unary or server-streaming
    /// method takes exactly one.
    #[arg(default_value = "{}")]
    request: String,
    /// Request metadata, `key: value` (repeatable; `-bin` values in
    /// base64, as on the wire).
    #[arg(long = "header", short = 'H', value_name = "KEY: VALUE", value_parser = explain::parse_header)]
    headers: Vec<(String, String)>,
    /// Retry once on UNAVAILABLE, as for a method the proto marks
    /// `idempotency_level = NO_SIDE_EFFECTS` or `IDEMPOTENT` (those are
    /// retried without this flag). Other calls are retried only when the
    /// request provably never left.
    #[arg(long)]
    idempotent: bool,
}

/// The methods this client can call: the service's, health and reflection.
fn schema() -> Result<Schema, dynamic::SchemaError> {
    Schema::from_encoded(services(&Limits::default()).descriptor_sets())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    telemetry::init(args.client.log_format);
    let schema = match schema() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let show_replica = args.client.show_replica;
    let code = match args.command {
        Command::Methods { json } => {
            let mut out = std::io::stdout().lock();
            match dynamic::print_methods(&schema, json, &mut out) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Call(call_args) => match prepare(&schema, &call_args) {
            Ok(prepared) => {
                cli::run(&args.client, |channel, timeout| {
                    call(channel, prepared, timeout, show_replica)
                })
                .await
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Load(load_args) => match load::Plan::new(&schema, &load_args) {
            Ok(plan) => {
                cli::run(&args.client, |channel, timeout| async move {
                    Ok(load::run(channel, plan, load_args, timeout).await)
                })
                .await
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Health { service } => {
            cli::run(&args.client, |channel, timeout| {
                cli::health(channel, service, timeout, show_replica)
            })
            .await
        }
    };
    telemetry::shutdown();
    code
}

/// Where a call's requests come from.
enum Requests {
    /// Parsed before connecting: can be sent again on a retry.
    Known(Vec<DynamicMessage>),
    /// Lines of standard input, parsed as they arrive (a bidi call can
    /// answer each before the next is typed).
    Stdin,
}

struct Prepared {
    method: Method,
    requests: Requests,
    metadata: MetadataMap,
    idempotency: Idempotency,
}

/// Finds the method and parses what can be parsed before connecting, so
/// that a typo costs no connection.
fn prepare(schema: &Schema, args: &CallArgs) -> Result<Prepared, Box<dyn std::error::Error>> {
    let method = schema.method(&args.method)?;
    let requests = match (args.request.as_str(), method.kind().client_streams()) {
        ("-", true) => Requests::Stdin,
        ("-", false) => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            Requests::Known(vec![method.request(text.trim())?])
        }
        (json, _) => Requests::Known(vec![method.request(json)?]),
    };
    let idempotency = if args.idempotent || method.idempotent() {
        Idempotency::Idempotent
    } else {
        Idempotency::NotIdempotent
    };
    let metadata = MetadataMap::from_headers(explain::header_map(&args.headers)?);
    Ok(Prepared {
        method,
        requests,
        metadata,
        idempotency,
    })
}

/// Makes the call and prints its replies, all within `timeout`: the
/// client keeps its own deadline (as gRPC's clients do), so a stream that
/// the server does not end in time still ends here.
async fn call(
    channel: BalancedChannel,
    prepared: Prepared,
    timeout: Duration,
    show_replica: bool,
) -> Result<ExitCode, tonic::Status> {
    tokio::time::timeout(
        timeout,
        call_and_print(channel, prepared, timeout, show_replica),
    )
    .await
    .unwrap_or_else(|_| {
        Err(tonic::Status::deadline_exceeded(format!(
            "the call did not end within {} s (--timeout-secs)",
            timeout.as_secs_f64()
        )))
    })
}

async fn call_and_print(
    channel: BalancedChannel,
    prepared: Prepared,
    timeout: Duration,
    show_replica: bool,
) -> Result<ExitCode, tonic::Status> {
    let Prepared {
        method,
        requests,
        metadata,
        idempotency,
    } = prepared;
    // A line of standard input that is not a valid request ends the stream
    // there; the call then fails with what was wrong with it.
    let bad_line: Arc<Mutex<Option<String>>> = Arc::default();
    let response = match requests {
        Requests::Known(messages) => {
            // Only opening the call is retried: replies already printed
            // cannot be taken back.
            retry::call(idempotency, || {
                let stream = tokio_stream::iter(messages.clone());
                dynamic::call(channel.clone(), &method, stream, timeout, &metadata)
            })
            .await
            .result?
        }
        Requests::Stdin => {
            let lines = LinesStream::new(tokio::io::BufReader::new(tokio::io::stdin()).lines());
            let (parse_method, bad) = (method.clone(), bad_line.clone());
            let stream = lines
                // Blank lines separate nothing; skip them.
                .filter(|line| line.as_ref().map_or(true, |l| !l.trim().is_empty()))
                .map_while(move |line| {
                    let parsed = line
                        .map_err(|e| format!("reading standard input: {e}"))
                        .and_then(|l| parse_method.request(&l).map_err(|e| e.to_string()));
                    parsed
                        .map_err(|e| *bad.lock().unwrap_or_else(|p| p.into_inner()) = Some(e))
                        .ok()
                });
            dynamic::call(channel.clone(), &method, stream, timeout, &metadata).await?
        }
    };
    let metadata = response.metadata().clone();
    let mut replies = response.into_inner();
    while let Some(reply) = replies.message().await? {
        println!("{}", dynamic::reply_json(&reply));
    }
    if show_replica {
        cli::print_replica(&metadata);
    }
    if let Some(e) = bad_line.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(tonic::Status::invalid_argument(format!(
            "standard input: {e} (the request stream was ended there)"
        )));
    }
    Ok(ExitCode::SUCCESS)
}
