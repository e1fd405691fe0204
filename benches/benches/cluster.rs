//! The cluster `Server`, side by side with its peers in one run.
//!
//! 1. **Launch latency, end to end** on a real Docker engine: from the
//!    launch call until the container's port answers `GET /hostname`
//!    through the relay; Kisara (in-process `Server::launch_container`, and
//!    the HTTP API served by axum on 127.0.0.1) against `docker run -d`
//!    (the CLI, on a bridge network with a fixed `--ip`, so it needs no
//!    inspect) polled directly on the container's address. The three
//!    alternate, their order rotating every round; containers are removed
//!    between rounds, untimed. The container is the busybox test image
//!    running `httpd -f -p 8080 -h /etc`, on a bridge network from
//!    `Server::create_network`. Relay, tunnel client, server and
//!    `DockerRuntime` all run in this process.
//! 2. **Control-plane scale**, in memory: one `Server` with 500 agents,
//!    each an `Agent` over an in-process `pipe()` link to an
//!    `AgentGateway`, backed by a `MemoryRuntime`. Process RSS before and
//!    after linking them and after the launches; launches per second at a
//!    concurrency of 64 in process (5,000 per repetition) and through the
//!    HTTP API router called with tower's `oneshot`, without a socket
//!    (2,000 per repetition); the physical limit is the same in-process
//!    launches on 500 `MemoryRuntime` nodes connected directly, no link.
//!    The three alternate over 3 repetitions.
//!
//! Run: `cargo bench -p kisara-benches --bench cluster` (about a minute
//! on 2 cores). `KISARA_BENCH_SMOKE=1` for the seconds-long CI run,
//! `KISARA_BENCH_ONLY=latency` (or `scale`) for one section,
//! `KISARA_BENCH_ROUNDS` for the latency rounds (default 15) and
//! `KISARA_BENCH_AGENTS` for the simulated agents (default 500).
//!
//! The latency section needs an engine (`scripts/ensure-docker`) and
//! Debian's busybox-static for the test image. Every container it starts
//! carries `kisara-test-run=<run>`; the raw ones carry no `io.kisara.*`
//! label, so even a leaked one is the bench's own. Everything is removed at
//! the end and on a panic. Both sections end with one summary table.

// A benchmark harness reports on its terminal.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::future::Future;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use kisara_benches::{
    DOCKER_RUN_DEFAULTS, Samples, Steal, Table, env_count, met, rss_bytes, runs, smoke,
};
use kisara_cluster::link::{Agent, AgentGateway, LinkOptions, pipe};
use kisara_cluster::{Launched, NetworkRequest, Server};
use kisara_core::builtin::StaticAuthenticator;
use kisara_core::memory::{MemoryRuntime, MemorySubnetAllocator};
use kisara_core::model::{ContainerSpec, ImageRef, LaunchRequest, NodeCapacity, NodeId};
use kisara_core::{Identity, Secret, SubnetAllocator};
use kisara_docker::testing::{self, Cleanup, TEST_RUN_LABEL};
use kisara_tunnel::{Relay, RelayOptions, TunnelClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tower::ServiceExt;

const RELAY_TOKEN: &str = "kisara-bench-relay-token-0123456789";
const AGENT_TOKEN: &str = "kisara-bench-agent-token-0123456789";
const API_TOKEN: &str = "kisara-bench-api-token-0123456789";
const HTTPD: [&str; 6] = ["httpd", "-f", "-p", "8080", "-h", "/etc"];
/// Kisara's pool and the raw network's subnet: apart, and away from the
/// ranges the test suite uses (10.128/9 in-memory, 10.200–209 end to end).
const KISARA_POOL: &str = "10.213.0.0/20";
const RAW_SUBNET: &str = "10.213.250.0/24";
/// Both sides poll at the same pace, so the poll adds the same error.
const POLL: Duration = Duration::from_millis(5);
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(60);
const CONCURRENCY: usize = 64;
const MB: f64 = 1024.0 * 1024.0;

struct Settings {
    rounds: usize,
    agents: usize,
    reps: usize,
    launches: usize,
    http_launches: usize,
}

impl Settings {
    fn from_env() -> Self {
        let smoke = smoke();
        Self {
            rounds: env_count("KISARA_BENCH_ROUNDS", if smoke { 2 } else { 15 }).max(1),
            agents: env_count("KISARA_BENCH_AGENTS", if smoke { 100 } else { 500 }).max(1),
            reps: if smoke { 1 } else { 3 },
            launches: if smoke { 500 } else { 5_000 },
            http_launches: if smoke { 200 } else { 2_000 },
        }
    }
}

#[tokio::main]
async fn main() {
    let settings = Settings::from_env();
    let steal = Steal::start();
    let mut table = Table::new(&["measure", "Kisara", "reference", "ratio", "goal", "met?"]);
    // Scale first: its RSS figures then hold nothing of the Docker section.
    if runs("scale") {
        control_plane(&settings, &mut table).await;
    }
    if runs("latency") {
        launch_latency(&settings, &mut table).await;
    }
    table.row(vec![
        "host CPU steal during the run".to_owned(),
        format!("{:.1} %", steal.percent()),
        "–".to_owned(),
        "–".to_owned(),
        "–".to_owned(),
        met(None),
    ]);
    println!("\n## Summary\n\n{table}");
}

fn ratio(kisara: f64, reference: f64) -> String {
    format!("{:.2}×", kisara / reference)
}

// ---------------------------------------------------------------------------
// 1. Launch latency on a real engine
// ---------------------------------------------------------------------------

/// What the latency section leaves on the engine, removed when dropped,
/// even on a panic: first the run's containers and the raw network
/// (labelled with the run, for [`Cleanup`]), then Kisara's network, which
/// `Server::create_network` does not label with the run.
struct Leftovers {
    cleanup: Option<Cleanup>,
    network: String,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        drop(self.cleanup.take());
        // Already gone after a normal run; the CLI works during unwinding.
        let _ = std::process::Command::new("docker")
            .args(["network", "rm", &self.network])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

async fn docker(args: &[&str]) -> String {
    let output = tokio::process::Command::new("docker")
        .args(args)
        .output()
        .await
        .expect("run the docker CLI");
    assert!(
        output.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// One `GET /hostname`: whether httpd answered 200.
async fn answers(address: &str) -> bool {
    let exchange = async {
        let mut stream = TcpStream::connect(address).await.ok()?;
        stream
            .write_all(b"GET /hostname HTTP/1.0\r\nHost: bench\r\n\r\n")
            .await
            .ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let status = response.split(|&b| b == b'\n').next()?;
        Some(status.starts_with(b"HTTP/1.") && status.windows(5).any(|w| w == b" 200 "))
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Polls `address` until httpd answers.
async fn wait_answer(address: &str) {
    let deadline = Instant::now() + LAUNCH_TIMEOUT;
    while !answers(address).await {
        assert!(
            Instant::now() < deadline,
            "{address} did not answer within {LAUNCH_TIMEOUT:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The launch request through the HTTP API, and its answer.
async fn api_launch(api: SocketAddr, body: &[u8]) -> Launched {
    let mut stream = TcpStream::connect(api).await.expect("reach the API");
    let head = format!(
        "POST /v1/containers HTTP/1.1\r\nHost: {api}\r\nAuthorization: Bearer {API_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("send");
    stream.write_all(body).await.expect("send");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("receive");
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP response");
    let (head, body) = (
        String::from_utf8_lossy(&response[..end]),
        &response[end + 4..],
    );
    assert!(
        head.starts_with("HTTP/1.1 201"),
        "launch through the API: {head}\n{}",
        String::from_utf8_lossy(body)
    );
    serde_json::from_slice(body).expect("a launch answer")
}

fn public_address(launched: &Launched) -> String {
    launched
        .exposures
        .first()
        .expect("port 8080 exposed")
        .public
        .to_string()
}

async fn launch_latency(settings: &Settings, table: &mut Table) {
    let runtime = testing::connect_default().await;
    let image = testing::test_image(&runtime).await;
    let cleanup = Cleanup::new(&runtime);
    let run = cleanup.run().to_owned();
    let kisara_network = format!("{run}-k");
    let raw_network = format!("{run}-r");
    let leftovers = Leftovers {
        cleanup: Some(cleanup),
        network: kisara_network.clone(),
    };

    let relay = Relay::bind(RelayOptions::new(
        "127.0.0.1:0".parse().unwrap(),
        RELAY_TOKEN,
    ))
    .await
    .expect("relay");
    let tunnel = TunnelClient::builder("bench-node")
        .relay("bench", relay.local_addr().to_string(), RELAY_TOKEN)
        .connect()
        .await
        .expect("tunnel client");
    let subnets: Arc<dyn SubnetAllocator> = Arc::new(
        MemorySubnetAllocator::new(KISARA_POOL.parse().unwrap(), 24).expect("subnet pool"),
    );
    let server = Server::builder(subnets)
        .with_tunnel(Arc::new(tunnel))
        .build();
    let capacity = NodeCapacity {
        max_containers: 100,
        bandwidth_in: 0,
        bandwidth_out: 0,
    };
    server
        .connect_node(
            NodeId::new("bench-node").unwrap(),
            capacity,
            Arc::new(runtime),
        )
        .await
        .expect("connect the engine");
    server
        .create_network(&NetworkRequest::new(&kisara_network))
        .await
        .expect("Kisara's bridge network");
    docker(&[
        "network",
        "create",
        "--label",
        &format!("{TEST_RUN_LABEL}={run}"),
        "--subnet",
        RAW_SUBNET,
        &raw_network,
    ])
    .await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap();
    let tokens = StaticAuthenticator::new().with_token(Identity::new("bench"), API_TOKEN);
    let router = kisara_cluster::http::api(server.clone(), Arc::new(tokens));
    let serving = tokio::spawn(async move { axum::serve(listener, router).await });

    let spec = |name: String| {
        let mut spec = ContainerSpec::new(image.clone());
        spec.name = Some(name);
        spec.owner = Some("bench".into());
        spec.networks = vec![kisara_network.clone()];
        spec.ports = vec!["8080/tcp".parse().unwrap()];
        spec.command = Some(HTTPD.iter().map(|&s| s.to_owned()).collect());
        spec.labels.insert(TEST_RUN_LABEL.into(), run.clone());
        spec
    };
    let run_label = format!("{TEST_RUN_LABEL}={run}");
    let raw_base = RAW_SUBNET.trim_end_matches(".0/24");

    // Round 0 warms every path (image layers, connection pools) untimed.
    let (mut call, mut http, mut raw) =
        (Samples::default(), Samples::default(), Samples::default());
    for round in 0..=settings.rounds {
        let mut kisara_ids = Vec::new();
        let mut raw_names = Vec::new();
        // Rotate the order so no method always goes first.
        for method in (0..3).map(|m| (m + round) % 3) {
            let started = Instant::now();
            match method {
                0 => {
                    let request = LaunchRequest::new(spec(format!("{run}-p{round}")));
                    let launched = server
                        .launch_container(request, LAUNCH_TIMEOUT)
                        .await
                        .expect("launch");
                    wait_answer(&public_address(&launched)).await;
                    call.push(started.elapsed());
                    kisara_ids.push(launched.container.id);
                }
                1 => {
                    let request = LaunchRequest::new(spec(format!("{run}-h{round}")));
                    let body = serde_json::to_vec(&request).expect("a JSON request");
                    let launched = api_launch(api, &body).await;
                    wait_answer(&public_address(&launched)).await;
                    http.push(started.elapsed());
                    kisara_ids.push(launched.container.id);
                }
                _ => {
                    let name = format!("{run}-r{round}");
                    let ip = format!("{raw_base}.{}", 10 + round % 200);
                    let mut args = vec!["run", "-d", "--name", &name, "--label", &run_label];
                    args.extend(["--network", &raw_network, "--ip", &ip]);
                    args.extend(DOCKER_RUN_DEFAULTS);
                    args.push(image.as_str());
                    args.extend(HTTPD);
                    docker(&args).await;
                    wait_answer(&format!("{ip}:8080")).await;
                    raw.push(started.elapsed());
                    raw_names.push(name);
                }
            }
        }
        if round == 0 {
            call = Samples::default();
            http = Samples::default();
            raw = Samples::default();
        }
        for id in &kisara_ids {
            server.remove(id).await.expect("remove a Kisara container");
        }
        let mut remove = vec!["rm", "-f"];
        remove.extend(raw_names.iter().map(String::as_str));
        docker(&remove).await;
    }
    serving.abort();
    server
        .remove_network(&kisara_network)
        .await
        .expect("remove Kisara's network");
    drop(leftovers);
    relay.stop().await;

    println!(
        "launch → port answers, ms, median [min–max] of {}:",
        settings.rounds
    );
    println!("  Server::launch_container + relay   {call}");
    println!("  HTTP API + relay                   {http}");
    println!("  docker run -d + container IP       {raw}");
    let goal = 1.15;
    for (measure, kisara) in [
        ("launch → answers via relay, in-process API (ms)", &call),
        ("launch → answers via relay, HTTP API (ms)", &http),
    ] {
        let r = kisara.median() / raw.median();
        table.row(vec![
            measure.to_owned(),
            kisara.to_string(),
            format!("docker run -d + IP: {raw}"),
            ratio(kisara.median(), raw.median()),
            format!("≤ {goal}×"),
            met(Some(r <= goal)),
        ]);
    }
}

// ---------------------------------------------------------------------------
// 2. Control-plane scale, in memory
// ---------------------------------------------------------------------------

fn simulated_node(image: &ImageRef) -> Arc<MemoryRuntime> {
    let node = MemoryRuntime::new();
    node.add_image(image, None);
    Arc::new(node)
}

fn memory_server() -> Server {
    let subnets = MemorySubnetAllocator::new("10.128.0.0/16".parse().unwrap(), 24).unwrap();
    Server::builder(Arc::new(subnets)).build()
}

/// Launches per second: `count` launches by [`CONCURRENCY`] workers, each
/// taking the next as soon as its last one finished.
async fn launch_rate<F, Fut>(count: usize, launch: F) -> f64
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (next, launch) = (next.clone(), launch.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < count {
                    launch().await;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("launch worker");
    }
    count as f64 / started.elapsed().as_secs_f64()
}

fn in_process(
    server: &Server,
    spec: &ContainerSpec,
) -> impl Fn() -> LaunchFuture + Clone + Send + 'static {
    let (server, spec) = (server.clone(), spec.clone());
    move || {
        let (server, spec) = (server.clone(), spec.clone());
        Box::pin(async move {
            server
                .launch_container(LaunchRequest::new(spec), LAUNCH_TIMEOUT)
                .await
                .expect("launch");
        })
    }
}

type LaunchFuture = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

fn through_http(
    server: &Server,
    spec: &ContainerSpec,
) -> impl Fn() -> LaunchFuture + Clone + Send + 'static {
    let tokens = StaticAuthenticator::new().with_token(Identity::new("bench"), API_TOKEN);
    let router = kisara_cluster::http::api(server.clone(), Arc::new(tokens));
    let body = serde_json::to_vec(&LaunchRequest::new(spec.clone())).expect("a JSON request");
    move || {
        let request = Request::post("/v1/containers")
            .header(header::AUTHORIZATION, format!("Bearer {API_TOKEN}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.clone()))
            .expect("a request");
        let router = router.clone();
        Box::pin(async move {
            let response = router.oneshot(request).await.expect("infallible");
            let status = response.status();
            // Read the answer too: encoding it is part of the API's work.
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .expect("the answer");
            assert_eq!(
                status,
                StatusCode::CREATED,
                "{}",
                String::from_utf8_lossy(&body)
            );
        })
    }
}

async fn control_plane(settings: &Settings, table: &mut Table) {
    let agents = settings.agents;
    let image = ImageRef::parse("bench/sim:latest").unwrap();
    // Room for every launch of the run on any node, so placement never
    // runs out; bandwidth 0 is unlimited.
    let capacity = NodeCapacity {
        max_containers: 10_000,
        bandwidth_in: 0,
        bandwidth_out: 0,
    };
    let node_id = |i: usize| NodeId::new(format!("sim-{i:04}")).unwrap();

    // The agents' runtimes first, on their own: a real server does not
    // hold them, so their share is measured apart and left out of the
    // server's estimate.
    let rss_start = rss_bytes();
    let runtimes: Vec<_> = (0..agents).map(|_| simulated_node(&image)).collect();
    let rss_runtimes = rss_bytes();
    let linked = memory_server();
    let gateway = AgentGateway::new(
        linked.clone(),
        Secret::new(AGENT_TOKEN),
        LinkOptions::default(),
    )
    .expect("gateway");
    let started = Instant::now();
    let mut links: Vec<JoinHandle<()>> = Vec::with_capacity(agents * 2);
    for (i, runtime) in runtimes.into_iter().enumerate() {
        let agent = Agent::new(node_id(i), capacity, runtime);
        let (server_end, agent_end) = pipe().await;
        let gateway = gateway.clone();
        links.push(tokio::spawn(async move {
            let _ = gateway.serve(server_end).await;
        }));
        links.push(tokio::spawn(async move {
            let _ = agent.serve_link(agent_end).await;
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while linked.nodes().iter().filter(|n| n.online).count() < agents {
        assert!(Instant::now() < deadline, "agents did not all link");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let link_time = started.elapsed();
    let rss_linked = rss_bytes();

    let direct = memory_server();
    let runtimes: Vec<_> = (0..agents).map(|_| simulated_node(&image)).collect();
    let rss_direct_runtimes = rss_bytes();
    for (i, runtime) in runtimes.into_iter().enumerate() {
        direct
            .connect_node(node_id(i), capacity, runtime)
            .await
            .expect("connect a node");
    }
    let rss_direct = rss_bytes();

    let spec = ContainerSpec::new(image);
    let (mut linked_rate, mut http_rate, mut direct_rate) =
        (Samples::default(), Samples::default(), Samples::default());
    for rep in 0..settings.reps {
        for method in (0..3).map(|m| (m + rep) % 3) {
            match method {
                0 => linked_rate
                    .push_value(launch_rate(settings.launches, in_process(&linked, &spec)).await),
                1 => http_rate.push_value(
                    launch_rate(settings.http_launches, through_http(&linked, &spec)).await,
                ),
                _ => direct_rate
                    .push_value(launch_rate(settings.launches, in_process(&direct, &spec)).await),
            }
        }
    }
    let rss_end = rss_bytes();
    for link in &links {
        link.abort();
    }

    let mb = |bytes: u64| bytes as f64 / MB;
    let runtimes_size = mb(rss_runtimes.saturating_sub(rss_start));
    let link_size = mb(rss_linked.saturating_sub(rss_runtimes));
    let direct_size = mb(rss_direct.saturating_sub(rss_direct_runtimes));
    // Upper bound: the agents' ends of the links are in it too.
    let server_estimate = mb(rss_start) + link_size;
    println!(
        "{agents} agents linked in {:.2} s. RSS: {:.1} MB at start, +{runtimes_size:.1} MB \
         for the agents' runtimes, +{link_size:.1} MB linking them, +{direct_size:.1} MB \
         connecting {agents} nodes directly, {:.1} MB after the launches",
        link_time.as_secs_f64(),
        mb(rss_start),
        mb(rss_end),
    );
    println!(
        "launches/s, median [min–max] of {}: linked {linked_rate:.0}, HTTP {http_rate:.0}, \
         direct {direct_rate:.0}",
        settings.reps
    );
    let reps = settings.reps;
    table.row(vec![
        format!("RSS of {agents} links: server + both WebSocket ends, agents' runtimes apart (MB)"),
        format!("{link_size:.1}"),
        format!("{agents} nodes connected directly: {direct_size:.1}"),
        ratio(link_size, direct_size),
        "–".to_owned(),
        met(None),
    ]);
    table.row(vec![
        format!("server RSS with {agents} agents linked, upper bound: start + links (MB)"),
        format!("{server_estimate:.1}"),
        format!("agents' runtimes, apart: {runtimes_size:.1}"),
        "–".to_owned(),
        "≤ 256 MB".to_owned(),
        met(Some(server_estimate <= 256.0)),
    ]);
    let total = reps * (2 * settings.launches + settings.http_launches);
    table.row(vec![
        format!("process RSS after {total} launches, everything in one process (MB)"),
        format!("{:.1}", mb(rss_end)),
        format!("before the launches: {:.1}", mb(rss_direct)),
        "–".to_owned(),
        "–".to_owned(),
        met(None),
    ]);
    table.row(vec![
        format!(
            "launches/s in process, {agents} linked agents, ×{CONCURRENCY} (median [min–max] of {reps})"
        ),
        format!("{linked_rate:.0}"),
        format!("direct nodes: {direct_rate:.0}"),
        ratio(linked_rate.median(), direct_rate.median()),
        "≥ 5000/s".to_owned(),
        met(Some(linked_rate.median() >= 5000.0)),
    ]);
    table.row(vec![
        format!("launches/s through the HTTP router (tower oneshot, no socket), ×{CONCURRENCY}"),
        format!("{http_rate:.0}"),
        format!("in process: {linked_rate:.0}"),
        ratio(http_rate.median(), linked_rate.median()),
        "–".to_owned(),
        met(None),
    ]);
    table.row(vec![
        format!("time to link {agents} agents (s)"),
        format!("{:.2}", link_time.as_secs_f64()),
        "–".to_owned(),
        "–".to_owned(),
        "–".to_owned(),
        met(None),
    ]);
}
