//! Containers: launch with secure defaults, stop, remove, inspect, list.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, ContainerSummary,
    ContainerSummaryStateEnum, EndpointSettings, HostConfig, NetworkConnectRequest,
    NetworkingConfig,
};
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, ListContainersOptions, RemoveContainerOptions,
    StartContainerOptions, StopContainerOptions,
};
use futures::{StreamExt, TryStreamExt};
use kisara_core::model::{
    ContainerId, ContainerInfo, ContainerPort, ContainerSpec, ContainerState, LabelFilter, Labels,
    NetworkAttachment, Timestamp,
};
use kisara_core::sync::lock;
use kisara_core::{Error, Result};
use tracing::Instrument;

use crate::error::{is_not_found, status_of};
use crate::runtime::{DockerRuntime, label_filters, parse_time};

/// Networks Docker attaches that Kisara does not report.
fn is_kisara_network(name: &str) -> bool {
    name != "none"
}

fn state_of(status: Option<ContainerStateStatusEnum>) -> ContainerState {
    use ContainerStateStatusEnum as S;
    match status {
        Some(S::CREATED) | None | Some(S::EMPTY) => ContainerState::Created,
        Some(S::RUNNING | S::STOPPING) => ContainerState::Running,
        Some(S::PAUSED) => ContainerState::Paused,
        Some(S::RESTARTING) => ContainerState::Restarting,
        Some(S::REMOVING) => ContainerState::Removing,
        Some(S::EXITED) => ContainerState::Exited,
        Some(S::DEAD) => ContainerState::Dead,
    }
}

fn ports_of<'a>(keys: impl IntoIterator<Item = &'a String>) -> Vec<ContainerPort> {
    let mut ports: Vec<ContainerPort> = keys.into_iter().filter_map(|k| k.parse().ok()).collect();
    ports.sort();
    ports.dedup();
    ports
}

/// A container's addresses on its Kisara networks, by network name, from
/// the engine's endpoints (an empty address means none).
fn attachments(
    endpoints: Option<HashMap<String, EndpointSettings>>,
) -> BTreeMap<String, NetworkAttachment> {
    endpoints
        .unwrap_or_default()
        .into_iter()
        .filter(|(name, _)| is_kisara_network(name))
        .map(|(name, endpoint)| {
            let attachment = NetworkAttachment {
                network_id: endpoint.network_id.unwrap_or_default(),
                ip: endpoint
                    .ip_address
                    .as_deref()
                    .filter(|ip| !ip.is_empty())
                    .and_then(|ip| ip.parse().ok()),
            };
            (name, attachment)
        })
        .collect()
}

/// A container as Kisara reports it, from the engine's inspect answer.
pub(crate) fn info_of(inspected: ContainerInspectResponse) -> ContainerInfo {
    let state = inspected.state.unwrap_or_default();
    let state_kind = state_of(state.status);
    let config = inspected.config.unwrap_or_default();
    let networks = attachments(inspected.network_settings.and_then(|s| s.networks));
    ContainerInfo {
        id: ContainerId::new(inspected.id.unwrap_or_default()),
        name: inspected
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_owned(),
        image: config.image.unwrap_or_default(),
        state: state_kind,
        exit_code: matches!(state_kind, ContainerState::Exited | ContainerState::Dead)
            .then_some(state.exit_code.unwrap_or(0)),
        oom_killed: state.oom_killed.unwrap_or(false),
        labels: config.labels.unwrap_or_default().into_iter().collect(),
        networks,
        ports: ports_of(config.exposed_ports.iter().flatten()),
        created_at: inspected
            .created
            .as_deref()
            .and_then(parse_time)
            .unwrap_or_else(|| Timestamp::from_unix_millis(0)),
    }
}

/// A container from a list entry (no second request per container).
fn info_of_summary(summary: ContainerSummary) -> ContainerInfo {
    use ContainerSummaryStateEnum as S;
    let state = match summary.state {
        Some(S::RUNNING) => ContainerState::Running,
        Some(S::PAUSED) => ContainerState::Paused,
        Some(S::RESTARTING) => ContainerState::Restarting,
        Some(S::REMOVING) => ContainerState::Removing,
        Some(S::EXITED) => ContainerState::Exited,
        Some(S::DEAD) => ContainerState::Dead,
        _ => ContainerState::Created,
    };
    // "Exited (7) 3 seconds ago"
    let exit_code = matches!(state, ContainerState::Exited | ContainerState::Dead).then(|| {
        summary
            .status
            .as_deref()
            .and_then(|s| s.split_once('(')?.1.split_once(')')?.0.parse().ok())
            .unwrap_or(0)
    });
    let networks = attachments(summary.network_settings.and_then(|s| s.networks));
    let mut ports: Vec<ContainerPort> = summary
        .ports
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| {
            let protocol = p
                .typ
                .map(|t| t.to_string())
                .unwrap_or_else(|| "tcp".to_owned());
            format!("{}/{protocol}", p.private_port).parse().ok()
        })
        .collect();
    ports.sort();
    ports.dedup();
    ContainerInfo {
        id: ContainerId::new(summary.id.unwrap_or_default()),
        name: summary
            .names
            .unwrap_or_default()
            .first()
            .map(|n| n.trim_start_matches('/').to_owned())
            .unwrap_or_default(),
        image: summary.image.unwrap_or_default(),
        state,
        exit_code,
        oom_killed: false,
        labels: summary.labels.unwrap_or_default().into_iter().collect(),
        networks,
        ports,
        created_at: Timestamp::from_unix_secs(
            summary
                .created
                .and_then(|c| u64::try_from(c).ok())
                .unwrap_or(0),
        ),
    }
}

/// A fresh container name, `kisara-<12 hex digits>`.
fn generated_name() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // RandomState is seeded randomly per process; the counter separates
    // names within one.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    format!("kisara-{:012x}", hasher.finish() & 0xffff_ffff_ffff)
}

/// Removes a half-launched container if the launch does not finish, even
/// when its future is dropped.
struct LaunchGuard {
    runtime: Option<DockerRuntime>,
    id: String,
}

impl LaunchGuard {
    fn disarm(mut self) {
        self.runtime = None;
    }
}

impl Drop for LaunchGuard {
    fn drop(&mut self) {
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        let id = std::mem::take(&mut self.id);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(e) = runtime.force_remove(&id).await {
                    tracing::warn!(container_id = %id, error = %e, "could not remove a failed launch");
                }
            });
        }
    }
}

/// Where a launch running on its own task stands, seen by its caller.
#[derive(Debug)]
enum Handoff {
    /// Still launching, the caller waits.
    Waiting,
    /// The caller went away before the launch finished.
    Abandoned,
    /// Launched this container.
    Launched(String),
}

/// Marks the launch abandoned when the caller's future is dropped, removing
/// the container when it was launched already.
struct AbandonOnDrop {
    handoff: Arc<Mutex<Handoff>>,
    runtime: Option<DockerRuntime>,
}

impl AbandonOnDrop {
    fn delivered(mut self) {
        self.runtime = None;
    }
}

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        let launched = {
            let mut state = lock(&self.handoff);
            match std::mem::replace(&mut *state, Handoff::Abandoned) {
                Handoff::Launched(id) => Some(id),
                _ => None,
            }
        };
        if let (Some(id), Ok(handle)) = (launched, tokio::runtime::Handle::try_current()) {
            handle.spawn(async move {
                if let Err(e) = runtime.force_remove(&id).await {
                    tracing::warn!(container_id = %id, error = %e, "could not remove an abandoned launch");
                }
            });
        }
    }
}

impl DockerRuntime {
    /// The engine's create request for `spec`, with Kisara's secure
    /// defaults: never privileged, `no-new-privileges`, every capability
    /// dropped but an explicit list, pids/memory/cpu limits.
    pub(crate) fn create_body(&self, spec: &ContainerSpec) -> ContainerCreateBody {
        let options = &self.options.defaults;
        let limits = options.limits_for(&spec.resources);
        let (memory, cpu_millis, pids) = (
            limits.memory_bytes.unwrap_or_default(),
            limits.cpu_millis.unwrap_or_default(),
            limits.pids.unwrap_or_default(),
        );
        let cap_add = if spec.cap_add.is_empty() {
            &options.cap_add
        } else {
            &spec.cap_add
        };
        let dns = if spec.dns.is_empty() {
            &options.dns
        } else {
            &spec.dns
        };
        let binds: Vec<String> = spec
            .mounts
            .iter()
            .map(|m| {
                format!(
                    "{}:{}:{}",
                    m.source.display(),
                    m.target.display(),
                    if m.read_only { "ro" } else { "rw" }
                )
            })
            .collect();
        let primary = spec.networks.first();
        let host_config = HostConfig {
            privileged: Some(false),
            security_opt: Some(vec!["no-new-privileges".to_owned()]),
            cap_drop: Some(vec!["ALL".to_owned()]),
            cap_add: (!cap_add.is_empty()).then(|| cap_add.clone()),
            pids_limit: i64::try_from(pids).ok(),
            memory: i64::try_from(memory).ok(),
            // No swap beyond the memory limit, so the limit really holds.
            memory_swap: i64::try_from(memory).ok(),
            nano_cpus: i64::try_from(cpu_millis.saturating_mul(1_000_000)).ok(),
            readonly_rootfs: Some(spec.read_only_root || options.read_only_root),
            dns: (!dns.is_empty()).then(|| dns.iter().map(ToString::to_string).collect()),
            binds: (!binds.is_empty()).then_some(binds),
            network_mode: Some(primary.cloned().unwrap_or_else(|| "none".to_owned())),
            init: Some(false),
            ..HostConfig::default()
        };
        let env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        ContainerCreateBody {
            image: Some(spec.image.to_string()),
            cmd: spec.command.clone(),
            env: (!env.is_empty()).then_some(env),
            labels: Some(spec.kisara_labels().into_iter().collect()),
            exposed_ports: (!spec.ports.is_empty())
                .then(|| spec.ports.iter().map(ToString::to_string).collect()),
            host_config: Some(host_config),
            networking_config: primary.map(|name| NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    name.clone(),
                    EndpointSettings::default(),
                )])),
            }),
            ..ContainerCreateBody::default()
        }
    }

    pub(crate) async fn force_remove(&self, id: &str) -> Result<()> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            link: false,
        };
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => match status_of(&e) {
                // Another remove is running: wait for it to finish.
                Some((409, m)) if m.contains("in progress") => {
                    for _ in 0..100 {
                        match self
                            .docker
                            .inspect_container(id, None::<InspectContainerOptions>)
                            .await
                        {
                            Err(e) if is_not_found(&e) => return Ok(()),
                            _ => tokio::time::sleep(Duration::from_millis(50)).await,
                        }
                    }
                    Err(Error::Timeout {
                        operation: format!("removal of container {id:?}"),
                        after: Duration::from_secs(5),
                    })
                }
                _ => Err(self.err(e, "container", id)),
            },
        }
    }

    /// Launches on a task of its own, so dropping the caller's future never
    /// cuts a launch in half: a launch whose caller went away is finished
    /// and then removed.
    pub(crate) async fn launch_impl(&self, spec: &ContainerSpec) -> Result<ContainerInfo> {
        self.launch_labelled(spec, None).await
    }

    /// Launches `spec` like [`ContainerRuntime::launch`](kisara_core::ContainerRuntime::launch),
    /// cancel-safe and cleaned up on failure, but with exactly `labels`
    /// when given instead of the spec's plus [`MANAGED`](kisara_core::model::labels::MANAGED): for the
    /// runtime's own helpers (sidecars), which user-facing listings skip.
    pub(crate) async fn launch_labelled(
        &self,
        spec: &ContainerSpec,
        labels: Option<Labels>,
    ) -> Result<ContainerInfo> {
        let handoff = Arc::new(Mutex::new(Handoff::Waiting));
        let task = {
            let (this, spec, handoff) = (self.clone(), spec.clone(), handoff.clone());
            tokio::spawn(async move {
                let result = this.launch_inner(&spec, labels).await;
                if let Ok(info) = &result {
                    let abandoned = {
                        let mut state = lock(&handoff);
                        let abandoned = matches!(*state, Handoff::Abandoned);
                        *state = Handoff::Launched(info.id.as_str().to_owned());
                        abandoned
                    };
                    if abandoned {
                        tracing::info!(container_id = %info.id, "launch abandoned by its caller: removing");
                        if let Err(e) = this.force_remove(info.id.as_str()).await {
                            tracing::warn!(container_id = %info.id, error = %e, "could not remove an abandoned launch");
                        }
                    }
                }
                result
            })
        };
        let guard = AbandonOnDrop {
            handoff,
            runtime: Some(self.clone()),
        };
        let result = task.await.map_err(|e| Error::Backend {
            backend: "docker",
            message: format!("launch task failed: {e}"),
            source: None,
        });
        guard.delivered();
        result?
    }

    async fn launch_inner(
        &self,
        spec: &ContainerSpec,
        labels: Option<Labels>,
    ) -> Result<ContainerInfo> {
        spec.validate()?;
        self.options.defaults.check_mounts(spec)?;
        let name = spec.name.clone().unwrap_or_else(generated_name);
        let span = tracing::info_span!("launch", container = %name, image = %spec.image, container_id = tracing::field::Empty);
        async {
            // Missing networks are NotFound naming them, before anything exists.
            let mut network_ids = Vec::with_capacity(spec.networks.len());
            for network in &spec.networks {
                network_ids.push(self.inspect_network_impl(network).await?.id);
            }
            let mut body = self.create_body(spec);
            if let Some(labels) = labels {
                body.labels = Some(labels.into_iter().collect());
            }
            let created = self
                .docker
                .create_container(
                    Some(CreateContainerOptions {
                        name: Some(name.clone()),
                        platform: String::new(),
                    }),
                    body,
                )
                .await
                .map_err(|e| match status_of(&e) {
                    Some((409, _)) => Error::already_exists("container", &name),
                    Some((404, m)) if m.contains("image") => {
                        Error::not_found("image", spec.image.as_str())
                    }
                    Some((404, m)) if m.contains("network") => Error::not_found(
                        "network",
                        spec.networks.first().cloned().unwrap_or_default(),
                    ),
                    _ => self.err(e, "container", &name),
                })?;
            tracing::Span::current().record("container_id", created.id.as_str());
            // Kept only for a launch cut short (its runtime shutting down);
            // failures below are cleaned up before returning.
            let guard = LaunchGuard {
                runtime: Some(self.clone()),
                id: created.id.clone(),
            };
            let finished = async {
                for (network, id) in spec.networks.iter().zip(&network_ids).skip(1) {
                    self.docker
                        .connect_network(
                            id.as_str(),
                            NetworkConnectRequest {
                                container: created.id.clone(),
                                endpoint_config: None,
                            },
                        )
                        .await
                        .map_err(|e| self.err(e, "network", network))?;
                }
                self.docker
                    .start_container(&created.id, None::<StartContainerOptions>)
                    .await
                    .map_err(|e| self.err(e, "container", &name))?;
                self.inspect_impl(&created.id).await
            }
            .await;
            guard.disarm();
            let info = match finished {
                Ok(info) => info,
                Err(e) => {
                    if let Err(cleanup) = self.force_remove(&created.id).await {
                        tracing::warn!(error = %cleanup, "could not remove a failed launch");
                    }
                    return Err(e);
                }
            };
            tracing::info!("container launched");
            Ok(info)
        }
        .instrument(span)
        .await
    }

    pub(crate) async fn stop_impl(&self, container: &str, grace: Duration) -> Result<()> {
        let secs = i32::try_from(grace.as_secs() + u64::from(grace.subsec_nanos() > 0))
            .unwrap_or(i32::MAX);
        // The engine answers only after the grace period: give the request
        // that much more time.
        let docker = self
            .docker
            .clone()
            .with_timeout(grace + self.options.request_timeout);
        docker
            .stop_container(
                container,
                Some(StopContainerOptions {
                    signal: None,
                    t: Some(secs),
                }),
            )
            .await
            .map_err(|e| self.err(e, "container", container))?;
        tracing::debug!(container, "container stopped");
        Ok(())
    }

    pub(crate) async fn remove_impl(&self, container: &str) -> Result<()> {
        self.force_remove(container).await?;
        tracing::debug!(container, "container removed");
        Ok(())
    }

    pub(crate) async fn inspect_impl(&self, container: &str) -> Result<ContainerInfo> {
        let inspected = self
            .docker
            .inspect_container(container, None::<InspectContainerOptions>)
            .await
            .map_err(|e| self.err(e, "container", container))?;
        Ok(info_of(inspected))
    }

    /// The engine's summaries of the containers matching `filter`; with
    /// `all`, stopped ones too.
    pub(crate) async fn list_summaries(
        &self,
        filter: &LabelFilter,
        all: bool,
    ) -> Result<Vec<ContainerSummary>> {
        let labels = label_filters(filter);
        let options = ListContainersOptions {
            all,
            filters: (!labels.is_empty()).then(|| HashMap::from([("label".to_owned(), labels)])),
            ..ListContainersOptions::default()
        };
        self.docker
            .list_containers(Some(options))
            .await
            .map_err(|e| self.err(e, "container", "*"))
    }

    pub(crate) async fn list_impl(&self, filter: &LabelFilter) -> Result<Vec<ContainerInfo>> {
        let list = self.list_summaries(filter, true).await?;
        let listed: Vec<ContainerInfo> = list
            .into_iter()
            .map(info_of_summary)
            .filter(|c| filter.matches(&c.labels))
            .collect();
        // A list entry does not say whether an exited container was OOM
        // killed: inspect those (running ones, the many, need no second call).
        let this = self.clone();
        let infos: Vec<Option<ContainerInfo>> = futures::stream::iter(listed)
            .map(move |info| {
                let this = this.clone();
                async move {
                    if !matches!(info.state, ContainerState::Exited | ContainerState::Dead) {
                        return Ok(Some(info));
                    }
                    match this.inspect_impl(info.id.as_str()).await {
                        Ok(inspected) => Ok(Some(inspected)),
                        // Removed meanwhile.
                        Err(Error::NotFound { .. }) => Ok(None),
                        Err(e) => Err(e),
                    }
                }
            })
            .buffered(8)
            .try_collect()
            .await?;
        Ok(infos.into_iter().flatten().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_give_exit_codes_and_names() {
        let summary = ContainerSummary {
            id: Some("abc".into()),
            names: Some(vec!["/web-1".into()]),
            state: Some(ContainerSummaryStateEnum::EXITED),
            status: Some("Exited (42) 3 seconds ago".into()),
            created: Some(1_700_000_000),
            ..ContainerSummary::default()
        };
        let info = info_of_summary(summary);
        assert_eq!(info.name, "web-1");
        assert_eq!(info.state, ContainerState::Exited);
        assert_eq!(info.exit_code, Some(42));
        assert_eq!(info.created_at.unix_secs(), 1_700_000_000);
        let running = info_of_summary(ContainerSummary {
            state: Some(ContainerSummaryStateEnum::RUNNING),
            status: Some("Up 3 seconds".into()),
            ..ContainerSummary::default()
        });
        assert_eq!(running.exit_code, None);
    }

    #[test]
    fn generated_names_are_distinct_and_valid() {
        let (a, b) = (generated_name(), generated_name());
        assert_ne!(a, b);
        let mut spec = ContainerSpec::new(kisara_core::model::ImageRef::parse("busybox").unwrap());
        spec.name = Some(a);
        spec.validate().unwrap();
    }
}
