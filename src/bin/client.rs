//! The client binary: call each RPC as a chosen identity and print the
//! result. A failed call prints its gRPC status and exits 1.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use clap::{Parser, Subcommand};
use mtls_template::client::{self, code_name, ClientSettings};
use mtls_template::proto::inventory_client::InventoryClient;
use mtls_template::proto::{GetItemRequest, Item, ListItemsRequest, PurgeRequest, PutItemRequest};
use mtls_template::telemetry::{self, LogFormat};
use mtls_template::tls::{self, CertifiedKeyFiles, ClientTlsOptions, MinTlsVersion, TrustAnchors};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Calls the inventory service over mutual TLS as a chosen identity.
#[derive(Parser, Debug)]
#[command(name = "client", version)]
struct Args {
    /// Server address, host:port.
    #[arg(
        long,
        env = "CLIENT_ADDR",
        default_value = "127.0.0.1:50051",
        global = true
    )]
    addr: String,

    /// Name the server's certificate must carry.
    #[arg(
        long,
        env = "CLIENT_SERVER_NAME",
        default_value = "localhost",
        global = true
    )]
    server_name: String,

    /// CA bundle (PEM) that the server certificate must chain to.
    #[arg(long, env = "CLIENT_CA", default_value = "certs/ca.pem", global = true)]
    ca: PathBuf,

    /// A development identity: uses certs/NAME.pem and certs/NAME.key.
    #[arg(long, env = "CLIENT_IDENTITY", default_value = "reader", global = true)]
    identity: String,

    /// Client certificate (PEM); overrides --identity. Needs --key.
    #[arg(long, env = "CLIENT_CERT", requires = "key", global = true)]
    cert: Option<PathBuf>,

    /// Client private key (PEM); overrides --identity. Needs --cert.
    #[arg(long, env = "CLIENT_KEY", requires = "cert", global = true)]
    key: Option<PathBuf>,

    /// Lowest TLS version offered.
    #[arg(
        long,
        env = "CLIENT_MIN_TLS_VERSION",
        value_enum,
        default_value = "1.3",
        global = true
    )]
    min_tls_version: MinTlsVersion,

    /// Seconds to wait for the connection and for the call.
    #[arg(long, env = "CLIENT_TIMEOUT_SECS", default_value_t = 10, global = true)]
    timeout_secs: u64,

    /// The gRPC status the call must end with, e.g. PERMISSION_DENIED: exit 0
    /// only if it does (for scripted checks). Default OK.
    #[arg(long, env = "CLIENT_EXPECT", default_value = "OK", global = true, value_parser = parse_code)]
    expect: tonic::Code,

    /// Log format (logs go to stderr).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,

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
    telemetry::init(args.log_format);
    match run(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", client::describe_error(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (cert, key) = match (&args.cert, &args.key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => (
            PathBuf::from(format!("certs/{}.pem", args.identity)),
            PathBuf::from(format!("certs/{}.key", args.identity)),
        ),
    };
    let identity = CertifiedKeyFiles::read(&cert, &key)?;
    let ca = TrustAnchors::read(&args.ca)?;
    let config = tls::client_config(
        &identity,
        &ca,
        ClientTlsOptions {
            min_version: args.min_tls_version,
        },
    )?;
    let mut settings = ClientSettings::new(args.addr.clone(), tls::server_name(&args.server_name)?);
    settings.connect_timeout = Duration::from_secs(args.timeout_secs);
    let channel = client::connect(&settings, Arc::new(ArcSwap::new(config))).await?;
    let timeout = Duration::from_secs(args.timeout_secs);

    let expect = args.expect;
    match call(channel, args.command, timeout).await {
        Ok(code) if expect == tonic::Code::Ok => Ok(code),
        Ok(_) => {
            eprintln!(
                "error: the call succeeded, but {} was expected",
                code_name(expect)
            );
            Ok(ExitCode::FAILURE)
        }
        Err(status) if status.code() == expect && expect != tonic::Code::Ok => {
            println!(
                "{} (as expected): {}",
                code_name(status.code()),
                status.message()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(status) => {
            // A transport failure (say, the server refusing our certificate)
            // carries its cause; show it rather than a bare "transport error".
            let cause = std::error::Error::source(&status)
                .map(|e| format!(" ({})", client::describe_error(e)))
                .unwrap_or_default();
            eprintln!(
                "error: {}: {}{cause}",
                code_name(status.code()),
                status.message()
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Parses a canonical status name (`PERMISSION_DENIED`, case-insensitive).
fn parse_code(name: &str) -> Result<tonic::Code, String> {
    (0..=16)
        .map(tonic::Code::from)
        .find(|c| code_name(*c).eq_ignore_ascii_case(name))
        .ok_or_else(|| {
            format!(
                "{name:?} is not a gRPC status code name (OK, NOT_FOUND, PERMISSION_DENIED, ...)"
            )
        })
}

fn request<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.set_timeout(timeout);
    req
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
        Command::Health { service } => {
            let mut health = HealthClient::new(channel);
            let reply = health
                .check(request(HealthCheckRequest { service }, timeout))
                .await?;
            let status = reply.into_inner().status();
            println!("{}", status.as_str_name());
            if status != ServingStatus::Serving {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
