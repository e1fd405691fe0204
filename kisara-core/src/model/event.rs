//! Events from runtimes and nodes.

use serde::{Deserialize, Serialize};

use super::{ContainerId, Labels, NodeCapacity, NodeId, NodeStats, Timestamp};

/// What happened to a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContainerEventKind {
    /// Created.
    Create,
    /// Started.
    Start,
    /// Its main process exited.
    Die {
        /// The exit code.
        exit_code: i64,
    },
    /// The kernel killed a process of it for running out of memory. When
    /// that process was the main one, this may come before or after the
    /// `Die` event: the engine passes both on as containerd reports them.
    Oom,
    /// Removed.
    Destroy,
}

/// An event of one container, with its labels at the time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerEvent {
    /// The container's id.
    pub container: ContainerId,
    /// What happened.
    #[serde(flatten)]
    pub kind: ContainerEventKind,
    /// The container's labels (owner, module, ... under `io.kisara.*`).
    pub labels: Labels,
    /// When.
    pub time: Timestamp,
}

/// An event of a node of the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NodeEvent {
    /// The node's agent connected (or reconnected).
    Connected {
        /// The node.
        node: NodeId,
        /// Its declared capacity.
        capacity: NodeCapacity,
    },
    /// The node's link was lost or closed.
    Disconnected {
        /// The node.
        node: NodeId,
        /// Why, as far as known.
        reason: String,
    },
    /// A heartbeat arrived.
    Heartbeat {
        /// The node.
        node: NodeId,
        /// Its current load.
        stats: NodeStats,
    },
}
