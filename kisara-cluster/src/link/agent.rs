//! [`Agent`]: serves one node's [`ContainerRuntime`] to the server over a
//! link it dials itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OnceCell;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_rustls::rustls::ClientConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{WebSocketStream, client_async_with_config};
use tracing::Instrument;

use super::peer::{AbortOnDrop, Inbound, InboundStream, Peer, websocket_config};
use super::wire::{Channel, Control, Hello, Op, PROTOCOL_VERSION, WireError, WireResult};
use super::{AGENT_LINK_PATH, LinkOptions};
use crate::keyed::KeyedCells;
use kisara_core::model::{
    ContainerState, ExecOutput, Inventory, LabelFilter, NodeCapacity, NodeId, NodeStats, Protocol,
    labels,
};
use kisara_core::sync::lock;
use kisara_core::traits::{ByteStream, ProgressStream};
use kisara_core::{ContainerRuntime, Error, Result, Secret, Tunnel};

/// How long an outcome is kept under its idempotency key: longer than any
/// server waits before resending.
const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(600);

type Outcome = Arc<OnceCell<WireResult>>;

/// A node agent: presents its node to the server and serves the server's
/// requests against the node's runtime. Reconnects with backoff; nothing on
/// the node depends on the link, so a lost link or a restart of either side
/// stops no container.
///
/// ```no_run
/// # async fn run(runtime: std::sync::Arc<dyn kisara_core::ContainerRuntime>) -> kisara_core::Result<()> {
/// use kisara_cluster::link::Agent;
/// use kisara_core::model::{NodeCapacity, NodeId};
///
/// let capacity = NodeCapacity { max_containers: 80, bandwidth_in: 50 << 20, bandwidth_out: 50 << 20 };
/// let agent = Agent::new(NodeId::new("node-1")?, capacity, runtime);
/// let token = kisara_core::Secret::new("agent-token");
/// agent.run("ws://127.0.0.1:7474", &token, std::future::pending()).await
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    node: NodeId,
    capacity: NodeCapacity,
    runtime: Arc<dyn ContainerRuntime>,
    tunnel: Option<Arc<dyn Tunnel>>,
    tls: Option<Arc<ClientConfig>>,
    options: LinkOptions,
    outcomes: Mutex<KeyedCells<OnceCell<WireResult>>>,
}

/// The tasks serving one link's requests, by request id, with whether a
/// dying link ends them. Streams die with their link; a plain request runs
/// to its end so that its outcome is kept under its idempotency key: a
/// launch cut in half would leave a container that the resent launch
/// collides with.
#[derive(Debug, Default)]
struct Requests(Mutex<HashMap<u64, (AbortHandle, bool)>>);

impl Requests {
    fn insert(&self, id: u64, task: AbortHandle, ends_with_link: bool) {
        lock(&self.0).insert(id, (task, ends_with_link));
    }

    fn cancel(&self, id: u64) {
        if let Some((task, _)) = lock(&self.0).remove(&id) {
            task.abort();
        }
    }

    fn finished(&self, id: u64) {
        lock(&self.0).remove(&id);
    }
}

impl Drop for Requests {
    fn drop(&mut self) {
        for (_, (task, ends_with_link)) in lock(&self.0).drain() {
            if ends_with_link {
                task.abort();
            }
        }
    }
}

type Running = Arc<Requests>;

impl Agent {
    /// An agent for `node`, serving `runtime`.
    pub fn new(node: NodeId, capacity: NodeCapacity, runtime: Arc<dyn ContainerRuntime>) -> Self {
        Self::with_options(node, capacity, runtime, LinkOptions::default())
    }

    /// An agent with its timers set.
    pub fn with_options(
        node: NodeId,
        capacity: NodeCapacity,
        runtime: Arc<dyn ContainerRuntime>,
        options: LinkOptions,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                node,
                capacity,
                runtime,
                tunnel: None,
                tls: None,
                options,
                outcomes: Mutex::new(KeyedCells::new(IDEMPOTENCY_WINDOW)),
            }),
        }
    }

    /// Also exposes this node's container ports for the server through
    /// `tunnel` (e.g. a relay client running beside the agent, which
    /// reaches the containers where the server cannot).
    ///
    /// # Panics
    ///
    /// When called on a clone that is already serving.
    #[must_use]
    pub fn with_tunnel(mut self, tunnel: Arc<dyn Tunnel>) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("with_tunnel is called before serving")
            .tunnel = Some(tunnel);
        self
    }

    /// Dials `wss://` servers with `config`: its roots verify the server, and
    /// a client certificate in it answers a server that demands one (mutual
    /// TLS).
    ///
    /// # Panics
    ///
    /// When called on a clone that is already serving.
    #[must_use]
    pub fn with_tls(mut self, config: Arc<ClientConfig>) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("with_tls is called before serving")
            .tls = Some(config);
        self
    }

    /// Dials `server_url` (the server's base URL, `ws://host:port`, or
    /// `wss://host:port` with [`Agent::with_tls`]) and
    /// serves, reconnecting with backoff, until `stop` resolves. Errors only
    /// on a URL it can never dial; every other failure is logged and
    /// retried.
    pub async fn run(
        &self,
        server_url: &str,
        token: &Secret,
        stop: impl Future<Output = ()>,
    ) -> Result<()> {
        let request = link_request(server_url, token)?;
        let secure = request.uri().scheme_str() == Some("wss");
        let host = request.uri().host().unwrap_or_default().to_owned();
        let port = request
            .uri()
            .port_u16()
            .unwrap_or(if secure { 443 } else { 80 });
        let tls = match (secure, &self.inner.tls) {
            (true, None) => {
                return Err(Error::invalid(
                    "server_url",
                    format!(
                        "{server_url:?} is wss:// but the agent has no TLS config: give it one with Agent::with_tls (kisara_tls::ClientTls trusts the system's roots, or the CA it is pinned to)"
                    ),
                ));
            }
            (true, Some(tls)) => Some(tls.clone()),
            (false, _) => None,
        };
        let options = &self.inner.options;
        let mut backoff = options.min_backoff;
        tokio::pin!(stop);
        loop {
            let attempt = async {
                let unreachable = |e: &dyn std::fmt::Display| {
                    Error::unavailable(format!("cannot reach {server_url}: {e}"))
                };
                let tcp = TcpStream::connect((host.as_str(), port))
                    .await
                    .map_err(|e| unreachable(&e))?;
                // Ignored: only latency suffers without it.
                let _ = tcp.set_nodelay(true);
                let config = Some(websocket_config());
                match &tls {
                    Some(tls) => {
                        let stream = super::tls::connect(tls.clone(), &host, tcp).await?;
                        let (ws, _) = client_async_with_config(request.clone(), stream, config)
                            .await
                            .map_err(|e| unreachable(&e))?;
                        tracing::info!(server = server_url, node = %self.inner.node, "linked to the server (TLS)");
                        // Boxed: one link's state is large, and two stream
                        // types would double it inside this future.
                        Box::pin(self.serve_link(ws)).await
                    }
                    None => {
                        let (ws, _) = client_async_with_config(request.clone(), tcp, config)
                            .await
                            .map_err(|e| unreachable(&e))?;
                        tracing::info!(server = server_url, node = %self.inner.node, "linked to the server");
                        // Boxed: one link's state is large, and two stream
                        // types would double it inside this future.
                        Box::pin(self.serve_link(ws)).await
                    }
                }
            };
            let started = Instant::now();
            let outcome = tokio::select! {
                () = &mut stop => return Ok(()),
                outcome = attempt => outcome,
            };
            match outcome {
                Ok(reason) => tracing::warn!(%reason, "link to the server ended"),
                Err(error) => tracing::warn!(%error, "link to the server failed"),
            }
            // A link that lived a while earns a fast retry.
            if started.elapsed() > options.max_backoff {
                backoff = options.min_backoff;
            }
            tokio::select! {
                () = &mut stop => return Ok(()),
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(options.max_backoff);
        }
    }

    /// Serves one established link until it ends; returns why it ended.
    ///
    /// # Errors
    ///
    /// When the runtime cannot be read for the hello, or the server
    /// refuses the agent (wrong token, other protocol version).
    pub async fn serve_link<S>(&self, mut ws: WebSocketStream<S>) -> Result<String>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let inner = &self.inner;
        // Subscribed before the hello, so no event after it is missed.
        let mut events = inner
            .runtime
            .events(&LabelFilter::managed().with(labels::NODE, inner.node.as_str()))
            .await?;
        let mine = LabelFilter::managed().with(labels::NODE, inner.node.as_str());
        let inventory = Inventory {
            containers: inner.runtime.list(&mine).await?,
            networks: inner.runtime.list_networks(&mine).await?,
        };
        let hello = Hello {
            version: PROTOCOL_VERSION,
            inventory,
            node: inner.node.clone(),
            capacity: inner.capacity,
            runtime: inner.runtime.name().to_owned(),
            capabilities: inner.runtime.capabilities(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            tunnel: inner.tunnel.as_ref().map_or_else(Vec::new, |tunnel| {
                [Protocol::Tcp, Protocol::Udp]
                    .into_iter()
                    .filter(|p| tunnel.supports(*p))
                    .collect()
            }),
        };
        let hello = serde_json::to_string(&Control::Hello(hello)).expect("hello serializes");
        futures::SinkExt::send(&mut ws, Message::text(hello))
            .await
            .map_err(|e| Error::unavailable(format!("cannot greet the server: {e}")))?;
        let heartbeat =
            match Peer::first_control(&mut ws, inner.options.hello_timeout, "server").await? {
                Control::Welcome { heartbeat_ms } => Duration::from_millis(heartbeat_ms.max(100)),
                Control::Refused { error } => return Err(error.into()),
                other => {
                    return Err(Error::invalid(
                        "welcome",
                        format!("the server answered the hello with {other:?}"),
                    ));
                }
            };
        let (peer, reader) = Peer::start(ws, "the server".to_owned());
        let running: Running = Arc::default();

        let _forward = {
            let peer = peer.clone();
            AbortOnDrop(tokio::spawn(async move {
                while let Some(event) = events.next().await {
                    let sent = match event {
                        Ok(event) => peer.send_control(&Control::Event { event }),
                        Err(error) => {
                            tracing::warn!(%error, "the runtime's event stream failed");
                            break;
                        }
                    };
                    if sent.is_err() {
                        break;
                    }
                }
            }))
        };
        let _beat = {
            let (peer, runtime, node) = (peer.clone(), inner.runtime.clone(), inner.node.clone());
            AbortOnDrop(tokio::spawn(async move {
                let mut ticker = tokio::time::interval(heartbeat);
                loop {
                    ticker.tick().await;
                    match node_stats(&*runtime, &node).await {
                        Ok(stats) => {
                            if peer.send_control(&Control::Heartbeat { stats }).is_err() {
                                break;
                            }
                        }
                        Err(error) => tracing::warn!(%error, "cannot read node stats"),
                    }
                }
            }))
        };

        let reason = peer
            .serve(reader, heartbeat, heartbeat * 3, |control| {
                self.dispatch(&peer, &running, control)
            })
            .await;
        Ok(reason)
    }

    fn dispatch(
        &self,
        peer: &Arc<Peer>,
        running: &Running,
        control: Control,
    ) -> std::result::Result<(), String> {
        match control {
            Control::Request {
                id,
                timeout_ms,
                idempotency_key,
                request_id,
                op,
            } => {
                // Registered now, before the reader takes the next frame,
                // which may already belong to this stream.
                let streams = op.has_stream();
                let upload = streams.then(|| peer.open_inbound(id));
                let span = tracing::info_span!(
                    "link_request",
                    id,
                    request_id,
                    op = %super::peer::op_name(&op),
                    node = %self.inner.node
                );
                let task = tokio::spawn({
                    // Weak: the tasks must not keep their own abort list alive.
                    let (agent, peer, running) =
                        (self.clone(), peer.clone(), Arc::downgrade(running));
                    let timeout = Duration::from_millis(timeout_ms);
                    async move {
                        agent
                            .answer(&peer, id, op, timeout, idempotency_key, upload)
                            .await;
                        if let Some(running) = running.upgrade() {
                            running.finished(id);
                        }
                    }
                    .instrument(span)
                });
                running.insert(id, task.abort_handle(), streams);
                Ok(())
            }
            Control::Cancel { id } => {
                running.cancel(id);
                Ok(())
            }
            other => Err(format!("unexpected message from the server: {other:?}")),
        }
    }

    /// Runs one request and answers it.
    async fn answer(
        &self,
        peer: &Arc<Peer>,
        id: u64,
        op: Op,
        timeout: Duration,
        key: Option<String>,
        upload: Option<InboundStream>,
    ) {
        let name = super::peer::op_name(&op);
        let result = if op.has_stream() {
            let upload = upload.expect("streams have an inbound side");
            match tokio::time::timeout(timeout, self.open(peer, id, op, upload)).await {
                Ok(Ok(())) => return,
                Ok(Err(error)) => WireResult::Err(WireError::from(&error)),
                Err(_) => timed_out(&name, timeout),
            }
        } else {
            let run = async {
                match tokio::time::timeout(timeout, self.unary(op)).await {
                    Ok(Ok(value)) => WireResult::Ok(value),
                    Ok(Err(error)) => WireResult::Err(WireError::from(&error)),
                    Err(_) => timed_out(&name, timeout),
                }
            };
            match key {
                Some(key) => self.outcome(key).get_or_init(|| run).await.clone(),
                None => run.await,
            }
        };
        // Ignored: a closed link lost the caller too.
        let _ = peer.send_control(&Control::Response { id, result });
    }

    /// The outcome cell for an idempotency key (pruning expired ones).
    fn outcome(&self, key: String) -> Outcome {
        let mut outcomes = lock(&self.inner.outcomes);
        outcomes.cell(key, Instant::now().into_std())
    }

    /// Ties what the server creates and lists to this node: agents that
    /// share one engine (a test rig, or two node ids on one host) each see
    /// only their own containers and networks.
    fn scoped(&self, op: Op) -> Op {
        let node = &self.inner.node;
        match op {
            Op::Launch { mut spec } => {
                spec.node = Some(node.clone());
                Op::Launch { spec }
            }
            Op::CreateNetwork { mut spec } => {
                spec.node = Some(node.clone());
                Op::CreateNetwork { spec }
            }
            Op::List { filter } => Op::List {
                filter: filter.with(labels::NODE, node.as_str()),
            },
            Op::ListNetworks { filter } => Op::ListNetworks {
                filter: filter.with(labels::NODE, node.as_str()),
            },
            other => other,
        }
    }

    async fn unary(&self, op: Op) -> Result<serde_json::Value> {
        let runtime = &*self.inner.runtime;
        let value = match self.scoped(op) {
            Op::CreateNetwork { spec } => json(runtime.create_network(&spec).await?),
            Op::InspectNetwork { network } => json(runtime.inspect_network(&network).await?),
            Op::ListNetworks { filter } => json(runtime.list_networks(&filter).await?),
            Op::RemoveNetwork { network } => json(runtime.remove_network(&network).await?),
            Op::Launch { spec } => json(runtime.launch(&spec).await?),
            Op::Stop {
                container,
                grace_ms,
            } => json(
                runtime
                    .stop(&container, Duration::from_millis(grace_ms))
                    .await?,
            ),
            Op::Remove { container } => json(runtime.remove(&container).await?),
            Op::Inspect { container } => json(runtime.inspect(&container).await?),
            Op::List { filter } => json(runtime.list(&filter).await?),
            Op::ResizeExec { exec, size } => json(runtime.resize_exec(&exec, size).await?),
            Op::ExecStatus { exec } => json(runtime.exec_status(&exec).await?),
            Op::ListImages => json(runtime.list_images().await?),
            Op::RemoveImage { image } => json(runtime.remove_image(&image).await?),
            Op::ContainerStats { container } => json(runtime.container_stats(&container).await?),
            Op::NodeStats => json(node_stats(runtime, &self.inner.node).await?),
            Op::Expose { request } => json(self.tunnel()?.expose(&request).await?),
            Op::Withdraw { exposure } => json(self.tunnel()?.withdraw(&exposure).await?),
            Op::ListExposures { filter } => json(self.tunnel()?.list(&filter).await?),
            Op::Exec { .. }
            | Op::CopyTo { .. }
            | Op::CopyFrom { .. }
            | Op::PullImage { .. }
            | Op::BuildImage { .. } => unreachable!("streams are opened, not answered"),
        };
        Ok(value)
    }

    fn tunnel(&self) -> Result<&Arc<dyn Tunnel>> {
        self.inner.tunnel.as_ref().ok_or_else(|| {
            Error::not_supported("agent", "exposing ports: this agent has no tunnel")
        })
    }

    /// Runs a request with a stream: answers it once the stream is open,
    /// then pumps the stream to its end.
    async fn open(&self, peer: &Arc<Peer>, id: u64, op: Op, upload: InboundStream) -> Result<()> {
        let runtime = &*self.inner.runtime;
        let respond = |value: serde_json::Value| {
            peer.send_control(&Control::Response {
                id,
                result: WireResult::Ok(value),
            })
        };
        match op {
            Op::Exec { container, spec } => {
                let session = runtime.exec(&container, &spec).await?;
                let outbound = peer.open_outbound(id);
                respond(json(&session.id))?;
                let mut output = session.output;
                let pump_output = async {
                    let mut failure = None;
                    while let Some(chunk) = output.next().await {
                        let sent = match chunk {
                            Ok(ExecOutput::Stdout(bytes)) => {
                                outbound.send_bytes(Channel::Stdout, &bytes).await
                            }
                            Ok(ExecOutput::Stderr(bytes)) => {
                                outbound.send_bytes(Channel::Stderr, &bytes).await
                            }
                            Err(error) => {
                                failure = Some(error);
                                break;
                            }
                        };
                        if sent.is_err() {
                            return;
                        }
                    }
                    // Ignored: a closed link ends the caller's stream too.
                    let _ = outbound.end(failure.as_ref()).await;
                };
                // stdin never ends this task: the process does.
                let feed_stdin = async {
                    if let Some(stdin) = session.stdin {
                        feed(upload, stdin).await;
                    }
                    std::future::pending::<()>().await;
                };
                tokio::select! {
                    () = pump_output => {}
                    () = feed_stdin => {}
                }
            }
            Op::CopyTo { container, dir } => {
                runtime
                    .copy_to(&container, &dir, uploaded_bytes(upload))
                    .await?;
                respond(serde_json::Value::Null)?;
            }
            Op::CopyFrom { container, path } => {
                let archive = runtime.copy_from(&container, &path).await?;
                let outbound = peer.open_outbound(id);
                respond(serde_json::Value::Null)?;
                let mut archive = archive;
                let mut failure = None;
                while let Some(chunk) = archive.next().await {
                    match chunk {
                        Ok(bytes) => outbound.send_bytes(Channel::Data, &bytes).await?,
                        Err(error) => {
                            failure = Some(error);
                            break;
                        }
                    }
                }
                outbound.end(failure.as_ref()).await?;
            }
            Op::PullImage { image } => {
                let progress = runtime.pull_image(&image).await?;
                self.send_progress(peer, id, progress, respond).await?;
            }
            Op::BuildImage { spec } => {
                let progress = runtime.build_image(&spec, uploaded_bytes(upload)).await?;
                self.send_progress(peer, id, progress, respond).await?;
            }
            _ => unreachable!("only streams are opened"),
        }
        Ok(())
    }

    async fn send_progress(
        &self,
        peer: &Arc<Peer>,
        id: u64,
        mut progress: ProgressStream,
        respond: impl FnOnce(serde_json::Value) -> Result<()>,
    ) -> Result<()> {
        let outbound = peer.open_outbound(id);
        respond(serde_json::Value::Null)?;
        let mut failure = None;
        while let Some(step) = progress.next().await {
            match step {
                Ok(step) => outbound.send_item(json(&step)).await?,
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
        }
        outbound.end(failure.as_ref()).await
    }
}

/// The engine's load, with this node's own running containers counted (the
/// engine counts those of every agent sharing it).
async fn node_stats(runtime: &dyn ContainerRuntime, node: &NodeId) -> Result<NodeStats> {
    let mut stats = runtime.node_stats().await?;
    let mine = runtime
        .list(&LabelFilter::managed().with(labels::NODE, node.as_str()))
        .await?;
    let running = mine
        .iter()
        .filter(|c| c.state == ContainerState::Running)
        .count();
    stats.containers = u32::try_from(running).unwrap_or(u32::MAX);
    Ok(stats)
}

fn json<T: serde::Serialize>(value: T) -> serde_json::Value {
    serde_json::to_value(value).expect("model types serialize")
}

fn timed_out(operation: &str, after: Duration) -> WireResult {
    WireResult::Err(WireError::from(&Error::Timeout {
        operation: format!("{operation} on the agent"),
        after,
    }))
}

/// The bytes the server streams up, as a byte stream.
fn uploaded_bytes(upload: InboundStream) -> ByteStream {
    Box::pin(futures::stream::unfold(upload, |mut upload| async move {
        match upload.next().await? {
            Inbound::Chunk(_, bytes) => Some((Ok(bytes), upload)),
            Inbound::End(None) => None,
            Inbound::End(Some(error)) => Some((Err(error.into()), upload)),
            Inbound::Item(_) => Some((
                Err(Error::invalid("stream", "unexpected item in an upload")),
                upload,
            )),
        }
    }))
}

/// Writes what the server sends as stdin into the process; closes it at the
/// end.
async fn feed(mut upload: InboundStream, mut stdin: std::pin::Pin<Box<dyn AsyncWrite + Send>>) {
    while let Some(Inbound::Chunk(_, bytes)) = upload.next().await {
        if stdin.write_all(&bytes).await.is_err() {
            return;
        }
    }
    // Ignored: the process may have closed stdin already.
    let _ = stdin.shutdown().await;
}

/// The upgrade request for the server's agent endpoint, with the token.
fn link_request(
    server_url: &str,
    token: &Secret,
) -> Result<tokio_tungstenite::tungstenite::handshake::client::Request> {
    let base = server_url.trim_end_matches('/');
    let base = match base.split_once("://") {
        Some(("ws" | "http", rest)) => format!("ws://{rest}"),
        Some(("wss" | "https", rest)) => format!("wss://{rest}"),
        _ => {
            return Err(Error::invalid(
                "server_url",
                format!("{server_url:?}: use ws://host:port or wss://host:port"),
            ));
        }
    };
    let url = format!("{base}{AGENT_LINK_PATH}");
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| Error::invalid("server_url", format!("{server_url:?}: {e}")))?;
    let bearer = HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(|_| {
        Error::invalid(
            "token",
            "the agent token has characters a header cannot carry",
        )
    })?;
    request.headers_mut().insert("authorization", bearer);
    Ok(request)
}
