//! Generates the gRPC server and client code from `proto/` without a system
//! `protoc`: protox parses the .proto files in pure Rust, tonic-prost-build
//! generates the code, and the encoded descriptor set is written next to it for
//! server reflection.

use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // TEMPLATE: add your own .proto files here.
    let protos = ["proto/inventory/v1/inventory.proto"];
    println!("cargo:rerun-if-changed=proto");

    let fds = protox::compile(protos, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
