//! UDP: a session per client address, each with its own connected upstream
//! socket (so a reply is sent to the peer whose datagram caused it), ended
//! after a time without traffic either way.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io::{self, ErrorKind};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;

/// How often idle sessions are looked for, at most; also how long a reply
/// thread takes to notice its session ended.
const MAX_TICK: Duration = Duration::from_secs(1);

/// One client address's upstream socket.
struct Session {
    upstream: UdpSocket,
    /// Milliseconds after the forwarder's start of the last datagram either way.
    last_active: AtomicU64,
    closed: AtomicBool,
}

impl Session {
    fn touch(&self, epoch: Instant) {
        self.last_active
            .store(millis_since(epoch), Ordering::Relaxed);
    }
}

fn millis_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Forwards datagrams on `socket` to `target` forever, ending sessions idle
/// for `idle`.
///
/// Only this thread opens and ends sessions: a datagram either finds its
/// session open or opens a new one, never one being torn down.
pub(crate) fn serve(socket: UdpSocket, target: SocketAddr, idle: Duration) -> ! {
    let tick = idle.min(MAX_TICK);
    // Without a timeout an idle forwarder would never look for idle sessions.
    socket
        .set_read_timeout(Some(tick))
        .expect("a non-zero read timeout");
    let socket = Arc::new(socket);
    let epoch = Instant::now();
    let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
    let mut sessions: HashMap<SocketAddr, Arc<Session>> = HashMap::new();
    let mut buffer = vec![0; MAX_DATAGRAM];
    let mut last_sweep = Instant::now();
    loop {
        match socket.recv_from(&mut buffer) {
            Ok((len, peer)) => {
                let session = match sessions.entry(peer) {
                    Entry::Occupied(entry) => entry.get().clone(),
                    Entry::Vacant(entry) => match open(&socket, peer, target, tick, epoch) {
                        Ok(session) => entry.insert(session).clone(),
                        Err(e) => {
                            log!("udp {peer} -> {target}: {e}");
                            continue;
                        }
                    },
                };
                session.touch(epoch);
                if let Err(e) = session.upstream.send(&buffer[..len]) {
                    log!("udp {peer} -> {target}: {e}");
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => log!("udp receive for {target}: {e}"),
        }
        if last_sweep.elapsed() >= tick {
            last_sweep = Instant::now();
            let now = millis_since(epoch);
            sessions.retain(|peer, session| {
                let active =
                    now.saturating_sub(session.last_active.load(Ordering::Relaxed)) < idle_ms;
                if !active {
                    session.closed.store(true, Ordering::Relaxed);
                    log!("udp {peer} -> {target}: idle, session ended");
                }
                active
            });
        }
    }
}

/// Opens `peer`'s session: an upstream socket connected to `target` and a
/// thread sending its replies back to `peer` through `listener`.
fn open(
    listener: &Arc<UdpSocket>,
    peer: SocketAddr,
    target: SocketAddr,
    tick: Duration,
    epoch: Instant,
) -> io::Result<Arc<Session>> {
    let local: SocketAddr = if target.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let upstream = UdpSocket::bind(local)?;
    upstream.connect(target)?;
    upstream.set_read_timeout(Some(tick))?;
    let session = Arc::new(Session {
        upstream,
        last_active: AtomicU64::new(millis_since(epoch)),
        closed: AtomicBool::new(false),
    });
    let (listener, replies) = (listener.clone(), session.clone());
    crate::spawn(move || send_replies(&listener, &replies, peer, epoch))?;
    log!("udp {peer} -> {target}: session started");
    Ok(session)
}

fn send_replies(listener: &UdpSocket, session: &Session, peer: SocketAddr, epoch: Instant) {
    let mut buffer = vec![0; MAX_DATAGRAM];
    while !session.closed.load(Ordering::Relaxed) {
        match session.upstream.recv(&mut buffer) {
            Ok(len) => {
                session.touch(epoch);
                if let Err(e) = listener.send_to(&buffer[..len], peer) {
                    log!("udp reply to {peer}: {e}");
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            // Mostly "connection refused": nothing listens on the target's
            // port (yet); the session stays, the service may come up.
            Err(e) => log!("udp reply to {peer}: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::thread;

    use super::*;

    fn loopback() -> UdpSocket {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        socket
    }

    /// An upstream answering `<datagram> from <source>` and reporting each
    /// source, and a forwarder to it with `idle`; returns the forwarder's
    /// address and the sources.
    fn echo_and_forwarder(idle: Duration) -> (SocketAddr, mpsc::Receiver<SocketAddr>) {
        let upstream = loopback();
        let target = upstream.local_addr().unwrap();
        let (sources, seen) = mpsc::channel();
        thread::spawn(move || {
            let mut buffer = [0; 1024];
            loop {
                let (len, source) = upstream.recv_from(&mut buffer).unwrap();
                // Reported before answering, so the client finds it after.
                sources.send(source).unwrap();
                let mut answer = buffer[..len].to_vec();
                answer.extend_from_slice(format!(" from {source}").as_bytes());
                upstream.send_to(&answer, source).unwrap();
            }
        });
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let address = socket.local_addr().unwrap();
        thread::spawn(move || serve(socket, target, idle));
        (address, seen)
    }

    fn ask(client: &UdpSocket, forwarder: SocketAddr, question: &str) -> String {
        client.send_to(question.as_bytes(), forwarder).unwrap();
        let mut buffer = [0; 1024];
        let (len, from) = client.recv_from(&mut buffer).unwrap();
        assert_eq!(from, forwarder);
        String::from_utf8(buffer[..len].to_vec()).unwrap()
    }

    #[test]
    fn each_peer_gets_its_own_session_and_its_own_replies() {
        let (forwarder, seen) = echo_and_forwarder(Duration::from_secs(60));
        let (alice, bob) = (loopback(), loopback());
        let first = ask(&alice, forwarder, "alice");
        let second = ask(&bob, forwarder, "bob");
        let again = ask(&alice, forwarder, "alice");
        let sources: Vec<SocketAddr> = seen.try_iter().collect();
        assert_eq!(sources.len(), 3);
        assert_eq!(first, format!("alice from {}", sources[0]));
        assert_eq!(second, format!("bob from {}", sources[1]));
        assert_eq!(again, first, "the same peer keeps its session");
        assert_ne!(sources[0], sources[1], "peers share no upstream socket");
    }

    #[test]
    fn idle_sessions_end_and_a_new_datagram_starts_another() {
        let idle = Duration::from_millis(300);
        let (forwarder, seen) = echo_and_forwarder(idle);
        let client = loopback();
        ask(&client, forwarder, "one");
        ask(&client, forwarder, "two");
        thread::sleep(idle * 4);
        ask(&client, forwarder, "three");
        let sources: Vec<SocketAddr> = seen.try_iter().collect();
        assert_eq!(sources[0], sources[1]);
        assert_ne!(sources[1], sources[2], "the idle session was ended");
    }
}
