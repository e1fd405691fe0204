//! Networks: bridge and attachable Swarm overlay networks with explicit
//! subnets.

use std::collections::HashMap;

use bollard::models::{Ipam, IpamConfig, NetworkCreateRequest, NetworkInspect};
use bollard::query_parameters::{InspectNetworkOptions, ListNetworksOptions};
use futures::{StreamExt, TryStreamExt};
use ipnet::IpNet;
use kisara_core::model::{
    ContainerId, LabelFilter, NetworkDriver, NetworkId, NetworkInfo, NetworkSpec,
};
use kisara_core::{Error, Result};
use tracing::Instrument;

use crate::error::{is_not_found, status_of};
use crate::runtime::{DockerRuntime, label_filters};

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn subnets_of(ipam: Option<&Ipam>) -> Vec<IpNet> {
    ipam.and_then(|i| i.config.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.subnet.as_deref()?.parse().ok())
        .collect()
}

fn to_info(network: NetworkInspect) -> NetworkInfo {
    let ipam = network
        .ipam
        .as_ref()
        .and_then(|i| i.config.as_ref())
        .and_then(|c| c.first());
    let labels = network.labels.unwrap_or_default().into_iter().collect();
    let mut containers: Vec<ContainerId> = network
        .containers
        .unwrap_or_default()
        .into_keys()
        .filter(|id| !id.starts_with("lb-") && !id.starts_with("ep-"))
        .map(ContainerId::new)
        .collect();
    containers.sort();
    NetworkInfo {
        id: NetworkId::new(network.id.unwrap_or_default()),
        name: network.name.unwrap_or_default(),
        subnet: ipam.and_then(|c| c.subnet.as_deref()?.parse().ok()),
        gateway: ipam.and_then(|c| c.gateway.as_deref()?.parse().ok()),
        driver: match (network.driver.as_deref(), network.scope.as_deref()) {
            (Some("overlay"), _) | (None | Some(""), Some("swarm")) => NetworkDriver::Overlay,
            _ => NetworkDriver::Bridge,
        },
        internal: network.internal.unwrap_or(false),
        labels,
        containers,
    }
}

impl DockerRuntime {
    /// Every network on the engine whose name is exactly `name`.
    async fn networks_named(&self, name: &str) -> Result<Vec<String>> {
        let filters = HashMap::from([("name".to_owned(), vec![name.to_owned()])]);
        let list = self
            .docker
            .list_networks(Some(ListNetworksOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(|e| self.err(e, "network", name))?;
        Ok(list
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(name))
            .filter_map(|n| n.id)
            .collect())
    }

    pub(crate) async fn create_network_impl(&self, spec: &NetworkSpec) -> Result<NetworkInfo> {
        spec.validate()?;
        let span =
            tracing::info_span!("create_network", network = %spec.name, subnet = ?spec.subnet);
        async {
            if spec.driver == NetworkDriver::Overlay && !self.is_swarm_manager() {
                // The engine may have joined a swarm since we connected.
                let info = self.docker.info().await.map_err(|e| self.err(e, "engine", &self.endpoint))?;
                if !info.swarm.and_then(|s| s.control_available).unwrap_or(false) {
                    return Err(Error::not_supported(
                        "docker",
                        format!(
                            "overlay network {:?}: this engine is not a Swarm manager; run `docker swarm init` \
                             (or join it to a swarm as a manager) to create overlay networks",
                            spec.name
                        ),
                    ));
                }
            }
            // Engines before API 1.44 accept duplicate names: check first,
            // and again after creating (two racing creators both look).
            if !self.networks_named(&spec.name).await?.is_empty() {
                return Err(Error::already_exists("network", &spec.name));
            }
            let all = self
                .docker
                .list_networks(None::<ListNetworksOptions>)
                .await
                .map_err(|e| self.err(e, "network", &spec.name))?;
            if let Some(subnet) = spec.subnet {
                for other in &all {
                    if let Some(theirs) = subnets_of(other.ipam.as_ref()).into_iter().find(|s| overlaps(s, &subnet)) {
                        return Err(Error::conflict(format!(
                            "subnet {subnet} of network {:?} overlaps {theirs} of network {:?}",
                            spec.name,
                            other.name.as_deref().unwrap_or_default()
                        )));
                    }
                }
            }
            let overlay = spec.driver == NetworkDriver::Overlay;
            let request = NetworkCreateRequest {
                name: spec.name.clone(),
                driver: Some(if overlay { "overlay" } else { "bridge" }.to_owned()),
                internal: Some(spec.internal),
                attachable: overlay.then_some(true),
                ipam: spec.subnet.map(|subnet| Ipam {
                    driver: Some("default".to_owned()),
                    config: Some(vec![IpamConfig {
                        subnet: Some(subnet.trunc().to_string()),
                        gateway: spec.gateway.map(|g| g.to_string()),
                        ..IpamConfig::default()
                    }]),
                    options: None,
                }),
                labels: Some(spec.kisara_labels().into_iter().collect()),
                ..NetworkCreateRequest::default()
            };
            let created = self.docker.create_network(request).await.map_err(|e| match status_of(&e) {
                Some((409, _)) => Error::already_exists("network", &spec.name),
                Some((_, message)) if message.contains("overlap") => Error::conflict(format!(
                    "subnet {} of network {:?} overlaps another network: {message}",
                    spec.subnet.map(|s| s.to_string()).unwrap_or_default(),
                    spec.name
                )),
                _ => self.err(e, "network", &spec.name),
            })?;
            let id = created.id;
            let same_name = self.networks_named(&spec.name).await?;
            if same_name.len() > 1 {
                // Lost a race: the older one stays.
                let _ = self.docker.remove_network(&id).await;
                return Err(Error::already_exists("network", &spec.name));
            }
            tracing::info!(network_id = %id, "network created");
            // A new Swarm network is inspected half-filled (no driver, no
            // IPAM) for a moment: wait until the engine shows all of it.
            let mut info = self.inspect_network_impl(&id).await?;
            for _ in 0..100 {
                if !overlay || (info.driver == NetworkDriver::Overlay && info.subnet.is_some() == spec.subnet.is_some()) {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                info = self.inspect_network_impl(&id).await?;
            }
            Ok(info)
        }
        .instrument(span)
        .await
    }

    pub(crate) async fn inspect_network_impl(&self, network: &str) -> Result<NetworkInfo> {
        let inspected = self
            .docker
            .inspect_network(network, None::<InspectNetworkOptions>)
            .await
            .map_err(|e| self.err(e, "network", network))?;
        // The engine matches ids by prefix and names exactly; a name that is
        // a prefix of another network's id must not match it.
        let info = to_info(inspected);
        if info.name != network && !info.id.as_str().starts_with(network) {
            return Err(Error::not_found("network", network));
        }
        Ok(info)
    }

    pub(crate) async fn list_networks_impl(
        &self,
        filter: &LabelFilter,
    ) -> Result<Vec<NetworkInfo>> {
        let labels = label_filters(filter);
        let options = (!labels.is_empty()).then(|| ListNetworksOptions {
            filters: Some(HashMap::from([("label".to_owned(), labels)])),
        });
        let list = self
            .docker
            .list_networks(options)
            .await
            .map_err(|e| self.err(e, "network", "*"))?;
        // The list omits attached containers: inspect each.
        let this = self.clone();
        let infos: Vec<Option<NetworkInfo>> =
            futures::stream::iter(list.into_iter().filter_map(|n| n.id))
                .map(move |id| {
                    let this = this.clone();
                    async move {
                        match this.inspect_network_impl(&id).await {
                            Ok(info) => Ok(Some(info)),
                            Err(Error::NotFound { .. }) => Ok(None),
                            Err(e) => Err(e),
                        }
                    }
                })
                .buffered(16)
                .try_collect()
                .await?;
        Ok(infos
            .into_iter()
            .flatten()
            .filter(|n| filter.matches(&n.labels))
            .collect())
    }

    pub(crate) async fn remove_network_impl(&self, network: &str) -> Result<()> {
        let span = tracing::info_span!("remove_network", network);
        async {
            let inspected = match self
                .docker
                .inspect_network(network, None::<InspectNetworkOptions>)
                .await
            {
                Ok(n) => n,
                Err(e) if is_not_found(&e) => return Ok(()),
                Err(e) => return Err(self.err(e, "network", network)),
            };
            let attached: Vec<String> = inspected
                .containers
                .iter()
                .flatten()
                .filter(|(id, _)| !id.starts_with("lb-") && !id.starts_with("ep-"))
                .map(|(id, c)| c.name.clone().unwrap_or_else(|| id.clone()))
                .collect();
            if !attached.is_empty() {
                return Err(Error::conflict(format!(
                    "network {network:?} still has containers attached: {}",
                    attached.join(", ")
                )));
            }
            let id = inspected.id.unwrap_or_else(|| network.to_owned());
            match self.docker.remove_network(&id).await {
                Ok(()) => Ok(()),
                Err(e) if is_not_found(&e) => Ok(()),
                Err(e) => match status_of(&e) {
                    Some((403 | 409, message)) => Err(Error::conflict(format!(
                        "network {network:?} cannot be removed: {message}"
                    ))),
                    _ => Err(self.err(e, "network", network)),
                },
            }
        }
        .instrument(span)
        .await
    }
}
