//! The one error type of `kisara-core`, shared by every backend trait.
//!
//! Callers branch on [`Error::kind`] (or match the variants) and ask
//! [`Error::is_retryable`] whether trying again can help. Backends keep their
//! own private errors and convert them into one of these kinds; every message
//! names the offending value.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A boxed error from a backend, kept as the [`std::error::Error::source`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Short for `std::result::Result<T, kisara_core::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a Kisara backend, by meaning.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The named object does not exist.
    #[error("{what} not found: {name:?}")]
    NotFound {
        /// What kind of object, e.g. `"container"`.
        what: &'static str,
        /// The id or name that was looked up.
        name: String,
    },
    /// An object with this name exists already.
    #[error("{what} already exists: {name:?}")]
    AlreadyExists {
        /// What kind of object, e.g. `"network"`.
        what: &'static str,
        /// The name that is taken.
        name: String,
    },
    /// The request collides with the current state (an overlapping subnet, a
    /// network that still has containers, a port in use).
    #[error("conflict: {message}")]
    Conflict {
        /// What collides with what, naming both.
        message: String,
    },
    /// The input is malformed or out of range.
    #[error("invalid {what}: {message}")]
    Invalid {
        /// Which input, e.g. `"port spec"`.
        what: &'static str,
        /// What is wrong with it, naming the bad value.
        message: String,
    },
    /// A pool or a capacity is used up (no free subnet, every node full).
    #[error("exhausted: {message}")]
    Exhausted {
        /// Which pool or capacity, naming it.
        message: String,
    },
    /// The backend cannot be reached or is not ready; a retry may help.
    #[error("unavailable: {message}")]
    Unavailable {
        /// What is unavailable and, where known, how to fix it.
        message: String,
        /// The underlying cause.
        #[source]
        source: Option<BoxError>,
    },
    /// The operation did not finish in time; a retry may help.
    #[error("timed out after {after:?}: {operation}")]
    Timeout {
        /// What was being done.
        operation: String,
        /// How long was waited.
        after: Duration,
    },
    /// The caller did not prove who they are (missing or wrong credentials).
    ///
    /// The message never says which part of the credentials was wrong.
    #[error("unauthenticated: {message}")]
    Unauthenticated {
        /// A message safe to show to the caller.
        message: String,
    },
    /// The caller is known but not allowed to do this.
    #[error("permission denied: {message}")]
    PermissionDenied {
        /// What was refused, naming it.
        message: String,
    },
    /// The backend does not offer this operation (see its capabilities).
    #[error("{backend} does not support {operation}")]
    NotSupported {
        /// The backend's name.
        backend: &'static str,
        /// The operation asked for.
        operation: String,
    },
    /// Any other failure of a backend.
    #[error("{backend}: {message}")]
    Backend {
        /// The backend's name, e.g. `"docker"`.
        backend: &'static str,
        /// What failed.
        message: String,
        /// The underlying cause.
        #[source]
        source: Option<BoxError>,
    },
}

/// The kind of an [`Error`]: stable, serializable, for branching and for wire
/// and HTTP error codes.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ErrorKind {
    /// See [`Error::NotFound`].
    NotFound,
    /// See [`Error::AlreadyExists`].
    AlreadyExists,
    /// See [`Error::Conflict`].
    Conflict,
    /// See [`Error::Invalid`].
    Invalid,
    /// See [`Error::Exhausted`].
    Exhausted,
    /// See [`Error::Unavailable`].
    Unavailable,
    /// See [`Error::Timeout`].
    Timeout,
    /// See [`Error::Unauthenticated`].
    Unauthenticated,
    /// See [`Error::PermissionDenied`].
    PermissionDenied,
    /// See [`Error::NotSupported`].
    NotSupported,
    /// See [`Error::Backend`].
    Backend,
}

impl ErrorKind {
    /// Every kind, for tables of codes (an API's documentation, metrics).
    pub const ALL: [Self; 11] = [
        Self::NotFound,
        Self::AlreadyExists,
        Self::Conflict,
        Self::Invalid,
        Self::Exhausted,
        Self::Unavailable,
        Self::Timeout,
        Self::Unauthenticated,
        Self::PermissionDenied,
        Self::NotSupported,
        Self::Backend,
    ];

    /// The stable snake_case code of this kind, as used on the wire.
    pub fn code(self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::AlreadyExists => "already_exists",
            Self::Conflict => "conflict",
            Self::Invalid => "invalid",
            Self::Exhausted => "exhausted",
            Self::Unavailable => "unavailable",
            Self::Timeout => "timeout",
            Self::Unauthenticated => "unauthenticated",
            Self::PermissionDenied => "permission_denied",
            Self::NotSupported => "not_supported",
            Self::Backend => "backend",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

impl Error {
    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            Self::Conflict { .. } => ErrorKind::Conflict,
            Self::Invalid { .. } => ErrorKind::Invalid,
            Self::Exhausted { .. } => ErrorKind::Exhausted,
            Self::Unavailable { .. } => ErrorKind::Unavailable,
            Self::Timeout { .. } => ErrorKind::Timeout,
            Self::Unauthenticated { .. } => ErrorKind::Unauthenticated,
            Self::PermissionDenied { .. } => ErrorKind::PermissionDenied,
            Self::NotSupported { .. } => ErrorKind::NotSupported,
            Self::Backend { .. } => ErrorKind::Backend,
        }
    }

    /// Whether the same call, made again later unchanged, can succeed.
    ///
    /// True for [`Error::Unavailable`] and [`Error::Timeout`]. An
    /// [`Error::Exhausted`] pool can free up, but only through someone else's
    /// action, so it is not retryable by itself.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Timeout { .. })
    }

    /// A [`Error::NotFound`] for `what` named `name`.
    pub fn not_found(what: &'static str, name: impl Into<String>) -> Self {
        Self::NotFound {
            what,
            name: name.into(),
        }
    }

    /// An [`Error::AlreadyExists`] for `what` named `name`.
    pub fn already_exists(what: &'static str, name: impl Into<String>) -> Self {
        Self::AlreadyExists {
            what,
            name: name.into(),
        }
    }

    /// A [`Error::Conflict`] with a message naming both sides.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::Conflict {
            message: message.into(),
        }
    }

    /// An [`Error::Invalid`] for the input `what`.
    pub fn invalid(what: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            what,
            message: message.into(),
        }
    }

    /// An [`Error::Exhausted`] naming the pool or capacity.
    pub fn exhausted(message: impl Into<String>) -> Self {
        Self::Exhausted {
            message: message.into(),
        }
    }

    /// An [`Error::Unavailable`] without a source.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable {
            message: message.into(),
            source: None,
        }
    }

    /// An [`Error::PermissionDenied`].
    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self::PermissionDenied {
            message: message.into(),
        }
    }

    /// An [`Error::NotSupported`] by `backend`.
    pub fn not_supported(backend: &'static str, operation: impl Into<String>) -> Self {
        Self::NotSupported {
            backend,
            operation: operation.into(),
        }
    }

    /// Rebuilds an error from its wire form ([`ErrorKind`] and message), as
    /// received from a remote node or an HTTP peer. Structured fields that
    /// did not cross the wire are folded into the message.
    pub fn from_wire(kind: ErrorKind, message: impl Into<String>) -> Self {
        let message = message.into();
        match kind {
            ErrorKind::NotFound => Self::not_found("object", message),
            ErrorKind::AlreadyExists => Self::already_exists("object", message),
            ErrorKind::Conflict => Self::conflict(message),
            ErrorKind::Invalid => Self::invalid("request", message),
            ErrorKind::Exhausted => Self::exhausted(message),
            ErrorKind::Unavailable => Self::unavailable(message),
            ErrorKind::Timeout => Self::Timeout {
                operation: message,
                after: Duration::ZERO,
            },
            ErrorKind::Unauthenticated => Self::Unauthenticated { message },
            ErrorKind::PermissionDenied => Self::permission_denied(message),
            ErrorKind::NotSupported => Self::NotSupported {
                backend: "remote",
                operation: message,
            },
            ErrorKind::Backend => Self::Backend {
                backend: "remote",
                message,
                source: None,
            },
        }
    }
}

/// How many characters of a bad input an error message quotes.
pub const EXCERPT_CHARS: usize = 80;

/// `text` cut to [`EXCERPT_CHARS`] characters (with `...`), for error
/// messages that name a bad input: a huge input does not make a huge
/// message.
pub fn excerpt(text: &str) -> String {
    match text.char_indices().nth(EXCERPT_CHARS) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_listed_once_with_its_wire_code() {
        let codes: std::collections::BTreeSet<&str> =
            ErrorKind::ALL.iter().map(|kind| kind.code()).collect();
        assert_eq!(codes.len(), ErrorKind::ALL.len(), "a kind is listed twice");
        for kind in ErrorKind::ALL {
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::json!(kind.code())
            );
            // A new kind makes this match fail to compile, which leads
            // here: list it in ALL as well.
            match kind {
                ErrorKind::NotFound
                | ErrorKind::AlreadyExists
                | ErrorKind::Conflict
                | ErrorKind::Invalid
                | ErrorKind::Exhausted
                | ErrorKind::Unavailable
                | ErrorKind::Timeout
                | ErrorKind::Unauthenticated
                | ErrorKind::PermissionDenied
                | ErrorKind::NotSupported
                | ErrorKind::Backend => {}
            }
        }
    }

    #[test]
    fn messages_name_the_value() {
        let err = Error::not_found("container", "web-1");
        assert_eq!(err.to_string(), "container not found: \"web-1\"");
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(!err.is_retryable());
    }

    #[test]
    fn only_transient_kinds_are_retryable() {
        assert!(Error::unavailable("engine down").is_retryable());
        let timeout = Error::Timeout {
            operation: "launch web-1".into(),
            after: Duration::from_secs(3),
        };
        assert!(timeout.is_retryable());
        assert!(!Error::exhausted("pool 10.0.0.0/8").is_retryable());
        assert!(!Error::conflict("x").is_retryable());
    }

    #[test]
    fn wire_round_trip_keeps_the_kind() {
        for kind in [
            ErrorKind::NotFound,
            ErrorKind::AlreadyExists,
            ErrorKind::Conflict,
            ErrorKind::Invalid,
            ErrorKind::Exhausted,
            ErrorKind::Unavailable,
            ErrorKind::Timeout,
            ErrorKind::Unauthenticated,
            ErrorKind::PermissionDenied,
            ErrorKind::NotSupported,
            ErrorKind::Backend,
        ] {
            let err = Error::from_wire(kind, "m");
            assert_eq!(err.kind(), kind);
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.code()));
        }
    }

    #[test]
    fn excerpts_cut_long_inputs_at_characters() {
        assert_eq!(excerpt("short"), "short");
        assert_eq!(excerpt(&"x".repeat(1000)).len(), EXCERPT_CHARS + 3);
        assert_eq!(
            excerpt("é".repeat(100).as_str()).chars().count(),
            EXCERPT_CHARS + 3
        );
    }
}
