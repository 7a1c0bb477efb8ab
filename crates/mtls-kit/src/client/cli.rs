//! What every client binary of a service built on the kit shares: the
//! connection flags (each with an environment variable), the `--expect`
//! convention for scripted checks, and a health check. The service adds its
//! own subcommands around [`run`].

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::resolve::DnsResolver;
use super::retry::{self, Idempotency};
use super::{code_name, connect, describe_error, BalanceSettings, BalancedChannel, ClientSettings};
use crate::replica::replica_of;
use crate::telemetry::LogFormat;
use crate::tls::{self, CertifiedKeyFiles, ClientTlsOptions, MinTlsVersion, TrustAnchors};

/// Connection flags of a client binary. Flatten them into the binary's own
/// command line (`#[command(flatten)]`).
#[derive(clap::Args, Debug, Clone)]
pub struct ClientArgs {
    /// Server address, host:port.
    #[arg(
        long,
        env = "CLIENT_ADDR",
        default_value = "127.0.0.1:50051",
        global = true
    )]
    pub addr: String,

    /// Name the server's certificate must carry.
    #[arg(
        long,
        env = "CLIENT_SERVER_NAME",
        default_value = "localhost",
        global = true
    )]
    pub server_name: String,

    /// CA bundle (PEM) that the server certificate must chain to.
    #[arg(long, env = "CLIENT_CA", default_value = "certs/ca.pem", global = true)]
    pub ca: PathBuf,

    /// A development identity: uses certs/NAME.pem and certs/NAME.key.
    #[arg(long, env = "CLIENT_IDENTITY", default_value = "reader", global = true)]
    pub identity: String,

    /// Client certificate (PEM); overrides --identity. Needs --key.
    #[arg(long, env = "CLIENT_CERT", requires = "key", global = true)]
    pub cert: Option<PathBuf>,

    /// Client private key (PEM); overrides --identity. Needs --cert.
    #[arg(long, env = "CLIENT_KEY", requires = "cert", global = true)]
    pub key: Option<PathBuf>,

    /// Lowest TLS version offered.
    #[arg(
        long,
        env = "CLIENT_MIN_TLS_VERSION",
        value_enum,
        default_value = "1.3",
        global = true
    )]
    pub min_tls_version: MinTlsVersion,

    /// Seconds to wait for the connection and for the call.
    #[arg(long, env = "CLIENT_TIMEOUT_SECS", default_value_t = 10, global = true)]
    pub timeout_secs: u64,

    /// The gRPC status the call must end with, e.g. PERMISSION_DENIED: exit 0
    /// only if it does (for scripted checks). Default OK.
    #[arg(long, env = "CLIENT_EXPECT", default_value = "OK", global = true, value_parser = parse_code)]
    pub expect: tonic::Code,

    /// Seconds between two resolutions of --addr, to find replicas added
    /// since (a lost connection also triggers one).
    #[arg(long, env = "CLIENT_REFRESH_SECS", default_value_t = 30, global = true)]
    pub refresh_secs: u64,

    /// After the result, print the name of the replica that answered (its
    /// x-replica header) on a line of its own: replica=NAME.
    #[arg(long, env = "CLIENT_SHOW_REPLICA", global = true)]
    pub show_replica: bool,

    /// Log format (logs go to stderr).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Human, global = true)]
    pub log_format: LogFormat,
}

impl ClientArgs {
    /// The deadline of the connection and of each call.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }

    /// Reads the certificate, key and CA bundle into a client TLS config.
    pub fn tls_config(&self) -> anyhow::Result<Arc<ArcSwap<rustls::ClientConfig>>> {
        let (cert, key) = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => (c.clone(), k.clone()),
            _ => (
                PathBuf::from(format!("certs/{}.pem", self.identity)),
                PathBuf::from(format!("certs/{}.key", self.identity)),
            ),
        };
        let identity = CertifiedKeyFiles::read(&cert, &key)?;
        let ca = TrustAnchors::read(&self.ca)?;
        let config = tls::client_config(
            &identity,
            &ca,
            ClientTlsOptions {
                min_version: self.min_tls_version,
            },
        )?;
        Ok(Arc::new(ArcSwap::new(config)))
    }

    /// Reads the certificate, key and CA bundle, then connects over mutual
    /// TLS to the one address `--addr` names.
    pub async fn connect(&self) -> anyhow::Result<Channel> {
        let tls = self.tls_config()?;
        let mut settings =
            ClientSettings::new(self.addr.clone(), tls::server_name(&self.server_name)?);
        settings.connect_timeout = self.timeout();
        Ok(connect(&settings, tls).await?)
    }

    /// How [`connect_balanced`](Self::connect_balanced) balances.
    pub fn balance_settings(&self) -> anyhow::Result<BalanceSettings> {
        let mut settings =
            BalanceSettings::new(self.addr.clone(), tls::server_name(&self.server_name)?);
        settings.connect_timeout = self.timeout();
        settings.refresh_interval = Duration::from_secs(self.refresh_secs.max(1));
        Ok(settings)
    }

    /// Reads the certificate, key and CA bundle, resolves `--addr` and
    /// connects over mutual TLS to every address behind it; returns once
    /// one is connected (see [`BalancedChannel::connect`]).
    pub async fn connect_balanced(&self) -> anyhow::Result<BalancedChannel> {
        let tls = self.tls_config()?;
        let settings = self.balance_settings()?;
        let resolver = DnsResolver::new(self.addr.clone());
        Ok(BalancedChannel::connect(settings, resolver, tls).await?)
    }
}

/// Connects to every replica behind `--addr`, makes the call `call`
/// describes, and turns its outcome into
/// the process's exit status: 0 when it ends as `--expect` says, 1 (with
/// the status and its transport cause on stderr) otherwise.
pub async fn run<F, Fut>(args: &ClientArgs, call: F) -> ExitCode
where
    F: FnOnce(BalancedChannel, Duration) -> Fut,
    Fut: Future<Output = Result<ExitCode, tonic::Status>>,
{
    let channel = match args.connect_balanced().await {
        Ok(channel) => channel,
        Err(e) => {
            eprintln!("error: {}", describe_error(e.as_ref()));
            return ExitCode::FAILURE;
        }
    };
    let expect = args.expect;
    // The client side of the RPC's trace: with `otel`, its context goes to
    // the server in `traceparent` (see `request`).
    let span = tracing::info_span!("grpc.client", otel.kind = "client", identity = %args.identity);
    let result = tracing::Instrument::instrument(call(channel, args.timeout()), span).await;
    if let (Err(status), true) = (&result, args.show_replica) {
        print_replica(status.metadata());
    }
    match result {
        Ok(code) if expect == tonic::Code::Ok => code,
        Ok(_) => {
            eprintln!(
                "error: the call succeeded, but {} was expected",
                code_name(expect)
            );
            ExitCode::FAILURE
        }
        Err(status) if status.code() == expect && expect != tonic::Code::Ok => {
            println!(
                "{} (as expected): {}",
                code_name(status.code()),
                status.message()
            );
            ExitCode::SUCCESS
        }
        Err(status) => {
            // A transport failure (say, the server refusing our certificate)
            // carries its cause; show it rather than a bare "transport error".
            let cause = std::error::Error::source(&status)
                .map(|e| format!(" ({})", describe_error(e)))
                .unwrap_or_default();
            eprintln!(
                "error: {}: {}{cause}",
                code_name(status.code()),
                status.message()
            );
            ExitCode::FAILURE
        }
    }
}

/// A request with a deadline.
pub fn request<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.set_timeout(timeout);
    #[cfg(feature = "otel")]
    crate::tracing_otel::inject_current(req.metadata_mut());
    req
}

/// Prints `replica=NAME`, the replica named in `metadata` (`?` if none).
pub fn print_replica(metadata: &tonic::metadata::MetadataMap) {
    println!("replica={}", replica_of(metadata).unwrap_or("?"));
}

/// grpc.health.v1 Check of `service` (empty: the server as a whole).
/// Prints the status (and, if `show_replica`, the replica that answered);
/// the exit status is 0 only if it is SERVING. A check is a read: it is
/// retried once on UNAVAILABLE.
pub async fn health(
    channel: BalancedChannel,
    service: String,
    timeout: Duration,
    show_replica: bool,
) -> Result<ExitCode, tonic::Status> {
    let client = HealthClient::new(channel);
    let reply = retry::call(Idempotency::Idempotent, || {
        let mut client = client.clone();
        let service = service.clone();
        async move {
            client
                .check(request(HealthCheckRequest { service }, timeout))
                .await
        }
    })
    .await
    .result?;
    let status = reply.get_ref().status();
    println!("{}", status.as_str_name());
    if show_replica {
        print_replica(reply.metadata());
    }
    Ok(if status == ServingStatus::Serving {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Parses a canonical status name (`PERMISSION_DENIED`, case-insensitive).
pub fn parse_code(name: &str) -> Result<tonic::Code, String> {
    (0..=16)
        .map(tonic::Code::from)
        .find(|c| code_name(*c).eq_ignore_ascii_case(name))
        .ok_or_else(|| {
            format!(
                "{name:?} is not a gRPC status code name (OK, NOT_FOUND, PERMISSION_DENIED, ...)"
            )
        })
}
