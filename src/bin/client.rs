//! The client binary: call each RPC as a chosen identity and print the
//! result. A failed call prints its gRPC status and exits 1.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use inventory_service::proto::inventory_client::InventoryClient;
use inventory_service::proto::{
    GetItemRequest, Item, ListItemsRequest, PurgeRequest, PutItemRequest,
};
use mtls_kit::client::cli::{self, request, ClientArgs};
use mtls_kit::telemetry;
use tonic::transport::Channel;

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
    let code = cli::run(&args.client, |channel, timeout| {
        call(channel, command, timeout)
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
    channel: Channel,
    command: Command,
    timeout: Duration,
) -> Result<ExitCode, tonic::Status> {
    let mut inventory = InventoryClient::new(channel.clone());
    // TEMPLATE: one arm per subcommand, each calling one RPC.
    match command {
        Command::Get { sku } => {
            print_item(
                &inventory
                    .get_item(request(GetItemRequest { sku }, timeout))
                    .await?
                    .into_inner(),
            );
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
            let reply = inventory
                .put_item(request(PutItemRequest { item: Some(item) }, timeout))
                .await?;
            print_item(&reply.into_inner());
        }
        Command::Purge => {
            let reply = inventory.purge(request(PurgeRequest {}, timeout)).await?;
            println!("removed={}", reply.into_inner().removed);
        }
        Command::List { prefix } => {
            let mut stream = inventory
                .list_items(request(ListItemsRequest { sku_prefix: prefix }, timeout))
                .await?
                .into_inner();
            while let Some(item) = stream.message().await? {
                print_item(&item);
            }
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
            let reply = inventory
                .import_items(request(tokio_stream::iter(parsed), timeout))
                .await?;
            println!("imported={}", reply.into_inner().imported);
        }
        Command::Health { service } => return cli::health(channel, service, timeout).await,
    }
    Ok(ExitCode::SUCCESS)
}
