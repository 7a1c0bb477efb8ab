//! A policy checked as a server checks it, at startup, on every reload and
//! in `policy check`: every error, and warnings for paths that match no
//! served method (refusals when the server is told to be strict).

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use super::file::{self, PolicySpec};
use super::locate::{self, Position};
use super::paths;
use super::served::ServedMethods;
use super::{Policy, PolicyError};

/// What a server checks a policy's paths against.
#[derive(Clone, Debug, Default)]
pub struct PathCheck {
    /// The methods the server serves; `None` (the default) checks no paths.
    pub served: Option<Arc<ServedMethods>>,
    /// Refuse a policy with a path that matches no served method, instead
    /// of loading it with a warning. Default off: every policy gRPC accepts
    /// loads.
    pub strict: bool,
}

/// Something worth fixing that does not stop a policy from loading.
/// Displays like [`PolicyError`]: `field: message (line L, column C)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyWarning {
    /// The field path, as in [`PolicyError`].
    pub field: String,
    /// What is worth fixing, for a person.
    pub message: String,
    /// Where the field is in the text, when known.
    pub at: Option<Position>,
}

impl fmt::Display for PolicyWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)?;
        if let Some(at) = self.at {
            write!(f, " ({at})")?;
        }
        Ok(())
    }
}

/// Everything found in one policy text.
#[derive(Clone, Debug)]
pub struct Report {
    /// The validated policy; `None` when there are errors.
    pub spec: Option<PolicySpec>,
    /// Why the text is not a valid policy, in document order; empty when
    /// it is.
    pub errors: Vec<PolicyError>,
    /// Paths that match no served method; only for a valid policy, and
    /// only when checked against served methods.
    pub warnings: Vec<PolicyWarning>,
}

/// Validates `text` and, for a valid policy, checks its paths against
/// `served`.
pub fn check_text(text: &str, served: Option<&ServedMethods>) -> Report {
    match file::parse(text) {
        Err(errors) => Report {
            spec: None,
            errors: errors.0,
            warnings: Vec::new(),
        },
        Ok(spec) => {
            let mut locator = locate::Locator::new(text);
            let warnings = served
                .map(|served| paths::check(&spec, served))
                .unwrap_or_default()
                .into_iter()
                .map(|w| PolicyWarning {
                    at: locator.locate(&w.field),
                    field: w.field.to_string(),
                    message: w.message(),
                })
                .collect();
            Report {
                spec: Some(spec),
                errors: Vec::new(),
                warnings,
            }
        }
    }
}

/// A policy that loaded, and the warnings to log about it (one line each,
/// naming the file).
pub struct Loaded {
    /// The compiled policy.
    pub policy: Policy,
    /// Each line is `policy file F: field: message (line L, column C)`.
    pub warnings: Vec<String>,
}

/// Checks and compiles the policy file `path` (contents `text`) as a server
/// does. On refusal, returns every reason, one line each, naming the file.
pub fn load(path: &Path, text: &str, check: &PathCheck) -> Result<Loaded, Vec<String>> {
    let report = check_text(text, check.served.as_deref());
    let line = |e: &dyn fmt::Display| format!("policy file {}: {e}", path.display());
    let mut warnings: Vec<String> = report.warnings.iter().map(|w| line(w)).collect();
    let Some(spec) = report.spec else {
        return Err(report.errors.iter().map(|e| line(e)).collect());
    };
    if check.strict && !warnings.is_empty() {
        warnings.push(line(&format_args!(
            "refused: {} path(s) match no served method, and strict policy path checking is on (--strict-policy-paths, SERVER_STRICT_POLICY_PATHS)",
            report.warnings.len()
        )));
        return Err(warnings);
    }
    Ok(Loaded {
        policy: Policy::compile(&spec),
        warnings,
    })
}
