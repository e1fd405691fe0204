//! [`AgentGateway`]: the server's side of agent links.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::SinkExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tracing::Instrument;

use super::LinkOptions;
use super::peer::Peer;
use super::remote::RemoteRuntime;
use super::wire::{Control, Hello, PROTOCOL_VERSION, WireError};
use crate::{NodeExtras, Server};
use kisara_core::model::NodeId;
use kisara_core::sync::lock;
use kisara_core::{ContainerRuntime, Error, Result, Secret};

/// Accepts agent links and plugs each agent's node into a [`Server`] as a
/// [`RemoteRuntime`]. Cheap to clone.
///
/// Mount it in an HTTP server with `kisara_cluster::link::agent_link`
/// (feature `http`), or hand it WebSockets yourself with [`AgentGateway::serve`]
/// after checking the bearer token with [`AgentGateway::authorize`].
#[derive(Debug, Clone)]
pub struct AgentGateway {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    server: Server,
    token: Secret,
    options: LinkOptions,
    nodes: Mutex<HashMap<NodeId, Arc<RemoteRuntime>>>,
}

impl AgentGateway {
    /// A gateway admitting agents that present `token`.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for an empty token: a gateway must not admit
    /// everyone.
    pub fn new(server: Server, token: Secret, options: LinkOptions) -> Result<Self> {
        if token.is_empty() {
            return Err(Error::invalid(
                "server.token",
                "the agent token is empty; set [server] token",
            ));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                server,
                token,
                options,
                nodes: Mutex::default(),
            }),
        })
    }

    /// Checks an `Authorization` header value (`Bearer <token>`) in constant
    /// time. The error never says what was wrong with it.
    pub fn authorize(&self, authorization: Option<&str>) -> Result<()> {
        let offered = authorization
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or_default();
        if self.inner.token.matches(offered) {
            Ok(())
        } else {
            Err(Error::Unauthenticated {
                message: "missing or wrong agent token".to_owned(),
            })
        }
    }

    /// The node behind an agent, once it has linked.
    pub fn node(&self, node: &NodeId) -> Option<Arc<RemoteRuntime>> {
        lock(&self.inner.nodes).get(node).cloned()
    }

    /// Serves one authorized agent link until it ends: reads the hello,
    /// connects the node to the server (which resyncs it from its labels),
    /// then relays requests, events and heartbeats. Marks the node offline
    /// when the link ends, unless a newer link replaced it.
    pub async fn serve<S>(&self, mut ws: WebSocketStream<S>) -> Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let options = &self.inner.options;
        let hello = match Peer::first_control(&mut ws, options.hello_timeout, "agent").await? {
            Control::Hello(hello) => hello,
            other => {
                return refuse(
                    &mut ws,
                    Error::invalid("hello", format!("expected a hello, got {other:?}")),
                )
                .await;
            }
        };
        if hello.version != PROTOCOL_VERSION {
            return refuse(
                &mut ws,
                Error::invalid(
                    "protocol version",
                    format!(
                        "agent {} speaks protocol {}, this server speaks {PROTOCOL_VERSION}",
                        hello.node, hello.version
                    ),
                ),
            )
            .await;
        }
        let welcome = Control::Welcome {
            heartbeat_ms: u64::try_from(options.heartbeat.as_millis()).unwrap_or(u64::MAX),
        };
        ws.send(Message::text(
            serde_json::to_string(&welcome).expect("welcome serializes"),
        ))
        .await
        .map_err(|e| Error::unavailable(format!("cannot welcome agent {}: {e}", hello.node)))?;

        let span = tracing::info_span!("agent_link", node = %hello.node);
        self.run_link(ws, hello).instrument(span).await;
        Ok(())
    }

    async fn run_link<S>(&self, ws: WebSocketStream<S>, hello: Hello)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let options = &self.inner.options;
        let node = hello.node.clone();
        let (peer, reader) = Peer::start(ws, format!("node {node}"));
        let runtime = self.runtime_for(&hello);
        if let Some(previous) = runtime.current_link() {
            tracing::warn!("node linked again; closing its previous link");
            previous.close("replaced by a newer link");
        }
        runtime.attach(peer.clone(), &hello);

        // Connecting lists the node's objects over this very link, so it
        // runs beside the reader.
        let connect = tokio::spawn({
            let (server, runtime, peer, hello) = (
                self.inner.server.clone(),
                runtime.clone(),
                peer.clone(),
                hello.clone(),
            );
            async move {
                let mut extras = NodeExtras::default().with_inventory(hello.inventory.clone());
                if runtime.has_tunnel() {
                    extras = extras.with_tunnel(runtime.clone());
                }
                let node: Arc<dyn ContainerRuntime> = runtime;
                if let Err(error) = server
                    .connect_node_with(hello.node.clone(), hello.capacity, node, extras)
                    .await
                {
                    tracing::warn!(%error, "cannot resync the node; closing its link");
                    peer.close(&format!("resync failed: {error}"));
                }
            }
        });
        let server = &self.inner.server;
        let reason = peer
            .serve(
                reader,
                options.heartbeat,
                options.link_timeout(),
                |control| {
                    match control {
                        Control::Response { id, result } => peer.complete(id, result),
                        Control::Event { event } => runtime.publish(event),
                        Control::Heartbeat { stats } => {
                            // Before the resync finishes the node is not known
                            // yet; its next heartbeat will be.
                            if let Err(error) = server.heartbeat(&node, stats) {
                                tracing::debug!(%error, "heartbeat before the node is connected");
                            }
                        }
                        other => {
                            return Err(format!("unexpected message from an agent: {other:?}"));
                        }
                    }
                    Ok(())
                },
            )
            .await;
        connect.abort();
        if runtime.detach(&peer) {
            server.disconnect_node(&node, &reason);
        }
    }

    fn runtime_for(&self, hello: &Hello) -> Arc<RemoteRuntime> {
        lock(&self.inner.nodes)
            .entry(hello.node.clone())
            .or_insert_with(|| {
                Arc::new(RemoteRuntime::new(
                    hello,
                    self.inner.options.request_timeout,
                ))
            })
            .clone()
    }
}

/// Tells the agent why it is refused, then fails with that reason.
async fn refuse<S>(ws: &mut WebSocketStream<S>, error: Error) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tracing::warn!(%error, "agent refused");
    let refused = Control::Refused {
        error: WireError::from(&error),
    };
    // Ignored: the agent may be gone; the error below is what counts.
    let _ = ws
        .send(Message::text(
            serde_json::to_string(&refused).expect("refusals serialize"),
        ))
        .await;
    let _ = ws.close(None).await;
    Err(error)
}
