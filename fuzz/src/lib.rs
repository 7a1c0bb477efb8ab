//! The checks behind the fuzz targets, kept apart from the AFL glue in
//! `fuzz_targets/` so that each reads as plain Rust: input bytes in, and a
//! panic for anything that breaks an invariant.
//!
//! * [`policy`]: the A43 policy parser and the indexed decision function,
//!   checked against a naive rule-by-rule evaluation of the same document;
//! * [`identity`]: certificate DER in, `PeerIdentity` out;
//! * [`rfc2253`]: a DER `Name` (or a whole certificate) in, OpenSSL's
//!   RFC 2253 string out.

#![forbid(unsafe_code)]

pub mod identity;
pub mod policy;
pub mod rfc2253;
