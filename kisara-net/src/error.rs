//! The one error type of `kisara-net`: what is wrong with a port spec or a
//! port range.
//!
//! Parsing port specs and building port pools return this [`Error`]; pool
//! patterns and lists ([`PoolPattern`](crate::PoolPattern),
//! [`SubnetPool`](crate::SubnetPool), whose grammar lives in `kisara-core`
//! so that config validation can check them) and operations on an allocator
//! or a port pool return [`kisara_core::Error`] directly, because callers
//! branch on its kinds (`Exhausted`, `Conflict`, `Invalid`). `From<Error>
//! for kisara_core::Error` turns every variant into an `Invalid`.

/// Everything that can be wrong with the text of a port spec or a port
/// range.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A port spec does not parse.
    #[error("port spec item {item}: {message}")]
    PortSpec {
        /// Which item of the comma-separated list, from 1 (0: the spec as a
        /// whole).
        item: usize,
        /// The offending item, cut to 80 characters.
        token: String,
        /// What is wrong, naming the item.
        message: String,
    },
    /// A port range cannot back a port pool.
    #[error("port range {range}: {message}")]
    PortRange {
        /// The range as written, `start-end`.
        range: String,
        /// What is wrong.
        message: String,
    },
}

impl Error {
    pub(crate) fn port_spec(item: usize, token: &str, message: impl Into<String>) -> Self {
        Self::PortSpec {
            item,
            token: kisara_core::excerpt(token),
            message: message.into(),
        }
    }

    /// Which input this error is about, as [`kisara_core::Error::Invalid`]
    /// names it.
    fn what(&self) -> &'static str {
        match self {
            Self::PortSpec { .. } => "port spec",
            Self::PortRange { .. } => "port range",
        }
    }
}

impl From<Error> for kisara_core::Error {
    fn from(err: Error) -> Self {
        Self::invalid(err.what(), err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_to_an_invalid_core_error_with_the_message() {
        let err = Error::port_spec(2, "99999/udp", "\"99999/udp\": port 99999 exceeds 65535");
        let core: kisara_core::Error = err.into();
        assert_eq!(core.kind(), kisara_core::ErrorKind::Invalid);
        assert_eq!(
            core.to_string(),
            "invalid port spec: port spec item 2: \"99999/udp\": port 99999 exceeds 65535"
        );
    }

    #[test]
    fn long_inputs_are_cut() {
        let long = "x".repeat(1000);
        let Error::PortSpec { token, .. } = Error::port_spec(1, &long, "bad") else {
            unreachable!()
        };
        assert_eq!(token.len(), kisara_core::EXCERPT_CHARS + 3);
    }
}
