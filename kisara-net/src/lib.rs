#![doc = include_str!("../README.md")]

mod allocator;
mod error;
mod intervals;
mod port_pool;
mod port_spec;

pub use allocator::{PoolAllocator, PoolStats, Restored};
pub use error::Error;
// The pool grammar lives in kisara-core, so that config validation reports
// bad pools; it is re-exported here with the allocator built on it.
pub use kisara_core::config::DEFAULT_PORT_RANGE;
pub use kisara_core::model::pool::{
    DEFAULT_POOL, GO_DEFAULT_POOL, PRIVATE_RANGES, PoolPattern, SubnetPool,
};
pub use port_pool::{PortPool, PortUsage};
pub use port_spec::PortSpec;
