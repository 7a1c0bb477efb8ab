//! The development PKI tool, for this service's identities. FOR DEVELOPMENT
//! ONLY: see certs/README.md.

fn main() -> std::process::ExitCode {
    mtls_kit::certs_cli::main(inventory_service::DEV_IDENTITIES)
}
