//! Fixtures shared by the integration tests: a relay and a client on
//! loopback, wrapped as one `Tunnel`.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kisara_core::Tunnel;
use kisara_core::model::{ExposeRequest, Exposure, ExposureId, LabelFilter, Protocol};
use kisara_tunnel::{Relay, RelayOptions, TunnelClient};

/// The token every fixture uses.
pub const TOKEN: &str = "correct horse battery staple";

/// A relay on `127.0.0.1:0` with short timers for tests.
pub async fn relay() -> Relay {
    relay_on("127.0.0.1:0".parse().unwrap()).await
}

/// A relay on `listen` with short timers for tests.
pub async fn relay_on(listen: std::net::SocketAddr) -> Relay {
    let options = RelayOptions::new(listen, TOKEN)
        .with_grace(Duration::from_secs(30))
        .with_udp_idle(Duration::from_secs(5));
    Relay::bind(options).await.unwrap()
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
