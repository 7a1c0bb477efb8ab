//! A service built on [`mtls_kit`]: an in-memory ledger, served as two
//! gRPC services (`ledger.v2.Accounts` and `ledger.v2.Transfers`).
//!
//! Everything here is the service's own and is what a team replaces:
//!
//! * `proto/` (compiled by `build.rs` into [`proto`]);
//! * [`handlers`]: the RPC handlers;
//! * [`register`]: the one place services are registered;
//! * [`DEV_IDENTITIES`]: the development PKI's trust domain and clients,
//!   which the shipped `config/policy.json` names.
//!
//! TLS, identity, policy, reload, limits, health and reflection all come
//! from the kit. Extension points are marked `TEMPLATE:` (grep for it).

#![forbid(unsafe_code)]

pub mod handlers;

use mtls_kit::certs_cli::DevIdentities;
use mtls_kit::server::{Limits, Services};

/// Code generated from `proto/` by `build.rs`.
pub mod proto {
    tonic::include_proto!("ledger.v2");

    /// The encoded descriptor set of every file in `proto/`, for reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));
}

/// The development PKI's trust domain and client identities: `certs init`
/// and the server's first start issue `spiffe://example.org/<name>` for
/// each, and `config/policy.json` grants each a different set of RPCs.
///
/// TEMPLATE: add your own service identities here and in the policy.
pub const DEV_IDENTITIES: DevIdentities = DevIdentities {
    trust_domain: "example.org",
    clients: &["reader", "writer", "admin", "outsider"],
};

/// The services this server runs. The kit adds health and reflection, and
/// puts the authorization layer in front of all of them.
pub fn services(limits: &Limits) -> Services {
    let mut services = Services::new();
    register(&mut services, limits);
    services
}

/// TEMPLATE: register your services here, one line each.
fn register(services: &mut Services, limits: &Limits) {
    use proto::accounts_server::AccountsServer;
    use proto::transfers_server::TransfersServer;
    // Both services work on the same accounts.
    let ledger = handlers::Ledger::new();
    services
        .file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .add(
            AccountsServer::new(handlers::AccountsService::new(ledger.clone()))
                .max_decoding_message_size(limits.max_message_size)
                .max_encoding_message_size(limits.max_message_size),
        )
        .add(
            TransfersServer::new(handlers::TransfersService::new(ledger))
                .max_decoding_message_size(limits.max_message_size)
                .max_encoding_message_size(limits.max_message_size),
        );
}
