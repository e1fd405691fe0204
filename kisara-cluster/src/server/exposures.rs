//! [`Server`]: container ports exposed through the server's or the node's tunnel.

use super::*;

impl Server {
    /// Where a container can be reached for exposure: its primary network's
    /// address, else any address it has.
    pub(super) fn target_ip(container: &ContainerInfo) -> Result<std::net::IpAddr> {
        let primary = container
            .labels
            .get(labels::NETWORK)
            .and_then(|n| container.ip_on(n));
        primary
            .or_else(|| container.networks.values().find_map(|a| a.ip))
            .ok_or_else(|| {
                Error::conflict(format!(
                    "container {} has no address to expose",
                    container.name
                ))
            })
    }

    /// The request exposing `port` of `container`, labelled so exposures can
    /// be found by container and port after any restart.
    pub(super) fn expose_request(
        container: &ContainerInfo,
        ip: std::net::IpAddr,
        port: ContainerPort,
    ) -> ExposeRequest {
        let mut request = ExposeRequest::new(SocketAddr::new(ip, port.port), port.protocol);
        request.labels.insert(labels::MANAGED.into(), "true".into());
        request
            .labels
            .insert(labels::CONTAINER.into(), container.id.to_string());
        request.labels.insert(labels::PORT.into(), port.to_string());
        if let Some(owner) = container.owner() {
            request
                .labels
                .insert(labels::OWNER.into(), owner.to_owned());
        }
        request
    }

    /// The tunnel that exposes the containers of `node`: its own, else the
    /// server's.
    pub(super) fn tunnel_for(&self, node: Option<&NodeId>) -> Option<Arc<dyn Tunnel>> {
        node.and_then(|node| {
            lock(&self.inner.nodes)
                .get(node)
                .and_then(|entry| entry.tunnel.clone())
        })
        .or_else(|| self.inner.tunnel.clone())
    }

    pub(super) async fn expose_ports(
        tunnel: Option<&Arc<dyn Tunnel>>,
        container: &ContainerInfo,
    ) -> Result<Vec<Exposure>> {
        let Some(tunnel) = tunnel else {
            return Ok(Vec::new());
        };
        if container.ports.is_empty() {
            return Ok(Vec::new());
        }
        let ip = Self::target_ip(container)?;
        let mut exposures = Vec::new();
        for port in &container.ports {
            exposures.push(
                tunnel
                    .expose(&Self::expose_request(container, ip, *port))
                    .await?,
            );
        }
        Ok(exposures)
    }

    /// Re-exposes the ports of a running container that have no exposure.
    pub(super) async fn restore_exposures(
        tunnel: Option<&Arc<dyn Tunnel>>,
        container: &ContainerInfo,
    ) -> Result<()> {
        let Some(tunnel) = tunnel else {
            return Ok(());
        };
        if container.ports.is_empty() {
            return Ok(());
        }
        let existing = tunnel
            .list(&LabelFilter::all().with(labels::CONTAINER, container.id.as_str()))
            .await?;
        let ip = Self::target_ip(container)?;
        for port in &container.ports {
            let exposed = existing
                .iter()
                .any(|e| e.labels.get(labels::PORT) == Some(&port.to_string()));
            if !exposed {
                tunnel
                    .expose(&Self::expose_request(container, ip, *port))
                    .await?;
            }
        }
        Ok(())
    }

    pub(super) async fn withdraw_exposures(
        tunnel: Option<&Arc<dyn Tunnel>>,
        container: &ContainerId,
    ) {
        let Some(tunnel) = tunnel else {
            return;
        };
        let filter = LabelFilter::all().with(labels::CONTAINER, container.as_str());
        match tunnel.list(&filter).await {
            Ok(exposures) => {
                for exposure in exposures {
                    if let Err(error) = tunnel.withdraw(&exposure.id).await {
                        tracing::warn!(%error, exposure = %exposure.id, "withdraw");
                    }
                }
            }
            Err(error) => tracing::warn!(%error, %container, "listing exposures"),
        }
    }

    /// The exposures of a container, by id or name.
    pub async fn exposures(&self, container: &ContainerId) -> Result<Vec<Exposure>> {
        let (node, _, info) = self.locate(container).await?;
        match self.tunnel_for(Some(&node)) {
            Some(tunnel) => {
                tunnel
                    .list(&LabelFilter::all().with(labels::CONTAINER, info.id.as_str()))
                    .await
            }
            None => Ok(Vec::new()),
        }
    }
}
