//! Networks.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{ContainerId, Labels, NetworkId, NodeId, labels};

/// The kind of network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum NetworkDriver {
    /// A bridge on one host.
    #[default]
    Bridge,
    /// An attachable Swarm overlay spanning hosts.
    Overlay,
}

/// What network to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// The name, unique on the runtime.
    pub name: String,
    /// The subnet; the engine picks one when `None` (Kisara always gives one
    /// from its pool, since engine defaults run out and may be public space).
    #[serde(default)]
    pub subnet: Option<IpNet>,
    /// The gateway; the first address of the subnet when `None`.
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    /// Bridge or overlay.
    #[serde(default)]
    pub driver: NetworkDriver,
    /// No route to the outside.
    #[serde(default)]
    pub internal: bool,
    /// Extra labels (keys under `io.kisara.` are reserved).
    #[serde(default)]
    pub labels: Labels,
    /// The cluster node it belongs to, labelled [`labels::NODE`] (see
    /// [`crate::model::ContainerSpec::node`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeId>,
}

impl NetworkSpec {
    /// A bridge network named `name` with the given subnet.
    pub fn new(name: impl Into<String>, subnet: Option<IpNet>) -> Self {
        Self {
            name: name.into(),
            subnet,
            gateway: None,
            driver: NetworkDriver::Bridge,
            internal: false,
            labels: Labels::new(),
            node: None,
        }
    }

    /// The labels the runtime puts on the network: the caller's plus
    /// [`labels::MANAGED`], [`labels::NETWORK`] and [`labels::SUBNET`].
    pub fn kisara_labels(&self) -> Labels {
        let mut all = self.labels.clone();
        all.insert(labels::MANAGED.to_owned(), "true".to_owned());
        all.insert(labels::NETWORK.to_owned(), self.name.clone());
        if let Some(subnet) = self.subnet {
            all.insert(labels::SUBNET.to_owned(), subnet.to_string());
        }
        if let Some(node) = &self.node {
            all.insert(labels::NODE.to_owned(), node.to_string());
        }
        all
    }

    /// Checks the name, the gateway against the subnet, and reserved labels.
    pub fn validate(&self) -> crate::Result<()> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 128
            && self
                .name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric())
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !name_ok {
            return Err(crate::Error::invalid(
                "network name",
                format!(
                    "{:?} must be 1 to 128 of [A-Za-z0-9_.-], starting with a letter or digit",
                    self.name
                ),
            ));
        }
        if let (Some(subnet), Some(gateway)) = (self.subnet, self.gateway)
            && !subnet.contains(&gateway)
        {
            return Err(crate::Error::invalid(
                "network gateway",
                format!("gateway {gateway} is outside subnet {subnet}"),
            ));
        }
        if let Some(key) = self.labels.keys().find(|k| k.starts_with("io.kisara.")) {
            return Err(crate::Error::invalid(
                "network labels",
                format!("label {key:?} is reserved: keys under io.kisara. are set by Kisara"),
            ));
        }
        Ok(())
    }
}

/// A network as a runtime sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(examples(json!({"id": "9a8b7c6d5e4f", "name": "team-7", "subnet": "10.128.7.0/24", "gateway": "10.128.7.1", "driver": "bridge", "internal": false, "labels": {"io.kisara.managed": "true", "io.kisara.network": "team-7"}, "containers": ["4f1c2a9b7e3d"]})))
)]
pub struct NetworkInfo {
    /// The runtime's id.
    pub id: NetworkId,
    /// The name.
    pub name: String,
    /// The subnet.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub subnet: Option<IpNet>,
    /// The gateway.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub gateway: Option<IpAddr>,
    /// Bridge or overlay.
    pub driver: NetworkDriver,
    /// No route to the outside.
    pub internal: bool,
    /// All labels.
    #[cfg_attr(feature = "openapi", schema(value_type = std::collections::BTreeMap<String, String>))]
    pub labels: Labels,
    /// The containers attached to it.
    pub containers: Vec<ContainerId>,
}
