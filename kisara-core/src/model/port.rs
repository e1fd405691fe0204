//! Container ports (`80/tcp`). Lists with ranges (`8000-8010/tcp,53/udp`) are
//! parsed by `kisara-net`'s port specs into these.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// `"tcp"` or `"udp"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "tcp" => Ok(Self::Tcp),
            "udp" => Ok(Self::Udp),
            _ => Err(Error::invalid(
                "protocol",
                format!("{s:?} is not a protocol; use tcp or udp"),
            )),
        }
    }
}

/// One port of a container with its protocol: `80/tcp`, or `80` for TCP.
///
/// Serialized as that string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ContainerPort {
    /// The port number, 1 to 65535.
    pub port: u16,
    /// The protocol.
    pub protocol: Protocol,
}

impl ContainerPort {
    /// A TCP port.
    pub fn tcp(port: u16) -> Self {
        Self {
            port,
            protocol: Protocol::Tcp,
        }
    }

    /// A UDP port.
    pub fn udp(port: u16) -> Self {
        Self {
            port,
            protocol: Protocol::Udp,
        }
    }
}

impl fmt::Display for ContainerPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.port, self.protocol)
    }
}

impl FromStr for ContainerPort {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let (number, protocol) = match s.trim().split_once('/') {
            Some((number, protocol)) => (number.trim(), protocol.parse()?),
            None => (s.trim(), Protocol::Tcp),
        };
        // Name the whole item only when it says more than the number.
        let item = if s.contains('/') {
            format!("{s:?}: ")
        } else {
            String::new()
        };
        if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::invalid(
                "port",
                format!("{item}{number:?} is not a port number"),
            ));
        }
        let port = match number.parse::<u32>() {
            Ok(port @ 1..=65535) => port as u16,
            _ => {
                return Err(Error::invalid(
                    "port",
                    format!("{item}port {number} is outside 1-65535"),
                ));
            }
        };
        Ok(Self { port, protocol })
    }
}

impl TryFrom<String> for ContainerPort {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<ContainerPort> for String {
    fn from(port: ContainerPort) -> Self {
        port.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays() {
        assert_eq!(
            "80/tcp".parse::<ContainerPort>().unwrap(),
            ContainerPort::tcp(80)
        );
        assert_eq!(
            " 53 / UDP ".parse::<ContainerPort>().unwrap(),
            ContainerPort::udp(53)
        );
        assert_eq!("22".parse::<ContainerPort>().unwrap().to_string(), "22/tcp");
    }

    #[test]
    fn rejects_bad_items_naming_them() {
        for (bad, needle) in [
            ("0/tcp", "outside"),
            ("65536/tcp", "outside"),
            ("http/tcp", "\"http\""),
            ("80/sctp", "\"sctp\""),
            ("+80/tcp", "\"+80\""),
            ("99999999999/tcp", "outside"),
        ] {
            let err = bad.parse::<ContainerPort>().unwrap_err().to_string();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }
}
