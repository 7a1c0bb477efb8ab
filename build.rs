//! Generates the gRPC server and client code from `proto/` without a system
//! `protoc`: protox parses the .proto files in pure Rust, tonic-prost-build
//! generates the code, and the encoded descriptor set is written next to it for
//! server reflection and the generic client.
//!
//! Every `.proto` file under `proto/` is compiled (imports resolve from
//! `proto/`), so adding, renaming or replacing one needs no edit here.

use std::{env, fs, path::Path, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let mut protos = Vec::new();
    find_protos(Path::new("proto"), &mut protos)?;
    protos.sort();
    if protos.is_empty() {
        return Err("no .proto file under proto/".into());
    }

    let fds = protox::compile(&protos, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}

/// Every `.proto` file under `dir`, recursively. Each directory is watched,
/// so that a new file triggers a rebuild.
fn find_protos(dir: &Path, found: &mut Vec<PathBuf>) -> std::io::Result<()> {
    println!("cargo:rerun-if-changed={}", dir.display());
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            find_protos(&path, found)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            found.push(path);
        }
    }
    Ok(())
}
