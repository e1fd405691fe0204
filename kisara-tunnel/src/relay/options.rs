//! How a relay runs: its listen address, public ports, token and timings.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use kisara_core::Secret;
use kisara_core::config::{PortRange, RelayConfig};

use crate::transport::RelayTls;
use crate::udp;

/// Standby data connections each client keeps open, unless configured
/// otherwise.
const DEFAULT_STANDBY: usize = 4;

/// How a [`Relay`](super::Relay) runs.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Where clients connect (control links and data connections).
    pub listen: SocketAddr,
    /// The host name visitors use; reported in every exposure.
    pub public_host: String,
    /// The address public ports are bound on; `listen`'s address when
    /// `None`.
    pub public_bind: Option<IpAddr>,
    /// Public ports handed out.
    pub port_range: PortRange,
    /// The shared token; must not be empty.
    pub token: Secret,
    /// How long a disconnected client's exposures stay in place (ports
    /// kept, visitors refused) so that a restarted client takes them back.
    pub grace: Duration,
    /// Heartbeat interval on control links; a link silent for three
    /// intervals is dropped.
    pub heartbeat: Duration,
    /// A UDP session with no datagram either way for this long ends.
    pub udp_idle: Duration,
    /// UDP sessions (peers) one exposure carries at once when it sets no
    /// `max_connections`; a new peer beyond them is dropped. Each session
    /// costs a socket on the relay and two on the client, and anyone can
    /// open one per source address: without a bound, one host cycling
    /// through source ports would run both out of file descriptors.
    pub udp_peers: usize,
    /// TLS on the client port (control links and data connections); UDP
    /// session channels stay plain.
    pub tls: Option<RelayTls>,
    /// Idle data connections each client keeps open to this relay, so a
    /// TCP visitor is carried at once instead of waiting for a new
    /// connection from the client (each costs a socket on both sides);
    /// visitors beyond them wait for a dial. 0 turns them off.
    pub standby: usize,
}

impl RelayOptions {
    /// Options listening on `listen` with `token`, public ports
    /// 20000–50000 on the same address, reported as `listen`'s address.
    pub fn new(listen: SocketAddr, token: impl Into<Secret>) -> Self {
        Self {
            listen,
            public_host: listen.ip().to_string(),
            public_bind: None,
            port_range: kisara_net::DEFAULT_PORT_RANGE,
            token: token.into(),
            grace: Duration::from_secs(60),
            heartbeat: Duration::from_secs(15),
            udp_idle: udp::DEFAULT_IDLE,
            udp_peers: udp::DEFAULT_PEERS,
            tls: None,
            standby: DEFAULT_STANDBY,
        }
    }

    /// Options from the `[relay]` config section.
    pub fn from_config(config: &RelayConfig) -> Self {
        let mut options = Self::new(config.listen, config.token.clone());
        options.public_host = config.public_host.clone();
        options.port_range = config.port_range;
        options
    }

    /// Sets the public ports.
    pub fn with_port_range(mut self, range: PortRange) -> Self {
        self.port_range = range;
        self
    }

    /// Sets how long a disconnected client's exposures are held.
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Serves clients over TLS.
    pub fn with_tls(mut self, tls: RelayTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets the UDP session idle expiry.
    pub fn with_udp_idle(mut self, idle: Duration) -> Self {
        self.udp_idle = idle;
        self
    }

    /// Sets how many UDP peers an exposure without `max_connections`
    /// carries at once.
    pub fn with_udp_peers(mut self, peers: usize) -> Self {
        self.udp_peers = peers;
        self
    }

    /// Sets how many idle data connections each client keeps open.
    pub fn with_standby(mut self, standby: usize) -> Self {
        self.standby = standby;
        self
    }
}
