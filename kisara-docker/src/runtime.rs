//! [`DockerRuntime`]: connecting, options and the [`ContainerRuntime`] impl.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use kisara_core::config::{AgentConfig, ContainerDefaults};
use kisara_core::model::{
    BuildSpec, ContainerId, ContainerInfo, ContainerSpec, ContainerStats, ExecId, ExecSpec,
    ExecStatus, ImageInfo, ImageRef, LabelFilter, NetworkId, NetworkInfo, NetworkSpec,
    NodeCapacity, NodeStats, TtySize,
};
use kisara_core::{
    ByteStream, ContainerRuntime, Error, EventStream, ExecSession, ProgressStream, Result,
    RuntimeCapabilities,
};

use crate::error::{self, how_to_start};
use crate::firewall::{Firewall, Isolation};

/// The local engine's socket, used when neither the options nor
/// `DOCKER_HOST` name an engine.
pub const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// How [`DockerRuntime`] connects and what it gives containers whose spec
/// leaves a setting open.
///
/// Built with [`DockerRuntime::builder`]; `defaults` is the `[containers]`
/// section of Kisara's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct DockerOptions {
    /// The engine's address (`unix:///var/run/docker.sock`,
    /// `tcp://host:2375`); `DOCKER_HOST` or the local socket when `None`.
    pub host: Option<String>,
    /// Timeout of one request to the engine (not of streams).
    pub request_timeout: Duration,
    /// Limits, DNS, capabilities, read-only root and the mount allow-list
    /// for containers whose spec leaves them open; mounts outside the
    /// allow-list are refused with [`Error::PermissionDenied`].
    pub defaults: ContainerDefaults,
    /// Whether internal bridge networks are cut off from the host by
    /// firewall rules (the default); see the crate's "Network isolation".
    pub isolation: Isolation,
    /// The firewall tool enforcing it; when `None`, the first that works
    /// ([`Firewall::detect`]).
    pub firewall: Option<Firewall>,
}

impl Default for DockerOptions {
    fn default() -> Self {
        Self {
            host: None,
            request_timeout: Duration::from_secs(120),
            defaults: ContainerDefaults::default(),
            isolation: Isolation::default(),
            firewall: None,
        }
    }
}

impl DockerOptions {
    /// The options an agent's `[agent]` section and `[containers]` defaults
    /// ask for: the engine at `docker_host` (`DOCKER_HOST` or the local
    /// socket when unset), the default request timeout.
    pub fn from_agent_config(agent: &AgentConfig, defaults: &ContainerDefaults) -> Self {
        Self {
            host: agent.docker_host.clone(),
            defaults: defaults.clone(),
            isolation: agent.internal_isolation,
            ..Self::default()
        }
    }
}

/// The capacity a node announces to the server, from its `[agent]` section
/// (`max_containers`, `bandwidth_in`, `bandwidth_out`).
pub fn node_capacity(agent: &AgentConfig) -> NodeCapacity {
    NodeCapacity {
        max_containers: agent.max_containers,
        bandwidth_in: agent.bandwidth_in,
        bandwidth_out: agent.bandwidth_out,
    }
}

/// Builds [`DockerOptions`] and connects; see [`DockerRuntime::builder`].
#[derive(Debug, Clone, Default)]
pub struct DockerRuntimeBuilder {
    options: DockerOptions,
}

impl DockerRuntimeBuilder {
    /// Connects to `host` instead of `DOCKER_HOST` or the local socket.
    pub fn with_host(mut self, host: impl Into<String>) -> Self {
        self.options.host = Some(host.into());
        self
    }

    /// Sets the timeout of one request.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.options.request_timeout = timeout;
        self
    }

    /// Uses `defaults` (the `[containers]` section of Kisara's
    /// configuration) for limits, DNS, capabilities, read-only root and
    /// the mount allow-list.
    pub fn with_defaults(mut self, defaults: ContainerDefaults) -> Self {
        self.options.defaults = defaults;
        self
    }

    /// Sets the default memory limit, bytes.
    pub fn with_memory_bytes(mut self, bytes: u64) -> Self {
        self.options.defaults.memory_bytes = bytes;
        self
    }

    /// Sets the default CPU, thousandths of a CPU.
    pub fn with_cpu_millis(mut self, millis: u64) -> Self {
        self.options.defaults.cpu_millis = millis;
        self
    }

    /// Sets the default process limit.
    pub fn with_pids(mut self, pids: u64) -> Self {
        self.options.defaults.pids = pids;
        self
    }

    /// Sets the default DNS servers.
    pub fn with_dns(mut self, dns: impl IntoIterator<Item = IpAddr>) -> Self {
        self.options.defaults.dns = dns.into_iter().collect();
        self
    }

    /// Allows host mounts under these paths only.
    pub fn with_mount_allow_list(
        mut self,
        roots: impl IntoIterator<Item = impl Into<PathBuf>>,
    ) -> Self {
        self.options.defaults.mount_allow_list = roots.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the capabilities kept when a spec names none.
    pub fn with_cap_add(mut self, caps: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.options.defaults.cap_add = caps.into_iter().map(Into::into).collect();
        self
    }

    /// Mounts every container's root file system read-only.
    pub fn with_read_only_root(mut self, read_only: bool) -> Self {
        self.options.defaults.read_only_root = read_only;
        self
    }

    /// Enforces the isolation of internal networks (the default) or, with
    /// [`Isolation::Off`], explicitly not.
    pub fn with_isolation(mut self, isolation: Isolation) -> Self {
        self.options.isolation = isolation;
        self
    }

    /// Enforces isolation with `firewall` instead of the first tool that
    /// works.
    pub fn with_firewall(mut self, firewall: Firewall) -> Self {
        self.options.firewall = Some(firewall);
        self
    }

    /// The options built so far.
    pub fn options(&self) -> &DockerOptions {
        &self.options
    }

    /// Connects with these options; see [`DockerRuntime::connect`].
    pub async fn connect(self) -> Result<DockerRuntime> {
        DockerRuntime::connect(self.options).await
    }
}

/// The [`ContainerRuntime`] on a Docker engine, through bollard.
///
/// Cheap to clone (the connection is shared).
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    pub(crate) docker: Docker,
    pub(crate) options: Arc<DockerOptions>,
    pub(crate) endpoint: Arc<str>,
    swarm_manager: bool,
    /// The firewall isolating internal networks; `None` with
    /// [`Isolation::Off`].
    pub(crate) firewall: Option<Firewall>,
}

impl DockerRuntime {
    /// A builder with [`DockerOptions::default`].
    pub fn builder() -> DockerRuntimeBuilder {
        DockerRuntimeBuilder::default()
    }

    /// Connects to the engine at `options.host` (else `DOCKER_HOST`, else the
    /// local socket), negotiates the API version (older engines refuse
    /// bollard's default) and checks that it answers.
    ///
    /// With [`Isolation::Enforce`] it then finds the firewall tool that
    /// works and reconciles the isolation rules with the engine's internal
    /// networks ([`DockerRuntime::reconcile_isolation`]).
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`], saying how to start an engine, when none
    /// answers, or naming the firewall commands tried when none works;
    /// [`Error::NotSupported`] when isolation is enforced for an engine on
    /// another host (its firewall is out of reach).
    pub async fn connect(options: DockerOptions) -> Result<Self> {
        let endpoint = options
            .host
            .clone()
            .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| DEFAULT_HOST.to_owned());
        let unavailable = |e: bollard::errors::Error| Error::Unavailable {
            message: how_to_start(&endpoint),
            source: Some(Box::new(e)),
        };
        if options.isolation == Isolation::Enforce && !is_on_this_host(&endpoint) {
            return Err(Error::not_supported(
                error::BACKEND,
                format!(
                    "isolating internal networks of the engine at {endpoint}: it is not on this host, \
                     and the rules go into the engine host's firewall; run the runtime on that host, \
                     or turn enforcement off explicitly (`internal_isolation = \"off\"` in [agent], or DockerOptions::isolation = Isolation::Off)"
                ),
            ));
        }
        let docker = Docker::connect_with_host(&endpoint).map_err(unavailable)?;
        let docker = docker.with_timeout(options.request_timeout);
        let docker = docker.negotiate_version().await.map_err(unavailable)?;
        let info = docker
            .info()
            .await
            .map_err(|e| error::map(e, &endpoint, "engine", &endpoint))?;
        let swarm_manager = info
            .swarm
            .as_ref()
            .and_then(|s| s.control_available)
            .unwrap_or(false);
        tracing::debug!(endpoint, version = %docker.client_version(), swarm_manager, "connected to Docker");
        let firewall = match options.isolation {
            Isolation::Off => {
                tracing::warn!(
                    endpoint,
                    "network isolation is off: containers on internal networks reach the host"
                );
                None
            }
            Isolation::Enforce => Some(match &options.firewall {
                Some(chosen) => chosen.clone(),
                None => Firewall::detect().await?,
            }),
        };
        let runtime = Self {
            docker,
            options: Arc::new(options),
            endpoint: endpoint.into(),
            swarm_manager,
            firewall,
        };
        runtime.reconcile_isolation().await?;
        Ok(runtime)
    }

    /// Connects with default options.
    pub async fn connect_default() -> Result<Self> {
        Self::connect(DockerOptions::default()).await
    }

    /// The bollard client, for what Kisara does not cover.
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// The options this runtime was connected with.
    pub fn options(&self) -> &DockerOptions {
        &self.options
    }

    /// The engine's address.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Whether the engine was a Swarm manager when connected (overlay
    /// networks need one).
    pub fn is_swarm_manager(&self) -> bool {
        self.swarm_manager
    }

    /// The firewall isolating internal networks (`None` with
    /// [`Isolation::Off`]).
    pub fn firewall(&self) -> Option<&Firewall> {
        self.firewall.as_ref()
    }

    /// Maps a bollard error about `what` named `name`.
    pub(crate) fn err(&self, err: bollard::errors::Error, what: &'static str, name: &str) -> Error {
        error::map(err, &self.endpoint, what, name)
    }
}

#[async_trait]
impl ContainerRuntime for DockerRuntime {
    fn name(&self) -> &str {
        error::BACKEND
    }

    fn capabilities(&self) -> RuntimeCapabilities {
        RuntimeCapabilities {
            overlay_networks: self.swarm_manager,
            oom_events: true,
            image_pull: true,
            image_build: true,
        }
    }

    async fn create_network(&self, spec: &NetworkSpec) -> Result<NetworkInfo> {
        self.create_network_impl(spec).await
    }

    async fn inspect_network(&self, network: &NetworkId) -> Result<NetworkInfo> {
        self.inspect_network_impl(network.as_str()).await
    }

    async fn list_networks(&self, filter: &LabelFilter) -> Result<Vec<NetworkInfo>> {
        self.list_networks_impl(filter).await
    }

    async fn remove_network(&self, network: &NetworkId) -> Result<()> {
        self.remove_network_impl(network.as_str()).await
    }

    async fn launch(&self, spec: &ContainerSpec) -> Result<ContainerInfo> {
        self.launch_impl(spec).await
    }

    async fn stop(&self, container: &ContainerId, grace: Duration) -> Result<()> {
        self.stop_impl(container.as_str(), grace).await
    }

    async fn remove(&self, container: &ContainerId) -> Result<()> {
        self.remove_impl(container.as_str()).await
    }

    async fn inspect(&self, container: &ContainerId) -> Result<ContainerInfo> {
        self.inspect_impl(container.as_str()).await
    }

    async fn list(&self, filter: &LabelFilter) -> Result<Vec<ContainerInfo>> {
        self.list_impl(filter).await
    }

    async fn exec(&self, container: &ContainerId, spec: &ExecSpec) -> Result<ExecSession> {
        self.exec_impl(container.as_str(), spec).await
    }

    async fn resize_exec(&self, exec: &ExecId, size: TtySize) -> Result<()> {
        self.resize_exec_impl(exec.as_str(), size).await
    }

    async fn exec_status(&self, exec: &ExecId) -> Result<ExecStatus> {
        self.exec_status_impl(exec.as_str()).await
    }

    async fn copy_to(&self, container: &ContainerId, dir: &str, archive: ByteStream) -> Result<()> {
        self.copy_to_impl(container.as_str(), dir, archive).await
    }

    async fn copy_from(&self, container: &ContainerId, path: &str) -> Result<ByteStream> {
        self.copy_from_impl(container.as_str(), path).await
    }

    async fn pull_image(&self, image: &ImageRef) -> Result<ProgressStream> {
        self.pull_image_impl(image).await
    }

    async fn build_image(&self, spec: &BuildSpec, context: ByteStream) -> Result<ProgressStream> {
        self.build_image_impl(spec, context).await
    }

    async fn list_images(&self) -> Result<Vec<ImageInfo>> {
        self.list_images_impl().await
    }

    async fn remove_image(&self, image: &str) -> Result<()> {
        self.remove_image_impl(image).await
    }

    async fn events(&self, filter: &LabelFilter) -> Result<EventStream> {
        self.events_impl(filter)
    }

    async fn container_stats(&self, container: &ContainerId) -> Result<ContainerStats> {
        self.container_stats_impl(container.as_str()).await
    }

    async fn node_stats(&self) -> Result<NodeStats> {
        self.node_stats_impl().await
    }
}

/// Whether the engine at `endpoint` runs on this host: a Unix socket, or
/// TCP to a loopback address.
fn is_on_this_host(endpoint: &str) -> bool {
    if endpoint.starts_with("unix://") || endpoint.starts_with('/') {
        return true;
    }
    let Some((_, rest)) = endpoint.split_once("://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host),
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Docker's `label` filter values for `filter`.
pub(crate) fn label_filters(filter: &LabelFilter) -> Vec<String> {
    filter
        .conditions()
        .map(|(key, value)| match value {
            Some(value) => format!("{key}={value}"),
            None => key.to_owned(),
        })
        .collect()
}

/// Parses the engine's RFC 3339 times (`2026-11-22T20:09:50.123456789Z`).
pub(crate) fn parse_time(text: &str) -> Option<kisara_core::model::Timestamp> {
    let (date, time) = text.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (d.next()??, d.next()??, d.next()??);
    let time = time.trim_end_matches('Z');
    // Offsets other than Z are not produced by the engine; ignore them.
    let time = time.split(['+']).next()?;
    let mut t = time.splitn(3, ':');
    let hour: i64 = t.next()?.parse().ok()?;
    let minute: i64 = t.next()?.parse().ok()?;
    let seconds = t.next()?;
    let (secs, frac) = seconds.split_once('.').unwrap_or((seconds, ""));
    let secs: i64 = secs.parse().ok()?;
    let millis: i64 = format!("{:0<3}", &frac[..frac.len().min(3)])
        .parse()
        .unwrap_or(0);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let total = ((days * 24 + hour) * 60 + minute) * 60 + secs;
    u64::try_from(total * 1000 + millis)
        .ok()
        .map(kisara_core::model::Timestamp::from_unix_millis)
}

#[cfg(test)]
mod tests {
    #[test]
    fn agent_config_sets_host_defaults_and_capacity() {
        let mut agent = AgentConfig::default();
        agent.docker_host = Some("tcp://127.0.0.1:2375".to_owned());
        agent.max_containers = 7;
        agent.bandwidth_in = 1000;
        agent.bandwidth_out = 2000;
        let mut defaults = ContainerDefaults::default();
        defaults.pids = 17;
        let options = DockerOptions::from_agent_config(&agent, &defaults);
        assert_eq!(options.isolation, Isolation::Enforce);
        agent.internal_isolation = Isolation::Off;
        let options = DockerOptions::from_agent_config(&agent, &defaults);
        assert_eq!(options.isolation, Isolation::Off);
        assert_eq!(options.host.as_deref(), Some("tcp://127.0.0.1:2375"));
        assert_eq!(options.defaults, defaults);
        assert_eq!(
            options.request_timeout,
            DockerOptions::default().request_timeout
        );
        let capacity = node_capacity(&agent);
        assert_eq!(capacity.max_containers, 7);
        assert_eq!(capacity.bandwidth_in, 1000);
        assert_eq!(capacity.bandwidth_out, 2000);
    }

    use super::*;

    #[test]
    fn engines_on_this_host_are_sockets_and_loopback() {
        for local in [
            "unix:///var/run/docker.sock",
            "tcp://127.0.0.1:2375",
            "tcp://localhost:2375",
            "http://[::1]:2375",
        ] {
            assert!(is_on_this_host(local), "{local}");
        }
        for remote in [
            "tcp://10.0.0.5:2376",
            "tcp://docker.example:2375",
            "ssh://root@host",
        ] {
            assert!(!is_on_this_host(remote), "{remote}");
        }
    }

    #[test]
    fn parses_engine_times() {
        let t = parse_time("2026-11-22T20:09:50.123456789Z").unwrap();
        assert_eq!(t.unix_millis(), 1_795_378_190_123);
        assert_eq!(parse_time("1970-01-01T00:00:00Z").unwrap().unix_millis(), 0);
        assert!(parse_time("garbage").is_none());
    }

    #[test]
    fn label_filters_use_docker_syntax() {
        let filter = LabelFilter::managed().with_key("io.kisara.owner");
        assert_eq!(
            label_filters(&filter),
            ["io.kisara.managed=true", "io.kisara.owner"]
        );
    }
}
