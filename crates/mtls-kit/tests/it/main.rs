//! Integration tests: the real server on an ephemeral loopback port, called
//! by the real client code as named identities. One binary (faster to
//! build), one module per behaviour.

mod helpers;
mod store;

mod authorization;
mod balance;
mod connection_age;
mod deadline;
mod decisions;
mod dynamic_calls;
mod early_answers;
mod health_reflection;
mod key_exchange;
mod limits;
mod metrics;
mod openssl_subjects;
mod policy_paths;
mod quota;
mod reload;
mod replica;
mod revocation;
mod rotation;
mod shutdown;
mod slow_clients;
mod spiffe_strict;
mod tls_refusal;
