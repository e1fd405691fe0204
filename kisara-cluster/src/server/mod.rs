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

mod exposures;
mod images;
mod launch;
mod networks;
mod nodes;
mod readiness;

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
pub use readiness::Readiness;

/// How long a successful launch is remembered under its idempotency key.
const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(3600);

/// A container launched by the cluster, with where it runs and how it is
/// reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(examples(json!({"node": "n1", "container": {"id": "4f1c2a9b7e3d", "name": "web-1", "image": "ctf/web-1:latest", "state": "running", "exit_code": null, "oom_killed": false, "labels": {"io.kisara.managed": "true", "io.kisara.owner": "team-7", "io.kisara.module": "web-1"}, "networks": {"team-7": {"network_id": "9a8b7c6d5e4f", "ip": "10.128.7.2"}}, "ports": ["80/tcp"], "created_at": 1_767_787_200_000_u64}, "exposures": [{"id": "exp-4f1c2a9b-80", "relay": "relay-eu", "public": {"host": "play.example.com", "port": 31337}, "target": "10.128.7.2:80", "protocol": "tcp", "limits": {"bandwidth": 1048576, "max_connections": 64}, "labels": {"io.kisara.container": "4f1c2a9b7e3d"}}]})))]
pub struct Launched {
    /// The node it runs on.
    pub node: NodeId,
    /// The container.
    pub container: ContainerInfo,
    /// One exposure per port of the launch request, when the server has a
    /// tunnel.
    pub exposures: Vec<Exposure>,
}

/// Something that happened in the cluster, as hooks receive it; as JSON
/// (for event webhooks) `{"event": "container_launched", "data": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", content = "data", rename_all = "snake_case")]
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

impl ClusterEvent {
    /// The container the event is about, if any: events of one container
    /// are delivered in order, those of different ones independently.
    pub fn container(&self) -> Option<&ContainerId> {
        match self {
            Self::Node(_) => None,
            Self::ContainerLaunched(launched) => Some(&launched.container.id),
            Self::ContainerStopped { container, .. } => Some(container),
            Self::Container { event, .. } => Some(&event.container),
        }
    }

    /// Whether this is a node's heartbeat: frequent and routine, which
    /// event subscribers rarely want.
    pub fn is_heartbeat(&self) -> bool {
        matches!(self, Self::Node(NodeEvent::Heartbeat { .. }))
    }
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({"name": "team-7", "driver": "bridge", "internal": false})))]
pub struct NetworkRequest {
    /// Its name, unique in the cluster.
    pub name: String,
    /// This subnet (CIDR); one from the server's pool when absent.
    #[serde(default)]
    #[schema(value_type = Option<String>, examples("10.128.7.0/24"))]
    pub subnet: Option<IpNet>,
    /// Bridge (one per node) or overlay (one across the cluster).
    #[serde(default)]
    pub driver: NetworkDriver,
    /// No route to the outside.
    #[serde(default)]
    pub internal: bool,
    /// Only on this node; on every online node when absent (bridges), or on
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(examples(json!({"subnet": "10.128.7.0/24", "nodes": [["n1", {"id": "9a8b7c6d5e4f", "name": "team-7", "subnet": "10.128.7.0/24", "gateway": "10.128.7.1", "driver": "bridge", "internal": false, "labels": {"io.kisara.managed": "true", "io.kisara.network": "team-7"}, "containers": ["4f1c2a9b7e3d"]}]]})))]
pub struct ClusterNetwork {
    /// Its subnet (CIDR).
    #[schema(value_type = String, examples("10.128.7.0/24"))]
    pub subnet: IpNet,
    /// The network on each node that has it, as `[node, network]` pairs.
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
}
