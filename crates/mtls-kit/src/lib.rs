//! The security kit of the template: everything a gRPC service needs for
//! mutual TLS on rustls and per-RPC authorization from the verified client
//! certificate, using gRPC's own policy format (gRFC A43). A service brings
//! its tonic services; the kit runs them.
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
//! * [`server`]: runs any set of tonic [`server::Services`] with limits,
//!   health, reflection and graceful shutdown;
//! * [`config`]: the server's command-line flags and startup checks;
//! * [`app`]: the server process (load, bind, reload, stop on a signal);
//! * [`reload`]: live reload of certificates, CA bundle, CRLs and policy;
//! * [`replica`]: an optional `x-replica` response header naming the
//!   replica that answered;
//! * [`client`]: a tonic channel over the same TLS code, balanced over
//!   every replica behind a name ([`client::BalancedChannel`]), retries
//!   that are safe ([`client::retry`]), and the client flags
//!   ([`client::ClientArgs`]);
//! * [`pki`] and [`certs_cli`]: the development PKI (rcgen), for `certs/`
//!   and tests;
//! * [`telemetry`]: logging setup;
//! * `testing` (feature `testing`): fixtures for a service's own tests.
//!
//! The kit knows no service: services register themselves through
//! [`server::Services`].

#![forbid(unsafe_code)]

pub mod app;
pub mod authz;
pub mod certs_cli;
pub mod client;
pub mod config;
pub mod conn;
pub mod identity;
pub mod pki;
pub mod policy;
pub mod reload;
pub mod replica;
pub mod rfc2253;
pub mod server;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;
