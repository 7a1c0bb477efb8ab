//! Where the repository is and where cargo built the package's binaries.
//!
//! Every other module starts from these two facts, so they sit below all of
//! them: no module has to reach up to the crate root for them.

/// The repository root: where the docs are read from, what the paths they
/// name are relative to, and the working directory of every command run.
pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The server binary cargo built for this test; the package's other
/// binaries are next to it.
pub const SERVER: &str = env!("CARGO_BIN_EXE_server");
