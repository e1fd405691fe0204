//! The agent ⇄ server link over in-process pipes and over real HTTP on
//! loopback: the runtime suite through a link, hello and auth, hooks,
//! reconnects with resync, idempotent resends, streams that never block
//! control, and oversized frames.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use kisara_cluster::http::agent_link;
use kisara_cluster::link::{
    AGENT_LINK_PATH, Agent, AgentGateway, LinkOptions, MAX_MESSAGE_BYTES, RemoteRuntime,
    TlsListener, pipe,
};
use kisara_cluster::{ClusterEvent, NetworkRequest, Server};
use kisara_core::memory::{LoopbackTunnel, MemoryRuntime, MemorySubnetAllocator};
use kisara_core::model::{
    ContainerSpec, ExecSpec, ImageRef, LabelFilter, LaunchRequest, NodeCapacity, NodeEvent, NodeId,
};
use kisara_core::testing::{runtime, tunnel};
use kisara_core::{ContainerRuntime, ErrorKind, Secret, Tunnel, exec_to_end};
use tokio::task::JoinHandle;
use tokio_rustls::rustls;

const WAIT: Duration = Duration::from_secs(10);
const TOKEN: &str = "agent-token-for-tests";

fn image() -> ImageRef {
    ImageRef::parse("kisara-test/busybox:latest").unwrap()
}

fn memory() -> Arc<MemoryRuntime> {
    let runtime = MemoryRuntime::new();
    runtime.add_image(&image(), None);
    Arc::new(runtime)
}

fn capacity() -> NodeCapacity {
    NodeCapacity {
        max_containers: 50,
        bandwidth_in: 50 << 20,
        bandwidth_out: 50 << 20,
    }
}

fn options() -> LinkOptions {
    LinkOptions::default()
        .with_heartbeat(Duration::from_millis(200))
        .with_request_timeout(Duration::from_secs(5))
        .with_backoff(Duration::from_millis(20), Duration::from_millis(200))
}

/// Records the server's events as lines.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    fn count(&self, prefix: &str) -> usize {
        self.lines()
            .iter()
            .filter(|l| l.starts_with(prefix))
            .count()
    }

    async fn wait_for_count(&self, prefix: &str, count: usize) {
        let deadline = Instant::now() + WAIT;
        while self.count(prefix) < count {
            assert!(
                Instant::now() < deadline,
                "waited for {count} {prefix:?} events; saw {:?}",
                self.lines()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A server with its gateway, logging node events.
fn server(log: &Log) -> (Server, AgentGateway) {
    let pool = MemorySubnetAllocator::new("10.140.0.0/16".parse().unwrap(), 24).unwrap();
    let log = log.clone();
    let server = Server::builder(Arc::new(pool))
        .on_event(move |event| {
            let line = match event {
                ClusterEvent::Node(NodeEvent::Connected { node, capacity }) => {
                    format!("connected {node} {}", capacity.max_containers)
                }
                ClusterEvent::Node(NodeEvent::Disconnected { node, reason }) => {
                    format!("disconnected {node} {reason}")
                }
                ClusterEvent::Node(NodeEvent::Heartbeat { node, .. }) => {
                    format!("heartbeat {node}")
                }
                ClusterEvent::Container { node, event } => {
                    format!("container {node} {:?} {}", event.kind, event.container)
                }
                other => format!("other {other:?}"),
            };
            log.0.lock().unwrap().push(line);
        })
        .build();
    let gateway = AgentGateway::new(server.clone(), Secret::new(TOKEN), options()).unwrap();
    (server, gateway)
}

/// Links `agent` to `gateway` over an in-process pipe; the handle serves
/// the agent's end (abort it to cut the link).
async fn link(gateway: &AgentGateway, agent: &Agent) -> JoinHandle<()> {
    let (server_end, agent_end) = pipe().await;
    let gateway = gateway.clone();
    tokio::spawn(async move {
        // Ignored: the test asserts on what the server sees.
        let _ = gateway.serve(server_end).await;
    });
    let agent = agent.clone();
    tokio::spawn(async move {
        // Ignored: as above.
        let _ = agent.serve_link(agent_end).await;
    })
}

async fn online(server: &Server, node: &NodeId, online: bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = server.nodes().iter().any(|n| &n.node == node && n.online);
        if now == online {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {node} never became online={online}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits for `node` to come online, then launches on it through the server.
async fn serves_launches(server: &Server, node: &NodeId) {
    online(server, node, true).await;
    let launched = server
        .launch_container(LaunchRequest::new(ContainerSpec::new(image())), WAIT)
        .await
        .unwrap();
    assert_eq!(&launched.node, node);
}

fn node(name: &str) -> NodeId {
    NodeId::new(name).unwrap()
}

/// A remote node over a fresh link to a memory node, with a loopback
/// tunnel beside its agent.
async fn remote_memory() -> Arc<RemoteRuntime> {
    let (server, gateway) = server(&Log::default());
    let id = node(&format!("node-{}", kisara_core::testing::random_u64()));
    let agent = Agent::with_options(id.clone(), capacity(), memory(), options())
        .with_tunnel(Arc::new(LoopbackTunnel::default()));
    // The link lives as long as the test's runtime: the suite's cases run
    // on it.
    std::mem::forget(link(&gateway, &agent).await);
    online(&server, &id, true).await;
    gateway.node(&id).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_node_passes_the_runtime_suite() {
    runtime::all(|| async { runtime::RuntimeFixture::new(remote_memory().await, image()) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_agents_tunnel_passes_the_tunnel_suite() {
    tunnel::all(|| async { remote_memory().await as Arc<dyn Tunnel> }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_fire_for_connect_heartbeat_and_disconnect() {
    let log = Log::default();
    let (server, gateway) = server(&log);
    let id = node("node-hooks");
    let agent = Agent::with_options(id.clone(), capacity(), memory(), options());
    let link = link(&gateway, &agent).await;
    log.wait_for_count("connected node-hooks 50", 1).await;
    log.wait_for_count("heartbeat node-hooks", 2).await;
    link.abort();
    log.wait_for_count("disconnected node-hooks", 1).await;
    online(&server, &id, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relinked_agent_is_resynced_and_its_containers_kept() {
    let log = Log::default();
    let (server, gateway) = server(&log);
    let id = node("node-relink");
    let engine = memory();
    let agent = Agent::with_options(id.clone(), capacity(), engine.clone(), options());
    let first = link(&gateway, &agent).await;
    online(&server, &id, true).await;
    let launched = server
        .launch_container(LaunchRequest::new(ContainerSpec::new(image())), WAIT)
        .await
        .unwrap();

    let remote = gateway.node(&id).unwrap();
    first.abort();
    online(&server, &id, false).await;
    // The server refuses work for an offline node at once, but a call
    // already on its way to the node waits for it to come back.
    let err = server.inspect(&launched.container.id).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    let waiting = tokio::spawn({
        let container = launched.container.id.clone();
        async move { remote.inspect(&container).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _second = link(&gateway, &agent).await;
    online(&server, &id, true).await;
    let info = waiting.await.unwrap().unwrap();
    assert_eq!(info.id, launched.container.id);
    let (on, _) = server.inspect(&launched.container.id).await.unwrap();
    assert_eq!(on, id);
    assert_eq!(log.count("connected node-relink"), 2, "{:?}", log.lines());
    // The engine kept the container all along.
    assert_eq!(engine.list(&LabelFilter::managed()).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_cut_off_by_a_dying_link_runs_once() {
    let (server, gateway) = server(&Log::default());
    let id = node("node-resend");
    let engine = memory();
    let agent = Agent::with_options(id.clone(), capacity(), engine.clone(), options());
    let first = link(&gateway, &agent).await;
    online(&server, &id, true).await;
    let remote = gateway.node(&id).unwrap();

    // The link dies at various moments around a launch: before the
    // request leaves, while the agent works on it, after its answer. A
    // cut-off launch is resent on the next link with the same key, and the
    // agent answers it from the first outcome.
    let mut current = first;
    for (round, delay_us) in [0u64, 200, 500, 1000, 2000, 5000].into_iter().enumerate() {
        let name = format!("resent-launch-{round}");
        let mut spec = ContainerSpec::new(image());
        spec.name = Some(name.clone());
        let launch = tokio::spawn({
            let remote = remote.clone();
            async move { remote.launch(&spec).await }
        });
        tokio::time::sleep(Duration::from_micros(delay_us)).await;
        current.abort();
        current = link(&gateway, &agent).await;
        let info = launch.await.unwrap().unwrap();
        assert_eq!(info.name, name);
    }
    let all = engine.list(&LabelFilter::all()).await.unwrap();
    assert_eq!(all.len(), 6, "exactly one container per launch: {all:?}");
}

/// A server with one memory node linked as `name`: the server, the link
/// (abort it to cut the link) and the node as the server sees it.
async fn one_linked(name: &str) -> (Server, JoinHandle<()>, Arc<RemoteRuntime>) {
    let (server, gateway) = server(&Log::default());
    let id = node(name);
    let agent = Agent::with_options(id.clone(), capacity(), memory(), options());
    let link = link(&gateway, &agent).await;
    let remote = remote_of(&gateway, &id).await;
    (server, link, remote)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_stream_does_not_delay_control() {
    let (_server, _link, remote) = one_linked("node-busy").await;
    let container = remote.launch(&ContainerSpec::new(image())).await.unwrap();

    // An exec whose output nobody reads fills its window and stalls...
    let mut stalled = remote
        .exec(&container.id, &ExecSpec::new(["cat"]).with_stdin())
        .await
        .unwrap();
    let mut stdin = stalled.stdin.take().unwrap();
    let feeding = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        for _ in 0..80 {
            stdin.write_all(&[b'k'; 100_000]).await.unwrap();
        }
        stdin.shutdown().await.unwrap();
    });
    let first = stalled.output.next().await.unwrap().unwrap();
    assert!(matches!(first, kisara_core::model::ExecOutput::Stdout(_)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ... while other calls still go through, stream bytes behind them.
    for _ in 0..20 {
        tokio::time::timeout(Duration::from_secs(2), remote.inspect(&container.id))
            .await
            .expect("control waits behind a stalled stream")
            .unwrap();
    }
    let echoed = exec_to_end(&*remote, &container.id, ["echo", "still here"])
        .await
        .unwrap();
    assert_eq!(echoed.stdout, b"still here\n");
    // Reading it to the end gets every byte.
    let mut total = match first {
        kisara_core::model::ExecOutput::Stdout(bytes) => bytes.len(),
        kisara_core::model::ExecOutput::Stderr(_) => 0,
    };
    while let Some(chunk) = stalled.output.next().await {
        if let kisara_core::model::ExecOutput::Stdout(bytes) = chunk.unwrap() {
            total += bytes.len();
        }
    }
    assert_eq!(total, 8_000_000);
    feeding.await.unwrap();
}

async fn remote_of(gateway: &AgentGateway, id: &NodeId) -> Arc<RemoteRuntime> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(remote) = gateway.node(id).filter(|r| r.is_linked()) {
            return remote;
        }
        assert!(Instant::now() < deadline, "node {id} never linked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_to_an_absent_node_fail_after_their_timeout() {
    let (server, link, remote) = one_linked("node-gone").await;
    link.abort();
    online(&server, remote.node(), false).await;
    let started = Instant::now();
    let err = ContainerRuntime::list(&*remote, &LabelFilter::all())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.to_string().contains("node-gone"), "{err}");
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "waited for the link"
    );
}

/// The agent endpoint on a real socket.
async fn http_gateway(gateway: AgentGateway) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, agent_link(gateway)).await });
    format!("ws://{address}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_link_over_http_with_the_right_token_only() {
    let log = Log::default();
    let (server, gateway) = server(&log);
    let url = http_gateway(gateway).await;

    // A wrong token never gets a node in.
    let intruder = Agent::with_options(node("node-intruder"), capacity(), memory(), options());
    let stop = tokio::time::sleep(Duration::from_millis(500));
    intruder
        .run(&url, &Secret::new("wrong"), stop)
        .await
        .unwrap();
    assert!(server.nodes().is_empty(), "{:?}", server.nodes());

    // A raw upgrade without a token gets a JSON 401.
    let refused = tokio_tungstenite::connect_async(format!("{url}{AGENT_LINK_PATH}"))
        .await
        .unwrap_err();
    match refused {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            assert_eq!(response.status(), 401);
            let body = String::from_utf8(response.body().clone().unwrap()).unwrap();
            assert!(body.contains("unauthenticated"), "{body}");
        }
        other => panic!("expected an HTTP refusal, got {other}"),
    }

    // The right token links, and the agent keeps serving until stopped.
    let id = node("node-http");
    let agent = Agent::with_options(id.clone(), capacity(), memory(), options());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn({
        let url = url.clone();
        async move {
            agent
                .run(&url, &Secret::new(TOKEN), async {
                    let _ = stop_rx.await;
                })
                .await
        }
    });
    serves_launches(&server, &id).await;
    stop_tx.send(()).unwrap();
    running.await.unwrap().unwrap();
    online(&server, &id, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_hellos_and_oversized_frames_are_refused() {
    let (server, gateway) = server(&Log::default());
    let url = http_gateway(gateway.clone()).await;
    let request = |url: &str| {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = format!("{url}{AGENT_LINK_PATH}")
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        request
    };
    use tokio_tungstenite::tungstenite::Message;

    // Another protocol version is refused with a reason.
    let (mut ws, _) = tokio_tungstenite::connect_async(request(&url))
        .await
        .unwrap();
    let hello = serde_json::json!({
        "type": "hello", "version": 99, "node": "node-future",
        "capacity": {"max_containers": 1, "bandwidth_in": 1, "bandwidth_out": 1},
        "runtime": "memory", "agent_version": "9",
        "capabilities": {"overlay_networks": false, "oom_events": false, "image_pull": false, "image_build": false}
    });
    ws.send(Message::text(hello.to_string())).await.unwrap();
    let answer = ws.next().await.unwrap().unwrap().into_text().unwrap();
    assert!(
        answer.contains("refused") && answer.contains("99"),
        "{answer}"
    );

    // Garbage instead of a hello closes the link.
    let (mut ws, _) = tokio_tungstenite::connect_async(request(&url))
        .await
        .unwrap();
    ws.send(Message::text("{not json")).await.unwrap();
    assert!(matches!(
        ws.next().await,
        None | Some(Ok(Message::Close(_)) | Err(_))
    ));

    // A message over the limit closes the link; the server stays up.
    let (mut ws, _) = tokio_tungstenite::connect_async(request(&url))
        .await
        .unwrap();
    let huge = vec![b'x'; MAX_MESSAGE_BYTES + 1];
    // Ignored: the server may cut the socket while we still write.
    let _ = ws.send(Message::binary(huge)).await;
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                None | Some(Err(_) | Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the link stayed open after an oversized frame"
    );
    assert!(server.nodes().is_empty());

    let id = node("node-after-garbage");
    let agent = Agent::with_options(id.clone(), capacity(), memory(), options());
    let _link = link(&gateway, &agent).await;
    online(&server, &id, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_are_exposed_by_the_agent_that_runs_the_container() {
    let (server, gateway) = server(&Log::default());
    let id = node("node-exposing");
    let tunnel = Arc::new(LoopbackTunnel::default());
    let agent = Agent::with_options(id.clone(), capacity(), memory(), options())
        .with_tunnel(tunnel.clone());
    let _link = link(&gateway, &agent).await;
    online(&server, &id, true).await;
    server
        .create_network(&NetworkRequest::new("team-3"))
        .await
        .unwrap();
    let mut spec = ContainerSpec::new(image());
    spec.networks = vec!["team-3".into()];
    spec.ports = vec!["80/tcp".parse().unwrap()];
    let launched = server
        .launch_container(LaunchRequest::new(spec), WAIT)
        .await
        .unwrap();
    assert_eq!(launched.exposures.len(), 1);
    // The exposure lives in the agent's tunnel, not the server's.
    let on_agent = tunnel.list(&LabelFilter::all()).await.unwrap();
    assert_eq!(on_agent, launched.exposures);
    assert_eq!(
        server.exposures(&launched.container.id).await.unwrap(),
        launched.exposures
    );
    let by_name = kisara_core::model::ContainerId::new(launched.container.name.clone());
    assert_eq!(
        server.exposures(&by_name).await.unwrap(),
        launched.exposures
    );
    server.remove(&launched.container.id).await.unwrap();
    assert!(tunnel.list(&LabelFilter::all()).await.unwrap().is_empty());
    server.remove_network("team-3").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_sharing_one_engine_each_see_their_own_containers() {
    let (server, gateway) = server(&Log::default());
    let engine = memory();
    let (a, b) = (node("node-a"), node("node-b"));
    let mut links = Vec::new();
    for id in [&a, &b] {
        let agent = Agent::with_options(id.clone(), capacity(), engine.clone(), options());
        links.push(link(&gateway, &agent).await);
        online(&server, id, true).await;
    }
    for (i, id) in [&a, &b, &b].into_iter().enumerate() {
        let mut request = LaunchRequest::new(ContainerSpec::new(image()));
        request.node = Some(id.clone());
        request.container.name = Some(format!("shared-{i}"));
        server.launch_container(request, WAIT).await.unwrap();
    }
    let listed = server
        .list(&kisara_cluster::ContainerQuery::default())
        .await
        .unwrap();
    let mut placed: Vec<(String, String)> = listed
        .iter()
        .map(|(node, info)| (info.name.clone(), node.to_string()))
        .collect();
    placed.sort();
    assert_eq!(
        placed,
        [
            ("shared-0".to_owned(), "node-a".to_owned()),
            ("shared-1".to_owned(), "node-b".to_owned()),
            ("shared-2".to_owned(), "node-b".to_owned()),
        ]
    );
    // Inspect names the node that runs it.
    let (on, _) = server
        .inspect(&kisara_core::model::ContainerId::new("shared-2"))
        .await
        .unwrap();
    assert_eq!(on, b);
}

/// A CA, a server certificate for `localhost` and a client certificate,
/// all made for this test.
struct Pki {
    ca: rustls::pki_types::CertificateDer<'static>,
    server: (rustls::pki_types::CertificateDer<'static>, rcgen::KeyPair),
    client: (rustls::pki_types::CertificateDer<'static>, rcgen::KeyPair),
}

impl Pki {
    fn new() -> Self {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf = |name: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
                .unwrap()
                .signed_by(&key, &issuer)
                .unwrap();
            (cert.der().clone(), key)
        };
        Self {
            ca: ca.der().clone(),
            server: leaf("localhost"),
            client: leaf("node-tls"),
        }
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        roots
    }

    fn key(key: &rcgen::KeyPair) -> rustls::pki_types::PrivateKeyDer<'static> {
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into())
    }

    /// The server's TLS, demanding client certificates from this CA.
    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(self.roots()),
            provider.clone(),
        )
        .build()
        .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.server.0.clone()], Self::key(&self.server.1))
            .unwrap();
        Arc::new(config)
    }

    /// An agent's TLS, with or without its client certificate.
    fn client_config(&self, with_certificate: bool) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(self.roots());
        let config = if with_certificate {
            builder
                .with_client_auth_cert(vec![self.client.0.clone()], Self::key(&self.client.1))
                .unwrap()
        } else {
            builder.with_no_client_auth()
        };
        Arc::new(config)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_link_over_mutual_tls() {
    let pki = Pki::new();
    let (server, gateway) = server(&Log::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let listener = TlsListener::new(listener, pki.server_config()).unwrap();
    tokio::spawn(async move { axum::serve(listener, agent_link(gateway)).await });
    let url = format!("wss://localhost:{port}");
    let token = Secret::new(TOKEN);

    // Without a client certificate the handshake fails: no node.
    let anonymous = Agent::with_options(node("node-anonymous"), capacity(), memory(), options())
        .with_tls(pki.client_config(false));
    anonymous
        .run(&url, &token, tokio::time::sleep(Duration::from_millis(500)))
        .await
        .unwrap();
    assert!(server.nodes().is_empty(), "{:?}", server.nodes());

    // wss:// without any TLS config is refused up front.
    let plain = Agent::with_options(node("node-plain"), capacity(), memory(), options());
    let err = plain
        .run(&url, &token, std::future::pending())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");

    // With its certificate (and the token) the agent links.
    let id = node("node-tls");
    let agent = Agent::with_options(id.clone(), capacity(), memory(), options())
        .with_tls(pki.client_config(true));
    let running =
        tokio::spawn(async move { agent.run(&url, &token, std::future::pending()).await });
    serves_launches(&server, &id).await;
    running.abort();
}

/// Log lines written by a test's own subscriber.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Self;
    fn make_writer(&'a self) -> Self {
        self.clone()
    }
}

/// Launches through the API of a server whose node is linked, with
/// `request_id` as the caller's `x-request-id`; the id answered.
async fn launch_through_the_api(server: &Server, request_id: Option<&str>) -> String {
    use axum::http::{Request, header};
    use tower::ServiceExt;

    let token = "api-token-0123456789abcdef";
    let app = kisara_cluster::http::api(
        server.clone(),
        Arc::new(kisara_core::builtin::StaticAuthenticator::new().with_token(
            kisara_core::Identity::new("platform").with_role("admin"),
            token,
        )),
    );
    let mut request = Request::post("/v1/containers")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(id) = request_id {
        request = request.header("x-request-id", id);
    }
    let body = serde_json::json!({"container": {"image": image().to_string()}}).to_string();
    let response = app
        .oneshot(request.body(axum::body::Body::from(body)).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), axum::http::StatusCode::CREATED);
    response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned()
}

// One thread, so the test's subscriber sees the agent's tasks too.
#[tokio::test(flavor = "current_thread")]
async fn an_api_request_id_is_answered_and_named_by_the_agent() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::NEW)
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    let (server, _link, _remote) = one_linked("traced").await;
    online(&server, &node("traced"), true).await;

    let given = launch_through_the_api(&server, Some("trace-me-42")).await;
    assert_eq!(given, "trace-me-42");
    // No id, or one that does not belong in a log line: a fresh one.
    let fresh = launch_through_the_api(&server, None).await;
    let replaced = launch_through_the_api(&server, Some("two words")).await;
    for id in [&fresh, &replaced] {
        assert_eq!(id.len(), 16, "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    }
    assert_ne!(fresh, replaced);

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    for id in [&given, &fresh, &replaced] {
        let named = |span: &str| {
            text.lines()
                .any(|line| line.contains(span) && line.contains(id.as_str()))
        };
        assert!(named("http_request{"), "no API span names {id}:\n{text}");
        assert!(
            named("link_request{") && text.contains("node=traced"),
            "no agent span names {id}:\n{text}"
        );
    }
}
