//! The in-process cluster engine over in-memory nodes: placement, every hook
//! with its payload, idempotent launches, reservations, exposures, recovery.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kisara_cluster::{
    ContainerQuery, NetworkRequest, PullEvent, Server, ServerBuilder, drain_pull,
};
use kisara_core::memory::{LoopbackTunnel, MemoryRuntime, MemorySubnetAllocator};
use kisara_core::model::{
    ContainerId, ContainerSpec, ContainerState, ImageRef, LabelFilter, LaunchRequest, NodeCapacity,
    NodeId, NodeStats, labels,
};
use kisara_core::{ErrorKind, SubnetAllocator, Tunnel};

const WAIT: Duration = Duration::from_secs(10);

fn image() -> ImageRef {
    ImageRef::parse("ctf/web-1:latest").unwrap()
}

fn node_runtime() -> Arc<MemoryRuntime> {
    let runtime = MemoryRuntime::new();
    runtime.add_image(&image(), None);
    Arc::new(runtime)
}

fn capacity(max_containers: u32) -> NodeCapacity {
    NodeCapacity {
        max_containers,
        bandwidth_in: 50 << 20,
        bandwidth_out: 50 << 20,
    }
}

fn id(node: &str) -> NodeId {
    NodeId::new(node).unwrap()
}

fn pool() -> Arc<dyn SubnetAllocator> {
    Arc::new(MemorySubnetAllocator::new("10.130.0.0/16".parse().unwrap(), 24).unwrap())
}

fn spec(owner: &str) -> ContainerSpec {
    let mut spec = ContainerSpec::new(image());
    spec.owner = Some(owner.into());
    spec
}

/// Records what hooks saw, as lines.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, line: String) {
        self.0.lock().unwrap().push(line);
    }
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
    async fn wait_for(&self, prefix: &str) -> String {
        let wait = async {
            loop {
                if let Some(line) = self.lines().into_iter().find(|l| l.starts_with(prefix)) {
                    return line;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(WAIT, wait)
            .await
            .unwrap_or_else(|_| panic!("no {prefix:?} hook call; saw {:?}", self.lines()))
    }
}

fn logged(builder: ServerBuilder, log: &Log) -> ServerBuilder {
    let (a, b, c, d, e, f, g) = (
        log.clone(),
        log.clone(),
        log.clone(),
        log.clone(),
        log.clone(),
        log.clone(),
        log.clone(),
    );
    builder
        .on_node_connected(move |node, cap| {
            a.push(format!("connected {node} max={}", cap.max_containers));
        })
        .on_node_disconnected(move |node, reason| b.push(format!("disconnected {node} {reason}")))
        .on_node_heartbeat(move |node, stats| {
            c.push(format!("heartbeat {node} containers={}", stats.containers));
        })
        .on_container_launched(move |l| {
            d.push(format!(
                "launched {} on {} exposures={}",
                l.container.name,
                l.node,
                l.exposures.len()
            ));
        })
        .on_container_stopped(move |node, container| {
            e.push(format!("stopped {container} on {node}"));
        })
        .on_container_died(move |node, event, code| {
            let owner = event.labels.get(labels::OWNER).cloned().unwrap_or_default();
            f.push(format!(
                "died {} on {node} code={code} owner={owner}",
                event.container
            ));
        })
        .on_container_oom(move |node, event| g.push(format!("oom {} on {node}", event.container)))
}

#[tokio::test]
async fn node_hooks_fire_with_their_payloads() {
    let log = Log::default();
    let server = logged(Server::builder(pool()), &log).build();
    server
        .connect_node(id("n1"), capacity(80), node_runtime())
        .await
        .unwrap();
    server
        .heartbeat(
            &id("n1"),
            NodeStats {
                containers: 3,
                ..NodeStats::default()
            },
        )
        .unwrap();
    server.disconnect_node(&id("n1"), "heartbeat timeout");
    assert_eq!(
        log.lines(),
        vec![
            "connected n1 max=80",
            "heartbeat n1 containers=3",
            "disconnected n1 heartbeat timeout"
        ]
    );
    let err = server
        .heartbeat(&id("ghost"), NodeStats::default())
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn launches_go_to_the_node_with_most_headroom_and_fire_the_launched_hook() {
    let log = Log::default();
    let server = logged(Server::builder(pool()), &log).build();
    server
        .connect_node(id("busy"), capacity(10), node_runtime())
        .await
        .unwrap();
    server
        .connect_node(id("idle"), capacity(10), node_runtime())
        .await
        .unwrap();
    server
        .heartbeat(
            &id("busy"),
            NodeStats {
                containers: 8,
                ..NodeStats::default()
            },
        )
        .unwrap();
    let mut request = LaunchRequest::new(spec("team-1"));
    request.container.name = Some("web-team-1".into());
    let launched = server.launch_container(request, WAIT).await.unwrap();
    assert_eq!(launched.node.as_str(), "idle");
    assert_eq!(launched.container.state, ContainerState::Running);
    assert!(
        log.lines()
            .contains(&"launched web-team-1 on idle exposures=0".to_owned()),
        "{:?}",
        log.lines()
    );

    // An explicit node is honoured, even a busier one; unknown and offline
    // ones are refused by name.
    let mut pinned = LaunchRequest::new(spec("team-2"));
    pinned.node = Some(id("busy"));
    assert_eq!(
        server
            .launch_container(pinned.clone(), WAIT)
            .await
            .unwrap()
            .node
            .as_str(),
        "busy"
    );
    pinned.node = Some(id("ghost"));
    let err = server
        .launch_container(pinned.clone(), WAIT)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.to_string().contains("ghost"));
    server.disconnect_node(&id("busy"), "gone");
    pinned.node = Some(id("busy"));
    assert_eq!(
        server
            .launch_container(pinned, WAIT)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Unavailable
    );
}

#[tokio::test]
async fn died_oom_and_stopped_hooks_fire_with_container_and_labels() {
    let log = Log::default();
    let runtime = node_runtime();
    let server = logged(Server::builder(pool()), &log).build();
    server
        .connect_node(id("n1"), capacity(80), runtime.clone())
        .await
        .unwrap();

    let mut dying = spec("team-die");
    dying.command = Some(vec!["sh".into(), "-c".into(), "exit 3".into()]);
    let dead = server
        .launch_container(LaunchRequest::new(dying), WAIT)
        .await
        .unwrap();
    let line = log.wait_for("died").await;
    assert_eq!(
        line,
        format!("died {} on n1 code=3 owner=team-die", dead.container.id)
    );

    let hungry = server
        .launch_container(LaunchRequest::new(spec("team-oom")), WAIT)
        .await
        .unwrap();
    runtime.simulate_oom(&hungry.container.id).unwrap();
    assert_eq!(
        log.wait_for("oom").await,
        format!("oom {} on n1", hungry.container.id)
    );

    let stopped = server
        .launch_container(LaunchRequest::new(spec("team-stop")), WAIT)
        .await
        .unwrap();
    server
        .stop(&stopped.container.id, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(
        log.wait_for("stopped").await,
        format!("stopped {} on n1", stopped.container.id)
    );
}

#[tokio::test]
async fn a_retried_launch_with_the_same_key_makes_one_container() {
    let server = Server::builder(pool()).build();
    server
        .connect_node(id("n1"), capacity(80), node_runtime())
        .await
        .unwrap();
    let mut request = LaunchRequest::new(spec("team-idem"));
    request.idempotency_key = Some("launch-42".into());
    let attempts: Vec<_> = (0..5)
        .map(|_| {
            let server = server.clone();
            let request = request.clone();
            tokio::spawn(async move { server.launch_container(request, WAIT).await.unwrap() })
        })
        .collect();
    let mut ids = std::collections::BTreeSet::new();
    for attempt in attempts {
        ids.insert(attempt.await.unwrap().container.id);
    }
    assert_eq!(ids.len(), 1, "five attempts made {} containers", ids.len());
    let query = ContainerQuery {
        owner: Some("team-idem".into()),
        ..ContainerQuery::default()
    };
    assert_eq!(server.list(&query).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_failed_launch_is_not_remembered_under_its_key() {
    let runtime = node_runtime();
    let server = Server::builder(pool()).build();
    server
        .connect_node(id("n1"), capacity(80), runtime.clone())
        .await
        .unwrap();
    let mut request =
        LaunchRequest::new(ContainerSpec::new(ImageRef::parse("ctf/later:v1").unwrap()));
    request.idempotency_key = Some("launch-later".into());
    let err = server
        .launch_container(request.clone(), WAIT)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    runtime.add_image(&ImageRef::parse("ctf/later:v1").unwrap(), None);
    server.launch_container(request, WAIT).await.unwrap();
}

#[tokio::test]
async fn concurrent_launches_never_overfill_a_node() {
    let server = Server::builder(pool()).build();
    server
        .connect_node(id("small"), capacity(3), node_runtime())
        .await
        .unwrap();
    let launches: Vec<_> = (0..6)
        .map(|i| {
            let server = server.clone();
            tokio::spawn(async move {
                server
                    .launch_container(LaunchRequest::new(spec(&format!("t{i}"))), WAIT)
                    .await
            })
        })
        .collect();
    let mut ok = 0;
    for launch in launches {
        match launch.await.unwrap() {
            Ok(_) => ok += 1,
            Err(error) => assert_eq!(error.kind(), ErrorKind::Exhausted, "{error}"),
        }
    }
    assert_eq!(ok, 3, "a node with 3 slots took {ok} containers");
}

#[tokio::test]
async fn ports_are_exposed_on_launch_and_withdrawn_on_remove() {
    let tunnel: Arc<dyn Tunnel> = Arc::new(LoopbackTunnel::default());
    let server = Server::builder(pool()).with_tunnel(tunnel.clone()).build();
    server
        .connect_node(id("n1"), capacity(80), node_runtime())
        .await
        .unwrap();
    let network = server
        .create_network(&NetworkRequest::new("team-9"))
        .await
        .unwrap();
    let mut container = spec("team-9");
    container.networks = vec!["team-9".into()];
    container.ports = vec!["80/tcp".parse().unwrap(), "22/tcp".parse().unwrap()];
    let launched = server
        .launch_container(LaunchRequest::new(container), WAIT)
        .await
        .unwrap();
    assert_eq!(launched.exposures.len(), 2);
    let ip = launched.container.ip_on("team-9").unwrap();
    assert!(network.subnet.contains(&ip));
    for exposure in &launched.exposures {
        assert_eq!(exposure.target.ip(), ip);
        assert_eq!(
            exposure.labels[labels::CONTAINER],
            launched.container.id.to_string()
        );
        assert_eq!(exposure.labels[labels::OWNER], "team-9");
    }
    assert_eq!(
        server
            .exposures(&launched.container.id)
            .await
            .unwrap()
            .len(),
        2
    );
    server.remove(&launched.container.id).await.unwrap();
    assert!(
        tunnel.list(&LabelFilter::all()).await.unwrap().is_empty(),
        "exposures withdrawn"
    );
    server.remove(&launched.container.id).await.unwrap();
    server.remove_network("team-9").await.unwrap();
}

#[tokio::test]
async fn networks_take_pool_subnets_on_every_node_and_give_them_back() {
    let subnets = pool();
    let server = Server::builder(subnets.clone()).build();
    server
        .connect_node(id("n1"), capacity(80), node_runtime())
        .await
        .unwrap();
    server
        .connect_node(id("n2"), capacity(80), node_runtime())
        .await
        .unwrap();
    let network = server
        .create_network(&NetworkRequest::new("shared"))
        .await
        .unwrap();
    assert_eq!(network.nodes.len(), 2);
    assert!(
        network
            .nodes
            .iter()
            .all(|(_, n)| n.subnet == Some(network.subnet))
    );
    assert_eq!(
        subnets.lookup("shared").await.unwrap(),
        Some(network.subnet)
    );
    let err = server
        .create_network(&NetworkRequest::new("shared"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    assert_eq!(
        subnets.lookup("shared").await.unwrap(),
        Some(network.subnet),
        "a refused duplicate keeps the existing network's subnet"
    );
    server.remove_network("shared").await.unwrap();
    assert_eq!(subnets.lookup("shared").await.unwrap(), None);
    assert!(server.list_networks().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_new_server_rebuilds_everything_from_labels() {
    let runtime = node_runtime();
    let first_tunnel: Arc<dyn Tunnel> = Arc::new(LoopbackTunnel::default());
    let first = Server::builder(pool()).with_tunnel(first_tunnel).build();
    first
        .connect_node(id("n1"), capacity(80), runtime.clone())
        .await
        .unwrap();
    let network = first
        .create_network(&NetworkRequest::new("team-r"))
        .await
        .unwrap();
    let mut container = spec("team-r");
    container.networks = vec!["team-r".into()];
    container.ports = vec!["80/tcp".parse().unwrap()];
    let launched = first
        .launch_container(LaunchRequest::new(container), WAIT)
        .await
        .unwrap();
    drop(first);

    // A restarted server: empty pool, empty tunnel, same engine.
    let subnets = pool();
    let tunnel: Arc<dyn Tunnel> = Arc::new(LoopbackTunnel::default());
    let second = Server::builder(subnets.clone())
        .with_tunnel(tunnel.clone())
        .build();
    second
        .connect_node(id("n1"), capacity(80), runtime.clone())
        .await
        .unwrap();
    assert_eq!(
        subnets.lookup("team-r").await.unwrap(),
        Some(network.subnet),
        "subnet adopted"
    );
    let other = subnets.allocate("team-s").await.unwrap();
    assert_ne!(
        other, network.subnet,
        "an adopted subnet is never handed out again"
    );
    let (node, info) = second.inspect(&launched.container.id).await.unwrap();
    assert_eq!(
        (node.as_str(), info.state),
        ("n1", ContainerState::Running),
        "nothing was stopped"
    );
    let exposures = second.exposures(&launched.container.id).await.unwrap();
    assert_eq!(exposures.len(), 1, "the exposure was restored");
    assert_eq!(exposures[0].labels[labels::PORT], "80/tcp");
    let by_name = second
        .inspect(&ContainerId::new(&launched.container.name))
        .await
        .unwrap();
    assert_eq!(by_name.1.id, launched.container.id);
}

#[tokio::test]
async fn launches_and_nodes_are_counted_in_metrics() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // Each test runs in its own process under nextest, so a global recorder
    // sees only this test.
    if recorder.install().is_err() {
        panic!("another metrics recorder is installed in this process");
    }
    let server = Server::builder(pool()).build();
    server
        .connect_node(id("n1"), capacity(80), node_runtime())
        .await
        .unwrap();
    server
        .launch_container(LaunchRequest::new(spec("m")), WAIT)
        .await
        .unwrap();
    let missing = LaunchRequest::new(ContainerSpec::new(ImageRef::parse("ctf/none:v1").unwrap()));
    server.launch_container(missing, WAIT).await.unwrap_err();
    let mut seen = std::collections::BTreeMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let labels: Vec<String> = key
            .key()
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let name = format!("{}{{{}}}", key.key().name(), labels.join(","));
        let value = match value {
            DebugValue::Counter(n) => n as f64,
            DebugValue::Gauge(g) => g.into_inner(),
            DebugValue::Histogram(samples) => samples.len() as f64,
        };
        seen.insert(name, value);
    }
    assert_eq!(
        seen.get("kisara_launches_total{outcome=ok}"),
        Some(&1.0),
        "{seen:?}"
    );
    assert_eq!(
        seen.get("kisara_launches_total{outcome=not_found}"),
        Some(&1.0),
        "{seen:?}"
    );
    assert_eq!(seen.get("kisara_launch_seconds{}"), Some(&2.0), "{seen:?}");
    assert_eq!(seen.get("kisara_nodes_online{}"), Some(&1.0), "{seen:?}");
}

fn pulled_image() -> ImageRef {
    ImageRef::parse("registry.example.com:5000/ctf/pwn-2:v1").unwrap()
}

/// Which nodes list `image`.
async fn nodes_with(server: &Server, image: &ImageRef) -> Vec<String> {
    server
        .list_images(None)
        .await
        .unwrap()
        .into_iter()
        .filter(|(_, info)| info.tags.iter().any(|tag| tag == image.as_str()))
        .map(|(node, _)| node.to_string())
        .collect()
}

#[tokio::test]
async fn images_are_pulled_listed_and_removed_on_one_node_or_all() {
    let server = Server::builder(pool()).build();
    for node in ["n1", "n2"] {
        let runtime = node_runtime();
        runtime.add_registry_image(&pulled_image());
        server
            .connect_node(id(node), capacity(10), runtime)
            .await
            .unwrap();
    }

    // Every node's progress comes before its one final item.
    let mut pull = server.pull_image(&pulled_image(), None).unwrap();
    let mut done = Vec::new();
    let mut steps = 0;
    while let Some(event) = pull.next().await {
        match event {
            PullEvent::Progress { node, progress } => {
                assert!(!done.contains(&node), "progress of {node} after its end");
                assert!(!progress.status.is_empty());
                steps += 1;
            }
            PullEvent::Done { node, result } => {
                result.unwrap();
                done.push(node);
            }
        }
    }
    done.sort();
    assert_eq!(done, [id("n1"), id("n2")]);
    assert!(steps >= 2, "each node reported progress");
    assert_eq!(nodes_with(&server, &pulled_image()).await, ["n1", "n2"]);
    let on_n2 = server.list_images(Some(&id("n2"))).await.unwrap();
    assert!(on_n2.iter().all(|(node, _)| *node == id("n2")));
    assert_eq!(on_n2.len(), 2, "the test image and the pulled one");

    server
        .remove_image(&pulled_image(), Some(&id("n1")))
        .await
        .unwrap();
    assert_eq!(nodes_with(&server, &pulled_image()).await, ["n2"]);
    // Missing where it is removed again: still Ok.
    server.remove_image(&pulled_image(), None).await.unwrap();
    assert!(nodes_with(&server, &pulled_image()).await.is_empty());

    // A pull onto one node touches only that node.
    let outcomes = drain_pull(server.pull_image(&pulled_image(), Some(&id("n2"))).unwrap()).await;
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0].0, id("n2"));
    assert!(outcomes[0].1.is_ok());
    assert_eq!(nodes_with(&server, &pulled_image()).await, ["n2"]);
}

#[tokio::test]
async fn image_errors_name_the_image_and_the_node() {
    let server = Server::builder(pool()).build();
    assert_eq!(
        server
            .pull_image(&pulled_image(), None)
            .err()
            .unwrap()
            .kind(),
        ErrorKind::Unavailable,
        "no node online"
    );
    let with_image = node_runtime();
    with_image.add_registry_image(&pulled_image());
    server
        .connect_node(id("n1"), capacity(10), with_image)
        .await
        .unwrap();
    server
        .connect_node(id("n2"), capacity(10), node_runtime())
        .await
        .unwrap();

    // The registry of n2 lacks the image: n1 still pulls it.
    let outcomes = drain_pull(server.pull_image(&pulled_image(), None).unwrap()).await;
    assert!(outcomes[0].1.is_ok(), "{outcomes:?}");
    let error = outcomes[1].1.as_ref().unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound);
    let message = error.to_string();
    assert!(
        message.contains(pulled_image().as_str()) && message.contains("n2"),
        "{message}"
    );

    for result in [
        server
            .pull_image(&pulled_image(), Some(&id("ghost")))
            .map(drop),
        server.list_images(Some(&id("ghost"))).await.map(drop),
        server.remove_image(&image(), Some(&id("ghost"))).await,
    ] {
        let error = result.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::NotFound);
        assert!(error.to_string().contains("ghost"), "{error}");
    }

    server.disconnect_node(&id("n2"), "test");
    let error = server
        .pull_image(&pulled_image(), Some(&id("n2")))
        .err()
        .unwrap();
    assert_eq!(error.kind(), ErrorKind::Unavailable);
    assert!(error.to_string().contains("n2"), "{error}");

    // An image a container uses stays, and the error says where.
    server
        .launch_container(LaunchRequest::new(spec("team-1")), WAIT)
        .await
        .unwrap();
    let error = server.remove_image(&image(), None).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Conflict);
    let message = error.to_string();
    assert!(
        message.contains(image().as_str()) && message.contains("n1"),
        "{message}"
    );
}
