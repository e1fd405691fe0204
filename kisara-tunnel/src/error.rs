//! [`TunnelError`]: what can go wrong in the relay and the client.

use std::io;

use kisara_core::ErrorKind;

/// Errors of the relay and the client; converts into [`kisara_core::Error`].
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// A socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The peer sent a frame longer than the limit.
    #[error("frame of {len} bytes is over the {limit}-byte limit")]
    FrameTooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The peer sent bytes that are not a valid frame.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The peer speaks another protocol version.
    #[error("protocol version {theirs} is not supported (this side speaks {ours})")]
    Version {
        /// The peer's version.
        theirs: u16,
        /// Ours.
        ours: u16,
    },
    /// The challenge–response failed. Deliberately says nothing about which
    /// part was wrong.
    #[error("authentication with relay {relay} failed; check that both sides use the same token")]
    Auth {
        /// The relay (address or name).
        relay: String,
    },
    /// The peer closed the connection or did not answer in time.
    #[error("{0}")]
    Closed(String),
    /// The relay refused a request.
    #[error("{message}")]
    Refused {
        /// The semantic kind the relay reported.
        kind: ErrorKind,
        /// The relay's message.
        message: String,
    },
    /// Invalid configuration.
    #[error("invalid tunnel configuration: {0}")]
    Config(String),
}

impl TunnelError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<TunnelError> for kisara_core::Error {
    fn from(error: TunnelError) -> Self {
        match error {
            TunnelError::Auth { .. } => {
                kisara_core::Error::from_wire(ErrorKind::Unauthenticated, error.to_string())
            }
            TunnelError::Refused { kind, message } => kisara_core::Error::from_wire(kind, message),
            TunnelError::Config(message) => kisara_core::Error::invalid("tunnel config", message),
            other => kisara_core::Error::unavailable(other.to_string()),
        }
    }
}

/// Results of this crate.
pub type Result<T, E = TunnelError> = std::result::Result<T, E>;
