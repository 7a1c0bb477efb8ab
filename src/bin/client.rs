//! The client binary: call each RPC as a chosen identity and print the
//! result. A failed call prints its gRPC status and exits 1. `load` runs a
//! steady mix of reads and writes (see `load.rs`).

// Beside this file, in client/, so that cargo does not take it for a binary.
#[path = "client/load.rs"]
mod load;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use inventory_service::proto::inventory_client::InventoryClient;
use inventory_service::proto::{
    GetItemRequest, Item, ListItemsRequest, PurgeRequest, PutItemRequest,
};
use mtls_kit::client::cli::{self, request, ClientArgs};
use mtls_kit::client::retry::{self, Idempotency};
use mtls_kit::client::BalancedChannel;
use mtls_kit::telemetry;

/// Calls the inventory service over mutual TLS as a chosen identity.
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
    /// GetItem (read).
    Get { sku: String },
    /// PutItem (write).
    Put {
        sku: String,
        name: String,
        quantity: i64,
    },
    /// Purge (admin).
    Purge,
    /// ListItems (server streaming).
    List {
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// ImportItems (client streaming). Each item is SKU,NAME,QUANTITY.
    Import {
        #[arg(required = true)]
        items: Vec<String>,
    },
    /// A steady stream of reads and writes over every replica, with running
    /// totals (RPCs, failures, retries, per-replica split) as JSON lines.
    Load(load::LoadArgs),
    /// grpc.health.v1 Check; exits 0 only if SERVING.
    Health {
        /// Service to check; empty for the server as a whole.
        #[arg(long, default_value = "")]
        service: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    telemetry::init(args.client.log_format);
    let command = args.command;
    let show_replica = args.client.show_replica;
    let code = cli::run(&args.client, |channel, timeout| {
        call(channel, command, timeout, show_replica)
    })
    .await;
    telemetry::shutdown();
    code
}

fn print_item(item: &Item) {
    println!(
        "sku={} name={:?} quantity={} updated_by={}",
        item.sku, item.name, item.quantity, item.updated_by
    );
}

async fn call(
    channel: BalancedChannel,
    command: Command,
    timeout: Duration,
    show_replica: bool,
) -> Result<ExitCode, tonic::Status> {
    // `--show-replica`: which replica answered, after the result.
    let replica = |metadata: &tonic::metadata::MetadataMap| {
        if show_replica {
            cli::print_replica(metadata);
        }
    };
    let inventory = InventoryClient::new(channel.clone());
    // TEMPLATE: one arm per subcommand, each calling one RPC. Reads are
    // idempotent, so they are retried once on UNAVAILABLE (on another
    // replica); writes only when the request provably never left
    // (`retry::retryable`), since a retried write could apply twice.
    match command {
        Command::Get { sku } => {
            let reply = retry::call(Idempotency::Idempotent, || {
                let mut inventory = inventory.clone();
                let req = request(GetItemRequest { sku: sku.clone() }, timeout);
                async move { inventory.get_item(req).await }
            })
            .await
            .result?;
            print_item(reply.get_ref());
            replica(reply.metadata());
        }
        Command::Put {
            sku,
            name,
            quantity,
        } => {
            let item = Item {
                sku,
                name,
                quantity,
                ..Default::default()
            };
            let reply = retry::call(Idempotency::NotIdempotent, || {
                let mut inventory = inventory.clone();
                let req = request(
                    PutItemRequest {
                        item: Some(item.clone()),
                    },
                    timeout,
                );
                async move { inventory.put_item(req).await }
            })
            .await
            .result?;
            print_item(reply.get_ref());
            replica(reply.metadata());
        }
        Command::Purge => {
            let reply = retry::call(Idempotency::NotIdempotent, || {
                let mut inventory = inventory.clone();
                async move { inventory.purge(request(PurgeRequest {}, timeout)).await }
            })
            .await
            .result?;
            println!("removed={}", reply.get_ref().removed);
            replica(reply.metadata());
        }
        Command::List { prefix } => {
            // Only opening the stream is retried: items already printed
            // cannot be taken back.
            let mut stream = retry::call(Idempotency::Idempotent, || {
                let mut inventory = inventory.clone();
                let req = request(
                    ListItemsRequest {
                        sku_prefix: prefix.clone(),
                    },
                    timeout,
                );
                async move { inventory.list_items(req).await }
            })
            .await
            .result?;
            let metadata = stream.metadata().clone();
            let stream = stream.get_mut();
            while let Some(item) = stream.message().await? {
                print_item(&item);
            }
            replica(&metadata);
        }
        Command::Import { items } => {
            let mut parsed = Vec::with_capacity(items.len());
            for raw in items {
                let fields: Vec<&str> = raw.splitn(3, ',').collect();
                let [sku, name, quantity] = fields[..] else {
                    return Err(tonic::Status::invalid_argument(format!(
                        "{raw:?}: expected SKU,NAME,QUANTITY"
                    )));
                };
                let quantity = quantity.parse().map_err(|_| {
                    tonic::Status::invalid_argument(format!("{raw:?}: QUANTITY is not a number"))
                })?;
                parsed.push(PutItemRequest {
                    item: Some(Item {
                        sku: sku.into(),
                        name: name.into(),
                        quantity,
                        ..Default::default()
                    }),
                });
            }
            let reply = retry::call(Idempotency::NotIdempotent, || {
                let mut inventory = inventory.clone();
                let req = request(tokio_stream::iter(parsed.clone()), timeout);
                async move { inventory.import_items(req).await }
            })
            .await
            .result?;
            println!("imported={}", reply.get_ref().imported);
            replica(reply.metadata());
        }
        Command::Load(load_args) => return Ok(load::run(channel, load_args, timeout).await),
        Command::Health { service } => {
            return cli::health(channel, service, timeout, show_replica).await
        }
    }
    Ok(ExitCode::SUCCESS)
}
