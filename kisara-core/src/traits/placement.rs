//! [`Placement`]: which node gets a launch.

use std::fmt;

use crate::Result;
use crate::model::{NodeId, NodeLoad};

/// Picks the node for a launch from the nodes' capacity and load.
///
/// Synchronous on purpose: placement is a pure decision over the loads the
/// caller passes, made under the caller's lock so two launches cannot both
/// take a node's last slot.
///
/// # Contract
///
/// - With `requested` set, that node is returned when it is known, online
///   and not full; otherwise [`crate::Error::NotFound`],
///   [`crate::Error::Unavailable`] or [`crate::Error::Exhausted`] naming it.
/// - Without, the result is an online node that is not full (fewer
///   containers than `max_containers`); when there is none,
///   [`crate::Error::Exhausted`].
/// - Deterministic for the same input, so placement can be tested and
///   reasoned about.
pub trait Placement: Send + Sync + fmt::Debug {
    /// Picks a node from `nodes`.
    fn place(&self, requested: Option<&NodeId>, nodes: &[NodeLoad]) -> Result<NodeId>;
}
