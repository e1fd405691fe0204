//! The cluster engine, in process: a [`Server`] handle over nodes, each just
//! an `Arc<dyn ContainerRuntime>` (a local engine, or a remote agent's link),
//! with placement, the cluster-wide subnet pool, port exposures through a
//! [`Tunnel`], hooks, idempotent launches and recovery from labels.
//!
//! Metrics go through the `metrics` facade (export them with any recorder,
//! e.g. Prometheus, and serve them with the HTTP API's `GET /metrics`):
//! `kisara_launches_total{outcome}` (`ok` or the error kind),
//! `kisara_launch_seconds` and `kisara_nodes_online`.
//!
//! Images are pulled, listed and removed on one node or on every online node
//! ([`Server::pull_image`] streams each node's progress).
//!
//! Docker labels are the truth: [`Server::connect_node`] rebuilds what the
//! server knows of a node (its containers, its networks' subnets, its
//! exposures) from the node's `io.kisara.*` objects, so neither a server nor
//! an agent restart needs a state file or kills a user container.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> kisara_core::Result<()> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use kisara_cluster::{NetworkRequest, Server};
//! use kisara_core::memory::{MemoryRuntime, MemorySubnetAllocator};
//! use kisara_core::model::{ContainerSpec, ImageRef, LaunchRequest, NodeCapacity, NodeId};
//!
//! let server = Server::builder(Arc::new(MemorySubnetAllocator::new("10.128.0.0/16".parse().unwrap(), 24)?))
//!     .on_container_launched(|launched| println!("{} on {}", launched.container.name, launched.node))
//!     .build();
//! let image = ImageRef::parse("ctf/web-1:latest")?;
//! let node = MemoryRuntime::new();
//! node.add_image(&image, None);
//! let capacity = NodeCapacity { max_containers: 80, bandwidth_in: 50 << 20, bandwidth_out: 50 << 20 };
//! server.connect_node(NodeId::new("node-1")?, capacity, Arc::new(node)).await?;
//!
//! server.create_network(&NetworkRequest::new("team-7")).await?;
//! let mut spec = ContainerSpec::new(image);
//! spec.owner = Some("team-7".into());
//! spec.networks = vec!["team-7".into()];
//! let launched = server.launch_container(LaunchRequest::new(spec), Duration::from_secs(30)).await?;
//! assert_eq!(launched.node.as_str(), "node-1");
//! server.remove(&launched.container.id).await?;
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::keyed::KeyedCells;
use kisara_core::model::{
    ContainerEvent, ContainerEventKind, ContainerId, ContainerInfo, ContainerPort, ContainerState,
    ExecSpec, ExposeRequest, Exposure, ImageInfo, ImageRef, Inventory, LabelFilter, LaunchRequest,
    NetworkDriver, NetworkInfo, NetworkSpec, NodeCapacity, NodeEvent, NodeId, NodeLoad, NodeStats,
    Progress, Timestamp, labels,
};
use kisara_core::placement::HeadroomPlacement;
use kisara_core::sync::lock;
use kisara_core::{
    ContainerRuntime, Error, ExecSession, Placement, ProgressStream, Result, SubnetAllocator,
    Tunnel,
};

/// How long a successful launch is remembered under its idempotency key.
const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(3600);

/// A container launched by the cluster, with where it runs and how it is
/// reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launched {
    /// The node it runs on.
    pub node: NodeId,
    /// The container.
    pub container: ContainerInfo,
    /// One exposure per port of the launch request, when the server has a
    /// tunnel.
    pub exposures: Vec<Exposure>,
}

/// Something that happened in the cluster, as hooks receive it.
#[derive(Debug, Clone, PartialEq)]
pub enum ClusterEvent {
    /// A node connected, disconnected or sent a heartbeat.
    Node(NodeEvent),
    /// The server launched a container.
    ContainerLaunched(Box<Launched>),
    /// A container was stopped (or removed while running) through the server.
    ContainerStopped {
        /// Its node.
        node: NodeId,
        /// The container.
        container: ContainerId,
    },
    /// An engine event of a Kisara container: start, die, OOM, ...
    Container {
        /// Its node.
        node: NodeId,
        /// The event.
        event: ContainerEvent,
    },
}

type Hook = Box<dyn Fn(&ClusterEvent) + Send + Sync>;

/// Which containers [`Server::list`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContainerQuery {
    /// Only this owner's.
    pub owner: Option<String>,
    /// Only this module's.
    pub module: Option<String>,
    /// Only on this node.
    pub node: Option<NodeId>,
    /// Only with these labels.
    pub labels: LabelFilter,
}

impl ContainerQuery {
    fn filter(&self) -> LabelFilter {
        let mut filter = self.labels.clone().with(labels::MANAGED, "true");
        if let Some(owner) = &self.owner {
            filter = filter.with(labels::OWNER, owner);
        }
        if let Some(module) = &self.module {
            filter = filter.with(labels::MODULE, module);
        }
        filter
    }
}

/// A network to create across the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkRequest {
    /// Its name, unique in the cluster.
    pub name: String,
    /// This subnet; one from the pool when `None`.
    #[serde(default)]
    pub subnet: Option<IpNet>,
    /// Bridge (one per node) or overlay (one across the cluster).
    #[serde(default)]
    pub driver: NetworkDriver,
    /// No route to the outside.
    #[serde(default)]
    pub internal: bool,
    /// Only on this node; on every online node when `None` (bridges), or on
    /// the first online node (an overlay spans the swarm from there).
    #[serde(default)]
    pub node: Option<NodeId>,
}

impl NetworkRequest {
    /// A bridge network with a subnet from the pool on every online node.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            subnet: None,
            driver: NetworkDriver::Bridge,
            internal: false,
            node: None,
        }
    }
}

/// A network as created on the nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNetwork {
    /// Its subnet.
    pub subnet: IpNet,
    /// The network on each node that has it.
    pub nodes: Vec<(NodeId, NetworkInfo)>,
}

/// One item of a [`Server::pull_image`] stream.
#[derive(Debug)]
pub enum PullEvent {
    /// A step of the pull on `node`, as its engine reports it.
    Progress {
        /// The node pulling.
        node: NodeId,
        /// The step.
        progress: Progress,
    },
    /// The pull on `node` ended; the last item about that node.
    Done {
        /// The node.
        node: NodeId,
        /// `Ok` when the image is on the node; the error names the node.
        result: Result<()>,
    },
}

/// The progress of a pull on several nodes, their items interleaved; see
/// [`Server::pull_image`].
pub type PullStream = Pin<Box<dyn Stream<Item = PullEvent> + Send + 'static>>;

/// Reads a pull to its end and returns how it ended on each node, in node
/// order: the short way for callers that need no progress.
pub async fn drain_pull(mut pull: PullStream) -> Vec<(NodeId, Result<()>)> {
    let mut outcomes = Vec::new();
    while let Some(event) = pull.next().await {
        if let PullEvent::Done { node, result } = event {
            outcomes.push((node, result));
        }
    }
    outcomes.sort_by(|a, b| a.0.cmp(&b.0));
    outcomes
}

/// `image`'s pull on one node as events, ending with [`PullEvent::Done`].
fn pull_on(
    node: NodeId,
    runtime: Arc<dyn ContainerRuntime>,
    image: ImageRef,
) -> impl Stream<Item = PullEvent> + Send + 'static {
    let span = tracing::info_span!("pull_image", %node, %image);
    // A pull that fails to start ends like one that fails midway.
    let steps = futures::stream::once(async move { runtime.pull_image(&image).await }).flat_map(
        |started| started.unwrap_or_else(|error| Box::pin(futures::stream::iter([Err(error)]))),
    );
    let steps: ProgressStream = Box::pin(steps);
    futures::stream::unfold(Some(steps), move |steps| {
        let node = node.clone();
        async move {
            let mut steps = steps?;
            let result = match steps.next().await {
                Some(Ok(progress)) => {
                    return Some((PullEvent::Progress { node, progress }, Some(steps)));
                }
                Some(Err(error)) => Err(on_node(error, &node)),
                None => Ok(()),
            };
            match &result {
                Ok(()) => tracing::info!("image pulled"),
                Err(error) => tracing::warn!(%error, "image pull failed"),
            }
            Some((PullEvent::Done { node, result }, None))
        }
        .instrument(span.clone())
    })
}

/// `error` with `node` named in its message and its kind kept, so that a
/// failure on one of several nodes says where it happened.
fn on_node(error: Error, node: &NodeId) -> Error {
    let at = |message: String| format!("on node {node}: {message}");
    match error {
        Error::NotFound { what, name } => Error::NotFound {
            what,
            name: format!("{name} on node {node}"),
        },
        Error::AlreadyExists { what, name } => Error::AlreadyExists {
            what,
            name: format!("{name} on node {node}"),
        },
        Error::Conflict { message } => Error::Conflict {
            message: at(message),
        },
        Error::Invalid { what, message } => Error::Invalid {
            what,
            message: at(message),
        },
        Error::Exhausted { message } => Error::Exhausted {
            message: at(message),
        },
        Error::Unavailable { message, source } => Error::Unavailable {
            message: at(message),
            source,
        },
        Error::Timeout { operation, after } => Error::Timeout {
            operation: format!("{operation} on node {node}"),
            after,
        },
        Error::Unauthenticated { message } => Error::Unauthenticated {
            message: at(message),
        },
        Error::PermissionDenied { message } => Error::PermissionDenied {
            message: at(message),
        },
        Error::NotSupported { backend, operation } => Error::NotSupported {
            backend,
            operation: format!("{operation} on node {node}"),
        },
        Error::Backend {
            backend,
            message,
            source,
        } => Error::Backend {
            backend,
            message: at(message),
            source,
        },
        // A kind added to core later keeps its message as it is.
        other => other,
    }
}

struct NodeEntry {
    runtime: Arc<dyn ContainerRuntime>,
    /// The node's own tunnel (an agent's relay client), used instead of the
    /// server's for its containers.
    tunnel: Option<Arc<dyn Tunnel>>,
    capacity: NodeCapacity,
    online: bool,
    stats: NodeStats,
    /// Launches placed here that have not finished yet.
    reserved: u32,
    watcher: Option<JoinHandle<()>>,
}

impl NodeEntry {
    fn load(&self, node: &NodeId) -> NodeLoad {
        let mut stats = self.stats;
        stats.containers = stats.containers.saturating_add(self.reserved);
        NodeLoad {
            node: node.clone(),
            online: self.online,
            capacity: self.capacity,
            stats,
        }
    }
}

struct Inner {
    nodes: Mutex<BTreeMap<NodeId, NodeEntry>>,
    /// Where each known container runs, by id.
    locations: Mutex<HashMap<ContainerId, NodeId>>,
    launches: Mutex<KeyedCells<OnceCell<Launched>>>,
    placement: Arc<dyn Placement>,
    subnets: Arc<dyn SubnetAllocator>,
    tunnel: Option<Arc<dyn Tunnel>>,
    hooks: Vec<Hook>,
}

/// Builds a [`Server`]; hooks can only be registered here, before it runs.
#[must_use]
pub struct ServerBuilder {
    subnets: Arc<dyn SubnetAllocator>,
    placement: Arc<dyn Placement>,
    tunnel: Option<Arc<dyn Tunnel>>,
    hooks: Vec<Hook>,
}

impl ServerBuilder {
    /// Places launches with `placement` instead of [`HeadroomPlacement`].
    pub fn with_placement(mut self, placement: Arc<dyn Placement>) -> Self {
        self.placement = placement;
        self
    }

    /// Exposes every launched port through `tunnel`.
    pub fn with_tunnel(mut self, tunnel: Arc<dyn Tunnel>) -> Self {
        self.tunnel = Some(tunnel);
        self
    }

    /// Calls `hook` with every cluster event.
    pub fn on_event(mut self, hook: impl Fn(&ClusterEvent) + Send + Sync + 'static) -> Self {
        self.hooks.push(Box::new(hook));
        self
    }

    /// Calls `hook` when a node connects (or reconnects), with its capacity.
    pub fn on_node_connected(
        self,
        hook: impl Fn(&NodeId, &NodeCapacity) + Send + Sync + 'static,
    ) -> Self {
        self.on_event(move |event| {
            if let ClusterEvent::Node(NodeEvent::Connected { node, capacity }) = event {
                hook(node, capacity);
            }
        })
    }

    /// Calls `hook` when a node's link is lost or closed, with the reason.
    pub fn on_node_disconnected(
        self,
        hook: impl Fn(&NodeId, &str) + Send + Sync + 'static,
    ) -> Self {
        self.on_event(move |event| {
            if let ClusterEvent::Node(NodeEvent::Disconnected { node, reason }) = event {
                hook(node, reason);
            }
        })
    }

    /// Calls `hook` on every heartbeat, with the node's load.
    pub fn on_node_heartbeat(
        self,
        hook: impl Fn(&NodeId, &NodeStats) + Send + Sync + 'static,
    ) -> Self {
        self.on_event(move |event| {
            if let ClusterEvent::Node(NodeEvent::Heartbeat { node, stats }) = event {
                hook(node, stats);
            }
        })
    }

    /// Calls `hook` after each launch, with the container and its exposures.
    pub fn on_container_launched(self, hook: impl Fn(&Launched) + Send + Sync + 'static) -> Self {
        self.on_event(move |event| {
            if let ClusterEvent::ContainerLaunched(launched) = event {
                hook(launched);
            }
        })
    }

    /// Calls `hook` when a container is stopped through the server.
    pub fn on_container_stopped(
        self,
        hook: impl Fn(&NodeId, &ContainerId) + Send + Sync + 'static,
    ) -> Self {
        self.on_event(move |event| {
            if let ClusterEvent::ContainerStopped { node, container } = event {
                hook(node, container);
            }
        })
    }

    /// Calls `hook` when a container's main process exits, with the exit
    /// code and the container's labels.
    pub fn on_container_died(
        self,
        hook: impl Fn(&NodeId, &ContainerEvent, i64) + Send + Sync + 'static,
    ) -> Self {
        self.on_event(move |event| {
            if let ClusterEvent::Container { node, event } = event
                && let ContainerEventKind::Die { exit_code } = event.kind
            {
                hook(node, event, exit_code);
            }
        })
    }

    /// Calls `hook` when a container runs out of memory.
    pub fn on_container_oom(
        self,
        hook: impl Fn(&NodeId, &ContainerEvent) + Send + Sync + 'static,
    ) -> Self {
        self.on_event(move |event| {
            if let ClusterEvent::Container { node, event } = event
                && event.kind == ContainerEventKind::Oom
            {
                hook(node, event);
            }
        })
    }

    /// The server.
    pub fn build(self) -> Server {
        Server {
            inner: Arc::new(Inner {
                nodes: Mutex::new(BTreeMap::new()),
                locations: Mutex::new(HashMap::new()),
                launches: Mutex::new(KeyedCells::new(IDEMPOTENCY_WINDOW)),
                placement: self.placement,
                subnets: self.subnets,
                tunnel: self.tunnel,
                hooks: self.hooks,
            }),
        }
    }
}

/// What a joining node brings besides its runtime (see
/// [`Server::connect_node_with`]).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct NodeExtras {
    /// The node's own tunnel (an agent's relay client, which reaches
    /// container addresses the server cannot), used instead of the
    /// server's for its containers.
    pub tunnel: Option<Arc<dyn Tunnel>>,
    /// Its Kisara objects as it presented them (an agent's hello); listed
    /// from the runtime when `None`.
    pub inventory: Option<Inventory>,
}

impl NodeExtras {
    /// Exposes the node's containers through `tunnel`.
    #[must_use]
    pub fn with_tunnel(mut self, tunnel: Arc<dyn Tunnel>) -> Self {
        self.tunnel = Some(tunnel);
        self
    }

    /// Starts from `inventory` instead of listing the node.
    #[must_use]
    pub fn with_inventory(mut self, inventory: Inventory) -> Self {
        self.inventory = Some(inventory);
        self
    }
}

/// The handle an embedding program holds to run containers across the
/// cluster. Cheap to clone.
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nodes: Vec<NodeId> = lock(&self.inner.nodes).keys().cloned().collect();
        f.debug_struct("Server")
            .field("nodes", &nodes)
            .finish_non_exhaustive()
    }
}

/// Gives back a launch's placement slot however the launch ends.
struct Reservation {
    inner: Arc<Inner>,
    node: NodeId,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(entry) = lock(&self.inner.nodes).get_mut(&self.node) {
            entry.reserved = entry.reserved.saturating_sub(1);
        }
    }
}

impl Inner {
    fn emit(&self, event: &ClusterEvent) {
        for hook in &self.hooks {
            hook(event);
        }
    }
}

impl Server {
    /// Starts building a server whose networks take subnets from `subnets`.
    pub fn builder(subnets: Arc<dyn SubnetAllocator>) -> ServerBuilder {
        ServerBuilder {
            subnets,
            placement: Arc::new(HeadroomPlacement),
            tunnel: None,
            hooks: Vec::new(),
        }
    }

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

    fn record_nodes_online(&self) {
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
    async fn watch(
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
    fn online_nodes(&self) -> Vec<(NodeId, Arc<dyn ContainerRuntime>)> {
        let nodes = lock(&self.inner.nodes);
        nodes
            .iter()
            .filter(|(_, entry)| entry.online)
            .map(|(id, entry)| (id.clone(), entry.runtime.clone()))
            .collect()
    }

    fn runtime_of(&self, node: &NodeId) -> Result<Arc<dyn ContainerRuntime>> {
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
    fn targets(&self, node: Option<&NodeId>) -> Result<Vec<(NodeId, Arc<dyn ContainerRuntime>)>> {
        match node {
            Some(node) => Ok(vec![(node.clone(), self.runtime_of(node)?)]),
            None => Ok(self.online_nodes()),
        }
    }

    /// What `list` returns on each of `targets`, with its node.
    async fn gather<T, F, Fut>(
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

    /// Picks a node and holds a slot on it until the reservation drops.
    fn reserve(
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

    async fn launch_once(&self, request: LaunchRequest, timeout: Duration) -> Result<Launched> {
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

    async fn launch_placed(&self, request: LaunchRequest, timeout: Duration) -> Result<Launched> {
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

    /// Where a container can be reached for exposure: its primary network's
    /// address, else any address it has.
    fn target_ip(container: &ContainerInfo) -> Result<std::net::IpAddr> {
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
    fn expose_request(
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
    fn tunnel_for(&self, node: Option<&NodeId>) -> Option<Arc<dyn Tunnel>> {
        node.and_then(|node| {
            lock(&self.inner.nodes)
                .get(node)
                .and_then(|entry| entry.tunnel.clone())
        })
        .or_else(|| self.inner.tunnel.clone())
    }

    async fn expose_ports(
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
    async fn restore_exposures(
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

    async fn withdraw_exposures(tunnel: Option<&Arc<dyn Tunnel>>, container: &ContainerId) {
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

    /// The node a container was last seen on, by the id the server knows.
    fn known_node(&self, container: &ContainerId) -> Option<NodeId> {
        lock(&self.inner.locations).get(container).cloned()
    }

    /// Finds the node of a container, by id or name.
    async fn locate(
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

    /// The images on the node named, or on every online node, with their
    /// nodes.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] for an unknown node, [`Error::Unavailable`] for
    /// an offline one; a node's own failure, naming the node.
    pub async fn list_images(&self, node: Option<&NodeId>) -> Result<Vec<(NodeId, ImageInfo)>> {
        Self::gather(self.targets(node)?, |runtime| async move {
            runtime.list_images().await
        })
        .await
    }

    /// Pulls `image` from its registry onto the node named, or onto every
    /// online node, and streams each node's progress.
    ///
    /// The pulls start when the stream is first polled and run
    /// concurrently; each node's items keep their order and end with one
    /// [`PullEvent::Done`], whose error (the registry has no such image, the
    /// node's engine failed) names the node. One node failing does not stop
    /// the others. Dropping the stream stops waiting for the pulls.
    /// [`drain_pull`] reads it to the end.
    ///
    /// # Errors
    ///
    /// Before anything is pulled: [`Error::NotFound`] for an unknown node,
    /// [`Error::Unavailable`] for an offline one or when no node is online.
    pub fn pull_image(&self, image: &ImageRef, node: Option<&NodeId>) -> Result<PullStream> {
        let targets = self.targets(node)?;
        if targets.is_empty() {
            return Err(Error::unavailable(format!(
                "no online node to pull image {image} on"
            )));
        }
        let pulls = targets
            .into_iter()
            .map(|(node, runtime)| Box::pin(pull_on(node, runtime, image.clone())));
        Ok(Box::pin(futures::stream::select_all(pulls)))
    }

    /// Removes `image` from the node named, or from every online node; `Ok`
    /// where it is missing.
    ///
    /// Every node is tried even when one fails.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] for an unknown node, [`Error::Unavailable`] for
    /// an offline one; otherwise the first node's failure, naming the node
    /// (e.g. [`Error::Conflict`] when a container uses the image there).
    pub async fn remove_image(&self, image: &ImageRef, node: Option<&NodeId>) -> Result<()> {
        let mut first = None;
        for (node, runtime) in self.targets(node)? {
            match runtime.remove_image(image.as_str()).await {
                Ok(()) => tracing::info!(%node, %image, "image removed"),
                Err(error) => {
                    let error = on_node(error, &node);
                    tracing::warn!(%error, %image, "image removal failed");
                    first.get_or_insert(error);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}
