//! Compiles the kit's test-only service (`tests/proto/`) for its integration
//! tests. The kit itself has no protos of its own: services built on it bring
//! theirs. protox parses them in pure Rust, so no system `protoc` is needed.

use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=tests/proto");
    let fds = protox::compile(["tests/proto/kittest/v1/store.proto"], ["tests/proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("kittest_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
