//! Conformance cases for [`Placement`].

use std::sync::Arc;

use super::{Fixture, Outcome, suite};
use crate::model::{NodeCapacity, NodeId, NodeLoad, NodeStats};
use crate::{ErrorKind, Placement};

impl Fixture for Arc<dyn Placement> {}

suite!(all, "Placement", CASES: Arc<dyn Placement>:
    explicit_node_is_honoured,
    explicit_node_refusals_name_the_node,
    full_and_offline_nodes_are_never_chosen,
    no_usable_node_is_exhausted,
    placement_is_deterministic,
);

fn node(id: &str, online: bool, containers: u32, max_containers: u32) -> NodeLoad {
    NodeLoad {
        node: NodeId::new(id).unwrap(),
        online,
        capacity: NodeCapacity {
            max_containers,
            bandwidth_in: 50 * 1024 * 1024,
            bandwidth_out: 50 * 1024 * 1024,
        },
        stats: NodeStats {
            containers,
            ..NodeStats::default()
        },
    }
}

fn cluster() -> Vec<NodeLoad> {
    // Unusable nodes first, so a policy that takes the first node fails.
    vec![
        node("full", true, 80, 80),
        node("offline", false, 0, 80),
        node("busy", true, 60, 80),
        node("idle", true, 1, 80),
    ]
}

/// A requested node that is online and not full is used, even when busier.
pub async fn explicit_node_is_honoured(placement: Arc<dyn Placement>) -> Outcome {
    let busy = NodeId::new("busy").unwrap();
    assert_eq!(placement.place(Some(&busy), &cluster()).unwrap(), busy);
    Outcome::Passed
}

/// Unknown, offline and full requested nodes are refused, naming the node.
pub async fn explicit_node_refusals_name_the_node(placement: Arc<dyn Placement>) -> Outcome {
    for (id, kind) in [
        ("unknown", ErrorKind::NotFound),
        ("offline", ErrorKind::Unavailable),
        ("full", ErrorKind::Exhausted),
    ] {
        let err = placement
            .place(Some(&NodeId::new(id).unwrap()), &cluster())
            .unwrap_err();
        assert_eq!(err.kind(), kind, "requesting {id}: {err}");
        assert!(err.to_string().contains(id), "the error names {id}: {err}");
    }
    Outcome::Passed
}

/// Whatever the policy prefers, it never picks a full or offline node.
pub async fn full_and_offline_nodes_are_never_chosen(placement: Arc<dyn Placement>) -> Outcome {
    let nodes = cluster();
    for _ in 0..16 {
        let chosen = placement.place(None, &nodes).unwrap();
        assert!(
            chosen.as_str() == "busy" || chosen.as_str() == "idle",
            "chose {chosen}, which is full or offline"
        );
    }
    Outcome::Passed
}

/// With no usable node the answer is `Exhausted`.
pub async fn no_usable_node_is_exhausted(placement: Arc<dyn Placement>) -> Outcome {
    let nodes = [node("full", true, 80, 80), node("offline", false, 0, 80)];
    assert_eq!(
        placement.place(None, &nodes).unwrap_err().kind(),
        ErrorKind::Exhausted
    );
    assert_eq!(
        placement.place(None, &[]).unwrap_err().kind(),
        ErrorKind::Exhausted
    );
    Outcome::Passed
}

/// The same input gives the same node.
pub async fn placement_is_deterministic(placement: Arc<dyn Placement>) -> Outcome {
    let nodes = cluster();
    let first = placement.place(None, &nodes).unwrap();
    for _ in 0..16 {
        assert_eq!(placement.place(None, &nodes).unwrap(), first);
    }
    Outcome::Passed
}
