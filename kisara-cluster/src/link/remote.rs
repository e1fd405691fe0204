//! [`RemoteRuntime`]: an agent's node, seen from the server, as just another
//! [`ContainerRuntime`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use tokio::io::AsyncReadExt;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use super::peer::{AbortOnDrop, Inbound, InboundStream, OutboundStream, Peer};
use super::wire::{Channel, Hello, MAX_CHUNK_BYTES, Op};
use kisara_core::model::{
    BuildSpec, ContainerEvent, ContainerId, ContainerInfo, ContainerSpec, ContainerStats, ExecId,
    ExecOutput, ExecSpec, ExecStatus, ExposeRequest, Exposure, ExposureId, ImageInfo, ImageRef,
    LabelFilter, NetworkId, NetworkInfo, NetworkSpec, NodeId, NodeStats, Progress, Protocol,
    TtySize,
};
use kisara_core::sync::lock;
use kisara_core::traits::{
    BoxStream, ByteStream, EventStream, ExecSession, ProgressStream, RuntimeCapabilities,
};
use kisara_core::{ContainerRuntime, Error, Result, Tunnel};

/// How many events wait for slow subscribers before the oldest are dropped
/// (and the subscriber told so). The buffer is allocated up front for every
/// node and subscribers (the server's watcher) read promptly, so it is
/// small: 500 nodes at 4096 slots cost 190 MB.
const EVENT_BUFFER: usize = 256;

/// A node behind an agent link. Survives reconnects: calls made while the
/// link is down wait for it (up to their timeout); reads and keyed
/// mutations interrupted by a dying link are sent again on the next one.
#[derive(Debug)]
pub struct RemoteRuntime {
    node: NodeId,
    /// `remote <runtime>`, from the first hello.
    name: String,
    /// From the latest hello: an agent may come back with another engine
    /// or tunnel.
    about: Mutex<(RuntimeCapabilities, Vec<Protocol>)>,
    link: watch::Sender<Option<Arc<Peer>>>,
    events: broadcast::Sender<ContainerEvent>,
    timeout: Duration,
}

impl RemoteRuntime {
    pub(crate) fn new(hello: &Hello, timeout: Duration) -> Self {
        Self {
            node: hello.node.clone(),
            name: format!("remote {}", hello.runtime),
            about: Mutex::new((hello.capabilities, hello.tunnel.clone())),
            link: watch::Sender::new(None),
            events: broadcast::Sender::new(EVENT_BUFFER),
            timeout,
        }
    }

    /// The node it stands for.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// Whether the agent exposes ports for the server (it runs a tunnel).
    pub fn has_tunnel(&self) -> bool {
        !lock(&self.about).1.is_empty()
    }

    /// Whether a link is up now.
    pub fn is_linked(&self) -> bool {
        self.link
            .borrow()
            .as_ref()
            .is_some_and(|peer| !peer.is_closed())
    }

    /// Serves calls over `peer` from now on (after a reconnect, with what
    /// the agent says of itself now).
    pub(crate) fn attach(&self, peer: Arc<Peer>, hello: &Hello) {
        *lock(&self.about) = (hello.capabilities, hello.tunnel.clone());
        self.link.send_replace(Some(peer));
    }

    /// The current link, if one is up.
    pub(crate) fn current_link(&self) -> Option<Arc<Peer>> {
        self.link.borrow().clone()
    }

    /// Forgets `peer` if it is still the current link; says whether it was.
    pub(crate) fn detach(&self, peer: &Arc<Peer>) -> bool {
        self.link.send_if_modified(|current| {
            if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, peer)) {
                *current = None;
                true
            } else {
                false
            }
        })
    }

    pub(crate) fn publish(&self, event: ContainerEvent) {
        // Ignored: no subscriber is fine.
        let _ = self.events.send(event);
    }

    /// The current link, waiting for one until `deadline`.
    async fn peer(&self, deadline: Instant) -> Result<Arc<Peer>> {
        let mut link = self.link.subscribe();
        let waited = tokio::time::timeout_at(
            deadline,
            link.wait_for(|peer| peer.as_ref().is_some_and(|p| !p.is_closed())),
        )
        .await;
        match waited {
            Ok(Ok(peer)) => Ok(peer.clone().expect("waited for a link")),
            _ => Err(Error::unavailable(format!(
                "node {} is not connected (its agent is down or unreachable)",
                self.node
            ))),
        }
    }

    /// A request without a stream, sent again on the next link if the
    /// current one dies under it and sending twice is safe.
    async fn unary<T: DeserializeOwned>(&self, op: Op) -> Result<T> {
        let deadline = Instant::now() + self.timeout;
        // Mutations get a key so a resent request acts once.
        let key =
            (!op.is_read_only()).then(|| format!("{:016x}", kisara_core::random::random_u64()));
        loop {
            let peer = self.peer(deadline).await?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let outcome = async {
                peer.send_request(peer.next_id(), op.clone(), remaining, key.clone())?
                    .outcome()
                    .await
            }
            .await;
            match outcome {
                Err(error) if peer.is_closed() && Instant::now() < deadline => {
                    tracing::debug!(node = %self.node, %error, "link lost mid-request, resending");
                }
                outcome => return decode(outcome?),
            }
        }
    }

    /// Opens request `op` with a stream back to us; returns the request's
    /// answer and the stream.
    async fn open_stream(
        &self,
        op: Op,
        upload: Option<ByteStream>,
    ) -> Result<(serde_json::Value, Arc<Peer>, InboundStream)> {
        let deadline = Instant::now() + self.timeout;
        let peer = self.peer(deadline).await?;
        let id = peer.next_id();
        let inbound = peer.open_inbound(id).cancel_on_drop();
        let outbound = upload.is_some().then(|| peer.open_outbound(id));
        let pending = peer.send_request(id, op, self.timeout, None)?;
        let answer = match (upload, outbound) {
            (Some(upload), Some(outbound)) => {
                let (answer, ()) = tokio::join!(pending.outcome(), send_all(upload, outbound));
                answer?
            }
            _ => pending.outcome().await?,
        };
        Ok((answer, peer, inbound))
    }
}

fn decode<T: DeserializeOwned>(value: serde_json::Value) -> Result<T> {
    serde_json::from_value(value).map_err(|e| agent_error(&format!("unexpected answer: {e}")))
}

/// An agent that answered outside the protocol.
fn agent_error(message: &str) -> Error {
    Error::Backend {
        backend: "remote",
        message: format!("the agent broke the protocol: {message}"),
        source: None,
    }
}

/// Sends a byte stream on `outbound`, ending it with the stream's error if
/// it fails.
async fn send_all(mut upload: ByteStream, outbound: OutboundStream) {
    let mut failure = None;
    while let Some(chunk) = upload.next().await {
        match chunk {
            Ok(bytes) => {
                if outbound.send_bytes(Channel::Data, &bytes).await.is_err() {
                    // The reader is gone; its answer says why.
                    return;
                }
            }
            Err(error) => {
                failure = Some(error);
                break;
            }
        }
    }
    // Ignored: a closed link fails the request itself.
    let _ = outbound.end(failure.as_ref()).await;
}

/// Maps a stream's frames to items; ends after the first error.
fn items<T: Send + 'static>(
    inbound: InboundStream,
    map: impl Fn(Inbound) -> Option<Result<T>> + Send + 'static,
) -> BoxStream<T> {
    Box::pin(futures::stream::unfold(
        (inbound, map, false),
        |(mut inbound, map, failed)| async move {
            if failed {
                return None;
            }
            loop {
                match inbound.next().await? {
                    Inbound::End(None) => return None,
                    Inbound::End(Some(error)) => {
                        return Some((Err(error.into()), (inbound, map, true)));
                    }
                    other => {
                        if let Some(item) = map(other) {
                            let failed = item.is_err();
                            return Some((item, (inbound, map, failed)));
                        }
                    }
                }
            }
        },
    ))
}

fn protocol_error<T>(what: &str) -> Option<Result<T>> {
    Some(Err(agent_error(&format!(
        "unexpected {what} on the stream"
    ))))
}

fn byte_items(inbound: InboundStream) -> ByteStream {
    items(inbound, |frame| match frame {
        Inbound::Chunk(Channel::Data, bytes) => Some(Ok(bytes)),
        _ => protocol_error("frame"),
    })
}

fn progress_items(inbound: InboundStream) -> ProgressStream {
    items(inbound, |frame| match frame {
        Inbound::Item(item) => Some(decode::<Progress>(item)),
        _ => protocol_error("frame"),
    })
}

#[async_trait]
impl ContainerRuntime for RemoteRuntime {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> RuntimeCapabilities {
        lock(&self.about).0
    }

    async fn create_network(&self, spec: &NetworkSpec) -> Result<NetworkInfo> {
        self.unary(Op::CreateNetwork { spec: spec.clone() }).await
    }

    async fn inspect_network(&self, network: &NetworkId) -> Result<NetworkInfo> {
        self.unary(Op::InspectNetwork {
            network: network.clone(),
        })
        .await
    }

    async fn list_networks(&self, filter: &LabelFilter) -> Result<Vec<NetworkInfo>> {
        self.unary(Op::ListNetworks {
            filter: filter.clone(),
        })
        .await
    }

    async fn remove_network(&self, network: &NetworkId) -> Result<()> {
        self.unary(Op::RemoveNetwork {
            network: network.clone(),
        })
        .await
    }

    async fn launch(&self, spec: &ContainerSpec) -> Result<ContainerInfo> {
        self.unary(Op::Launch {
            spec: Box::new(spec.clone()),
        })
        .await
    }

    async fn stop(&self, container: &ContainerId, grace: Duration) -> Result<()> {
        self.unary(Op::Stop {
            container: container.clone(),
            grace_ms: u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
        })
        .await
    }

    async fn remove(&self, container: &ContainerId) -> Result<()> {
        self.unary(Op::Remove {
            container: container.clone(),
        })
        .await
    }

    async fn inspect(&self, container: &ContainerId) -> Result<ContainerInfo> {
        self.unary(Op::Inspect {
            container: container.clone(),
        })
        .await
    }

    async fn list(&self, filter: &LabelFilter) -> Result<Vec<ContainerInfo>> {
        self.unary(Op::List {
            filter: filter.clone(),
        })
        .await
    }

    async fn exec(&self, container: &ContainerId, spec: &ExecSpec) -> Result<ExecSession> {
        let (answer, peer, inbound) = self
            .open_stream(
                Op::Exec {
                    container: container.clone(),
                    spec: spec.clone(),
                },
                None,
            )
            .await?;
        let id: ExecId = decode(answer)?;
        let (stdin, pump) = if spec.stdin {
            let (user, mut pipe) = tokio::io::duplex(MAX_CHUNK_BYTES);
            let outbound = peer.open_outbound(inbound.id());
            let pump = tokio::spawn(async move {
                let mut buffer = vec![0u8; MAX_CHUNK_BYTES];
                loop {
                    match pipe.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if outbound
                                .send_bytes(Channel::Data, &buffer[..n])
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                }
                // Ignored: the exec may be over already.
                let _ = outbound.end(None).await;
            });
            let stdin: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>> = Box::pin(user);
            (Some(stdin), Some(AbortOnDrop(pump)))
        } else {
            (None, None)
        };
        // The stdin pump lives as long as the output: once the process is
        // gone, writes to stdin fail instead of piling up.
        let output = items(inbound, move |frame| {
            let _pump = &pump;
            match frame {
                Inbound::Chunk(Channel::Stdout, bytes) => Some(Ok(ExecOutput::Stdout(bytes))),
                Inbound::Chunk(Channel::Stderr, bytes) => Some(Ok(ExecOutput::Stderr(bytes))),
                _ => protocol_error("frame"),
            }
        });
        Ok(ExecSession { id, stdin, output })
    }

    async fn resize_exec(&self, exec: &ExecId, size: TtySize) -> Result<()> {
        self.unary(Op::ResizeExec {
            exec: exec.clone(),
            size,
        })
        .await
    }

    async fn exec_status(&self, exec: &ExecId) -> Result<ExecStatus> {
        self.unary(Op::ExecStatus { exec: exec.clone() }).await
    }

    async fn copy_to(&self, container: &ContainerId, dir: &str, archive: ByteStream) -> Result<()> {
        let (answer, _, _) = self
            .open_stream(
                Op::CopyTo {
                    container: container.clone(),
                    dir: dir.to_owned(),
                },
                Some(archive),
            )
            .await?;
        decode(answer)
    }

    async fn copy_from(&self, container: &ContainerId, path: &str) -> Result<ByteStream> {
        let (_, _, inbound) = self
            .open_stream(
                Op::CopyFrom {
                    container: container.clone(),
                    path: path.to_owned(),
                },
                None,
            )
            .await?;
        Ok(byte_items(inbound))
    }

    async fn pull_image(&self, image: &ImageRef) -> Result<ProgressStream> {
        let (_, _, inbound) = self
            .open_stream(
                Op::PullImage {
                    image: image.clone(),
                },
                None,
            )
            .await?;
        Ok(progress_items(inbound))
    }

    async fn build_image(&self, spec: &BuildSpec, context: ByteStream) -> Result<ProgressStream> {
        let (_, _, inbound) = self
            .open_stream(Op::BuildImage { spec: spec.clone() }, Some(context))
            .await?;
        Ok(progress_items(inbound))
    }

    async fn list_images(&self) -> Result<Vec<ImageInfo>> {
        self.unary(Op::ListImages).await
    }

    async fn remove_image(&self, image: &str) -> Result<()> {
        self.unary(Op::RemoveImage {
            image: image.to_owned(),
        })
        .await
    }

    async fn events(&self, filter: &LabelFilter) -> Result<EventStream> {
        let filter = filter.clone();
        let node = self.node.clone();
        let events = tokio_stream::wrappers::BroadcastStream::new(self.events.subscribe());
        Ok(Box::pin(events.filter_map(move |event| {
            let item = match event {
                Ok(event) => filter.matches(&event.labels).then_some(Ok(event)),
                Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(missed)) => {
                    Some(Err(Error::unavailable(format!(
                        "missed {missed} events of node {node}: the subscriber fell behind"
                    ))))
                }
            };
            std::future::ready(item)
        })))
    }

    async fn container_stats(&self, container: &ContainerId) -> Result<ContainerStats> {
        self.unary(Op::ContainerStats {
            container: container.clone(),
        })
        .await
    }

    async fn node_stats(&self) -> Result<NodeStats> {
        self.unary(Op::NodeStats).await
    }
}

/// The agent's tunnel: exposures of this node's containers, made where the
/// containers are reachable.
#[async_trait]
impl Tunnel for RemoteRuntime {
    fn supports(&self, protocol: Protocol) -> bool {
        lock(&self.about).1.contains(&protocol)
    }

    async fn expose(&self, request: &ExposeRequest) -> Result<Exposure> {
        self.unary(Op::Expose {
            request: Box::new(request.clone()),
        })
        .await
    }

    async fn withdraw(&self, exposure: &ExposureId) -> Result<()> {
        self.unary(Op::Withdraw {
            exposure: exposure.clone(),
        })
        .await
    }

    async fn list(&self, filter: &LabelFilter) -> Result<Vec<Exposure>> {
        self.unary(Op::ListExposures {
            filter: filter.clone(),
        })
        .await
    }
}
