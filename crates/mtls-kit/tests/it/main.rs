//! Integration tests: the real server on an ephemeral loopback port, called
//! by the real client code as named identities. One binary (faster to
//! build), one module per behaviour.

mod helpers;
mod store;

mod authorization;
mod balance;
mod decisions;
mod health_reflection;
mod limits;
mod openssl_subjects;
mod reload;
mod replica;
mod revocation;
mod rotation;
mod shutdown;
mod tls_refusal;
