//! [`Server`]: cluster networks: a subnet from the pool, created on every node.

use super::*;

impl Server {
    /// Creates a network with a subnet from the pool (or the given one) on
    /// the requested nodes; all or nothing.
    pub async fn create_network(&self, request: &NetworkRequest) -> Result<ClusterNetwork> {
        // Only a subnet this call took may be given back on failure: the
        // name may already hold one for a network that exists.
        let held_before = self.inner.subnets.lookup(&request.name).await?;
        let subnet = match request.subnet {
            Some(subnet) => {
                self.inner.subnets.adopt(&request.name, subnet).await?;
                subnet
            }
            None => self.inner.subnets.allocate(&request.name).await?,
        };
        let give_back = || async {
            if held_before.is_none() {
                self.inner.subnets.release(&request.name).await?;
            }
            Ok::<(), Error>(())
        };
        let mut targets = self.targets(request.node.as_ref())?;
        // An overlay spans the swarm from one node; a bridge is per node.
        if request.node.is_none() && request.driver == NetworkDriver::Overlay {
            targets.truncate(1);
        }
        if targets.is_empty() {
            give_back().await?;
            return Err(Error::unavailable(format!(
                "no online node to create network {:?} on",
                request.name
            )));
        }
        let spec = NetworkSpec {
            name: request.name.clone(),
            subnet: Some(subnet),
            gateway: None,
            driver: request.driver,
            internal: request.internal,
            labels: Default::default(),
            node: None,
        };
        let mut created = Vec::new();
        for (node, runtime) in &targets {
            match runtime.create_network(&spec).await {
                Ok(info) => created.push((node.clone(), info)),
                Err(error) => {
                    for (node, info) in &created {
                        if let Ok(runtime) = self.runtime_of(node) {
                            let _ = runtime.remove_network(&info.id).await;
                        }
                    }
                    give_back().await?;
                    return Err(error);
                }
            }
        }
        Ok(ClusterNetwork {
            subnet,
            nodes: created,
        })
    }

    /// Kisara networks on every online node, with their nodes.
    pub async fn list_networks(&self) -> Result<Vec<(NodeId, NetworkInfo)>> {
        Self::gather(self.online_nodes(), |runtime| async move {
            runtime.list_networks(&LabelFilter::managed()).await
        })
        .await
    }

    /// Removes a network from every online node and frees its subnet.
    pub async fn remove_network(&self, name: &str) -> Result<()> {
        for (node, network) in self.list_networks().await? {
            if network.name == name {
                self.runtime_of(&node)?.remove_network(&network.id).await?;
            }
        }
        self.inner.subnets.release(name).await
    }
}
