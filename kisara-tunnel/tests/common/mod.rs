//! Fixtures shared by the integration tests: a relay and a client on
//! loopback, wrapped as one `Tunnel`.

#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use kisara_core::Tunnel;
use kisara_core::config::PortRange;
use kisara_core::model::{ExposeRequest, Exposure, ExposureId, LabelFilter, Protocol};
use kisara_tunnel::{Relay, RelayOptions, TunnelClient};

/// The token every fixture uses.
pub const TOKEN: &str = "correct horse battery staple";

/// A relay on `127.0.0.1:0` with short timers for tests.
pub async fn relay() -> Relay {
    relay_with(|options| options).await
}

/// A relay on `127.0.0.1:0` with the test options changed by `adjust`.
pub async fn relay_with(adjust: impl FnOnce(RelayOptions) -> RelayOptions) -> Relay {
    Relay::bind(adjust(options("127.0.0.1:0".parse().unwrap())))
        .await
        .unwrap()
}

/// Relay options with short timers for tests, and public ports from this
/// process's own slice of the range.
fn options(listen: std::net::SocketAddr) -> RelayOptions {
    RelayOptions::new(listen, TOKEN)
        .with_grace(Duration::from_secs(30))
        .with_udp_idle(Duration::from_secs(5))
        .with_port_range(public_ports())
}

/// 500 public ports picked once per process (the most any test uses is
/// 300). Each test runs in a process of its own beside others, and every
/// relay hands out the first free port of its range: with one range for
/// all, a test asking for a port by number (the same number for TCP and
/// UDP, a port kept across a restart) found it held by another test's
/// relay. The slices lie below Linux's ephemeral ports (32768 and up), so
/// no outgoing connection holds one either.
fn public_ports() -> PortRange {
    static PORTS: OnceLock<PortRange> = OnceLock::new();
    *PORTS.get_or_init(|| {
        let start = 20000 + (kisara_core::testing::random_u64() % 25) as u16 * 500;
        PortRange {
            start,
            end: start + 499,
        }
    })
}

/// A relay bound again on `listen` after a restart. Tests in other
/// processes run beside this one, and one of their outgoing connections
/// may briefly hold `listen`'s port as its ephemeral port, so an
/// `AddrInUse` is retried for a few seconds.
pub async fn relay_rebound(listen: std::net::SocketAddr) -> Relay {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match Relay::bind(options(listen)).await {
            Ok(relay) => return relay,
            Err(kisara_tunnel::TunnelError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("rebinding the relay on {listen}: {e}"),
        }
    }
}

/// A relay, a client named `id` linked to it, and an exposure of `target`
/// over `protocol` through them.
pub async fn exposed(
    id: &str,
    target: std::net::SocketAddr,
    protocol: Protocol,
) -> (Relay, TunnelClient, Exposure) {
    let relay = relay().await;
    let client = client(id, &relay).await;
    let exposure = client
        .expose(&ExposeRequest::new(target, protocol))
        .await
        .unwrap();
    (relay, client, exposure)
}

/// A client named `id` linked to `relay`.
pub async fn client(id: &str, relay: &Relay) -> TunnelClient {
    TunnelClient::builder(id)
        .relay("relay-a", relay.local_addr().to_string(), TOKEN)
        .with_max_backoff(Duration::from_millis(200))
        .connect()
        .await
        .unwrap()
}

/// A relay and its client as one tunnel, for the conformance suite.
#[derive(Debug)]
pub struct Pair {
    /// The relay.
    pub relay: Relay,
    /// The client linked to it.
    pub client: TunnelClient,
}

impl Pair {
    /// A fresh relay and client.
    pub async fn new() -> Arc<Self> {
        let relay = relay().await;
        let id = format!("node-{}", kisara_core::testing::random_u64());
        let client = client(&id, &relay).await;
        Arc::new(Self { relay, client })
    }
}

#[async_trait]
impl Tunnel for Pair {
    fn supports(&self, protocol: Protocol) -> bool {
        self.client.supports(protocol)
    }

    async fn expose(&self, request: &ExposeRequest) -> kisara_core::Result<Exposure> {
        self.client.expose(request).await
    }

    async fn withdraw(&self, exposure: &ExposureId) -> kisara_core::Result<()> {
        self.client.withdraw(exposure).await
    }

    async fn list(&self, filter: &LabelFilter) -> kisara_core::Result<Vec<Exposure>> {
        self.client.list(filter).await
    }
}

/// Sockets on this machine (IPv4) with `port` at either end, listeners
/// left out: both ends of each loopback connection, and those waiting out
/// `TIME_WAIT`.
#[cfg(target_os = "linux")]
pub fn sockets_on_port(port: u16) -> usize {
    const LISTEN: &str = "0A";
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port_of = |address: &str| {
        let hex = address.rsplit(':').next().unwrap_or_default();
        u16::from_str_radix(hex, 16).ok()
    };
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 3
                && fields[3] != LISTEN
                && (port_of(fields[1]) == Some(port) || port_of(fields[2]) == Some(port))
        })
        .count()
}

/// Sends 100 visitors to `exposure` (an echo) one after another, half of
/// them leaving with a reset: each is echoed, and their data connections
/// are reused instead of one opened and closed per visitor (which would
/// leave a `TIME_WAIT` socket each on `relay`'s port).
#[cfg(target_os = "linux")]
pub async fn assert_visitors_reuse_data_connections(relay: &Relay, exposure: &Exposure) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const VISITORS: usize = 100;
    for i in 0..VISITORS {
        let mut visitor =
            tokio::net::TcpStream::connect((exposure.public.host.as_str(), exposure.public.port))
                .await
                .unwrap();
        let message = format!("visitor {i}");
        visitor.write_all(message.as_bytes()).await.unwrap();
        let mut back = vec![0u8; message.len()];
        visitor.read_exact(&mut back).await.unwrap();
        assert_eq!(back, message.as_bytes());
        if i % 2 == 0 {
            visitor.set_zero_linger().unwrap();
        } else {
            visitor.shutdown().await.unwrap();
            let mut rest = Vec::new();
            visitor.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty(), "bytes after the echo: {rest:?}");
        }
    }
    assert_data_connections_kept(relay, VISITORS);
}

/// Asserts that `visitors` (sequential, done) left `relay`'s port with
/// about the control link and the standby connections (4, up to 8 once
/// visitors hand theirs back), two sockets each: a data connection opened
/// and closed per visitor leaves one more socket each (110 for 100
/// visitors). On a loaded machine a visitor now and then comes before the
/// previous one's connection is back and gets a fresh one, so a few more
/// are tolerated: up to a third of the visitors beyond that base.
#[cfg(target_os = "linux")]
pub fn assert_data_connections_kept(relay: &Relay, visitors: usize) {
    let sockets = sockets_on_port(relay.local_addr().port());
    assert!(
        sockets <= 2 * (1 + 8) + visitors / 3,
        "{sockets} sockets on the relay's port after {visitors} visitors"
    );
}
