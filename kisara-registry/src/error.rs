//! The one error type of `kisara-registry`.

use std::path::PathBuf;

/// Everything that can go wrong in the token service, its store, the
/// notification intake, the jobs and the scanner.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A scope, repository name, role, rule or option is malformed; the
    /// message names the bad value.
    #[error("invalid {what}: {message}")]
    Invalid {
        /// Which input, e.g. `"scope"`.
        what: &'static str,
        /// What is wrong, naming the bad value.
        message: String,
    },
    /// A key, certificate or config file could not be read or written.
    #[error("{}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// Generating or using a signing key failed.
    #[error("signing key: {0}")]
    Key(String),
    /// The SQLite store failed.
    #[error("registry store: {0}")]
    Store(#[from] rusqlite::Error),
    /// A named object (project, job) does not exist.
    #[error("{what} not found: {name:?}")]
    NotFound {
        /// What kind of object.
        what: &'static str,
        /// The name looked up.
        name: String,
    },
    /// A job was asked to move between states that do not connect.
    #[error("job {job}: cannot go from {from} to {to}")]
    Transition {
        /// The job id.
        job: i64,
        /// Its state.
        from: &'static str,
        /// The state asked for.
        to: &'static str,
    },
    /// The registry's HTTP API answered unexpectedly or not at all.
    #[error("registry API {url}: {reason}")]
    Upstream {
        /// The URL called.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// A command (`docker-registry garbage-collect`) failed.
    #[error("{command}: {reason}")]
    Command {
        /// The command line.
        command: String,
        /// Exit status and stderr.
        reason: String,
    },
}

impl RegistryError {
    pub(crate) fn invalid(what: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            what,
            message: message.into(),
        }
    }

    pub(crate) fn file(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        Self::File {
            path: path.into(),
            reason: reason.to_string(),
        }
    }
}

impl From<RegistryError> for kisara_core::Error {
    fn from(error: RegistryError) -> Self {
        match error {
            RegistryError::Invalid { what, message } => kisara_core::Error::invalid(what, message),
            RegistryError::NotFound { what, name } => kisara_core::Error::not_found(what, name),
            RegistryError::Transition { .. } => kisara_core::Error::conflict(error.to_string()),
            RegistryError::Upstream { .. } => kisara_core::Error::unavailable(error.to_string()),
            RegistryError::File { .. }
            | RegistryError::Key(_)
            | RegistryError::Store(_)
            | RegistryError::Command { .. } => kisara_core::Error::Backend {
                backend: "registry",
                message: error.to_string(),
                source: Some(Box::new(error)),
            },
        }
    }
}

/// `Result` with [`RegistryError`].
pub type Result<T, E = RegistryError> = std::result::Result<T, E>;
