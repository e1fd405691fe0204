//! Containers: what to launch and what is running.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    ContainerId, ContainerPort, ImageRef, Labels, NodeId, Timestamp, duration_secs, labels,
};

/// Resource limits of one container. An absent limit means the runtime's
/// configured default, never "unlimited": see the runtime's contract.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResourceLimits {
    /// CPU time in thousandths of a CPU (`500` = half a core).
    pub cpu_millis: Option<u64>,
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// Maximum number of processes.
    pub pids: Option<u64>,
}

/// A host path made visible inside a container.
///
/// Runtimes accept only sources under their configured allow-list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Mount {
    /// The path on the host.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub source: PathBuf,
    /// The path inside the container.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub target: PathBuf,
    /// Mounted read-only (the default).
    #[serde(default = "default_true")]
    pub read_only: bool,
}

fn default_true() -> bool {
    true
}

/// Everything a runtime needs to create and start one container.
///
/// The runtime adds [`labels::MANAGED`] and the labels derived from `owner`,
/// `module`, `networks` and `expires_at`; see [`ContainerSpec::kisara_labels`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ContainerSpec {
    /// The container's name; runtimes generate a unique one when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// The image to run.
    pub image: ImageRef,
    /// The command, replacing the image's default when given.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// The user or team the container belongs to (the Go original's uid),
    /// labelled `io.kisara.owner`: listings filter by it.
    #[serde(default)]
    pub owner: Option<String>,
    /// The module (challenge, lab, service) it belongs to, labelled
    /// `io.kisara.module`: listings filter by it.
    #[serde(default)]
    pub module: Option<String>,
    /// Ports the container serves (`80/tcp`).
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
    /// Networks to join, by name; the first is the primary one.
    #[serde(default)]
    pub networks: Vec<String>,
    /// Environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Host paths to mount.
    #[serde(default)]
    pub mounts: Vec<Mount>,
    /// DNS servers; the runtime's default when empty.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    #[serde(default)]
    pub dns: Vec<IpAddr>,
    /// Resource limits.
    #[serde(default)]
    pub resources: ResourceLimits,
    /// Extra labels (keys under `io.kisara.` are reserved and refused).
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeMap<String, String>))]
    #[serde(default)]
    pub labels: Labels,
    /// When the container expires, in milliseconds since the Unix epoch; a
    /// reaper removes it after that. A launch sets it from its lifetime.
    #[serde(default)]
    pub expires_at: Option<Timestamp>,
    /// Mount the root file system read-only.
    #[serde(default)]
    pub read_only_root: bool,
    /// Linux capabilities to keep; all others are dropped.
    #[serde(default)]
    pub cap_add: Vec<String>,
    /// The cluster node it belongs to, labelled [`labels::NODE`]; set by
    /// the node's agent so that agents sharing one engine each see only
    /// their own containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeId>,
}

impl ContainerSpec {
    /// A spec that runs `image` with every option at its default.
    pub fn new(image: ImageRef) -> Self {
        Self {
            name: None,
            image,
            command: None,
            owner: None,
            module: None,
            ports: Vec::new(),
            networks: Vec::new(),
            env: BTreeMap::new(),
            mounts: Vec::new(),
            dns: Vec::new(),
            resources: ResourceLimits::default(),
            labels: Labels::new(),
            expires_at: None,
            read_only_root: false,
            cap_add: Vec::new(),
            node: None,
        }
    }

    /// The labels the runtime puts on the container: the caller's labels plus
    /// the `io.kisara.*` ones derived from this spec.
    pub fn kisara_labels(&self) -> Labels {
        let mut all = self.labels.clone();
        all.insert(labels::MANAGED.to_owned(), "true".to_owned());
        if let Some(owner) = &self.owner {
            all.insert(labels::OWNER.to_owned(), owner.clone());
        }
        if let Some(module) = &self.module {
            all.insert(labels::MODULE.to_owned(), module.clone());
        }
        if let Some(network) = self.networks.first() {
            all.insert(labels::NETWORK.to_owned(), network.clone());
        }
        if let Some(expires_at) = self.expires_at {
            all.insert(
                labels::EXPIRES_AT.to_owned(),
                expires_at.unix_secs().to_string(),
            );
        }
        if let Some(node) = &self.node {
            all.insert(labels::NODE.to_owned(), node.to_string());
        }
        all
    }

    /// Checks what a runtime cannot: reserved label keys and empty names.
    pub fn validate(&self) -> crate::Result<()> {
        if let Some(key) = self.labels.keys().find(|k| k.starts_with("io.kisara.")) {
            return Err(crate::Error::invalid(
                "container labels",
                format!("label {key:?} is reserved: keys under io.kisara. are set by Kisara"),
            ));
        }
        if let Some(name) = &self.name {
            let valid = !name.is_empty()
                && name
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            if !valid {
                return Err(crate::Error::invalid(
                    "container name",
                    format!("{name:?} must match [A-Za-z0-9][A-Za-z0-9_.-]*"),
                ));
            }
        }
        Ok(())
    }
}

/// A request to launch a container somewhere in the cluster.
///
/// Carries everything the Go original's `RequestLaunchContainer` did (image,
/// owner, node, ports, network, module, env, mounts, DNS) in `container`,
/// plus where to run it and for how long.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(examples(json!({"lifetime_secs": 3600, "idempotency_key": "team-7/web-1/1", "container": {"name": "web-1", "image": "ctf/web-1:latest", "owner": "team-7", "module": "web-1", "ports": ["80/tcp"], "env": {"FLAG": "flag{example}"}, "resources": {"cpu_millis": 500, "memory_bytes": 268435456}}})))
)]
pub struct LaunchRequest {
    /// Run on this node; placement picks one when absent.
    #[serde(default)]
    pub node: Option<NodeId>,
    /// How long the container may live, in whole seconds (`lifetime_secs`
    /// on the wire); it expires and is removed after that. It lives until
    /// removed when absent.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>))]
    #[serde(default, with = "duration_secs::option", rename = "lifetime_secs")]
    pub lifetime: Option<Duration>,
    /// Retrying a launch with the same key returns the first launch's
    /// result instead of starting a second container (the cluster server
    /// remembers a key for an hour).
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// The container itself.
    pub container: ContainerSpec,
}

impl LaunchRequest {
    /// Launches `container` on a node placement picks, without a lifetime.
    pub fn new(container: ContainerSpec) -> Self {
        Self {
            node: None,
            lifetime: None,
            idempotency_key: None,
            container,
        }
    }
}

/// The state of a container, as the engine reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ContainerState {
    /// Created, never started.
    Created,
    /// Running.
    Running,
    /// Paused.
    Paused,
    /// Restarting.
    Restarting,
    /// Stopped (see the exit code).
    Exited,
    /// Being removed.
    Removing,
    /// Failed to stop or be removed.
    Dead,
}

/// A container's address on one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NetworkAttachment {
    /// The network's id.
    pub network_id: String,
    /// The container's address on it, when it has one.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub ip: Option<IpAddr>,
}

/// A container as a runtime sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(examples(json!({"id": "4f1c2a9b7e3d", "name": "web-1", "image": "ctf/web-1:latest", "state": "running", "exit_code": null, "oom_killed": false, "labels": {"io.kisara.managed": "true", "io.kisara.owner": "team-7", "io.kisara.module": "web-1"}, "networks": {"team-7": {"network_id": "9a8b7c6d5e4f", "ip": "10.128.7.2"}}, "ports": ["80/tcp"], "created_at": 1_767_787_200_000_u64})))
)]
pub struct ContainerInfo {
    /// The runtime's id.
    pub id: ContainerId,
    /// The name.
    pub name: String,
    /// The image it runs, as requested.
    pub image: String,
    /// Its state.
    pub state: ContainerState,
    /// The exit code, once it exited.
    pub exit_code: Option<i64>,
    /// Whether it was killed for running out of memory, as the engine
    /// recorded it. Docker 20.10 records a kill only when containerd's OOM
    /// report came before its exit report; now and then, under load, it
    /// comes after or not at all, and this stays false.
    pub oom_killed: bool,
    /// All its labels.
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeMap<String, String>))]
    pub labels: Labels,
    /// Its networks by name.
    pub networks: BTreeMap<String, NetworkAttachment>,
    /// The ports it serves.
    pub ports: Vec<ContainerPort>,
    /// When it was created.
    pub created_at: Timestamp,
}

impl ContainerInfo {
    /// The owner from [`labels::OWNER`].
    pub fn owner(&self) -> Option<&str> {
        self.labels.get(labels::OWNER).map(String::as_str)
    }

    /// The module from [`labels::MODULE`].
    pub fn module(&self) -> Option<&str> {
        self.labels.get(labels::MODULE).map(String::as_str)
    }

    /// The expiry from [`labels::EXPIRES_AT`].
    pub fn expires_at(&self) -> Option<Timestamp> {
        self.labels
            .get(labels::EXPIRES_AT)
            .and_then(|secs| secs.parse().ok())
            .map(Timestamp::from_unix_secs)
    }

    /// The address on `network`.
    pub fn ip_on(&self, network: &str) -> Option<IpAddr> {
        self.networks.get(network).and_then(|a| a.ip)
    }
}

/// Resource use of one container.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerStats {
    /// CPU use in thousandths of a CPU, averaged over the runtime's sample.
    pub cpu_millis: u64,
    /// Memory in use, bytes.
    pub memory_bytes: u64,
    /// The memory limit, bytes (0 when none).
    pub memory_limit_bytes: u64,
    /// Processes running.
    pub pids: u64,
    /// Bytes received over all networks.
    pub network_rx_bytes: u64,
    /// Bytes sent over all networks.
    pub network_tx_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kisara_labels_are_derived() {
        let mut spec = ContainerSpec::new(ImageRef::parse("busybox").unwrap());
        spec.owner = Some("7".into());
        spec.module = Some("pwn-1".into());
        spec.networks = vec!["team-7".into()];
        spec.expires_at = Some(Timestamp::from_unix_secs(1_900_000_000));
        let all = spec.kisara_labels();
        assert_eq!(all[labels::MANAGED], "true");
        assert_eq!(all[labels::OWNER], "7");
        assert_eq!(all[labels::MODULE], "pwn-1");
        assert_eq!(all[labels::NETWORK], "team-7");
        assert_eq!(all[labels::EXPIRES_AT], "1900000000");
    }

    #[test]
    fn reserved_labels_and_bad_names_are_refused() {
        let mut spec = ContainerSpec::new(ImageRef::parse("busybox").unwrap());
        spec.labels.insert(labels::OWNER.into(), "x".into());
        assert!(
            spec.validate()
                .unwrap_err()
                .to_string()
                .contains("io.kisara.owner")
        );
        spec.labels.clear();
        spec.name = Some("../x".into());
        assert!(
            spec.validate()
                .unwrap_err()
                .to_string()
                .contains("\"../x\"")
        );
    }

    #[test]
    fn launch_requests_decode_strictly() {
        let ok: LaunchRequest = serde_json::from_str(
            r#"{"node":"n1","lifetime_secs":60,"container":{"image":"busybox","ports":["80/tcp","53/udp"]}}"#,
        )
        .unwrap();
        assert_eq!(ok.lifetime, Some(Duration::from_secs(60)));
        assert_eq!(ok.container.ports[1], ContainerPort::udp(53));
        let typo = serde_json::from_str::<LaunchRequest>(r#"{"container":{"imgae":"busybox"}}"#)
            .unwrap_err()
            .to_string();
        assert!(typo.contains("imgae"), "{typo}");
        let bad_image = serde_json::from_str::<LaunchRequest>(r#"{"container":{"image":"Bad"}}"#)
            .unwrap_err()
            .to_string();
        assert!(bad_image.contains("\"Bad\""), "{bad_image}");
    }
}
