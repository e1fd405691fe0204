//! UDP exposures: one session per visitor peer, each carried over its own
//! datagram channel between relay and client (never behind a TCP stream),
//! ended after an idle time.
//!
//! A session starts when a new peer sends to the public port: the relay
//! binds a fresh UDP socket, tells the client its port and a one-time
//! ticket over the control link, and the client greets that socket with the
//! ticket. From then on each datagram crosses unchanged, with no header.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kisara_core::model::{ExposureId, ExposureLimits};
use kisara_core::sync::lock;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, debug_span, warn};

use crate::auth::{self, hex};
use crate::bucket::TokenBucket;
use crate::datagram::{self, Batch, Inbox, Outbox, WhenFull};
use crate::metrics::{self, Active};
use crate::wire::{Link, RelayMessage};

/// Sessions idle this long end, unless configured otherwise.
pub(crate) const DEFAULT_IDLE: Duration = Duration::from_secs(60);
/// Sessions one exposure carries at once, unless configured otherwise or
/// limited by the exposure's `max_connections`.
pub(crate) const DEFAULT_PEERS: usize = 256;
/// How long the relay waits for the client's greeting.
const GREETING_TIMEOUT: Duration = Duration::from_secs(10);
/// Datagrams a session queues while it waits for the client's greeting
/// (normally one round trip between relay and client); newer ones are
/// dropped. Bounded so that sessions whose greeting never comes (UDP
/// blocked between relay and client) hold at most 64 × 64 KiB each.
const QUEUE: usize = 64;

type Ticket = [u8; 16];

fn greeting(ticket: &Ticket) -> [u8; 20] {
    tagged(b"KSUH", ticket)
}

fn acknowledgement(ticket: &Ticket) -> [u8; 20] {
    tagged(b"KSUA", ticket)
}

fn tagged(tag: &[u8; 4], ticket: &Ticket) -> [u8; 20] {
    let mut out = [0u8; 20];
    out[..4].copy_from_slice(tag);
    out[4..].copy_from_slice(ticket);
    out
}

fn unspecified_like(address: SocketAddr) -> SocketAddr {
    let ip = match address {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    SocketAddr::new(ip, 0)
}

/// What the public socket's reader knows of a session.
#[derive(Clone)]
struct Entry {
    /// Datagrams waiting for the client's greeting.
    queue: mpsc::Sender<Vec<u8>>,
    /// The channel to the client; once `ready`, the reader sends on it
    /// directly, without a hop through the session's task.
    channel: Arc<UdpSocket>,
    ready: Arc<AtomicBool>,
    /// Set by the reader on each direct send, so the session's idle timer
    /// sees traffic it did not carry itself.
    active: Arc<AtomicBool>,
}

type Sessions = Arc<Mutex<HashMap<SocketAddr, Entry>>>;

/// Finds the control link of the exposure's client, if it is connected.
pub(crate) type LinkLookup = Box<dyn Fn() -> Option<Link> + Send + Sync>;

/// The relay's side of a UDP exposure.
pub(crate) struct RelaySide {
    /// Where session channels are bound (the relay's listen address).
    pub(crate) bind: IpAddr,
    /// The public socket.
    pub(crate) socket: Arc<UdpSocket>,
    pub(crate) id: ExposureId,
    pub(crate) limits: ExposureLimits,
    /// Sessions carried at once; a new peer beyond them is dropped.
    pub(crate) peers: usize,
    pub(crate) idle: Duration,
    pub(crate) cancel: CancellationToken,
    pub(crate) link: LinkLookup,
    /// The relay's tasks, which [`crate::Relay::stop`] waits for: sessions
    /// run among them, so no session outlives a stopped relay.
    pub(crate) tasks: TaskTracker,
}

/// Receives on a public UDP port and hands each peer's datagrams to its
/// session, opening sessions for new peers.
pub(crate) async fn serve_relay(side: RelaySide) {
    let sessions: Sessions = Arc::default();
    let buckets = side
        .limits
        .bandwidth
        .map(|rate| Arc::new((TokenBucket::new(rate), TokenBucket::new(rate))));
    let mut inbox = Inbox::new(Batch::Shared);
    // Waiting for one session's channel would stall every other peer, so
    // a full channel drops, as UDP may.
    let mut outbox = Outbox::new(WhenFull::Drop);
    // Sessions end with the exposure, and it ends after them: its port is
    // given back only once no session holds the public socket. (A relay
    // stopping drops this task at once; it waits for the sessions itself.)
    let running = TaskTracker::new();
    loop {
        let received = tokio::select! {
            () = side.cancel.cancelled() => break,
            received = inbox.recv(&side.socket) => received,
        };
        if let Err(error) = received {
            debug!(%error, "receive failed");
            continue;
        }
        // The channel the outbox's run is for.
        let mut run_channel: Option<Arc<UdpSocket>> = None;
        for (peer, datagram) in inbox.datagrams() {
            if buckets
                .as_ref()
                .is_some_and(|b| !b.0.try_take(datagram.len()))
            {
                continue;
            }
            let existing = lock(&sessions).get(&peer).cloned();
            if let Some(session) = &existing
                && session.ready.load(Ordering::Acquire)
            {
                if let Some(previous) = &run_channel
                    && !Arc::ptr_eq(previous, &session.channel)
                {
                    outbox.flush(previous).await;
                }
                outbox.push(&session.channel, None, datagram).await;
                run_channel = Some(session.channel.clone());
                session.active.store(true, Ordering::Relaxed);
                continue;
            }
            open_or_queue(
                &side,
                &sessions,
                &running,
                buckets.as_ref(),
                peer,
                datagram,
                existing,
            )
            .await;
        }
        if let Some(channel) = run_channel {
            outbox.flush(&channel).await;
        }
    }
    running.close();
    running.wait().await;
}

/// Queues a datagram for a session still waiting for the client's
/// greeting, or opens a session for a new peer.
async fn open_or_queue(
    side: &RelaySide,
    sessions: &Sessions,
    running: &TaskTracker,
    buckets: Option<&Arc<(TokenBucket, TokenBucket)>>,
    peer: SocketAddr,
    datagram: &[u8],
    existing: Option<Entry>,
) {
    let mut datagram = datagram.to_vec();
    if let Some(session) = existing {
        match session.queue.try_send(datagram) {
            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => return,
            Err(mpsc::error::TrySendError::Closed(back)) => {
                lock(sessions).remove(&peer);
                datagram = back;
            }
        }
    }
    if lock(sessions).len() >= side.peers {
        debug!(%peer, most = side.peers, "over the peer limit; datagram dropped");
        metrics::udp_peer_dropped();
        return;
    }
    let Some(link) = (side.link)() else {
        return;
    };
    let channel = match datagram::bind(SocketAddr::new(side.bind, 0)).await {
        Ok(channel) => channel,
        Err(error) => {
            warn!(%error, "cannot bind a session channel");
            return;
        }
    };
    let Ok(port) = channel.local_addr().map(|a| a.port()) else {
        return;
    };
    let ticket: Ticket = auth::random();
    let (queue, queued) = mpsc::channel(QUEUE);
    let _ = queue.try_send(datagram);
    let entry = Entry {
        queue: queue.clone(),
        channel: Arc::new(channel),
        ready: Arc::default(),
        active: Arc::default(),
    };
    lock(sessions).insert(peer, entry.clone());
    let opened = link.try_send(RelayMessage::UdpSession {
        id: side.id.clone(),
        ticket: hex::encode(&ticket),
        port,
    });
    if let Err(error) = opened {
        lock(sessions).remove(&peer);
        if matches!(error, mpsc::error::TrySendError::Full(_)) {
            debug!(%peer, "the client's link is congested; datagram dropped");
            metrics::udp_peer_dropped();
        }
        return;
    }
    let session = RelaySession {
        channel: entry.channel,
        ready: entry.ready,
        active: entry.active,
        ticket,
        queued,
        public: side.socket.clone(),
        peer,
        down: buckets.cloned(),
        idle: side.idle,
        sessions: sessions.clone(),
        me: queue,
        cancel: side.cancel.clone(),
        _counted: Active::udp_session(),
    };
    let session = session.run().instrument(debug_span!("udp session", %peer));
    side.tasks.spawn(running.track_future(session));
}

struct RelaySession {
    channel: Arc<UdpSocket>,
    ready: Arc<AtomicBool>,
    active: Arc<AtomicBool>,
    ticket: Ticket,
    queued: mpsc::Receiver<Vec<u8>>,
    public: Arc<UdpSocket>,
    peer: SocketAddr,
    down: Option<Arc<(TokenBucket, TokenBucket)>>,
    idle: Duration,
    sessions: Sessions,
    me: mpsc::Sender<Vec<u8>>,
    cancel: CancellationToken,
    /// Counted among the relay's sessions while it lasts.
    _counted: Active,
}

impl RelaySession {
    async fn run(mut self) {
        let cancel = self.cancel.clone();
        tokio::select! {
            () = cancel.cancelled() => {}
            () = self.carry() => {}
        }
        let mut sessions = lock(&self.sessions);
        if sessions
            .get(&self.peer)
            .is_some_and(|s| s.queue.same_channel(&self.me))
        {
            sessions.remove(&self.peer);
        }
    }

    async fn carry(&mut self) {
        let greeting = greeting(&self.ticket);
        let ack = acknowledgement(&self.ticket);
        let mut inbox = Inbox::new(Batch::Session);
        let greeted = tokio::time::timeout(GREETING_TIMEOUT, async {
            loop {
                inbox.recv(&self.channel).await.ok()?;
                let greeter = inbox.datagrams().find(|(_, d)| *d == greeting);
                if let Some((from, _)) = greeter {
                    return Some(from);
                }
            }
        })
        .await;
        let Ok(Some(client)) = greeted else {
            debug!("the client never opened the session");
            return;
        };
        if self.channel.connect(client).await.is_err() {
            return;
        }
        let _ = self.channel.send(&ack).await;
        self.ready.store(true, Ordering::Release);
        let mut outbox = Outbox::new(WhenFull::Wait);
        let mut deadline = Instant::now() + self.idle;
        loop {
            tokio::select! {
                queued = self.queued.recv() => {
                    let Some(datagram) = queued else { return };
                    let _ = self.channel.send(&datagram).await;
                    deadline = Instant::now() + self.idle;
                }
                received = inbox.recv(&self.channel) => {
                    if received.is_err() {
                        // The client's channel is gone.
                        return;
                    }
                    for (_, datagram) in inbox.datagrams() {
                        if datagram == greeting {
                            let _ = self.channel.send(&ack).await;
                            continue;
                        }
                        deadline = Instant::now() + self.idle;
                        if self.down.as_ref().is_some_and(|b| !b.1.try_take(datagram.len())) {
                            continue;
                        }
                        outbox.push(&self.public, Some(self.peer), datagram).await;
                    }
                    outbox.flush(&self.public).await;
                }
                () = tokio::time::sleep_until(deadline) => {
                    if self.active.swap(false, Ordering::Relaxed) {
                        deadline = Instant::now() + self.idle;
                        continue;
                    }
                    debug!("idle; session ends");
                    return;
                }
            }
        }
    }
}

/// The client's side of one session: greets the relay's channel, then
/// carries datagrams between it and the target until idle.
pub(crate) async fn serve_client(
    relay: SocketAddr,
    ticket: &str,
    target: SocketAddr,
    idle: Duration,
) {
    let Some(ticket) = hex::decode::<16>(ticket) else {
        return;
    };
    let open = async {
        let channel = datagram::bind(unspecified_like(relay)).await?;
        channel.connect(relay).await?;
        let upstream = datagram::bind(unspecified_like(target)).await?;
        upstream.connect(target).await?;
        Ok::<_, std::io::Error>((channel, upstream))
    };
    let (channel, upstream) = match open.await {
        Ok(sockets) => sockets,
        Err(error) => {
            debug!(%error, "cannot open a UDP session");
            return;
        }
    };
    let greeting = greeting(&ticket);
    let ack = acknowledgement(&ticket);
    let started = Instant::now();
    let mut greeted = false;
    let mut retry = tokio::time::interval(Duration::from_millis(200));
    let (mut from_relay, mut from_target) =
        (Inbox::new(Batch::Session), Inbox::new(Batch::Session));
    let mut to_target = Outbox::new(WhenFull::Wait);
    let mut to_relay = Outbox::new(WhenFull::Wait);
    let mut deadline = Instant::now() + idle;
    loop {
        tokio::select! {
            _ = retry.tick(), if !greeted => {
                if started.elapsed() > GREETING_TIMEOUT {
                    return;
                }
                let _ = channel.send(&greeting).await;
            }
            received = from_relay.recv(&channel) => {
                if received.is_err() {
                    return;
                }
                greeted = true;
                for (_, datagram) in from_relay.datagrams() {
                    if datagram == ack {
                        continue;
                    }
                    deadline = Instant::now() + idle;
                    to_target.push(&upstream, None, datagram).await;
                }
                to_target.flush(&upstream).await;
            }
            received = from_target.recv(&upstream) => {
                // A refused target (ICMP) is not fatal: it may come up.
                if received.is_err() {
                    continue;
                }
                deadline = Instant::now() + idle;
                for (_, datagram) in from_target.datagrams() {
                    to_relay.push(&channel, None, datagram).await;
                }
                to_relay.flush(&channel).await;
            }
            () = tokio::time::sleep_until(deadline) => return,
        }
    }
}
