//! The workspace as its files describe it: its packages and their
//! directories, the root package's binaries (and where cargo built them),
//! their features and test and bench targets.
//!
//! The checks ask the files, not a list of names, so that they hold after
//! the example service is renamed or replaced. Only the few TOML shapes the
//! workspace uses are read, by hand, to keep the test free of a TOML parser.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::repo::{ROOT, SERVER};

/// The workspace as the files describe it.
pub struct Workspace {
    /// Package name -> directory (relative), the root package first.
    pub packages: Vec<(String, PathBuf)>,
    /// The root package's binaries, and where they were built.
    pub bins: BTreeMap<String, PathBuf>,
    pub default_run: Option<String>,
}

/// Reads the root `Cargo.toml`, its members' and `src/bin/`.
pub fn workspace() -> Workspace {
    let root_toml = read("Cargo.toml");
    let mut packages = vec![(package_name(&root_toml), PathBuf::new())];
    if let Some(members) = root_toml.split("members = [").nth(1) {
        let members = members.split(']').next().unwrap_or("");
        for member in members.split(',').map(|m| m.trim().trim_matches('"')) {
            if !member.is_empty() && member != "." {
                let toml = read(&format!("{member}/Cargo.toml"));
                packages.push((package_name(&toml), PathBuf::from(member)));
            }
        }
    }
    let bin_dir = Path::new(SERVER).parent().expect("the binaries' directory");
    let mut bins = BTreeMap::new();
    if let Ok(entries) = fs::read_dir(Path::new(ROOT).join("src/bin")) {
        for entry in entries.flatten() {
            let path = entry.path();
            let name = if path.is_dir() && path.join("main.rs").exists() {
                entry.file_name().to_string_lossy().into_owned()
            } else if path.extension().is_some_and(|e| e == "rs") {
                path.file_stem().unwrap().to_string_lossy().into_owned()
            } else {
                continue;
            };
            let exe = bin_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
            bins.insert(name, exe);
        }
    }
    let default_run = toml_value(&root_toml, "default-run");
    Workspace {
        packages,
        bins,
        default_run,
    }
}

fn read(rel: &str) -> String {
    fs::read_to_string(Path::new(ROOT).join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn toml_value(toml: &str, key: &str) -> Option<String> {
    toml.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
    })
}

fn package_name(toml: &str) -> String {
    let package = toml.split("[package]").nth(1).expect("a [package] table");
    toml_value(package, "name").expect("a package name")
}

/// The keys of a TOML table, e.g. `[features]`.
fn toml_keys(toml: &str, table: &str) -> Vec<String> {
    let header = format!("[{table}]");
    toml.lines()
        .skip_while(|l| l.trim() != header)
        .skip(1)
        .take_while(|l| !l.trim_start().starts_with('['))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim().to_string()))
        .filter(|k| !k.starts_with('#'))
        .collect()
}

impl Workspace {
    pub fn dir(&self, package: &str) -> Option<&PathBuf> {
        self.packages
            .iter()
            .find(|(n, _)| n == package)
            .map(|(_, d)| d)
    }

    /// Whether some package has a target of this kind (`tests`, `benches`)
    /// and name, by file or by a `[[test]]`/`[[bench]]` name.
    pub fn has_target(&self, dir: &str, name: &str) -> bool {
        self.packages.iter().any(|(_, p)| {
            let base = Path::new(ROOT).join(p);
            base.join(dir).join(format!("{name}.rs")).exists()
                || base.join(dir).join(name).join("main.rs").exists()
                || fs::read_to_string(base.join("Cargo.toml"))
                    .is_ok_and(|t| t.contains(&format!("name = \"{name}\"")))
        })
    }

    pub fn has_feature(&self, package: &str, feature: &str) -> bool {
        self.dir(package).is_some_and(|dir| {
            let toml = fs::read_to_string(Path::new(ROOT).join(dir).join("Cargo.toml"));
            toml.is_ok_and(|t| toml_keys(&t, "features").iter().any(|k| k == feature))
        })
    }
}
