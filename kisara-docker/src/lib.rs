#![doc = include_str!("../README.md")]

mod containers;
mod error;
mod events;
mod exec;
mod files;
pub mod firewall;
mod hijack;
mod images;
mod networks;
mod runtime;
pub mod sidecar;
pub mod static_image;
mod stats;
#[cfg(feature = "testing")]
pub mod testing;

pub use exec::EXEC_MARKER_ENV;
pub use firewall::{Firewall, Isolation};
pub use images::ImageGc;
pub use networks::IsolationReport;
pub use runtime::{
    DEFAULT_HOST, DockerOptions, DockerRuntime, DockerRuntimeBuilder, node_capacity,
};
