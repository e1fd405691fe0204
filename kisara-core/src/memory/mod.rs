//! In-memory test doubles of the backend traits: the reference for each
//! contract, and the backends the cluster layer and embedders' own tests
//! run against. Nothing here persists or talks to a real engine; the
//! built-in backends meant for production are in [`crate::builtin`].

mod audit;
mod recording;
mod runtime;
mod shell;
mod subnet;
mod tunnel;

pub use audit::MemoryAuditSink;
pub use recording::MemoryRecordingStore;
pub use runtime::MemoryRuntime;
pub use subnet::MemorySubnetAllocator;
pub use tunnel::LoopbackTunnel;
