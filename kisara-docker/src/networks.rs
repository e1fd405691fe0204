//! Networks: bridge and attachable Swarm overlay networks with explicit
//! subnets; internal bridge networks isolated from the host by
//! [`crate::firewall`] rules.

use std::collections::HashMap;

use bollard::models::{Ipam, IpamConfig, Network, NetworkCreateRequest, NetworkInspect};
use bollard::query_parameters::{InspectNetworkOptions, ListNetworksOptions};
use futures::{StreamExt, TryStreamExt};
use ipnet::IpNet;
use kisara_core::model::{
    ContainerId, LabelFilter, NetworkDriver, NetworkId, NetworkInfo, NetworkSpec,
};
use kisara_core::{Error, Result};
use tracing::Instrument;

use crate::error::{is_not_found, status_of};
use crate::firewall::{BRIDGE_NAME_OPTION, BridgeName, IsolatedNetwork};
use crate::runtime::{DockerRuntime, label_filters};

/// What [`DockerRuntime::reconcile_isolation`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IsolationReport {
    /// The internal networks whose rules are in place (installed now when
    /// missing or incomplete).
    pub isolated: Vec<IsolatedNetwork>,
    /// Rules of networks that are gone, removed.
    pub removed: Vec<IsolatedNetwork>,
}

/// The isolation an engine's network needs: its bridge and name when it is
/// an internal bridge network, `None` otherwise (overlay networks have no
/// bridge on this host).
///
/// # Errors
///
/// [`Error::Invalid`] when its bridge or name is unusable in a rule.
fn isolation_of(
    name: Option<&str>,
    id: Option<&str>,
    driver: Option<&str>,
    internal: Option<bool>,
    options: Option<&HashMap<String, String>>,
) -> Result<Option<IsolatedNetwork>> {
    if internal != Some(true) || driver != Some("bridge") {
        return Ok(None);
    }
    let name = name.unwrap_or_default();
    // Networks Kisara created name their bridge; older ones have Docker's.
    let bridge = match options.and_then(|o| o.get(BRIDGE_NAME_OPTION)) {
        Some(bridge) => BridgeName::parse(bridge),
        None => BridgeName::docker_default(id.unwrap_or_default()),
    }
    .map_err(|e| Error::invalid("network", format!("{name:?}: {e}")))?;
    IsolatedNetwork::new(bridge, name).map(Some)
}

fn isolation_of_listed(network: &Network) -> Result<Option<IsolatedNetwork>> {
    isolation_of(
        network.name.as_deref(),
        network.id.as_deref(),
        network.driver.as_deref(),
        network.internal,
        network.options.as_ref(),
    )
}

fn isolation_of_inspected(network: &NetworkInspect) -> Result<Option<IsolatedNetwork>> {
    isolation_of(
        network.name.as_deref(),
        network.id.as_deref(),
        network.driver.as_deref(),
        network.internal,
        network.options.as_ref(),
    )
}

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
            // An internal bridge gets an interface name Kisara knows, for
            // its isolation rules.
            let isolated = (spec.internal && !overlay && self.firewall.is_some())
                .then(|| IsolatedNetwork::new(BridgeName::for_network(&spec.name), &spec.name))
                .transpose()?;
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
                options: isolated.as_ref().map(|i| {
                    HashMap::from([(BRIDGE_NAME_OPTION.to_owned(), i.bridge.to_string())])
                }),
                ..NetworkCreateRequest::default()
            };
            let created = self.docker.create_network(request).await.map_err(|e| match status_of(&e) {
                Some((409, _)) => Error::already_exists("network", &spec.name),
                // The bridge's name derives from the network's: a racing
                // creator of the same name has it.
                Some((_, message)) if message.contains("same bridge name") => {
                    Error::already_exists("network", &spec.name)
                }
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
            if let (Some(firewall), Some(isolated)) = (&self.firewall, &isolated) {
                let _host = crate::firewall::host_lock().await?;
                if let Err(e) = firewall.install(isolated).await {
                    // Never an internal network without its rules.
                    let _ = self.docker.remove_network(&id).await;
                    return Err(e);
                }
                tracing::info!(bridge = %isolated.bridge, "isolation rules installed");
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
            // A bridge no rule could name has no rules to remove.
            let isolated = isolation_of_inspected(&inspected).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "network without usable isolation rules");
                None
            });
            let id = inspected.id.unwrap_or_else(|| network.to_owned());
            let removed = match self.docker.remove_network(&id).await {
                Ok(()) => Ok(()),
                Err(e) if is_not_found(&e) => Ok(()),
                Err(e) => match status_of(&e) {
                    Some((403 | 409, message)) => Err(Error::conflict(format!(
                        "network {network:?} cannot be removed: {message}"
                    ))),
                    _ => Err(self.err(e, "network", network)),
                },
            };
            removed?;
            if let (Some(firewall), Some(isolated)) = (&self.firewall, &isolated) {
                let _host = crate::firewall::host_lock().await?;
                firewall.remove(&isolated.bridge).await?;
                tracing::info!(bridge = %isolated.bridge, "isolation rules removed");
            }
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// Every network labelled [`kisara_core::model::labels::MANAGED`].
    async fn managed_networks(&self) -> Result<Vec<Network>> {
        let filters = HashMap::from([("label".to_owned(), label_filters(&LabelFilter::managed()))]);
        self.docker
            .list_networks(Some(ListNetworksOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(|e| self.err(e, "network", "*"))
    }

    /// Brings the isolation rules in line with the engine's Kisara internal
    /// bridge networks: rules missing or incomplete are installed, rules of
    /// networks that are gone removed. Idempotent; [`DockerRuntime::connect`]
    /// runs it, and an agent may again at any time. A no-op with
    /// [`crate::Isolation::Off`].
    ///
    /// # Errors
    ///
    /// When the engine or the firewall fails, naming the command, or a
    /// network's bridge cannot be used in a rule.
    pub async fn reconcile_isolation(&self) -> Result<IsolationReport> {
        let Some(firewall) = &self.firewall else {
            return Ok(IsolationReport::default());
        };
        let _host = crate::firewall::host_lock().await?;
        let mut report = IsolationReport::default();
        for network in self.managed_networks().await? {
            report.isolated.extend(isolation_of_listed(&network)?);
        }
        firewall.install_all(&report.isolated).await?;
        // Stale ones from fresh listings, so a network removed while the
        // rules above went in loses them here. The rules first, the
        // networks second: a network created in between has no rules yet,
        // so none of its rules can look stale.
        let installed = firewall.installed().await?;
        let mut present = Vec::new();
        for network in self.managed_networks().await? {
            present.extend(isolation_of_listed(&network)?);
        }
        for stale in installed {
            if !present.iter().any(|i| i.bridge == stale.bridge) {
                firewall.remove(&stale.bridge).await?;
                report.removed.push(stale);
            }
        }
        tracing::info!(
            %firewall,
            isolated = report.isolated.len(),
            removed = report.removed.len(),
            "isolation rules reconciled"
        );
        Ok(report)
    }

    /// The networks whose isolation rules are in the firewall now (empty
    /// with [`crate::Isolation::Off`]).
    ///
    /// # Errors
    ///
    /// When the firewall cannot be listed.
    pub async fn isolation_rules(&self) -> Result<Vec<IsolatedNetwork>> {
        match &self.firewall {
            Some(firewall) => firewall.installed().await,
            None => Ok(Vec::new()),
        }
    }
}
