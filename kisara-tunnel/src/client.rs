//! The client: runs beside the node agent, dials out to one or more relays
//! and implements [`Tunnel`] over them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use kisara_core::model::{
    ExposeRequest, Exposure, ExposureId, LabelFilter, Protocol, PublicAddress,
};
use kisara_core::sync::lock;
use kisara_core::{ErrorKind, Secret, Tunnel};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, debug_span, info, info_span, warn};

use crate::auth::{self, Role, hex};
use crate::error::{Result, TunnelError};
use crate::splice::{FRAMING, splice, splice_framed, splice_tcp};
use crate::transport::{self, ClientTls, Conn};
use crate::udp;
use crate::wire::{
    self, Auth, Challenge, ClientMessage, Dispatch, Opening, Registration, RelayMessage, VERSION,
    Verdict,
};

/// How long a request to a relay may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long dialling and the handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// A relay to dial.
#[derive(Debug, Clone)]
pub struct RelayEndpoint {
    /// The name reported in [`Exposure::relay`].
    pub name: String,
    /// Where the relay listens for clients, `host:port`.
    pub address: String,
    /// The shared token.
    pub token: Secret,
    /// TLS to the relay, when it serves TLS.
    pub tls: Option<ClientTls>,
}

/// Builds a [`TunnelClient`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    client_id: String,
    relays: Vec<RelayEndpoint>,
    connect_timeout: Duration,
    max_backoff: Duration,
    udp_idle: Duration,
}

impl ClientBuilder {
    /// Adds a relay to hold a link to.
    pub fn relay(
        mut self,
        name: impl Into<String>,
        address: impl Into<String>,
        token: impl Into<Secret>,
    ) -> Self {
        self.relays.push(RelayEndpoint {
            name: name.into(),
            address: address.into(),
            token: token.into(),
            tls: None,
        });
        self
    }

    /// Adds a relay to hold a link to, over TLS.
    pub fn relay_with_tls(
        mut self,
        name: impl Into<String>,
        address: impl Into<String>,
        token: impl Into<Secret>,
        tls: ClientTls,
    ) -> Self {
        self.relays.push(RelayEndpoint {
            name: name.into(),
            address: address.into(),
            token: token.into(),
            tls: Some(tls),
        });
        self
    }

    /// How long [`ClientBuilder::connect`] and `expose` wait for a link to
    /// come up; default 10 s.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The longest wait between reconnection attempts; default 5 s.
    pub fn with_max_backoff(mut self, backoff: Duration) -> Self {
        self.max_backoff = backoff;
        self
    }

    /// UDP session idle expiry on the client side; default 60 s.
    pub fn with_udp_idle(mut self, idle: Duration) -> Self {
        self.udp_idle = idle;
        self
    }

    /// Starts a link to every relay and waits until at least one is up.
    ///
    /// # Errors
    ///
    /// [`TunnelError::Config`] without relays; [`TunnelError::Auth`] when
    /// every relay refused the token; [`TunnelError::Closed`] when none
    /// came up within the connect timeout. Links keep retrying in the
    /// background either way until the client is dropped.
    pub async fn connect(self) -> Result<TunnelClient> {
        if self.relays.is_empty() {
            return Err(TunnelError::Config(
                "a client needs at least one relay".to_owned(),
            ));
        }
        let cancel = CancellationToken::new();
        let mut links = Vec::new();
        let mut tasks = Vec::new();
        for endpoint in self.relays {
            let link = Arc::new(Link {
                endpoint,
                client_id: self.client_id.clone(),
                udp_idle: self.udp_idle,
                max_backoff: self.max_backoff,
                state: Mutex::default(),
                status: watch::Sender::new(LinkStatus::Connecting),
                cancel: cancel.clone(),
            });
            tasks.push(tokio::spawn(link.clone().run()));
            links.push(link);
        }
        let client = TunnelClient {
            links,
            client_id: self.client_id,
            connect_timeout: self.connect_timeout,
            cancel,
            tasks,
        };
        client.wait_connected(self.connect_timeout).await?;
        Ok(client)
    }
}

/// Where a link stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkStatus {
    /// Dialling or handshaking.
    Connecting,
    /// Authenticated and serving.
    Up,
    /// The relay refused the token (the link keeps retrying, slowly).
    Denied,
    /// Down, retrying; the last error.
    Down(String),
}

/// One relay's link as seen by [`TunnelClient::relays`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayStatus {
    /// The relay's name.
    pub name: String,
    /// Where the link stands.
    pub status: LinkStatus,
    /// Exposures placed on it.
    pub exposures: usize,
}

/// The node side of the tunnel: holds a link to each relay, places
/// exposures on the least-loaded one, re-registers them after a reconnect or
/// a relay restart, and forwards visitors to their targets.
///
/// Dropping it closes every link and connection it holds.
#[derive(Debug)]
pub struct TunnelClient {
    links: Vec<Arc<Link>>,
    client_id: String,
    connect_timeout: Duration,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl TunnelClient {
    /// Starts building a client that identifies itself as `client_id` (a
    /// stable node id: a restarted client with the same id takes back the
    /// exposures the relay still holds for it).
    pub fn builder(client_id: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            client_id: client_id.into(),
            relays: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            max_backoff: Duration::from_secs(5),
            udp_idle: udp::DEFAULT_IDLE,
        }
    }

    /// The client's id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Each relay's link status and load.
    pub fn relays(&self) -> Vec<RelayStatus> {
        self.links
            .iter()
            .map(|link| RelayStatus {
                name: link.endpoint.name.clone(),
                status: link.status.borrow().clone(),
                exposures: link.state().exposures.len(),
            })
            .collect()
    }

    /// Waits until at least one link is up.
    ///
    /// # Errors
    ///
    /// [`TunnelError::Auth`] when every relay refused the token,
    /// [`TunnelError::Closed`] on timeout.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<()> {
        let mut watchers: Vec<_> = self.links.iter().map(|l| l.status.subscribe()).collect();
        let wait = async {
            loop {
                let statuses: Vec<LinkStatus> = watchers
                    .iter_mut()
                    .map(|w| w.borrow_and_update().clone())
                    .collect();
                if statuses.contains(&LinkStatus::Up) {
                    return Ok(());
                }
                if statuses.iter().all(|s| *s == LinkStatus::Denied) {
                    return Err(TunnelError::Auth {
                        relay: self.relay_names(),
                    });
                }
                let changes = watchers.iter_mut().map(|w| Box::pin(w.changed()));
                let _ = futures_select_all(changes).await;
            }
        };
        tokio::time::timeout(timeout, wait).await.map_err(|_| {
            TunnelError::Closed(format!(
                "no relay link came up within {timeout:?} ({})",
                self.relay_names()
            ))
        })?
    }

    fn relay_names(&self) -> String {
        self.links
            .iter()
            .map(|l| format!("{} at {}", l.endpoint.name, l.endpoint.address))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The up link with the fewest exposures, waiting for one if none is up.
    async fn least_loaded(&self) -> kisara_core::Result<Arc<Link>> {
        let pick = || {
            self.links
                .iter()
                .filter(|l| l.state().outgoing.is_some())
                .min_by_key(|l| l.state().exposures.len())
                .cloned()
        };
        if let Some(link) = pick() {
            return Ok(link);
        }
        self.wait_connected(self.connect_timeout).await?;
        pick().ok_or_else(|| kisara_core::Error::unavailable("no relay link is up"))
    }
}

/// Waits for the first of `futures` to finish.
async fn futures_select_all<F: Future + Unpin>(futures: impl Iterator<Item = F>) {
    let mut futures: Vec<F> = futures.collect();
    std::future::poll_fn(|cx| {
        for future in &mut futures {
            if std::pin::Pin::new(future).poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await;
}

impl Drop for TunnelClient {
    fn drop(&mut self) {
        self.cancel.cancel();
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[async_trait]
impl Tunnel for TunnelClient {
    fn supports(&self, protocol: Protocol) -> bool {
        matches!(protocol, Protocol::Tcp | Protocol::Udp)
    }

    async fn expose(&self, request: &ExposeRequest) -> kisara_core::Result<Exposure> {
        if !self.supports(request.protocol) {
            return Err(kisara_core::Error::not_supported(
                "kisara tunnel",
                format!("{} exposures", request.protocol),
            ));
        }
        let link = self.least_loaded().await?;
        let id = ExposureId::new(format!(
            "{}-{}",
            self.client_id,
            hex::encode(&auth::random::<8>())
        ));
        let registration = Registration {
            id: id.clone(),
            protocol: request.protocol,
            port: request.public_port,
            limits: request.limits,
            target: request.target,
            labels: request.labels.clone(),
        };
        let exposure = link
            .register(registration, true)
            .instrument(info_span!("expose", exposure = %id))
            .await?;
        info!(exposure = %id, relay = %exposure.relay, public = %exposure.public, "exposed");
        Ok(exposure)
    }

    async fn withdraw(&self, exposure: &ExposureId) -> kisara_core::Result<()> {
        for link in &self.links {
            if link.state().exposures.contains_key(exposure) {
                return link.withdraw(exposure).await;
            }
        }
        Ok(())
    }

    async fn list(&self, filter: &LabelFilter) -> kisara_core::Result<Vec<Exposure>> {
        Ok(self
            .links
            .iter()
            .flat_map(|link| {
                link.state()
                    .exposures
                    .values()
                    .filter(|e| filter.matches(&e.labels))
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect())
    }
}

/// A request waiting for the relay's answer.
#[derive(Debug)]
struct Pending {
    reply: oneshot::Sender<RelayMessage>,
    /// Recorded (with the assigned port) the moment the relay confirms, so
    /// that a visitor right behind the confirmation finds its target.
    record: Option<Exposure>,
}

#[derive(Debug, Default)]
struct LinkState {
    exposures: BTreeMap<ExposureId, Exposure>,
    /// Withdrawn while the link was down; sent on reconnect.
    tombstones: BTreeSet<ExposureId>,
    outgoing: Option<mpsc::UnboundedSender<ClientMessage>>,
    pending: HashMap<u64, Pending>,
    next_request: u64,
    public_host: String,
}

#[derive(Debug)]
struct Link {
    endpoint: RelayEndpoint,
    client_id: String,
    udp_idle: Duration,
    max_backoff: Duration,
    state: Mutex<LinkState>,
    status: watch::Sender<LinkStatus>,
    cancel: CancellationToken,
}

impl Link {
    fn state(&self) -> MutexGuard<'_, LinkState> {
        lock(&self.state)
    }

    fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let cancel = self.cancel.clone();
        tokio::spawn(
            async move {
                tokio::select! {
                    () = cancel.cancelled() => {}
                    () = task => {}
                }
            }
            .in_current_span(),
        );
    }

    /// Sends a request and waits for its answer.
    async fn request(
        &self,
        message: impl FnOnce(u64) -> ClientMessage,
        record: Option<Exposure>,
    ) -> kisara_core::Result<RelayMessage> {
        let receiver = {
            let mut state = self.state();
            let Some(outgoing) = state.outgoing.clone() else {
                return Err(kisara_core::Error::unavailable(format!(
                    "relay {} is not connected",
                    self.endpoint.name
                )));
            };
            state.next_request += 1;
            let id = state.next_request;
            let (reply, receiver) = oneshot::channel();
            state.pending.insert(id, Pending { reply, record });
            if outgoing.send(message(id)).is_err() {
                state.pending.remove(&id);
                return Err(kisara_core::Error::unavailable("relay link closed"));
            }
            receiver
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, receiver).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(kisara_core::Error::unavailable(format!(
                "the link to relay {} dropped during the request",
                self.endpoint.name
            ))),
            Err(_) => Err(kisara_core::Error::unavailable(format!(
                "relay {} did not answer within {REQUEST_TIMEOUT:?}",
                self.endpoint.name
            ))),
        }
    }

    /// Registers an exposure with the relay; with `record`, records it the
    /// moment the relay confirms.
    async fn register(
        &self,
        registration: Registration,
        record_it: bool,
    ) -> kisara_core::Result<Exposure> {
        let record = Exposure {
            id: registration.id.clone(),
            relay: self.endpoint.name.clone(),
            public: PublicAddress {
                host: self.state().public_host.clone(),
                port: registration.port.unwrap_or(0),
            },
            target: registration.target,
            protocol: registration.protocol,
            limits: registration.limits,
            labels: registration.labels.clone(),
        };
        let reply = self
            .request(
                |request| ClientMessage::Expose {
                    request,
                    registration,
                },
                record_it.then(|| record.clone()),
            )
            .await?;
        match reply {
            RelayMessage::Exposed { port, .. } => Ok(Exposure {
                public: PublicAddress {
                    port,
                    ..record.public
                },
                ..record
            }),
            RelayMessage::Failed { kind, message, .. } => {
                Err(kisara_core::Error::from_wire(kind, message))
            }
            other => Err(kisara_core::Error::unavailable(format!(
                "unexpected answer from relay {}: {other:?}",
                self.endpoint.name
            ))),
        }
    }

    async fn withdraw(&self, id: &ExposureId) -> kisara_core::Result<()> {
        self.state().exposures.remove(id);
        let sent = self
            .request(
                |request| ClientMessage::Withdraw {
                    request,
                    id: id.clone(),
                },
                None,
            )
            .await;
        match sent {
            Ok(RelayMessage::Failed { kind, message, .. }) => {
                Err(kisara_core::Error::from_wire(kind, message))
            }
            Ok(_) => Ok(()),
            Err(error) => {
                // The relay withdraws it when the link comes back (or when
                // its hold expires); it serves nobody meanwhile.
                debug!(%error, exposure = %id, "withdraw deferred until the link is back");
                self.state().tombstones.insert(id.clone());
                Ok(())
            }
        }
    }

    /// Keeps the link up: connects, serves, and reconnects with backoff.
    async fn run(self: Arc<Self>) {
        let span = info_span!("relay link", relay = %self.endpoint.name);
        let mut backoff = Duration::from_millis(100);
        loop {
            let started = tokio::time::Instant::now();
            let result = self.session().instrument(span.clone()).await;
            {
                let mut state = self.state();
                state.outgoing = None;
                // Dropping the senders fails the waiting requests.
                state.pending.clear();
            }
            let status = match &result {
                Err(TunnelError::Auth { .. }) => LinkStatus::Denied,
                Err(error) => LinkStatus::Down(error.to_string()),
                Ok(()) => LinkStatus::Down("closed".to_owned()),
            };
            if status == LinkStatus::Denied {
                warn!(parent: &span, "relay refused the token");
            } else {
                info!(parent: &span, status = ?status, "link down; reconnecting");
            }
            self.status.send_replace(status);
            if started.elapsed() > Duration::from_secs(10) {
                backoff = Duration::from_millis(100);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.max_backoff);
        }
    }

    /// One connection's life: dial, authenticate, re-register, serve.
    async fn session(self: &Arc<Self>) -> Result<()> {
        let (relay, stream, welcome) = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.handshake())
            .await
            .map_err(|_| TunnelError::Closed("handshake timed out".to_owned()))??;
        let (public_host, held) = welcome;
        let (outgoing, mut queue) = mpsc::unbounded_channel();
        let (tombstones, exposures) = {
            let mut state = self.state();
            state.public_host.clone_from(&public_host);
            let tombstones = std::mem::take(&mut state.tombstones);
            for registration in held {
                if tombstones.contains(&registration.id)
                    || state.exposures.contains_key(&registration.id)
                {
                    continue;
                }
                let Some(port) = registration.port else {
                    continue;
                };
                info!(exposure = %registration.id, port, "took back an exposure the relay held");
                state.exposures.insert(
                    registration.id.clone(),
                    Exposure {
                        id: registration.id,
                        relay: self.endpoint.name.clone(),
                        public: PublicAddress {
                            host: public_host.clone(),
                            port,
                        },
                        target: registration.target,
                        protocol: registration.protocol,
                        limits: registration.limits,
                        labels: registration.labels,
                    },
                );
            }
            for exposure in state.exposures.values_mut() {
                exposure.public.host.clone_from(&public_host);
            }
            state.outgoing = Some(outgoing.clone());
            let exposures: Vec<Exposure> = state.exposures.values().cloned().collect();
            (tombstones, exposures)
        };
        self.status.send_replace(LinkStatus::Up);
        info!(exposures = exposures.len(), "link up");

        let (mut reader, mut writer) = tokio::io::split(stream);
        let writing = async move {
            while let Some(message) = queue.recv().await {
                if let Err(error) = wire::write_frame(&mut writer, &message).await {
                    return error;
                }
            }
            TunnelError::Closed("link closed".to_owned())
        };
        for id in tombstones {
            let _ = outgoing.send(ClientMessage::Withdraw { request: 0, id });
        }
        for exposure in exposures {
            self.spawn(self.clone().reregister(exposure));
        }
        let reading = async {
            loop {
                // The relay pings every heartbeat; silence means it is gone.
                let message = tokio::time::timeout(
                    Duration::from_secs(60),
                    wire::read_frame::<_, RelayMessage>(&mut reader),
                )
                .await
                .map_err(|_| TunnelError::Closed("the relay went silent".to_owned()))??;
                self.dispatch(relay, &outgoing, message);
            }
        };
        let error: TunnelError = tokio::select! {
            error = writing => error,
            result = reading => match result {
                Ok(()) => TunnelError::Closed("link closed".to_owned()),
                Err(error) => error,
            },
        };
        Err(error)
    }

    /// Dials and authenticates, both ways.
    async fn handshake(&self) -> Result<(SocketAddr, Conn, (String, Vec<Registration>))> {
        let address = &self.endpoint.address;
        let relay = tokio::net::lookup_host(address.as_str())
            .await
            .map_err(|e| TunnelError::io(format!("resolve relay {address}"), e))?
            .next()
            .ok_or_else(|| TunnelError::Config(format!("relay {address} resolves to nothing")))?;
        let mut stream = transport::dial(relay, self.endpoint.tls.as_ref())
            .await
            .map_err(|e| TunnelError::io(format!("connect to relay {address}"), e))?;
        wire::write_frame(
            &mut stream,
            &Opening::Control {
                version: VERSION,
                client: self.client_id.clone(),
            },
        )
        .await?;
        let challenge: Challenge = wire::read_frame(&mut stream).await?;
        if challenge.version != VERSION {
            return Err(TunnelError::Version {
                theirs: challenge.version,
                ours: VERSION,
            });
        }
        let denied = || TunnelError::Auth {
            relay: address.clone(),
        };
        let relay_nonce = hex::decode::<{ auth::NONCE_LEN }>(&challenge.nonce)
            .ok_or_else(|| TunnelError::Malformed("bad challenge nonce".to_owned()))?;
        let client_nonce: auth::Bytes32 = auth::random();
        let token = self.endpoint.token.expose();
        let proof = auth::proof(
            token,
            Role::Client,
            &relay_nonce,
            &client_nonce,
            &self.client_id,
        );
        wire::write_frame(
            &mut stream,
            &Auth {
                nonce: hex::encode(&client_nonce),
                proof: hex::encode(&proof),
            },
        )
        .await?;
        match wire::read_frame(&mut stream).await? {
            Verdict::Welcome {
                proof,
                public_host,
                held,
            } => {
                let expected = auth::proof(
                    token,
                    Role::Relay,
                    &relay_nonce,
                    &client_nonce,
                    &self.client_id,
                );
                let offered = hex::decode::<{ auth::NONCE_LEN }>(&proof).unwrap_or_default();
                if !auth::proofs_match(&expected, &offered) {
                    warn!("the relay could not prove it knows the token");
                    return Err(denied());
                }
                // One exposure per port and protocol at most.
                const MOST_HELD: u32 = 2 * 65_536;
                if held > MOST_HELD {
                    return Err(TunnelError::Malformed(format!(
                        "the relay announced {held} held exposures; a relay holds at most {MOST_HELD}"
                    )));
                }
                let mut registrations = Vec::with_capacity(held.min(1024) as usize);
                for _ in 0..held {
                    registrations.push(wire::read_frame(&mut stream).await?);
                }
                Ok((relay, stream, (public_host, registrations)))
            }
            Verdict::Denied { message } => {
                debug!(%message, "denied");
                Err(denied())
            }
        }
    }

    /// Registers an exposure again after a reconnect, keeping its public
    /// port when the relay still has it free.
    async fn reregister(self: Arc<Self>, exposure: Exposure) {
        let registration = |port| Registration {
            id: exposure.id.clone(),
            protocol: exposure.protocol,
            port,
            limits: exposure.limits,
            target: exposure.target,
            labels: exposure.labels.clone(),
        };
        let mut result = self
            .register(registration(Some(exposure.public.port)), false)
            .await;
        if let Err(error) = &result
            && matches!(error.kind(), ErrorKind::Conflict | ErrorKind::Invalid)
        {
            warn!(exposure = %exposure.id, port = exposure.public.port, %error,
                "public port lost; taking another");
            result = self.register(registration(None), false).await;
        }
        match result {
            Ok(placed) => {
                debug!(exposure = %placed.id, port = placed.public.port, "re-registered");
                let withdrawn = match self.state().exposures.get_mut(&placed.id) {
                    Some(kept) => {
                        kept.public.port = placed.public.port;
                        false
                    }
                    None => true,
                };
                if withdrawn {
                    // Withdrawn while the registration was in flight.
                    let _ = self.withdraw(&placed.id).await;
                }
            }
            Err(error) => {
                warn!(exposure = %exposure.id, %error, "re-registration failed");
            }
        }
    }

    /// Keeps a standby data connection open until the relay dispatches a
    /// visitor on it, then carries the visitor to its exposure's target.
    /// After a framed visitor the connection is a standby one again.
    async fn standby_connection(&self, relay: SocketAddr, ticket: &str) -> Result<()> {
        let mut data = open_data(relay, self.endpoint.tls.as_ref(), ticket, FRAMING).await?;
        loop {
            let Dispatch { id, framed } = wire::read_frame(&mut data).await?;
            let target = self.state().exposures.get(&id).map(|e| e.target);
            let upstream = match target {
                Some(target) => open_target(target).await,
                None => Err(TunnelError::Closed(format!(
                    "a visitor for unknown exposure {id}"
                ))),
            };
            if !framed {
                carry(data, upstream?).await;
                return Ok(());
            }
            // A framed visitor whose target is unreachable is reset, and
            // the connection stays for the next one.
            if let Err(error) = &upstream {
                debug!(exposure = %id, %error, "visitor refused");
            }
            let carried = splice_framed(upstream.as_ref().ok(), &mut data, None).await;
            if let (Err(_), Ok(upstream)) = (&carried, &upstream) {
                // The visitor's side broke (or its exposure was withdrawn):
                // the target learns that its stream did not end cleanly.
                let _ = upstream.set_zero_linger();
            }
            carried.map_err(|e| TunnelError::io("carry a framed visitor", e))?;
        }
    }

    /// Acts on one message from the relay.
    fn dispatch(
        self: &Arc<Self>,
        relay: SocketAddr,
        outgoing: &mpsc::UnboundedSender<ClientMessage>,
        message: RelayMessage,
    ) {
        match message {
            RelayMessage::Ping => {
                let _ = outgoing.send(ClientMessage::Pong);
            }
            RelayMessage::Exposed { request, .. }
            | RelayMessage::Withdrawn { request }
            | RelayMessage::Failed { request, .. } => {
                let mut state = self.state();
                if let Some(pending) = state.pending.remove(&request) {
                    let recorded = match (&message, pending.record) {
                        (RelayMessage::Exposed { port, .. }, Some(mut record)) => {
                            record.public.port = *port;
                            let id = record.id.clone();
                            state.exposures.insert(id.clone(), record);
                            Some(id)
                        }
                        _ => None,
                    };
                    if pending.reply.send(message).is_err()
                        && let Some(id) = recorded
                    {
                        // The caller gave up waiting (timed out or was
                        // dropped) and never learned of this exposure:
                        // none is kept, on either side.
                        debug!(exposure = %id, "exposed too late; withdrawing");
                        state.exposures.remove(&id);
                        let _ = outgoing.send(ClientMessage::Withdraw { request: 0, id });
                    }
                }
            }
            RelayMessage::Connect { id, ticket } => {
                let target = self.state().exposures.get(&id).map(|e| e.target);
                let Some(target) = target else {
                    let _ = outgoing.send(ClientMessage::ConnectFailed { ticket });
                    return;
                };
                let outgoing = outgoing.clone();
                let tls = self.endpoint.tls.clone();
                self.spawn(
                    async move {
                        if let Err(error) =
                            data_connection(relay, tls.as_ref(), target, &ticket).await
                        {
                            debug!(%error, "visitor not carried");
                            let _ = outgoing.send(ClientMessage::ConnectFailed { ticket });
                        }
                    }
                    .instrument(info_span!("visitor", exposure = %id)),
                );
            }
            RelayMessage::Standby { ticket } => {
                let link = self.clone();
                self.spawn(
                    async move {
                        if let Err(error) = link.standby_connection(relay, &ticket).await {
                            debug!(%error, "standby connection ended");
                        }
                    }
                    .instrument(debug_span!("standby")),
                );
            }
            RelayMessage::UdpSession { id, ticket, port } => {
                let target = self.state().exposures.get(&id).map(|e| e.target);
                let Some(target) = target else {
                    return;
                };
                let idle = self.udp_idle;
                self.spawn(
                    async move {
                        udp::serve_client(SocketAddr::new(relay.ip(), port), &ticket, target, idle)
                            .await;
                    }
                    .instrument(info_span!("udp session", exposure = %id)),
                );
            }
        }
    }
}

/// Opens the target and a data connection to the relay for one visitor,
/// then splices them.
async fn data_connection(
    relay: SocketAddr,
    tls: Option<&ClientTls>,
    target: SocketAddr,
    ticket: &str,
) -> Result<()> {
    let (upstream, data) = tokio::join!(open_target(target), open_data(relay, tls, ticket, false));
    match (upstream, data) {
        (Ok(upstream), Ok(data)) => {
            carry(data, upstream).await;
            Ok(())
        }
        (Err(error), data) => {
            // The relay resets the visitor in turn.
            data.map(Conn::reset).ok();
            Err(error)
        }
        (Ok(_), Err(error)) => Err(error),
    }
}

/// Dials the relay for a data connection and presents `ticket`, offering
/// to carry visitors in frames on it when `reusable`.
async fn open_data(
    relay: SocketAddr,
    tls: Option<&ClientTls>,
    ticket: &str,
    reusable: bool,
) -> Result<Conn> {
    let mut data = transport::dial(relay, tls)
        .await
        .map_err(|e| TunnelError::io("open a data connection", e))?;
    wire::write_frame(
        &mut data,
        &Opening::Data {
            ticket: ticket.to_owned(),
            reusable,
        },
    )
    .await?;
    Ok(data)
}

/// Connects to a visitor's target.
async fn open_target(target: SocketAddr) -> Result<TcpStream> {
    let upstream = TcpStream::connect(target)
        .await
        .map_err(|e| TunnelError::io(format!("connect to {target}"), e))?;
    let _ = upstream.set_nodelay(true);
    Ok(upstream)
}

/// Splices a data connection with its target until both directions end;
/// when either breaks, the target is reset.
async fn carry(mut data: Conn, mut upstream: TcpStream) {
    let carried = match &mut data {
        Conn::Plain(data) => splice_tcp(data, &mut upstream).await,
        data @ Conn::Tls(_) => splice(data, &mut upstream, None).await,
    };
    if carried.is_err() {
        let _ = upstream.set_zero_linger();
    }
}
