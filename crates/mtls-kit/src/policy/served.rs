//! The methods a server serves, read from the encoded `FileDescriptorSet`s
//! it registers for reflection, so that a policy's paths can be checked
//! against them.

use std::collections::BTreeSet;

use prost::Message;
use prost_types::FileDescriptorSet;

/// Every `/package.Service/Method` path a server serves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServedMethods {
    methods: BTreeSet<String>,
    /// Services registered without a descriptor set: their methods are
    /// unknown, so no path under them is reported.
    opaque_services: BTreeSet<String>,
}

impl ServedMethods {
    /// No methods and no services yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds every method of every service in an encoded `FileDescriptorSet`
    /// (what `build.rs` writes, or what a crate such as tonic-health ships).
    pub fn add_descriptor_set(&mut self, encoded: &[u8]) -> Result<&mut Self, prost::DecodeError> {
        let set = FileDescriptorSet::decode(encoded)?;
        for file in &set.file {
            let package = file.package();
            for service in &file.service {
                let service_name = match package {
                    "" => service.name().to_owned(),
                    p => format!("{p}.{}", service.name()),
                };
                for method in &service.method {
                    self.methods
                        .insert(format!("/{service_name}/{}", method.name()));
                }
            }
        }
        Ok(self)
    }

    /// Adds one method path, `/package.Service/Method`.
    pub fn add_method(&mut self, path: &str) -> &mut Self {
        self.methods.insert(path.to_owned());
        self
    }

    /// Records a service (`package.Service`) whose methods are not known.
    /// Unless one of its methods is known too, paths under it are never
    /// reported.
    pub fn add_opaque_service(&mut self, name: &str) -> &mut Self {
        if !self.methods.iter().any(|m| {
            m.strip_prefix('/')
                .and_then(|m| m.strip_prefix(name))
                .is_some_and(|r| r.starts_with('/'))
        }) {
            self.opaque_services.insert(name.to_owned());
        }
        self
    }

    /// The method paths, sorted.
    pub fn methods(&self) -> impl Iterator<Item = &str> + Clone {
        self.methods.iter().map(String::as_str)
    }

    /// Whether `path` is a known method. A path under an opaque service
    /// is not: ask [`Self::in_opaque_service`] too.
    pub fn contains(&self, path: &str) -> bool {
        self.methods.contains(path)
    }

    /// Services whose methods are unknown.
    pub fn opaque_services(&self) -> impl Iterator<Item = &str> {
        self.opaque_services.iter().map(String::as_str)
    }

    /// Whether `path` is under a service whose methods are unknown.
    pub fn in_opaque_service(&self, path: &str) -> bool {
        self.opaque_services.iter().any(|s| {
            path.strip_prefix('/')
                .and_then(|p| p.strip_prefix(s.as_str()))
                .is_some_and(|rest| rest.starts_with('/'))
        })
    }
}
