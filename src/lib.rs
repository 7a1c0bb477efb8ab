//! A template for internal gRPC services: a tonic server and client with
//! mutual TLS on rustls, and per-RPC authorization from the verified client
//! certificate using gRPC's own policy format (gRFC A43).
//!
//! Crate map, in the order a request meets it:
//!
//! * [`tls`]: the one place that reads PEM files and builds rustls configs,
//!   for server and client alike;
//! * [`conn`]: accepts TCP, runs the TLS handshake under a deadline, and
//!   reads the peer's identity once per connection;
//! * [`identity`] (with [`rfc2253`]): certificate in, typed peer identity
//!   out (SPIFFE/URI SANs, DNS SANs, Subject as gRPC renders it);
//! * [`policy`]: the A43 policy as pure data, compiled to an index, and the
//!   pure decision function;
//! * [`authz`]: the tower layer that enforces the decision on every RPC;
//! * [`service`]: the example in-memory inventory service;
//! * [`server`]: routes, transport limits, health, reflection, shutdown;
//! * [`config`]: the server's command line and startup checks;
//! * [`reload`]: live reload of certificates, CA bundle, CRLs and policy;
//! * [`client`]: a tonic channel over the same TLS code;
//! * [`pki`]: the development PKI (rcgen), for `certs/` and tests;
//! * [`telemetry`]: logging setup.
//!
//! Extension points are marked `TEMPLATE:` (grep for it).

#![forbid(unsafe_code)]

pub mod authz;
pub mod client;
pub mod config;
pub mod conn;
pub mod identity;
pub mod pki;
pub mod policy;
pub mod reload;
pub mod rfc2253;
pub mod server;
pub mod service;
pub mod telemetry;
pub mod tls;

/// Code generated from `proto/` by `build.rs`.
pub mod proto {
    tonic::include_proto!("inventory.v1");

    /// The encoded descriptor set of every file in `proto/`, for reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));
}
