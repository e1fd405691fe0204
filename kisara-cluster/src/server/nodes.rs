//! [`Server`]: nodes joining, leaving and beating, and the calls that reach them.

use super::*;

impl Server {
    /// Adds (or re-adds, after a reconnect) a node and rebuilds what the
    /// server knows of it from its labelled objects: its containers, its
    /// networks' subnets (adopted into the pool) and the exposures of its
    /// running containers (re-exposed where missing). No container is
    /// stopped.
    pub async fn connect_node(
        &self,
        node: NodeId,
        capacity: NodeCapacity,
        runtime: Arc<dyn ContainerRuntime>,
    ) -> Result<()> {
        self.connect_node_with(node, capacity, runtime, NodeExtras::default())
            .await
    }

    /// [`Server::connect_node`] for a node that brings more along: its own
    /// tunnel, or the inventory it presented (see [`NodeExtras`]).
    pub async fn connect_node_with(
        &self,
        node: NodeId,
        capacity: NodeCapacity,
        runtime: Arc<dyn ContainerRuntime>,
        extras: NodeExtras,
    ) -> Result<()> {
        let NodeExtras { tunnel, inventory } = extras;
        let span = tracing::info_span!("connect_node", %node);
        async {
            let Inventory {
                containers,
                networks,
            } = match inventory {
                Some(inventory) => inventory,
                None => Inventory {
                    containers: runtime.list(&LabelFilter::managed()).await?,
                    networks: runtime.list_networks(&LabelFilter::managed()).await?,
                },
            };
            for network in networks {
                let subnet = network
                    .labels
                    .get(labels::SUBNET)
                    .and_then(|s| s.parse::<IpNet>().ok());
                let name = network.labels.get(labels::NETWORK).unwrap_or(&network.name);
                if let Some(subnet) = subnet
                    && let Err(error) = self.inner.subnets.adopt(name, subnet).await
                {
                    tracing::warn!(%error, network = %name, "cannot adopt the subnet of a network");
                }
            }
            let running: Vec<&ContainerInfo> = containers
                .iter()
                .filter(|c| c.state == ContainerState::Running)
                .collect();
            let exposing = tunnel.clone().or_else(|| self.inner.tunnel.clone());
            for container in &running {
                Self::restore_exposures(exposing.as_ref(), container).await?;
            }
            let stats = runtime.node_stats().await?;
            let watcher = self.watch(node.clone(), runtime.clone()).await?;
            {
                let mut locations = lock(&self.inner.locations);
                for container in &containers {
                    locations.insert(container.id.clone(), node.clone());
                }
            }
            let previous = lock(&self.inner.nodes).insert(
                node.clone(),
                NodeEntry {
                    runtime,
                    tunnel,
                    capacity,
                    online: true,
                    stats,
                    reserved: 0,
                    watcher: Some(watcher),
                },
            );
            if let Some(task) = previous.and_then(|p| p.watcher) {
                task.abort();
            }
            tracing::info!(
                containers = containers.len(),
                running = running.len(),
                "node connected"
            );
            self.record_nodes_online();
            self.inner
                .emit(&ClusterEvent::Node(NodeEvent::Connected { node, capacity }));
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// Marks a node offline: placement skips it; its containers keep running
    /// and are found again when it reconnects.
    pub fn disconnect_node(&self, node: &NodeId, reason: &str) {
        let known = {
            let mut nodes = lock(&self.inner.nodes);
            nodes.get_mut(node).map(|entry| {
                entry.online = false;
                if let Some(task) = entry.watcher.take() {
                    task.abort();
                }
            })
        };
        if known.is_some() {
            tracing::info!(%node, reason, "node disconnected");
            self.record_nodes_online();
            self.inner
                .emit(&ClusterEvent::Node(NodeEvent::Disconnected {
                    node: node.clone(),
                    reason: reason.to_owned(),
                }));
        }
    }

    /// Records a node's current load.
    pub fn heartbeat(&self, node: &NodeId, stats: NodeStats) -> Result<()> {
        {
            let mut nodes = lock(&self.inner.nodes);
            let entry = nodes
                .get_mut(node)
                .ok_or_else(|| Error::not_found("node", node.as_str()))?;
            entry.stats = stats;
        }
        self.inner.emit(&ClusterEvent::Node(NodeEvent::Heartbeat {
            node: node.clone(),
            stats,
        }));
        Ok(())
    }

    pub(super) fn record_nodes_online(&self) {
        let online = lock(&self.inner.nodes)
            .values()
            .filter(|n| n.online)
            .count();
        metrics::gauge!("kisara_nodes_online").set(online as f64);
    }

    /// Every node with its load, as placement sees it.
    pub fn nodes(&self) -> Vec<NodeLoad> {
        let nodes = lock(&self.inner.nodes);
        nodes.iter().map(|(id, entry)| entry.load(id)).collect()
    }

    /// Forwards a node's container events to the hooks.
    pub(super) async fn watch(
        &self,
        node: NodeId,
        runtime: Arc<dyn ContainerRuntime>,
    ) -> Result<JoinHandle<()>> {
        let mut events = runtime.events(&LabelFilter::managed()).await?;
        let inner = Arc::downgrade(&self.inner);
        Ok(tokio::spawn(async move {
            while let Some(event) = events.next().await {
                let Some(inner) = inner.upgrade() else { return };
                match event {
                    Ok(event) => inner.emit(&ClusterEvent::Container {
                        node: node.clone(),
                        event,
                    }),
                    Err(error) => tracing::warn!(%node, %error, "container event stream"),
                }
            }
        }))
    }

    /// The online nodes and their runtimes, in node order.
    pub(super) fn online_nodes(&self) -> Vec<(NodeId, Arc<dyn ContainerRuntime>)> {
        let nodes = lock(&self.inner.nodes);
        nodes
            .iter()
            .filter(|(_, entry)| entry.online)
            .map(|(id, entry)| (id.clone(), entry.runtime.clone()))
            .collect()
    }

    pub(super) fn runtime_of(&self, node: &NodeId) -> Result<Arc<dyn ContainerRuntime>> {
        let nodes = lock(&self.inner.nodes);
        let entry = nodes
            .get(node)
            .ok_or_else(|| Error::not_found("node", node.as_str()))?;
        if !entry.online {
            return Err(Error::unavailable(format!("node {node} is offline")));
        }
        Ok(entry.runtime.clone())
    }

    /// The node named (which must be online), or every online node.
    pub(super) fn targets(
        &self,
        node: Option<&NodeId>,
    ) -> Result<Vec<(NodeId, Arc<dyn ContainerRuntime>)>> {
        match node {
            Some(node) => Ok(vec![(node.clone(), self.runtime_of(node)?)]),
            None => Ok(self.online_nodes()),
        }
    }

    /// What `list` returns on each of `targets`, with its node.
    pub(super) async fn gather<T, F, Fut>(
        targets: Vec<(NodeId, Arc<dyn ContainerRuntime>)>,
        list: F,
    ) -> Result<Vec<(NodeId, T)>>
    where
        F: Fn(Arc<dyn ContainerRuntime>) -> Fut,
        Fut: Future<Output = Result<Vec<T>>>,
    {
        let mut all = Vec::new();
        for (node, runtime) in targets {
            let found = list(runtime).await.map_err(|error| on_node(error, &node))?;
            all.extend(found.into_iter().map(|item| (node.clone(), item)));
        }
        Ok(all)
    }
}
