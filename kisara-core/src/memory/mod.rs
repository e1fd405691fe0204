//! In-memory implementations of every backend trait: the reference for each
//! contract, and the backends the cluster layer is tested with.

mod access;
mod runtime;
mod shell;
mod subnet;
mod tunnel;

pub use access::{MemoryAuditSink, PrefixPolicy, StaticAuthenticator, StaticConfigProvider};
pub use runtime::MemoryRuntime;
pub use subnet::MemorySubnetAllocator;
pub use tunnel::LoopbackTunnel;
