//! Nodes and their capacity.

use serde::{Deserialize, Serialize};

use super::NodeId;

/// What a node may carry, as configured on its agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeCapacity {
    /// The most containers it runs at once (the Go original's `max_container`).
    pub max_containers: u32,
    /// Inbound bandwidth in bytes per second (`network_in`).
    pub bandwidth_in: u64,
    /// Outbound bandwidth in bytes per second (`network_out`).
    pub bandwidth_out: u64,
}

/// A node's current load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeStats {
    /// Kisara containers running.
    pub containers: u32,
    /// Inbound traffic, bytes per second.
    pub bandwidth_in: u64,
    /// Outbound traffic, bytes per second.
    pub bandwidth_out: u64,
    /// CPU use as a fraction of all cores, 0.0 to 1.0.
    pub cpu: f64,
    /// Memory use as a fraction of the total, 0.0 to 1.0.
    pub memory: f64,
}

/// A node as placement sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(examples(json!({"node": "n1", "online": true, "capacity": {"max_containers": 80, "bandwidth_in": 52428800, "bandwidth_out": 52428800}, "stats": {"containers": 3, "bandwidth_in": 1048576, "bandwidth_out": 2097152, "cpu": 0.25, "memory": 0.4}})))
)]
pub struct NodeLoad {
    /// The node.
    pub node: NodeId,
    /// Whether its link is up.
    pub online: bool,
    /// What it may carry.
    pub capacity: NodeCapacity,
    /// What it carries now.
    pub stats: NodeStats,
}

/// The Kisara objects on a node, as its agent presents them when it links.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// Its Kisara containers, running or not.
    pub containers: Vec<super::ContainerInfo>,
    /// Its Kisara networks.
    pub networks: Vec<super::NetworkInfo>,
}
