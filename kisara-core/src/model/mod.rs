//! The domain model: plain serializable data, also the wire and HTTP
//! vocabulary.

mod container;
mod event;
mod exec;
mod exposure;
mod ids;
mod image;
pub mod labels;
mod network;
mod node;
pub mod pool;
mod port;
#[cfg(feature = "openapi")]
mod schema;

pub use container::{
    ContainerInfo, ContainerSpec, ContainerState, ContainerStats, LaunchRequest, Mount,
    NetworkAttachment, ResourceLimits,
};
pub use event::{ContainerEvent, ContainerEventKind, NodeEvent};
pub use exec::{ExecOutput, ExecSpec, ExecStatus, TtySize};
pub use exposure::{ExposeRequest, Exposure, ExposureLimits, PublicAddress};
pub use ids::{
    ContainerId, ExecId, ExposureId, NetworkId, NodeId, SessionId, Timestamp, duration_secs,
};
pub use image::{BuildSpec, ImageInfo, ImageRef, Progress, check_path_component};
pub use labels::{LabelFilter, Labels};
pub use network::{NetworkDriver, NetworkInfo, NetworkSpec};
pub use node::{Inventory, NodeCapacity, NodeLoad, NodeStats};
pub use port::{ContainerPort, Protocol};
