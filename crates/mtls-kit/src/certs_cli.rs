//! The development PKI tool behind a service's `certs` binary. FOR
//! DEVELOPMENT ONLY: see certs/README.md.
//!
//! The service names its trust domain and development identities in a
//! [`DevIdentities`] and calls [`main`]; `--trust-domain` overrides the
//! former at run time.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::identity::SpiffeId;
use crate::pki::{self, CertificateAuthority, DevPkiOptions, DevPkiPaths};

/// The development identities of a service: what `certs init` and the
/// server's first start issue, and what its shipped policy names.
#[derive(Clone, Copy, Debug)]
pub struct DevIdentities {
    /// The SPIFFE trust domain, e.g. `example.org`.
    pub trust_domain: &'static str,
    /// Client identities, each issued as `spiffe://<trust_domain>/<name>`.
    pub clients: &'static [&'static str],
}

impl DevIdentities {
    /// The PKI options for these identities in `trust_domain` (the
    /// service's own unless overridden).
    pub fn pki_options(&self, trust_domain: Option<&str>) -> DevPkiOptions {
        DevPkiOptions {
            trust_domain: trust_domain.unwrap_or(self.trust_domain).to_owned(),
            identities: self.clients.iter().map(|c| (*c).to_owned()).collect(),
            ..DevPkiOptions::default()
        }
    }
}

/// Makes the development PKI: a CA, a server certificate and client
/// certificates for the development identities.
#[derive(Parser, Debug)]
#[command(name = "certs", version)]
struct Args {
    /// Directory to write into.
    #[arg(long, env = "CERTS_DIR", default_value = "certs", global = true)]
    dir: PathBuf,

    /// Days the leaf certificates are valid.
    #[arg(long, env = "CERTS_DAYS", default_value_t = pki::DEFAULT_LEAF_DAYS, global = true,
          value_parser = clap::value_parser!(i64).range(1..=90))]
    days: i64,

    /// SPIFFE trust domain of the client identities. [default: the service's]
    #[arg(long, env = "SPIFFE_TRUST_DOMAIN", global = true, value_parser = parse_trust_domain)]
    trust_domain: Option<String>,

    #[command(subcommand)]
    command: Command,
}

/// A trust domain is what `spiffe://<it>` parses as.
pub fn parse_trust_domain(s: &str) -> Result<String, String> {
    match SpiffeId::parse(&format!("spiffe://{s}")) {
        Some(id) if id.trust_domain() == s => Ok(s.to_owned()),
        _ => Err(format!(
            "{s:?} is not a SPIFFE trust domain (lower-case letters, digits, '.', '-', '_')"
        )),
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a new CA, server certificate and a client certificate for
    /// every development identity of the service.
    Init {
        #[command(flatten)]
        server: ServerNames,
        /// Replace an existing PKI.
        #[arg(long)]
        force: bool,
        /// Do nothing, successfully, if a PKI is already there (for one-shot
        /// init containers).
        #[arg(long, conflicts_with = "force")]
        if_missing: bool,
    },
    /// Issue (or re-issue) the server certificate from the existing CA.
    Server {
        #[command(flatten)]
        server: ServerNames,
    },
    /// Issue (or re-issue) a client certificate from the existing CA, with
    /// SPIFFE ID spiffe://TRUST_DOMAIN/NAME and CN=NAME.
    Client { name: String },
    /// Revoke a client certificate: add certs/NAME.pem's serial number to
    /// certs/crl.pem (created if absent) and re-sign the CRL. Serve it with
    /// `server --crl certs/crl.pem`.
    Revoke {
        name: String,
        /// Revoke this certificate file instead of certs/NAME.pem.
        #[arg(long)]
        cert: Option<PathBuf>,
    },
}

#[derive(clap::Args, Debug)]
struct ServerNames {
    /// Extra DNS names or IPs for the server certificate (for example a
    /// compose service name), besides localhost, 127.0.0.1 and ::1.
    /// Repeatable or comma-separated.
    #[arg(
        long = "server-name",
        env = "CERTS_SERVER_NAMES",
        value_delimiter = ','
    )]
    server_names: Vec<String>,
}

/// Runs the `certs` command line for a service's development identities.
pub fn main(identities: DevIdentities) -> ExitCode {
    let args = Args::parse();
    match run(args, identities) {
        Ok(written) => {
            for path in written {
                println!("wrote {}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args, identities: DevIdentities) -> anyhow::Result<Vec<PathBuf>> {
    let paths = DevPkiPaths::new(&args.dir);
    let trust_domain = args
        .trust_domain
        .as_deref()
        .unwrap_or(identities.trust_domain);
    let load_ca = || {
        CertificateAuthority::from_pem_files(&paths.ca_cert(), &paths.ca_key())
            .map_err(|e| anyhow::anyhow!("{e} (run `certs init` first)"))
    };
    match args.command {
        Command::Init {
            server,
            force,
            if_missing,
        } => {
            if paths.ca_cert().exists() && !force {
                if if_missing {
                    eprintln!(
                        "a development PKI already exists in {}; leaving it",
                        args.dir.display()
                    );
                    return Ok(Vec::new());
                }
                anyhow::bail!(
                    "{} already exists; pass --force to replace the development PKI",
                    paths.ca_cert().display()
                );
            }
            let opts = DevPkiOptions {
                extra_server_names: server.server_names,
                leaf_days: args.days,
                ..identities.pki_options(Some(trust_domain))
            };
            Ok(pki::write_dev_pki(&paths, &opts)?)
        }
        Command::Server { server } => {
            Ok(pki::issue_server(&load_ca()?, &paths, &server.server_names, args.days)?.to_vec())
        }
        Command::Revoke { name, cert } => {
            let cert = cert.unwrap_or_else(|| paths.cert(&name));
            Ok(vec![pki::revoke(&load_ca()?, &paths, &cert, args.days)?])
        }
        Command::Client { name } => {
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
                && !["ca", "server"].contains(&name.as_str());
            if !valid {
                anyhow::bail!("client name {name:?}: use letters, digits, '-', '.', '_' (and not 'ca' or 'server')");
            }
            Ok(pki::issue_client(&load_ca()?, &paths, trust_domain, &name, args.days)?.to_vec())
        }
    }
}
