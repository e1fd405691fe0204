//! Whether the server can serve: a node answers, and the relays it exposes
//! ports through answer.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use serde::Serialize;

use super::Server;
use kisara_core::model::{LabelFilter, NodeId};
use kisara_core::sync::lock;
use kisara_core::{ContainerRuntime, Tunnel};

/// How long one engine or relay may take to answer a readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What [`Server::readiness`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(examples(json!({"ready": false, "reasons": [
    "node n2 is offline: its link is down",
    "node n1's engine does not answer: engine unavailable: connection refused"
]})))]
pub struct Readiness {
    /// True when at least one node is online with an engine that answers,
    /// every online node's engine answers and every relay link answers.
    pub ready: bool,
    /// Why it is not ready, one line each; also the offline nodes, which do
    /// not make the server unready while another node serves.
    pub reasons: Vec<String>,
}

impl Server {
    /// Probes what serving needs: every online node's engine (its node
    /// stats), the relays (the server's tunnel and the nodes' own, by
    /// listing their exposures), each within two seconds.
    pub async fn readiness(&self) -> Readiness {
        let (online, offline, tunnels) = {
            let nodes = lock(&self.inner.nodes);
            let mut online: Vec<(NodeId, Arc<dyn ContainerRuntime>)> = Vec::new();
            let mut offline = Vec::new();
            let mut tunnels: Vec<(String, Arc<dyn Tunnel>)> = Vec::new();
            for (id, entry) in nodes.iter() {
                if entry.online {
                    online.push((id.clone(), entry.runtime.clone()));
                    if let Some(tunnel) = &entry.tunnel {
                        tunnels.push((format!("node {id}'s relay link"), tunnel.clone()));
                    }
                } else {
                    offline.push(id.clone());
                }
            }
            if let Some(tunnel) = &self.inner.tunnel {
                tunnels.push(("the server's relay link".to_owned(), tunnel.clone()));
            }
            (online, offline, tunnels)
        };
        let engines = join_all(online.iter().map(|(id, runtime)| async move {
            match tokio::time::timeout(PROBE_TIMEOUT, runtime.node_stats()).await {
                Ok(Ok(_)) => None,
                Ok(Err(error)) => Some(format!("node {id}'s engine does not answer: {error}")),
                Err(_) => Some(format!(
                    "node {id}'s engine does not answer within {PROBE_TIMEOUT:?}"
                )),
            }
        }));
        let relays = join_all(tunnels.iter().map(|(what, tunnel)| async move {
            match tokio::time::timeout(PROBE_TIMEOUT, tunnel.list(&LabelFilter::managed())).await {
                Ok(Ok(_)) => None,
                Ok(Err(error)) => Some(format!("{what} does not answer: {error}")),
                Err(_) => Some(format!("{what} does not answer within {PROBE_TIMEOUT:?}")),
            }
        }));
        let (engines, relays) = futures::join!(engines, relays);
        let mut reasons = Vec::new();
        let mut ready = true;
        if online.is_empty() {
            ready = false;
            reasons.push("no node is connected".to_owned());
        }
        for reason in engines.into_iter().chain(relays).flatten() {
            ready = false;
            reasons.push(reason);
        }
        reasons.extend(
            offline
                .iter()
                .map(|id| format!("node {id} is offline: its link is down")),
        );
        Readiness { ready, reasons }
    }
}
