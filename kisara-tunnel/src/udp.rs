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
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, debug_span, warn};

use crate::auth::{self, hex};
use crate::limit::TokenBucket;
use crate::wire::RelayMessage;

/// Sessions idle this long end, unless configured otherwise.
pub(crate) const DEFAULT_IDLE: Duration = Duration::from_secs(60);
/// How long the relay waits for the client's greeting.
const GREETING_TIMEOUT: Duration = Duration::from_secs(10);
/// Datagrams queued per session before newer ones are dropped.
const QUEUE: usize = 1024;
/// The largest datagram carried.
const MAX_DATAGRAM: usize = 65_536;
/// Kernel buffers asked for on every socket of the UDP data path (Linux
/// caps them at `net.core.rmem_max` / `wmem_max`). The default, 208 KiB,
/// holds about 2 ms of traffic at 500 Mbit/s, so any delay in scheduling a
/// forwarding task drops datagrams; 4 MiB rides out 60 ms. Memory is only
/// taken while datagrams wait.
const SOCKET_BUFFER: usize = 4 * 1024 * 1024;

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

/// Binds a UDP socket of the data path, with enlarged kernel buffers.
pub(crate) async fn bind(address: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = UdpSocket::bind(address).await?;
    #[cfg(target_os = "linux")]
    {
        // Best effort: a smaller buffer only means earlier drops.
        let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&socket, SOCKET_BUFFER);
        let _ = rustix::net::sockopt::set_socket_send_buffer_size(&socket, SOCKET_BUFFER);
    }
    Ok(socket)
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
pub(crate) type LinkLookup =
    Box<dyn Fn() -> Option<mpsc::UnboundedSender<RelayMessage>> + Send + Sync>;

/// The relay's side of a UDP exposure.
pub(crate) struct RelaySide {
    /// Where session channels are bound (the relay's listen address).
    pub(crate) bind: IpAddr,
    /// The public socket.
    pub(crate) socket: Arc<UdpSocket>,
    pub(crate) id: ExposureId,
    pub(crate) limits: ExposureLimits,
    pub(crate) idle: Duration,
    pub(crate) cancel: CancellationToken,
    pub(crate) link: LinkLookup,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Receives on a public UDP port and hands each peer's datagrams to its
/// session, opening sessions for new peers.
pub(crate) async fn serve_relay(side: RelaySide) {
    let sessions: Sessions = Arc::default();
    let buckets = side
        .limits
        .bandwidth
        .map(|rate| Arc::new((TokenBucket::new(rate), TokenBucket::new(rate))));
    let mut buffer = vec![0u8; MAX_DATAGRAM];
    loop {
        let received = tokio::select! {
            () = side.cancel.cancelled() => return,
            received = side.socket.recv_from(&mut buffer) => received,
        };
        let (n, peer) = match received {
            Ok(received) => received,
            Err(error) => {
                debug!(%error, "receive failed");
                continue;
            }
        };
        if buckets.as_ref().is_some_and(|b| !b.0.try_take(n)) {
            continue;
        }
        let existing = lock(&sessions).get(&peer).cloned();
        if let Some(session) = &existing
            && session.ready.load(Ordering::Acquire)
        {
            // Dropped when the channel is full, as UDP may.
            let _ = session.channel.try_send(&buffer[..n]);
            session.active.store(true, Ordering::Relaxed);
            continue;
        }
        let mut datagram = buffer[..n].to_vec();
        if let Some(session) = existing {
            match session.queue.try_send(datagram) {
                Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => continue,
                Err(mpsc::error::TrySendError::Closed(back)) => {
                    lock(&sessions).remove(&peer);
                    datagram = back;
                }
            }
        }
        if let Some(max) = side.limits.max_connections
            && lock(&sessions).len() >= max as usize
        {
            debug!(%peer, "over the peer limit; datagram dropped");
            continue;
        }
        let Some(link) = (side.link)() else {
            continue;
        };
        let channel = match bind(SocketAddr::new(side.bind, 0)).await {
            Ok(channel) => channel,
            Err(error) => {
                warn!(%error, "cannot bind a session channel");
                continue;
            }
        };
        let Ok(port) = channel.local_addr().map(|a| a.port()) else {
            continue;
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
        lock(&sessions).insert(peer, entry.clone());
        let opened = link.send(RelayMessage::UdpSession {
            id: side.id.clone(),
            ticket: hex::encode(&ticket),
            port,
        });
        if opened.is_err() {
            lock(&sessions).remove(&peer);
            continue;
        }
        let session = RelaySession {
            channel: entry.channel,
            ready: entry.ready,
            active: entry.active,
            ticket,
            queued,
            public: side.socket.clone(),
            peer,
            down: buckets.clone(),
            idle: side.idle,
            sessions: sessions.clone(),
            me: queue,
            cancel: side.cancel.clone(),
        };
        tokio::spawn(session.run().instrument(debug_span!("udp session", %peer)));
    }
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
        let mut buffer = vec![0u8; MAX_DATAGRAM];
        let greeted = tokio::time::timeout(GREETING_TIMEOUT, async {
            loop {
                match self.channel.recv_from(&mut buffer).await {
                    Ok((n, from)) if buffer[..n] == greeting => return Some(from),
                    Ok(_) => {}
                    Err(_) => return None,
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
        let mut deadline = Instant::now() + self.idle;
        loop {
            tokio::select! {
                queued = self.queued.recv() => {
                    let Some(datagram) = queued else { return };
                    let _ = self.channel.send(&datagram).await;
                    deadline = Instant::now() + self.idle;
                }
                received = self.channel.recv(&mut buffer) => {
                    let Ok(n) = received else {
                        // The client's channel is gone.
                        return;
                    };
                    if buffer[..n] == greeting {
                        let _ = self.channel.send(&ack).await;
                        continue;
                    }
                    deadline = Instant::now() + self.idle;
                    if self.down.as_ref().is_some_and(|b| !b.1.try_take(n)) {
                        continue;
                    }
                    let _ = self.public.send_to(&buffer[..n], self.peer).await;
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
        let channel = bind(unspecified_like(relay)).await?;
        channel.connect(relay).await?;
        let upstream = bind(unspecified_like(target)).await?;
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
    let mut from_relay = vec![0u8; MAX_DATAGRAM];
    let mut from_target = vec![0u8; MAX_DATAGRAM];
    let mut deadline = Instant::now() + idle;
    loop {
        tokio::select! {
            _ = retry.tick(), if !greeted => {
                if started.elapsed() > GREETING_TIMEOUT {
                    return;
                }
                let _ = channel.send(&greeting).await;
            }
            received = channel.recv(&mut from_relay) => {
                let Ok(n) = received else { return };
                greeted = true;
                if from_relay[..n] == ack {
                    continue;
                }
                deadline = Instant::now() + idle;
                let _ = upstream.send(&from_relay[..n]).await;
            }
            received = upstream.recv(&mut from_target) => {
                // A refused target (ICMP) is not fatal: it may come up.
                let Ok(n) = received else { continue };
                deadline = Instant::now() + idle;
                let _ = channel.send(&from_target[..n]).await;
            }
            () = tokio::time::sleep_until(deadline) => return,
        }
    }
}
