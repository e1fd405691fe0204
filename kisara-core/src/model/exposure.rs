//! Exposures: a container port reachable on a relay's public port.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{ExposureId, Labels, Protocol};

/// Limits of one exposure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExposureLimits {
    /// Bandwidth in bytes per second, each direction; unlimited when absent.
    pub bandwidth: Option<u64>,
    /// Concurrent connections (TCP) or peers (UDP); unlimited when absent.
    pub max_connections: Option<u32>,
}

/// What to expose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExposeRequest {
    /// Where the service listens (the container's address and port).
    pub target: SocketAddr,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Ask for this public port; any free one when `None`.
    #[serde(default)]
    pub public_port: Option<u16>,
    /// Limits.
    #[serde(default)]
    pub limits: ExposureLimits,
    /// Labels (owner, container, ...), kept with the exposure.
    #[serde(default)]
    pub labels: Labels,
}

impl ExposeRequest {
    /// Exposes `target` over `protocol` on any free public port, unlimited.
    pub fn new(target: SocketAddr, protocol: Protocol) -> Self {
        Self {
            target,
            protocol,
            public_port: None,
            limits: ExposureLimits::default(),
            labels: Labels::new(),
        }
    }
}

/// A host and port on which visitors reach an exposure.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PublicAddress {
    /// The relay's public host name or address.
    pub host: String,
    /// The public port.
    pub port: u16,
}

impl fmt::Display for PublicAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// An exposure in place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(examples(json!({"id": "exp-4f1c2a9b-80", "relay": "relay-eu", "public": {"host": "play.example.com", "port": 31337}, "target": "10.128.7.2:80", "protocol": "tcp", "limits": {"bandwidth": 1048576, "max_connections": 64}, "labels": {"io.kisara.container": "4f1c2a9b7e3d"}})))
)]
pub struct Exposure {
    /// Its id.
    pub id: ExposureId,
    /// The relay that carries it.
    pub relay: String,
    /// Where visitors connect.
    pub public: PublicAddress,
    /// Where traffic goes.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub target: SocketAddr,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Its limits.
    pub limits: ExposureLimits,
    /// Its labels.
    #[cfg_attr(feature = "openapi", schema(value_type = std::collections::BTreeMap<String, String>))]
    pub labels: Labels,
}
