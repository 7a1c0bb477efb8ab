//! The security kit of the template: everything a gRPC service needs for
//! mutual TLS on rustls and per-RPC authorization from the verified client
//! certificate, using gRPC's own policy format (gRFC A43). A service brings
//! its tonic services; the kit runs them.
//!
//! Crate map, in the order a request meets it:
//!
//! * [`tls`]: the one place that reads PEM files and builds rustls configs,
//!   for server and client alike;
//! * [`accept`]: accepts TCP, runs the TLS handshake and reads the HTTP/2
//!   preface under deadlines, so that slow clients cannot starve new ones;
//! * [`conn`]: the accepted connection and the peer's identity, read once
//!   per connection;
//! * [`connections`]: serves each connection, with its own jittered
//!   maximum age;
//! * [`spiffe_verifier`]: strict SPIFFE mode, a client certificate must be
//!   an X.509-SVID of one trust domain;
//! * [`identity`] (with [`rfc2253`]): certificate in, typed peer identity
//!   out (SPIFFE/URI SANs, DNS SANs, Subject as gRPC renders it);
//! * [`policy`]: the A43 policy as pure data, compiled to an index, and the
//!   pure decision function;
//! * [`policy_cli`]: `policy check | explain | test`, the operator's tools
//!   a service's server binary offers as a subcommand;
//! * [`authz`]: the tower layer that enforces the decision on every RPC;
//! * [`quota`]: what one caller can hold: a fair share of the server by
//!   identity (on by default) and the limits file's rates and calls in
//!   flight, refused with `RESOURCE_EXHAUSTED` and a retry pushback;
//! * [`settle`]: lets early answers (denials, unknown methods) end their
//!   streams cleanly, so they never count as HTTP/2 abuse;
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
//! * [`telemetry`]: logging setup (and, with the `otel` feature,
//!   `tracing_otel`: OpenTelemetry export and W3C trace propagation);
//! * [`metrics`]: Prometheus metrics (RPCs, authorization, handshakes,
//!   certificate lifetimes, reloads) and their HTTP endpoint;
//! * `testing` (feature `testing`): fixtures for a service's own tests.
//!
//! The kit knows no service: services register themselves through
//! [`server::Services`].

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod accept;
pub mod app;
pub mod authz;
pub mod certs_cli;
pub mod client;
pub mod config;
pub mod conn;
pub mod connections;
pub mod deadline;
pub mod identity;
pub mod metrics;
pub mod pki;
pub mod policy;
pub mod policy_cli;
pub mod quota;
pub mod reload;
pub mod replica;
pub mod rfc2253;
pub mod server;
pub mod settle;
pub mod spiffe_verifier;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;
#[cfg(feature = "otel")]
pub mod tracing_otel;
