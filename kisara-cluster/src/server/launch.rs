//! [`Server`]: launches (placement, reservations, idempotency) and the calls on one container.

use super::*;

impl Server {
    /// Picks a node and holds a slot on it until the reservation drops.
    pub(super) fn reserve(
        &self,
        requested: Option<&NodeId>,
    ) -> Result<(Reservation, Arc<dyn ContainerRuntime>)> {
        let mut nodes = lock(&self.inner.nodes);
        let loads: Vec<NodeLoad> = nodes.iter().map(|(id, entry)| entry.load(id)).collect();
        let node = self.inner.placement.place(requested, &loads)?;
        let entry = nodes
            .get_mut(&node)
            .ok_or_else(|| Error::not_found("node", node.as_str()))?;
        entry.reserved += 1;
        let reservation = Reservation {
            inner: self.inner.clone(),
            node,
        };
        Ok((reservation, entry.runtime.clone()))
    }

    /// Launches a container on the node placement picks (or the requested
    /// one), exposes its ports, and returns it within `timeout`.
    ///
    /// With an idempotency key, a retry (even a concurrent one) returns the
    /// first successful launch instead of starting a second container; a
    /// failed launch is not remembered, so it can be retried.
    pub async fn launch_container(
        &self,
        request: LaunchRequest,
        timeout: Duration,
    ) -> Result<Launched> {
        let Some(key) = request.idempotency_key.clone() else {
            return self.launch_once(request, timeout).await;
        };
        let cell = {
            let mut launches = lock(&self.inner.launches);
            launches.cell(key, Instant::now())
        };
        cell.get_or_try_init(|| self.launch_once(request, timeout))
            .await
            .cloned()
    }

    pub(super) async fn launch_once(
        &self,
        request: LaunchRequest,
        timeout: Duration,
    ) -> Result<Launched> {
        let started = Instant::now();
        let result = self.launch_placed(request, timeout).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(error) => error.kind().code(),
        };
        metrics::counter!("kisara_launches_total", "outcome" => outcome).increment(1);
        metrics::histogram!("kisara_launch_seconds").record(started.elapsed().as_secs_f64());
        result
    }

    pub(super) async fn launch_placed(
        &self,
        request: LaunchRequest,
        timeout: Duration,
    ) -> Result<Launched> {
        let mut spec = request.container;
        spec.validate()?;
        // A name known in advance lets a timed-out launch be cleaned up.
        let name = spec
            .name
            .get_or_insert_with(|| {
                format!(
                    "kisara-{:012x}",
                    kisara_core::random::random_u64() & 0xffff_ffff_ffff
                )
            })
            .clone();
        if let Some(lifetime) = request.lifetime {
            spec.expires_at = Some(Timestamp::now().saturating_add(lifetime));
        }
        let (reservation, runtime) = self.reserve(request.node.as_ref())?;
        let node = reservation.node.clone();
        let span = tracing::info_span!("launch", %node, container = %name);
        async {
            let container = match tokio::time::timeout(timeout, runtime.launch(&spec)).await {
                Ok(launched) => launched?,
                Err(_) => {
                    // The engine may still finish the launch: remove it
                    // whenever it does, so nothing leaks.
                    let cleanup = runtime.clone();
                    let id = ContainerId::new(name.clone());
                    tokio::spawn(async move {
                        if let Err(error) = cleanup.remove(&id).await {
                            tracing::warn!(%error, container = %id, "cleanup after a timed-out launch");
                        }
                    });
                    return Err(Error::Timeout {
                        operation: format!("launch of container {name} on node {node}"),
                        after: timeout,
                    });
                }
            };
            let tunnel = self.tunnel_for(Some(&node));
            let exposures = match Self::expose_ports(tunnel.as_ref(), &container).await {
                Ok(exposures) => exposures,
                Err(error) => {
                    Self::withdraw_exposures(tunnel.as_ref(), &container.id).await;
                    if let Err(cleanup) = runtime.remove(&container.id).await {
                        tracing::warn!(error = %cleanup, "cleanup after a failed exposure");
                    }
                    return Err(error);
                }
            };
            lock(&self.inner.locations)
                .insert(container.id.clone(), node.clone());
            if let Some(entry) = lock(&self.inner.nodes).get_mut(&node) {
                entry.stats.containers += 1;
            }
            drop(reservation);
            let launched = Launched {
                node,
                container,
                exposures,
            };
            tracing::info!(exposures = launched.exposures.len(), "launched");
            self.inner.emit(&ClusterEvent::ContainerLaunched(Box::new(launched.clone())));
            Ok(launched)
        }
        .instrument(span)
        .await
    }

    /// The node a container was last seen on, by the id the server knows.
    pub(super) fn known_node(&self, container: &ContainerId) -> Option<NodeId> {
        lock(&self.inner.locations).get(container).cloned()
    }

    /// Finds the node of a container, by id or name.
    pub(super) async fn locate(
        &self,
        container: &ContainerId,
    ) -> Result<(NodeId, Arc<dyn ContainerRuntime>, ContainerInfo)> {
        if let Some(node) = self.known_node(container) {
            let runtime = self.runtime_of(&node)?;
            let info = runtime.inspect(container).await?;
            return Ok((node, runtime, info));
        }
        let online = self.online_nodes();
        for (node, runtime) in online {
            match runtime.inspect(container).await {
                // Nodes may share an engine: a container labelled for
                // another node is not this node's.
                Ok(info)
                    if info.labels.contains_key(labels::MANAGED)
                        && info
                            .labels
                            .get(labels::NODE)
                            .is_none_or(|owner| owner == node.as_str()) =>
                {
                    return Ok((node, runtime, info));
                }
                Ok(_) => {}
                Err(error) if error.kind() == kisara_core::ErrorKind::NotFound => {}
                Err(error) => return Err(error),
            }
        }
        Err(Error::not_found("container", container.as_str()))
    }

    /// Stops a container, killing it after `grace`.
    pub async fn stop(&self, container: &ContainerId, grace: Duration) -> Result<()> {
        let (node, runtime, info) = self.locate(container).await?;
        runtime.stop(&info.id, grace).await?;
        self.inner.emit(&ClusterEvent::ContainerStopped {
            node,
            container: info.id,
        });
        Ok(())
    }

    /// Removes a container and withdraws its exposures; `Ok` when it does
    /// not exist.
    pub async fn remove(&self, container: &ContainerId) -> Result<()> {
        let (node, runtime, info) = match self.locate(container).await {
            Ok(found) => found,
            Err(error) if error.kind() == kisara_core::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(error),
        };
        Self::withdraw_exposures(self.tunnel_for(Some(&node)).as_ref(), &info.id).await;
        runtime.remove(&info.id).await?;
        lock(&self.inner.locations).remove(&info.id);
        if let Some(entry) = lock(&self.inner.nodes).get_mut(&node) {
            entry.stats.containers = entry.stats.containers.saturating_sub(1);
        }
        if info.state == ContainerState::Running {
            self.inner.emit(&ClusterEvent::ContainerStopped {
                node,
                container: info.id,
            });
        }
        Ok(())
    }

    /// Inspects a container anywhere in the cluster.
    pub async fn inspect(&self, container: &ContainerId) -> Result<(NodeId, ContainerInfo)> {
        let (node, _, info) = self.locate(container).await?;
        Ok((node, info))
    }

    /// Kisara containers matching `query`, from every online node (or the
    /// one named), with their nodes.
    pub async fn list(&self, query: &ContainerQuery) -> Result<Vec<(NodeId, ContainerInfo)>> {
        let filter = &query.filter();
        Self::gather(self.targets(query.node.as_ref())?, |runtime| async move {
            runtime.list(filter).await
        })
        .await
    }

    /// Starts a command in a container anywhere in the cluster.
    pub async fn exec(
        &self,
        container: &ContainerId,
        spec: &ExecSpec,
    ) -> Result<(Arc<dyn ContainerRuntime>, ExecSession)> {
        let (_, runtime, info) = self.locate(container).await?;
        let session = runtime.exec(&info.id, spec).await?;
        Ok((runtime, session))
    }
}
