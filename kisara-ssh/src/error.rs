//! The crate's one error type.

use std::path::PathBuf;

/// What can go wrong in the gateway.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// A host key file that cannot be read, parsed, made or is unsafe.
    #[error("host key {}: {message}", path.display())]
    HostKey {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A bad gateway setting, naming it.
    #[error("{what}: {message}")]
    Config {
        /// The setting.
        what: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The SSH protocol failed on a connection.
    #[error("ssh: {0}")]
    Protocol(#[from] russh::Error),
    /// The listener failed.
    #[error("ssh listener: {0}")]
    Io(#[from] std::io::Error),
    /// The session engine or a backend refused or failed.
    #[error(transparent)]
    Core(#[from] kisara_core::Error),
}

impl From<SshError> for kisara_core::Error {
    fn from(err: SshError) -> Self {
        match err {
            SshError::Core(err) => err,
            SshError::Config { what, message } => Self::invalid(what, message),
            other => Self::Unavailable {
                message: other.to_string(),
                source: Some(Box::new(other)),
            },
        }
    }
}
