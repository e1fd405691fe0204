//! The default [`Placement`] policy: most headroom wins.

use crate::model::{NodeId, NodeLoad};
use crate::{Error, Placement, Result};

/// Places a launch on the node with the most headroom.
///
/// A node's headroom is the smallest of its free fractions: container slots
/// (`1 - containers / max_containers`), inbound and outbound bandwidth
/// (`1 - used / capacity`, ignored when the capacity is 0). All three are
/// fractions in 0..=1 (the Go original compared percentages with fractions,
/// so its choice was arbitrary). Offline and full nodes are never chosen;
/// ties go to the smallest node id, so the choice is deterministic.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeadroomPlacement;

/// The free fraction of `capacity` once `used` is taken; `None` when the
/// capacity is not limited (0).
fn free_fraction(used: u64, capacity: u64) -> Option<f64> {
    (capacity > 0).then(|| (1.0 - used as f64 / capacity as f64).clamp(0.0, 1.0))
}

impl HeadroomPlacement {
    /// The node's headroom in 0..=1; 0 for a full node.
    pub fn headroom(load: &NodeLoad) -> f64 {
        let slots = free_fraction(
            u64::from(load.stats.containers),
            u64::from(load.capacity.max_containers),
        )
        .unwrap_or(0.0);
        [
            Some(slots),
            free_fraction(load.stats.bandwidth_in, load.capacity.bandwidth_in),
            free_fraction(load.stats.bandwidth_out, load.capacity.bandwidth_out),
        ]
        .into_iter()
        .flatten()
        .fold(1.0, f64::min)
    }

    fn is_full(load: &NodeLoad) -> bool {
        load.stats.containers >= load.capacity.max_containers
    }
}

impl Placement for HeadroomPlacement {
    fn place(&self, requested: Option<&NodeId>, nodes: &[NodeLoad]) -> Result<NodeId> {
        if let Some(wanted) = requested {
            let load = nodes
                .iter()
                .find(|load| &load.node == wanted)
                .ok_or_else(|| Error::not_found("node", wanted.as_str()))?;
            if !load.online {
                return Err(Error::unavailable(format!("node {wanted} is offline")));
            }
            if Self::is_full(load) {
                return Err(Error::exhausted(format!(
                    "node {wanted} is full: {} of {} containers",
                    load.stats.containers, load.capacity.max_containers
                )));
            }
            return Ok(wanted.clone());
        }
        nodes
            .iter()
            .filter(|load| load.online && !Self::is_full(load))
            .map(|load| (Self::headroom(load), load))
            // Highest headroom first; on a tie the smaller id.
            .max_by(|(a, la), (b, lb)| a.total_cmp(b).then_with(|| lb.node.cmp(&la.node)))
            .map(|(_, load)| load.node.clone())
            .ok_or_else(|| {
                let online = nodes.iter().filter(|load| load.online).count();
                Error::exhausted(format!(
                    "no node can take a container: {} node(s), {online} online, all online ones full",
                    nodes.len()
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NodeCapacity, NodeStats};

    fn load(id: &str, online: bool, containers: u32, max: u32, bw_in: u64) -> NodeLoad {
        NodeLoad {
            node: NodeId::new(id).unwrap(),
            online,
            capacity: NodeCapacity {
                max_containers: max,
                bandwidth_in: 1000,
                bandwidth_out: 0,
            },
            stats: NodeStats {
                containers,
                bandwidth_in: bw_in,
                ..NodeStats::default()
            },
        }
    }

    #[test]
    fn most_headroom_wins_and_full_or_offline_nodes_never_do() {
        let nodes = [
            load("a", true, 70, 80, 0),   // 12.5 % slots free
            load("b", true, 10, 80, 900), // 10 % bandwidth free
            load("c", true, 40, 80, 100), // 50 % slots free
            load("d", false, 0, 80, 0),   // offline
            load("e", true, 80, 80, 0),   // full
        ];
        assert_eq!(HeadroomPlacement.place(None, &nodes).unwrap().as_str(), "c");
        let only_bad = [nodes[3].clone(), nodes[4].clone()];
        let err = HeadroomPlacement.place(None, &only_bad).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Exhausted);
    }

    #[test]
    fn ties_go_to_the_smallest_id() {
        let nodes = [load("n2", true, 0, 10, 0), load("n1", true, 0, 10, 0)];
        assert_eq!(
            HeadroomPlacement.place(None, &nodes).unwrap().as_str(),
            "n1"
        );
    }

    #[test]
    fn an_explicit_node_is_honoured_or_refused_by_name() {
        let nodes = [
            load("a", true, 0, 10, 0),
            load("off", false, 0, 10, 0),
            load("full", true, 10, 10, 0),
        ];
        let pick = |id: &str| HeadroomPlacement.place(Some(&NodeId::new(id).unwrap()), &nodes);
        assert_eq!(pick("a").unwrap().as_str(), "a");
        for (id, kind) in [
            ("nope", crate::ErrorKind::NotFound),
            ("off", crate::ErrorKind::Unavailable),
            ("full", crate::ErrorKind::Exhausted),
        ] {
            let err = pick(id).unwrap_err();
            assert_eq!(err.kind(), kind);
            assert!(err.to_string().contains(id), "{err}");
        }
    }
}
