#![forbid(unsafe_code)]
pub mod identity;
pub mod pki;
pub mod policy;
pub mod rfc2253;

pub mod proto {
    tonic::include_proto!("inventory.v1");
}
