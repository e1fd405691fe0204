#![doc = include_str!("../README.md")]

// Inside the crate, each layer is built on the ones before it and never on
// a later one: request ids, the engine, the agent link on the engine, the
// session engine on the engine, the HTTP API on all of them.
pub mod http;
mod keyed;
pub mod link;
mod node_id;
mod request_id;
mod server;
pub mod session;
#[cfg(feature = "testing")]
pub mod testing;

pub use request_id::{REQUEST_ID_HEADER, RequestId};

pub use node_id::{NODE_ID_FILE, load_or_create_node_id};
pub use server::{
    ClusterEvent, ClusterNetwork, ContainerQuery, Launched, NetworkRequest, NodeExtras, PullEvent,
    PullStream, Readiness, Server, ServerBuilder, drain_pull,
};
