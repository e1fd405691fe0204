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
    /// A recording's file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The first line is not an asciicast v2 header (nor the file a v1
    /// recording).
    #[error("not an asciicast v1 or v2 recording: {message}")]
    CastHeader {
        /// What is wrong, naming the bad value.
        message: String,
    },
    /// A line in the middle of a recording is not a valid event.
    #[error("line {line}: {message}")]
    CastLine {
        /// The line's number, from 1 (the header).
        line: u64,
        /// What is wrong, naming the bad value.
        message: String,
    },
    /// A recording's line is longer than the reader accepts.
    #[error(
        "line {line} is longer than the limit of {max} bytes (CastReaderOptions::max_line_bytes)"
    )]
    CastLineTooLong {
        /// The line's number, from 1.
        line: u64,
        /// The limit.
        max: usize,
    },
    /// A recording's metadata file is unreadable.
    #[error("{}: bad recording metadata: {message}", path.display())]
    CastMetadata {
        /// The metadata file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The recording store's options are out of range.
    #[error("invalid cast store option {field}: {message}")]
    CastOptions {
        /// The option.
        field: &'static str,
        /// What is wrong, naming the bad value.
        message: String,
    },
}

impl AuditError {
    /// A closure turning an I/O error on `path` into [`AuditError::Io`].
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}

impl From<AuditError> for kisara_core::Error {
    fn from(error: AuditError) -> Self {
        match error {
            AuditError::PolicyRead { path, source } => kisara_core::Error::Unavailable {
                message: format!("reading policy file {}", path.display()),
                source: Some(Box::new(source)),
            },
            AuditError::Policy { .. } | AuditError::PolicyRule { .. } => {
                kisara_core::Error::invalid("command policy", error.to_string())
            }
            AuditError::Io { .. } => kisara_core::Error::Backend {
                backend: "cast store",
                message: error.to_string(),
                source: Some(Box::new(error)),
            },
            AuditError::CastHeader { .. }
            | AuditError::CastLine { .. }
            | AuditError::CastLineTooLong { .. }
            | AuditError::CastMetadata { .. } => {
                kisara_core::Error::invalid("asciicast", error.to_string())
            }
            AuditError::CastOptions { .. } => {
                kisara_core::Error::invalid("cast store options", error.to_string())
            }
        }
    }
}
