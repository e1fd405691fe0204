//! The relay: the public side. Accepts clients' control links and data
//! connections on one port, and visitors on the public ports of the
//! exposures the clients place.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use kisara_core::Secret;
use kisara_core::config::{PortRange, RelayConfig};
use kisara_core::lifecycle::{Service, ServiceContext};
use kisara_core::model::{ExposureId, ExposureLimits, Protocol};
use kisara_core::sync::lock;
use kisara_net::PortPool;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::auth::{self, Failures, Role, hex};
use crate::bucket::TokenBucket;
use crate::datagram;
use crate::error::{Result, TunnelError};
use crate::metrics::{self, Active, Rejected, VisitorEnd};
use crate::splice::{FRAMING, splice, splice_framed, splice_tcp};
use crate::transport::{self, Conn, RelayTls};
use crate::udp;
use crate::wire::{
    self, Auth, Challenge, ClientMessage, Dispatch, Link, Opening, Registration, RelayMessage,
    VERSION, Verdict,
};

/// How long a new connection may take to send its opening frame and answer
/// the challenge.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a visitor waits for the client's data connection.
const DATA_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at finding a bindable port before giving up.
const BIND_ATTEMPTS: usize = 64;
/// Standby data connections each client keeps open, unless configured
/// otherwise.
const DEFAULT_STANDBY: usize = 4;
/// Messages that may wait to go out on one client's control link. A
/// visitor or UDP peer that would queue one more is turned away: its
/// client is not keeping up (or has stalled), and an unbounded queue would
/// let public traffic grow the relay's memory until the link times out.
const LINK_QUEUE: usize = 1024;
/// Queued control messages written together in one go, at most.
const LINK_BATCH_BYTES: usize = 64 * 1024;

/// How a [`Relay`] runs.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Where clients connect (control links and data connections).
    pub listen: SocketAddr,
    /// The host name visitors use; reported in every exposure.
    pub public_host: String,
    /// The address public ports are bound on; `listen`'s address when
    /// `None`.
    pub public_bind: Option<IpAddr>,
    /// Public ports handed out.
    pub port_range: PortRange,
    /// The shared token; must not be empty.
    pub token: Secret,
    /// How long a disconnected client's exposures stay in place (ports
    /// kept, visitors refused) so that a restarted client takes them back.
    pub grace: Duration,
    /// Heartbeat interval on control links; a link silent for three
    /// intervals is dropped.
    pub heartbeat: Duration,
    /// A UDP session with no datagram either way for this long ends.
    pub udp_idle: Duration,
    /// UDP sessions (peers) one exposure carries at once when it sets no
    /// `max_connections`; a new peer beyond them is dropped. Each session
    /// costs a socket on the relay and two on the client, and anyone can
    /// open one per source address: without a bound, one host cycling
    /// through source ports would run both out of file descriptors.
    pub udp_peers: usize,
    /// TLS on the client port (control links and data connections); UDP
    /// session channels stay plain.
    pub tls: Option<RelayTls>,
    /// Idle data connections each client keeps open to this relay, so a
    /// TCP visitor is carried at once instead of waiting for a new
    /// connection from the client (each costs a socket on both sides);
    /// visitors beyond them wait for a dial. 0 turns them off.
    pub standby: usize,
}

impl RelayOptions {
    /// Options listening on `listen` with `token`, public ports
    /// 20000–50000 on the same address, reported as `listen`'s address.
    pub fn new(listen: SocketAddr, token: impl Into<Secret>) -> Self {
        Self {
            listen,
            public_host: listen.ip().to_string(),
            public_bind: None,
            port_range: kisara_net::DEFAULT_PORT_RANGE,
            token: token.into(),
            grace: Duration::from_secs(60),
            heartbeat: Duration::from_secs(15),
            udp_idle: udp::DEFAULT_IDLE,
            udp_peers: udp::DEFAULT_PEERS,
            tls: None,
            standby: DEFAULT_STANDBY,
        }
    }

    /// Options from the `[relay]` config section.
    pub fn from_config(config: &RelayConfig) -> Self {
        let mut options = Self::new(config.listen, config.token.clone());
        options.public_host = config.public_host.clone();
        options.port_range = config.port_range;
        options
    }

    /// Sets the public ports.
    pub fn with_port_range(mut self, range: PortRange) -> Self {
        self.port_range = range;
        self
    }

    /// Sets how long a disconnected client's exposures are held.
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Serves clients over TLS.
    pub fn with_tls(mut self, tls: RelayTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets the UDP session idle expiry.
    pub fn with_udp_idle(mut self, idle: Duration) -> Self {
        self.udp_idle = idle;
        self
    }

    /// Sets how many UDP peers an exposure without `max_connections`
    /// carries at once.
    pub fn with_udp_peers(mut self, peers: usize) -> Self {
        self.udp_peers = peers;
        self
    }

    /// Sets how many idle data connections each client keeps open.
    pub fn with_standby(mut self, standby: usize) -> Self {
        self.standby = standby;
        self
    }
}

/// A running relay. Dropping it (or [`Relay::shutdown`]) closes every
/// listener and connection it holds.
#[derive(Debug)]
pub struct Relay {
    shared: Arc<Shared>,
    local: SocketAddr,
}

#[derive(Debug)]
struct Shared {
    options: RelayOptions,
    public_bind: IpAddr,
    /// Public ports, one pool per protocol: a TCP and a UDP exposure may
    /// share a port number (as iperf3 and DNS-style services expect).
    tcp_ports: PortPool,
    udp_ports: PortPool,
    clients: Mutex<HashMap<String, Arc<ClientSlot>>>,
    tickets: Mutex<HashMap<String, Waiting>>,
    failures: Failures,
    cancel: CancellationToken,
    /// Every task the relay spawned, so [`Relay::stop`] can wait until
    /// their sockets are closed.
    tasks: TaskTracker,
}

/// What the relay keeps per client id, across its links.
#[derive(Debug, Default)]
struct ClientSlot {
    state: Mutex<SlotState>,
}

#[derive(Debug, Default)]
struct SlotState {
    generation: u64,
    link: Option<Link>,
    link_cancel: Option<CancellationToken>,
    exposures: HashMap<ExposureId, Held>,
    /// Idle data connections of the current link, for the next visitors.
    standby: Vec<Standby>,
}

/// An idle data connection.
#[derive(Debug)]
struct Standby {
    conn: Conn,
    /// The client carries visitors in frames on it, so it comes back.
    reusable: bool,
}

/// What a ticket stands for until its data connection arrives.
#[derive(Debug)]
enum Waiting {
    /// A visitor waiting for its data connection.
    Visitor(oneshot::Sender<Conn>),
    /// A standby connection for a client's link of this generation.
    Standby(Arc<ClientSlot>, u64),
}

#[derive(Debug)]
struct Held {
    registration: Registration,
    cancel: CancellationToken,
    task: JoinHandle<()>,
    _counted: Active,
}

impl ClientSlot {
    fn link(&self) -> Option<Link> {
        lock(&self.state).link.clone()
    }

    /// Takes an idle data connection that is still open, if the client
    /// has one, with the link generation it belongs to and how many stay
    /// idle; and how many it found closed and dropped on the way.
    fn take_standby(&self) -> (Option<(Standby, u64, usize)>, usize) {
        let mut state = lock(&self.state);
        let mut closed = 0;
        while let Some(standby) = state.standby.pop() {
            if standby.conn.idle_and_open() {
                let idle = state.standby.len();
                return (Some((standby, state.generation, idle)), closed);
            }
            closed += 1;
        }
        (None, closed)
    }

    /// Puts a data connection that carried a framed visitor back among the
    /// idle ones, unless its link is gone or `most` are idle already.
    fn return_standby(&self, conn: Conn, generation: u64, most: usize) {
        let mut state = lock(&self.state);
        if state.generation == generation && state.link.is_some() && state.standby.len() < most {
            state.standby.push(Standby {
                conn,
                reusable: true,
            });
        }
    }
}

/// A bound public socket.
enum Bound {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

impl Relay {
    /// Binds the relay's listener and starts serving.
    ///
    /// # Errors
    ///
    /// [`TunnelError::Config`] for an empty token or a bad port range,
    /// [`TunnelError::Io`] when the listen address cannot be bound.
    pub async fn bind(options: RelayOptions) -> Result<Self> {
        if options.token.is_empty() {
            return Err(TunnelError::Config(
                "the relay token is empty; set [relay] token".to_owned(),
            ));
        }
        let pool =
            || PortPool::new(options.port_range).map_err(|e| TunnelError::Config(e.to_string()));
        let (tcp_ports, udp_ports) = (pool()?, pool()?);
        metrics::describe();
        let listener = TcpListener::bind(options.listen)
            .await
            .map_err(|e| TunnelError::io(format!("bind relay on {}", options.listen), e))?;
        let local = listener
            .local_addr()
            .map_err(|e| TunnelError::io("relay address", e))?;
        let shared = Arc::new(Shared {
            public_bind: options.public_bind.unwrap_or(local.ip()),
            options,
            tcp_ports,
            udp_ports,
            clients: Mutex::default(),
            tickets: Mutex::default(),
            failures: Failures::default(),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        info!(listen = %local, public_host = %shared.options.public_host, "relay listening");
        shared.spawn(accept_loop(shared.clone(), listener));
        Ok(Self { shared, local })
    }

    /// Where clients connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The number of exposures in place, over all clients.
    pub fn exposure_count(&self) -> usize {
        lock(&self.shared.clients)
            .values()
            .map(|slot| lock(&slot.state).exposures.len())
            .sum()
    }

    /// Stops serving: closes the listener, every public port and every
    /// connection.
    pub fn shutdown(&self) {
        self.shared.cancel.cancel();
        self.shared.close_standby();
    }

    /// Shuts down like [`Relay::shutdown`] and returns once every listener
    /// and connection is closed, so the listen address can be bound again
    /// (a restart in the same process).
    pub async fn stop(&self) {
        self.shutdown();
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
        // One may have arrived while the tasks were ending.
        self.shared.close_standby();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

#[async_trait]
impl Service for Relay {
    fn name(&self) -> &str {
        "relay"
    }

    async fn run(&self, ctx: ServiceContext) -> kisara_core::Result<()> {
        ctx.running();
        tokio::select! {
            () = ctx.stop_requested() => {}
            () = self.shared.cancel.cancelled() => {}
        }
        self.shutdown();
        Ok(())
    }
}

impl Shared {
    /// Spawns `task`, ended when the relay shuts down.
    fn spawn<F>(&self, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let cancel = self.cancel.clone();
        self.tasks.spawn(
            async move {
                tokio::select! {
                    () = cancel.cancelled() => {}
                    () = task => {}
                }
            }
            .in_current_span(),
        )
    }

    fn ports(&self, protocol: Protocol) -> &PortPool {
        match protocol {
            Protocol::Tcp => &self.tcp_ports,
            Protocol::Udp => &self.udp_ports,
        }
    }

    fn slot(&self, client: &str) -> Arc<ClientSlot> {
        lock(&self.clients)
            .entry(client.to_owned())
            .or_default()
            .clone()
    }

    /// Takes a port (the requested one, or the next free) and binds it.
    async fn allocate(
        &self,
        protocol: Protocol,
        requested: Option<u16>,
    ) -> kisara_core::Result<(u16, Bound)> {
        let attempts = if requested.is_some() {
            1
        } else {
            BIND_ATTEMPTS
        };
        for _ in 0..attempts {
            let port = self.ports(protocol).allocate(requested)?;
            let address = SocketAddr::new(self.public_bind, port);
            let bound = match protocol {
                Protocol::Tcp => TcpListener::bind(address).await.map(Bound::Tcp),
                Protocol::Udp => datagram::bind(address).await.map(Bound::Udp),
            };
            match bound {
                Ok(bound) => return Ok((port, bound)),
                Err(error) => {
                    self.ports(protocol).release(port);
                    if error.kind() != std::io::ErrorKind::AddrInUse {
                        return Err(kisara_core::Error::unavailable(format!(
                            "cannot listen on {address}/{protocol}: {error}"
                        )));
                    }
                    if requested.is_some() {
                        return Err(kisara_core::Error::conflict(format!(
                            "public port {port}/{protocol} on {} is in use by another program",
                            self.public_bind
                        )));
                    }
                }
            }
        }
        Err(kisara_core::Error::exhausted(format!(
            "no bindable port found in {} after {BIND_ATTEMPTS} attempts",
            self.options.port_range
        )))
    }

    /// Closes every client's standby connections (they belong to no task,
    /// so cancelling the tasks leaves them open).
    fn close_standby(&self) {
        let slots: Vec<Arc<ClientSlot>> = lock(&self.clients).values().cloned().collect();
        for slot in slots {
            let standby = std::mem::take(&mut lock(&slot.state).standby);
            drop(standby);
        }
    }

    /// Asks the client of `slot` for one more standby data connection,
    /// if its link is up.
    fn request_standby(&self, slot: &Arc<ClientSlot>) {
        let (generation, link) = {
            let state = lock(&slot.state);
            (state.generation, state.link.clone())
        };
        let Some(link) = link else { return };
        let ticket = hex::encode(&auth::random::<16>());
        lock(&self.tickets).insert(ticket.clone(), Waiting::Standby(slot.clone(), generation));
        // A full queue skips it: the next visitor asks again.
        if link
            .try_send(RelayMessage::Standby {
                ticket: ticket.clone(),
            })
            .is_err()
        {
            lock(&self.tickets).remove(&ticket);
        }
    }

    /// Forgets the standby tickets of `slot`'s links before `generation`
    /// (their connections would be refused anyway).
    fn forget_standby_tickets(&self, slot: &Arc<ClientSlot>, generation: u64) {
        lock(&self.tickets).retain(|_, waiting| {
            !matches!(waiting, Waiting::Standby(of, issued)
                if Arc::ptr_eq(of, slot) && *issued < generation)
        });
    }

    /// Removes an exposure: closes its public port and gives the port back.
    async fn withdraw(self: &Arc<Self>, slot: &ClientSlot, id: &ExposureId) {
        let held = lock(&slot.state).exposures.remove(id);
        if let Some(held) = held {
            self.close(held).await;
        }
    }

    /// Closes the public port of `held`, removed from its client's
    /// exposures, and gives the port back, in a task of its own: a caller
    /// dropped meanwhile (a link ending) must not leave the port taken.
    async fn close(self: &Arc<Self>, held: Held) {
        let shared = self.clone();
        let closing = self.spawn(async move {
            let id = &held.registration.id;
            held.cancel.cancel();
            let _ = held.task.await;
            if let Some(port) = held.registration.port {
                shared.ports(held.registration.protocol).release(port);
            }
            info!(exposure = %id, "withdrawn");
        });
        let _ = closing.await;
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: wait, do not spin.
                warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        transport::tune(&stream);
        let task = shared.clone();
        shared.spawn(
            async move {
                let stream = match &task.options.tls {
                    None => Conn::Plain(stream),
                    Some(tls) => {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(error)) => {
                                warn!(%error, "TLS handshake failed");
                                metrics::rejected(Rejected::Tls);
                                task.failures.record(peer.ip());
                                return;
                            }
                            Err(_) => {
                                debug!("TLS handshake timed out");
                                return;
                            }
                        }
                    }
                };
                if let Err(error) = connection(task, stream, peer).await {
                    debug!(%error, "connection ended");
                }
            }
            .instrument(info_span!("connection", %peer)),
        );
    }
}

/// Serves one connection from a client: a control link or a data
/// connection, by its opening frame.
async fn connection(shared: Arc<Shared>, mut stream: Conn, peer: SocketAddr) -> Result<()> {
    let opening = tokio::time::timeout(HANDSHAKE_TIMEOUT, wire::read_frame(&mut stream))
        .await
        .map_err(|_| TunnelError::Closed("no opening frame in time".to_owned()))
        .and_then(|r| r);
    let opening: Opening = match opening {
        Ok(opening) => opening,
        Err(error) => {
            warn!(%error, "rejected a connection that sent no valid opening frame");
            metrics::rejected(Rejected::Opening);
            shared.failures.record(peer.ip());
            return Ok(());
        }
    };
    match opening {
        Opening::Data { ticket, reusable } => {
            let waiting = lock(&shared.tickets).remove(&ticket);
            match waiting {
                Some(Waiting::Visitor(visitor)) => {
                    let _ = visitor.send(stream);
                }
                Some(Waiting::Standby(slot, generation)) => {
                    let mut state = lock(&slot.state);
                    // Kept only while the link that asked for it is up.
                    if state.generation == generation && state.link.is_some() {
                        state.standby.push(Standby {
                            conn: stream,
                            reusable,
                        });
                    }
                }
                None => {
                    // Late rather than forged (128 random bits): no penalty.
                    debug!("data connection with an unknown or expired ticket");
                }
            }
            Ok(())
        }
        Opening::Control { version, client } => {
            if version != VERSION {
                let denied = Verdict::Denied {
                    message: format!(
                        "protocol version {version} is not supported; this relay speaks {VERSION}"
                    ),
                };
                let _ = wire::write_frame(&mut stream, &denied).await;
                return Err(TunnelError::Version {
                    theirs: version,
                    ours: VERSION,
                });
            }
            control(shared, stream, peer, client)
                .instrument(info_span!("control"))
                .await
        }
    }
}

/// Authenticates a control link, then serves it until it ends.
async fn control(
    shared: Arc<Shared>,
    mut stream: Conn,
    peer: SocketAddr,
    client: String,
) -> Result<()> {
    let Some(wait) = shared.failures.admit(peer.ip()) else {
        debug!(%client, "handshakes from this source already wait their turn; closed");
        return Ok(());
    };
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    let relay_nonce: auth::Bytes32 = auth::random();
    wire::write_frame(
        &mut stream,
        &Challenge {
            version: VERSION,
            nonce: hex::encode(&relay_nonce),
        },
    )
    .await?;
    let answer: Auth = tokio::time::timeout(HANDSHAKE_TIMEOUT, wire::read_frame(&mut stream))
        .await
        .map_err(|_| TunnelError::Closed("no answer to the challenge in time".to_owned()))??;
    let token = shared.options.token.expose();
    let client_nonce = hex::decode::<{ auth::NONCE_LEN }>(&answer.nonce);
    let offered = hex::decode::<{ auth::NONCE_LEN }>(&answer.proof);
    let verified = match (client_nonce, offered) {
        (Some(client_nonce), Some(offered)) => {
            let expected = auth::proof(token, Role::Client, &relay_nonce, &client_nonce, &client);
            auth::proofs_match(&expected, &offered).then_some(client_nonce)
        }
        _ => None,
    };
    let Some(client_nonce) = verified else {
        let failures = shared.failures.record(peer.ip());
        warn!(%client, failures, "authentication failed");
        metrics::rejected(Rejected::Token);
        let denied = Verdict::Denied {
            message: "authentication failed".to_owned(),
        };
        let _ = wire::write_frame(&mut stream, &denied).await;
        return Ok(());
    };
    shared.failures.clear(peer.ip());
    let _linked = Active::client();

    let slot = shared.slot(&client);
    let (outgoing, mut queue) = mpsc::channel(LINK_QUEUE);
    let link_cancel = shared.cancel.child_token();
    let (generation, held, replaced) = {
        let mut state = lock(&slot.state);
        state.generation += 1;
        state.link = Some(outgoing.clone());
        // Standby connections of an older link go with it.
        let replaced = std::mem::take(&mut state.standby);
        if let Some(old) = state.link_cancel.replace(link_cancel.clone()) {
            // A newer link of the same client replaces the old one.
            old.cancel();
        }
        let held: Vec<Registration> = state
            .exposures
            .values()
            .map(|h| h.registration.clone())
            .collect();
        (state.generation, held, replaced)
    };
    drop(replaced);
    shared.forget_standby_tickets(&slot, generation);
    info!(%client, held = held.len(), "client connected");
    let proof = auth::proof(token, Role::Relay, &relay_nonce, &client_nonce, &client);
    // Whatever ends the link below, the clean-up after it runs.
    let ended = async {
        let mut hello = Vec::new();
        wire::encode_frame(
            &mut hello,
            &Verdict::Welcome {
                proof: hex::encode(&proof),
                public_host: shared.options.public_host.clone(),
                held: held.len() as u32,
            },
        )?;
        for registration in &held {
            wire::encode_frame(&mut hello, registration)?;
        }
        wire::write_frames(&mut stream, &hello).await?;
        for _ in 0..shared.options.standby {
            shared.request_standby(&slot);
        }

        let (mut reader, mut writer) = tokio::io::split(stream);
        let heartbeat = shared.options.heartbeat;
        let writing = async move {
            let mut tick = tokio::time::interval(heartbeat);
            tick.tick().await;
            let mut batch = Vec::new();
            loop {
                let mut next = Some(tokio::select! {
                    message = queue.recv() => match message {
                        Some(message) => message,
                        None => return,
                    },
                    _ = tick.tick() => RelayMessage::Ping,
                });
                // What queued up meanwhile (a burst of visitors) leaves
                // in the same write.
                batch.clear();
                while let Some(message) = next {
                    if wire::encode_frame(&mut batch, &message).is_err() {
                        return;
                    }
                    next = (batch.len() < LINK_BATCH_BYTES)
                        .then(|| queue.try_recv().ok())
                        .flatten();
                }
                // A client that stops reading fills its socket and then
                // this queue; it is dropped as one that went silent is.
                let written =
                    tokio::time::timeout(heartbeat * 3, wire::write_frames(&mut writer, &batch));
                if !matches!(written.await, Ok(Ok(()))) {
                    return;
                }
            }
        };
        let reading = async {
            loop {
                let message: ClientMessage = match tokio::time::timeout(
                    heartbeat * 3,
                    wire::read_frame(&mut reader),
                )
                .await
                {
                    Ok(Ok(message)) => message,
                    Ok(Err(error)) => return error,
                    Err(_) => return TunnelError::Closed("the client went silent".to_owned()),
                };
                handle(&shared, &slot, &outgoing, message).await;
            }
        };
        Ok::<_, TunnelError>(tokio::select! {
            () = link_cancel.cancelled() => "replaced by a newer link".to_owned(),
            () = writing => "the link closed".to_owned(),
            error = reading => error.to_string(),
        })
    };
    let ended = ended.await.unwrap_or_else(|error| error.to_string());
    info!(%client, reason = %ended, "client disconnected");

    let mut state = lock(&slot.state);
    if state.generation == generation {
        state.link = None;
        state.link_cancel = None;
        let standby = std::mem::take(&mut state.standby);
        drop(state);
        drop(standby);
        shared.forget_standby_tickets(&slot, generation + 1);
        let grace = shared.options.grace;
        let (expiring, slot) = (shared.clone(), slot.clone());
        shared.spawn(async move {
            tokio::time::sleep(grace).await;
            // Taken under the same lock as the generation check: a client
            // reconnecting meanwhile finds them gone, not about to go.
            let expired: Vec<Held> = {
                let mut state = lock(&slot.state);
                if state.generation != generation {
                    return;
                }
                state.exposures.drain().map(|(_, held)| held).collect()
            };
            if !expired.is_empty() {
                info!(%client, exposures = expired.len(), "grace over; withdrawing");
            }
            for held in expired {
                expiring.close(held).await;
            }
        });
    }
    Ok(())
}

/// Handles one message on an authenticated control link.
async fn handle(
    shared: &Arc<Shared>,
    slot: &Arc<ClientSlot>,
    outgoing: &Link,
    message: ClientMessage,
) {
    let reply = match message {
        ClientMessage::Pong => return,
        ClientMessage::ConnectFailed { ticket } => {
            // Dropping the waiting sender closes the visitor.
            lock(&shared.tickets).remove(&ticket);
            return;
        }
        ClientMessage::Withdraw { request, id } => {
            shared.withdraw(slot, &id).await;
            RelayMessage::Withdrawn { request }
        }
        ClientMessage::Expose {
            request,
            registration,
        } => match expose(shared, slot, registration)
            .instrument(info_span!("expose"))
            .await
        {
            Ok(port) => RelayMessage::Exposed { request, port },
            Err(error) => RelayMessage::Failed {
                request,
                kind: error.kind(),
                message: wire::wire_message(&error),
            },
        },
    };
    // Waits for room: replies are paced by the client reading them.
    let _ = outgoing.send(reply).await;
}

/// Places an exposure (or confirms one already in place under its id).
async fn expose(
    shared: &Arc<Shared>,
    slot: &Arc<ClientSlot>,
    mut registration: Registration,
) -> kisara_core::Result<u16> {
    {
        let mut state = lock(&slot.state);
        if let Some(held) = state.exposures.get_mut(&registration.id) {
            if held.registration.protocol == registration.protocol {
                held.registration.target = registration.target;
                held.registration.labels = registration.labels;
                return held
                    .registration
                    .port
                    .ok_or_else(|| kisara_core::Error::unavailable("exposure without a port"));
            }
            return Err(kisara_core::Error::conflict(format!(
                "exposure {} is already in place for {}",
                registration.id, held.registration.protocol
            )));
        }
    }
    let (port, bound) = shared
        .allocate(registration.protocol, registration.port)
        .await?;
    registration.port = Some(port);
    let cancel = shared.cancel.child_token();
    let id = registration.id.clone();
    let limits = registration.limits;
    let span = info_span!("exposure", exposure = %id, port);
    let task = match bound {
        Bound::Tcp(listener) => shared.spawn(
            serve_tcp(
                shared.clone(),
                slot.clone(),
                id.clone(),
                listener,
                limits,
                cancel.clone(),
            )
            .instrument(span),
        ),
        Bound::Udp(socket) => shared.spawn(
            udp::serve_relay(udp::RelaySide {
                bind: shared.options.listen.ip(),
                socket: Arc::new(socket),
                id: id.clone(),
                peers: limits
                    .max_connections
                    .map_or(shared.options.udp_peers, |most| most as usize),
                idle: shared.options.udp_idle,
                limits,
                cancel: cancel.clone(),
                link: {
                    let slot = slot.clone();
                    Box::new(move || slot.link())
                },
                tasks: shared.tasks.clone(),
            })
            .instrument(span),
        ),
    };
    info!(exposure = %id, port, protocol = %registration.protocol, "exposed");
    let counted = Active::exposure(registration.protocol);
    let replaced = lock(&slot.state).exposures.insert(
        id,
        Held {
            registration,
            cancel,
            task,
            _counted: counted,
        },
    );
    if let Some(old) = replaced {
        // Two requests for one id raced; keep the newer.
        old.cancel.cancel();
        if let Some(port) = old.registration.port {
            shared.ports(old.registration.protocol).release(port);
        }
    }
    Ok(port)
}

/// How a visitor gets its data connection.
enum Route {
    /// A standby connection, told which exposure the visitor came to and
    /// whether the visitor's bytes go in frames.
    Standby(Conn, ExposureId, bool),
    /// A connection the client dials with the ticket, answering `Connect`.
    Ticket(String, oneshot::Receiver<Conn>),
}

impl Route {
    /// The data connection, ready for the visitor's bytes.
    async fn open(self, shared: &Shared) -> Option<Conn> {
        match self {
            Self::Standby(mut data, id, framed) => {
                match wire::write_frame(&mut data, &Dispatch { id, framed }).await {
                    Ok(()) => Some(data),
                    Err(error) => {
                        debug!(%error, "the standby connection is gone");
                        None
                    }
                }
            }
            Self::Ticket(ticket, receiver) => {
                let data = tokio::time::timeout(DATA_TIMEOUT, receiver).await;
                if let Ok(Ok(data)) = data {
                    return Some(data);
                }
                lock(&shared.tickets).remove(&ticket);
                debug!("no data connection for the visitor");
                None
            }
        }
    }
}

/// Records how a visitor ended. One that was not carried to the end is
/// reset once dropped, as a direct connection to a closed port (or to a
/// target that went away) is.
fn visitor_ended(visitor: &TcpStream, end: VisitorEnd) {
    if !matches!(end, VisitorEnd::Carried(..)) {
        let _ = visitor.set_zero_linger();
    }
    metrics::tcp_visitor_ended(end);
}

/// Turns a visitor away before it is carried.
fn refuse(visitor: &TcpStream, peer: SocketAddr, end: VisitorEnd) {
    debug!(%peer, reason = end.label(), "visitor refused");
    visitor_ended(visitor, end);
}

/// Accepts visitors on a TCP exposure and splices each to a data
/// connection from the client: a standby one when the client has one open,
/// else a fresh one.
async fn serve_tcp(
    shared: Arc<Shared>,
    slot: Arc<ClientSlot>,
    id: ExposureId,
    listener: TcpListener,
    limits: ExposureLimits,
    cancel: CancellationToken,
) {
    let slots = limits
        .max_connections
        .map(|n| Arc::new(Semaphore::new(n as usize)));
    let buckets = limits
        .bandwidth
        .map(|rate| Arc::new((TokenBucket::new(rate), TokenBucket::new(rate))));
    // Visitors end with the exposure (reset, as by a target that is gone),
    // and it ends after them: a withdrawn exposure carries nothing more to
    // a target that may be about to be torn down or handed to someone
    // else. (A relay stopping drops this task at once and ends them
    // itself.)
    let visitors = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (mut visitor, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let permit = match &slots {
            Some(slots) => match slots.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    refuse(&visitor, peer, VisitorEnd::OverLimit);
                    continue;
                }
            },
            None => None,
        };
        let Some(link) = slot.link() else {
            refuse(&visitor, peer, VisitorEnd::ClientOffline);
            continue;
        };
        // A framed visitor's data connection comes back for the next one.
        let mut reuse = None;
        let (taken, closed) = slot.take_standby();
        if closed > 0 {
            debug!(closed, "dropped standby connections the client had closed");
        }
        for _ in 0..closed {
            shared.request_standby(&slot);
        }
        let route = match taken {
            Some((standby, generation, idle)) => {
                // A framed visitor's connection comes back when it leaves,
                // so one more is asked for only once fewer than half stay
                // idle (long-lived visitors hold theirs); a raw one is
                // used up and always replaced. Asking at every take made
                // sequential visitors that came faster than their
                // connections were returned open new ones, and the surplus
                // was closed (a `TIME_WAIT` each).
                let framed = standby.reusable && FRAMING;
                if !framed || idle < shared.options.standby.div_ceil(2) {
                    shared.request_standby(&slot);
                }
                if framed {
                    reuse = Some(generation);
                }
                Route::Standby(standby.conn, id.clone(), framed)
            }
            None => {
                let ticket = hex::encode(&auth::random::<16>());
                let (sender, receiver) = oneshot::channel();
                lock(&shared.tickets).insert(ticket.clone(), Waiting::Visitor(sender));
                let asked = link.try_send(RelayMessage::Connect {
                    id: id.clone(),
                    ticket: ticket.clone(),
                });
                if let Err(error) = asked {
                    lock(&shared.tickets).remove(&ticket);
                    let end = match error {
                        TrySendError::Full(_) => VisitorEnd::LinkCongested,
                        TrySendError::Closed(_) => VisitorEnd::ClientOffline,
                    };
                    refuse(&visitor, peer, end);
                    continue;
                }
                Route::Ticket(ticket, receiver)
            }
        };
        let buckets = buckets.clone();
        let relay = shared.clone();
        let slot = slot.clone();
        let cancel = cancel.clone();
        let visit = async move {
            let _permit = permit;
            let _carrying = Active::tcp_visitor();
            let data = tokio::select! {
                () = cancel.cancelled() => None,
                data = route.open(&relay) => Some(data),
            };
            let end = match data {
                None => VisitorEnd::Withdrawn,
                Some(None) => VisitorEnd::NoDataConnection,
                Some(Some(mut data)) => {
                    let _ = visitor.set_nodelay(true);
                    let carried = tokio::select! {
                        () = cancel.cancelled() => None,
                        carried = async {
                            match (reuse, &mut data, buckets.as_deref()) {
                                (Some(_), data, buckets) => {
                                    splice_framed(Some(&visitor), data, buckets).await
                                }
                                (None, Conn::Plain(data), None) => {
                                    splice_tcp(&mut visitor, data).await
                                }
                                (None, data, buckets) => splice(&mut visitor, data, buckets).await,
                            }
                        } => Some(carried),
                    };
                    match carried {
                        Some(Ok((up, down))) => {
                            debug!(up, down, "visitor left");
                            if let Some(generation) = reuse {
                                let most = 2 * relay.options.standby;
                                slot.return_standby(data, generation, most);
                            }
                            VisitorEnd::Carried(up, down)
                        }
                        Some(Err(error)) => {
                            debug!(%error, "visitor connection broke");
                            VisitorEnd::Broken
                        }
                        None => {
                            // Cut mid-stream: the client resets the target
                            // when its data connection is reset.
                            data.reset();
                            VisitorEnd::Withdrawn
                        }
                    }
                }
            };
            if matches!(end, VisitorEnd::Withdrawn) {
                debug!("exposure withdrawn; visitor reset");
            }
            visitor_ended(&visitor, end);
        };
        shared.spawn(visitors.track_future(visit.instrument(info_span!("visitor", %peer))));
    }
    visitors.close();
    visitors.wait().await;
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use kisara_core::model::Labels;
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::test_support::tcp_pair;

    /// A standby connection the client has closed is dropped and counted,
    /// and the visitor gets the next open one.
    #[tokio::test]
    async fn closed_standby_connections_are_skipped() {
        let slot = ClientSlot::default();
        let (_client_end, open) = tcp_pair().await;
        let (client_end, closed) = tcp_pair().await;
        drop(client_end);
        closed.readable().await.unwrap();
        lock(&slot.state).standby = [open, closed]
            .into_iter()
            .map(|stream| Standby {
                conn: Conn::Plain(stream),
                reusable: true,
            })
            .collect();

        let (taken, dropped) = slot.take_standby();
        assert_eq!(dropped, 1, "the closed connection was not dropped");
        let (_, _, idle) = taken.expect("the open connection");
        assert_eq!(idle, 0);
        assert!(matches!(slot.take_standby(), (None, 0)));
    }

    /// A client whose control link has a full queue gets no more
    /// messages: its visitors are reset at once instead of waiting for a
    /// data connection that was never asked for, and the queue stays as
    /// long as it was.
    #[tokio::test]
    async fn visitors_of_a_congested_link_are_reset_at_once() {
        let relay = Relay::bind(RelayOptions::new("127.0.0.1:0".parse().unwrap(), "token"))
            .await
            .unwrap();
        let slot = relay.shared.slot("congested");
        let (link, queue) = mpsc::channel(1);
        link.try_send(RelayMessage::Ping).unwrap();
        lock(&slot.state).link = Some(link);
        let registration = Registration {
            id: ExposureId::new("congested-tcp"),
            protocol: Protocol::Tcp,
            port: None,
            limits: ExposureLimits::default(),
            target: "127.0.0.1:9".parse().unwrap(),
            labels: Labels::default(),
        };
        let port = expose(&relay.shared, &slot, registration).await.unwrap();

        for _ in 0..3 {
            let mut visitor = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
                .await
                .unwrap();
            let mut byte = [0; 1];
            // Well before DATA_TIMEOUT, which a visitor whose `Connect`
            // was queued without bound would wait out.
            let read = tokio::time::timeout(Duration::from_secs(2), visitor.read(&mut byte))
                .await
                .expect("the visitor was left waiting");
            let error = read.expect_err("the visitor was not reset");
            assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
        }
        assert_eq!(queue.len(), 1, "a congested link was given more to send");
        assert!(
            lock(&relay.shared.tickets).is_empty(),
            "tickets were left behind"
        );
        relay.stop().await;
    }
}
