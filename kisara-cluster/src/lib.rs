#![doc = include_str!("../README.md")]

// Inside the crate, each layer is built on the ones above it in this list
// and never on one below: the engine, the agent link on the engine, the
// HTTP API on both.
pub mod http;
mod keyed;
pub mod link;
mod node_id;
mod server;

pub use node_id::{NODE_ID_FILE, load_or_create_node_id};
pub use server::{
    ClusterEvent, ClusterNetwork, ContainerQuery, Launched, NetworkRequest, NodeExtras, PullEvent,
    PullStream, Server, ServerBuilder, drain_pull,
};
