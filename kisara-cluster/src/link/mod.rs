//! The agent ⇄ server link: how a node on another host becomes a
//! [`kisara_core::ContainerRuntime`] of the server.
//!
//! The agent dials the server (outbound only, so agents behind NAT work and
//! the link passes through an HTTP reverse proxy) with a WebSocket upgrade
//! to [`AGENT_LINK_PATH`] carrying `Authorization: Bearer <token>`, which
//! the server checks in constant time before upgrading. Then:
//!
//! 1. the agent sends a **hello**: protocol version, stable node id,
//!    capacity, runtime name and capabilities, its tunnel's protocols and
//!    its **inventory** (its labelled containers and networks); the server
//!    answers **welcome** (with the heartbeat period) or **refused** (with
//!    why);
//! 2. the server resyncs the node from that inventory
//!    ([`crate::Server::connect_node_with`]): subnets adopted,
//!    exposures restored, no container touched;
//! 3. the server sends **requests** (id, timeout, idempotency key, one
//!    runtime operation); the agent answers each with a **response**;
//!    container **events** and **heartbeats** (node load) flow back;
//! 4. exec, copy, pull and build carry **streams** (binary frames for bytes,
//!    JSON items for progress) with a per-stream window, behind every
//!    control message: a busy terminal never delays a launch;
//! 5. both sides ping; a link silent for three heartbeats is dead. The
//!    agent reconnects with backoff; calls on the server wait for the new
//!    link (up to their timeout), and reads and keyed mutations cut off by
//!    a dying link are sent again, so a retried launch never makes two
//!    containers.
//!
//! Messages over [`MAX_MESSAGE_BYTES`] close the link.
//!
//! **TLS**: the agent dials `wss://` with [`Agent::with_tls`] (its roots
//! verify the server; a client certificate in the config answers a server
//! that demands one), and the server serves TLS with [`TlsListener`] —
//! with a client certificate verifier in its config that is mutual TLS, on
//! top of the token. Or terminate TLS in a reverse proxy in front of a
//! plain `ws://` server: the link is a normal WebSocket upgrade.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> kisara_core::Result<()> {
//! use std::sync::Arc;
//! use kisara_cluster::link::{Agent, AgentGateway, LinkOptions};
//! use kisara_cluster::Server;
//! use kisara_core::memory::{MemoryRuntime, MemorySubnetAllocator};
//! use kisara_core::model::{NodeCapacity, NodeId};
//!
//! let server = Server::builder(Arc::new(MemorySubnetAllocator::new("10.128.0.0/16".parse().unwrap(), 24)?)).build();
//! let gateway = AgentGateway::new(server.clone(), "agent-token".into(), LinkOptions::default())?;
//! let capacity = NodeCapacity { max_containers: 10, bandwidth_in: 1 << 20, bandwidth_out: 1 << 20 };
//! let agent = Agent::new(NodeId::new("node-1")?, capacity, Arc::new(MemoryRuntime::new()));
//!
//! // Any byte stream carries a link; here an in-process pipe.
//! let (server_end, agent_end) = kisara_cluster::link::pipe().await;
//! tokio::spawn(async move { gateway.serve(server_end).await });
//! tokio::spawn(async move { agent.serve_link(agent_end).await });
//! while server.nodes().is_empty() {
//!     tokio::time::sleep(std::time::Duration::from_millis(10)).await;
//! }
//! assert_eq!(server.nodes()[0].node.as_str(), "node-1");
//! # Ok(()) }
//! ```

use std::time::Duration;

mod agent;
mod gateway;
mod peer;
mod remote;
mod tls;
mod wire;

pub use agent::Agent;
pub use gateway::AgentGateway;
pub(crate) use peer::websocket_config;
pub use remote::RemoteRuntime;
pub use tls::TlsListener;
pub use wire::{Hello, MAX_MESSAGE_BYTES, PROTOCOL_VERSION};

/// Where the server accepts agent links.
pub const AGENT_LINK_PATH: &str = "/v1/agents/link";

/// The link's timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LinkOptions {
    /// How often each side pings and the agent reports its load; a link
    /// silent for three periods is dead. Default 2 s. The server's value
    /// wins: it tells the agent in its welcome.
    pub heartbeat: Duration,
    /// How long the hello exchange may take. Default 10 s.
    pub hello_timeout: Duration,
    /// How long the server waits for an answer to one request, link
    /// outages included. Default 120 s (pulls and launches can be slow).
    pub request_timeout: Duration,
    /// The agent's first and longest wait between reconnects. Default
    /// 200 ms and 10 s.
    pub min_backoff: Duration,
    /// See `min_backoff`.
    pub max_backoff: Duration,
}

impl Default for LinkOptions {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(2),
            hello_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(120),
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl LinkOptions {
    /// Sets the heartbeat period.
    pub fn with_heartbeat(mut self, heartbeat: Duration) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// Sets the per-request timeout.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets the reconnect backoff bounds.
    pub fn with_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.min_backoff = min;
        self.max_backoff = max.max(min);
        self
    }

    /// How long a silent link lives.
    pub(crate) fn link_timeout(&self) -> Duration {
        self.heartbeat * 3
    }
}

/// Two ends of an in-process link (a WebSocket over a memory pipe): the
/// server's and the agent's. For tests and single-process deployments.
pub async fn pipe() -> (
    tokio_tungstenite::WebSocketStream<tokio::io::DuplexStream>,
    tokio_tungstenite::WebSocketStream<tokio::io::DuplexStream>,
) {
    use tokio_tungstenite::tungstenite::protocol::Role;
    let (server, agent) = tokio::io::duplex(1 << 20);
    let config = Some(websocket_config());
    let server = tokio_tungstenite::WebSocketStream::from_raw_socket(server, Role::Server, config);
    let agent = tokio_tungstenite::WebSocketStream::from_raw_socket(agent, Role::Client, config);
    tokio::join!(server, agent)
}
