#![doc = include_str!("../README.md")]

mod allocator;
mod error;
mod intervals;
mod pattern;
mod port_pool;
mod port_spec;
mod shape;

pub use allocator::{PoolAllocator, PoolStats, Restored};
pub use error::Error;
pub use pattern::{DEFAULT_POOL, GO_DEFAULT_POOL, PoolPattern, SubnetPool};
pub use port_pool::{DEFAULT_PORT_RANGE, PortPool, PortUsage};
pub use port_spec::PortSpec;
