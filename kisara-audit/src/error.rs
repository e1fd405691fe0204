//! The one error type of `kisara-audit`.

use std::path::PathBuf;

/// Everything that can go wrong in `kisara-audit`, naming the bad value.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A policy file could not be read.
    #[error("reading policy file {}: {source}", path.display())]
    PolicyRead {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A policy is malformed outside its rules (TOML syntax, a bad default,
    /// an unknown key in `[policy]`).
    #[error("policy {origin}: {message}")]
    Policy {
        /// Where the policy came from (a file name, `<string>`).
        origin: String,
        /// What is wrong, naming the key and the bad value.
        message: String,
    },
    /// One rule of a policy is malformed.
    #[error("policy {origin}: rule #{index}{}: field `{field}`: {message}", name.as_ref().map(|n| format!(" ({n:?})")).unwrap_or_default())]
    PolicyRule {
        /// Where the policy came from.
        origin: String,
        /// The rule's index in `rules`, from 0.
        index: usize,
        /// The rule's name, when it has one.
        name: Option<String>,
        /// The field, e.g. `args[1].any[0]`.
        field: String,
        /// What is wrong, naming the bad value.
        message: String,
    },
}

impl From<AuditError> for kisara_core::Error {
    fn from(error: AuditError) -> Self {
        match error {
            AuditError::PolicyRead { path, source } => kisara_core::Error::Unavailable {
                message: format!("reading policy file {}", path.display()),
                source: Some(Box::new(source)),
            },
            other => kisara_core::Error::invalid("command policy", other.to_string()),
        }
    }
}
