//! Batched datagram I/O for the UDP data path.
//!
//! On Linux, [`Inbox::recv`] takes every datagram waiting (up to its
//! [`Batch`]) in one `recvmmsg` call, and with UDP GRO the kernel hands over a train of
//! equal-size datagrams from one sender as one buffer. [`Outbox`] gathers
//! consecutive equal-size datagrams for one destination and sends them in
//! one `sendmsg` with UDP GSO; the receiving side's kernel splits them
//! again (or, on a GRO socket such as the next hop of this tunnel, keeps
//! them whole). At 500 Mbit/s of 1400-byte datagrams a datagram-per-call
//! path makes about 45,000 receive and 45,000 send calls a second on each
//! hop; batched, a few thousand, which leaves the CPU to the endpoints.
//! Elsewhere both fall back to one datagram per call.
//!
//! Every socket with GRO enabled must be read through an [`Inbox`]: a plain
//! `recv` would take a whole train as one datagram.

use std::io;
use std::net::SocketAddr;

use tokio::io::Interest;
use tokio::net::UdpSocket;
use tracing::debug;

/// Room for the largest datagram (a UDP payload is at most 65,507 bytes
/// over IPv4, 65,527 over IPv6) or one GRO train (at most 64 KiB).
const SLOT: usize = 65_536;

/// How many datagrams, or GRO trains, an [`Inbox`] takes per receive call.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Batch {
    /// A socket many peers send to (a public port): GRO merges only one
    /// flow's datagrams, so a slot often holds a single datagram and a
    /// batch needs many slots.
    Shared,
    /// A session's socket, with one peer: its datagrams arrive as GRO
    /// trains of up to 64 KiB, so a few slots hold hundreds of datagrams,
    /// and a relay with thousands of sessions reserves a quarter of the
    /// memory.
    Session,
}

impl Batch {
    fn slots(self) -> usize {
        if cfg!(target_os = "linux") {
            match self {
                Self::Shared => 32,
                Self::Session => 8,
            }
        } else {
            1
        }
    }
}

/// Datagrams per GSO send: Linux's `UDP_MAX_SEGMENTS` (64 before 6.11).
#[cfg(target_os = "linux")]
const MAX_SEGMENTS: usize = 64;
#[cfg(not(target_os = "linux"))]
const MAX_SEGMENTS: usize = 1;

/// Payload bytes per GSO send: an IPv4 packet's 65,535 bytes less the IP
/// header with room for options, and the UDP header.
const MAX_RUN_BYTES: usize = 65_000;

/// Kernel buffers asked for on every socket of the UDP data path (Linux
/// caps them at `net.core.rmem_max` / `wmem_max`). The default, 208 KiB,
/// holds about 2 ms of traffic at 500 Mbit/s, so any delay in scheduling a
/// forwarding task drops datagrams; 4 MiB rides out 60 ms. Memory is only
/// taken while datagrams wait.
const SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// Binds a UDP socket of the data path, with enlarged kernel buffers and
/// GRO (so it must be read through an [`Inbox`]).
pub(crate) async fn bind(address: SocketAddr) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(address).await?;
    enable_gro(&socket);
    #[cfg(target_os = "linux")]
    {
        // Best effort: a smaller buffer only means earlier drops.
        let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&socket, SOCKET_BUFFER);
        let _ = rustix::net::sockopt::set_socket_send_buffer_size(&socket, SOCKET_BUFFER);
    }
    Ok(socket)
}

/// Turns on UDP GRO for `socket` (best effort; without it each datagram
/// arrives alone, which only costs more calls).
fn enable_gro(socket: &UdpSocket) {
    #[cfg(target_os = "linux")]
    {
        let _ =
            nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::UdpGroSegment, &true);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = socket;
}

/// What one slot of the last receive holds.
#[derive(Clone, Copy)]
struct Received {
    /// Which slot: a message skipped (truncated, or with no address)
    /// leaves its slot unlisted, so positions do not match.
    slot: usize,
    from: SocketAddr,
    len: usize,
    /// The size of each datagram in the slot (a GRO train); `len` for a
    /// single datagram.
    segment: usize,
}

/// Receives datagrams in batches; see the module docs.
pub(crate) struct Inbox {
    batch: Batch,
    /// The batch's slots of `SLOT` bytes, allocated at the first receive:
    /// an idle socket costs none. The allocation is zero-filled lazily by
    /// the OS, so only the pages datagrams land in are taken (one page per
    /// slot for small datagrams, at most the whole buffer, 2 MiB shared or
    /// 512 KiB for a session, for a full batch of trains).
    buffer: Vec<u8>,
    received: Vec<Received>,
}

impl Inbox {
    pub(crate) fn new(batch: Batch) -> Self {
        Self {
            batch,
            buffer: Vec::new(),
            received: Vec::new(),
        }
    }

    /// Waits until `socket` has datagrams and takes as many as one call
    /// gives; [`Inbox::datagrams`] then lists them.
    pub(crate) async fn recv(&mut self, socket: &UdpSocket) -> io::Result<()> {
        if self.buffer.is_empty() {
            self.buffer = vec![0; self.batch.slots() * SLOT];
        }
        self.received.clear();
        let Self {
            buffer, received, ..
        } = self;
        socket
            .async_io(Interest::READABLE, || receive(socket, buffer, received))
            .await
    }

    /// The datagrams of the last receive, in arrival order, with their
    /// senders.
    pub(crate) fn datagrams(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        self.received.iter().flat_map(|received| {
            let start = received.slot * SLOT;
            let bytes = &self.buffer[start..start + received.len];
            let segment = received.segment.max(1);
            // An empty datagram is still one datagram.
            let count = received.len.div_ceil(segment).max(1);
            (0..count).map(move |i| {
                let start = i * segment;
                let end = (start + segment).min(bytes.len());
                (received.from, &bytes[start..end])
            })
        })
    }
}

#[cfg(target_os = "linux")]
fn receive(socket: &UdpSocket, buffer: &mut [u8], received: &mut Vec<Received>) -> io::Result<()> {
    use std::io::IoSliceMut;
    use std::os::fd::AsRawFd;

    use nix::sys::socket::{ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrStorage};

    let mut slots: Vec<[IoSliceMut<'_>; 1]> = buffer
        .chunks_mut(SLOT)
        .map(|slot| [IoSliceMut::new(slot)])
        .collect();
    let mut headers =
        MultiHeaders::<SockaddrStorage>::preallocate(slots.len(), Some(nix::cmsg_space!(i32)));
    let messages = nix::sys::socket::recvmmsg(
        socket.as_raw_fd(),
        &mut headers,
        slots.iter_mut(),
        MsgFlags::MSG_DONTWAIT,
        None,
    )?;
    for (slot, message) in messages.enumerate() {
        let Some(from) = message.address.as_ref().and_then(socket_address) else {
            continue;
        };
        if message.flags.contains(MsgFlags::MSG_TRUNC) {
            debug!(%from, "datagram larger than {SLOT} bytes dropped");
            continue;
        }
        let train = message
            .cmsgs()
            .into_iter()
            .flatten()
            .find_map(|control| match control {
                ControlMessageOwned::UdpGroSegments(size) => usize::try_from(size).ok(),
                _ => None,
            });
        received.push(Received {
            slot,
            from,
            len: message.bytes,
            segment: train.unwrap_or(message.bytes),
        });
    }
    Ok(())
}

#[cfg(target_os = "linux")]
fn socket_address(address: &nix::sys::socket::SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = address.as_sockaddr_in() {
        return Some(std::net::SocketAddrV4::from(*v4).into());
    }
    address
        .as_sockaddr_in6()
        .map(|v6| std::net::SocketAddrV6::from(*v6).into())
}

#[cfg(not(target_os = "linux"))]
fn receive(socket: &UdpSocket, buffer: &mut [u8], received: &mut Vec<Received>) -> io::Result<()> {
    let (len, from) = socket.try_recv_from(buffer)?;
    received.push(Received {
        slot: 0,
        from,
        len,
        segment: len,
    });
    Ok(())
}

/// What an [`Outbox`] does when the socket's send buffer is full.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum WhenFull {
    /// Wait for room: the datagrams come from one peer, whose own socket
    /// buffer absorbs the wait.
    Wait,
    /// Drop the datagrams, as a congested UDP path does: used where
    /// waiting would stall other peers' traffic.
    Drop,
}

/// Gathers datagrams into GSO runs; see the module docs.
pub(crate) struct Outbox {
    when_full: WhenFull,
    run: Vec<u8>,
    /// The size of the run's datagrams; only the last may be shorter.
    segment: usize,
    count: usize,
    /// `None`: the socket's connected peer.
    to: Option<SocketAddr>,
    /// Cleared when a GSO send fails (a route or kernel without it);
    /// datagrams then go one per call.
    gso: bool,
}

impl Outbox {
    pub(crate) fn new(when_full: WhenFull) -> Self {
        Self {
            when_full,
            run: Vec::new(),
            segment: 0,
            count: 0,
            to: None,
            gso: true,
        }
    }

    /// Adds `datagram` for `to`, first sending the run so far on `socket`
    /// when the datagram cannot join it. A run is for one socket: flush
    /// before pushing for another.
    pub(crate) async fn push(
        &mut self,
        socket: &UdpSocket,
        to: Option<SocketAddr>,
        datagram: &[u8],
    ) {
        if !self.joins(to, datagram.len()) {
            self.flush(socket).await;
        }
        if self.count == 0 {
            self.to = to;
            self.segment = datagram.len();
        }
        self.run.extend_from_slice(datagram);
        self.count += 1;
    }

    fn joins(&self, to: Option<SocketAddr>, len: usize) -> bool {
        self.count > 0
            && self.gso
            && to == self.to
            // GSO cuts at `segment`: a longer datagram would be split, an
            // empty one lost, and nothing may follow a shorter one.
            && (1..=self.segment).contains(&len)
            && self.run.len() == self.count * self.segment
            && self.count < MAX_SEGMENTS
            && self.run.len() + len <= MAX_RUN_BYTES
    }

    /// Sends the run.
    pub(crate) async fn flush(&mut self, socket: &UdpSocket) {
        if self.count == 0 {
            return;
        }
        let sent = match self.when_full {
            WhenFull::Wait => {
                socket
                    .async_io(Interest::WRITABLE, || self.send(socket))
                    .await
            }
            WhenFull::Drop => socket.try_io(Interest::WRITABLE, || self.send(socket)),
        };
        if let Err(error) = sent
            && self.count > 1
            && error.kind() != io::ErrorKind::WouldBlock
        {
            debug!(%error, "GSO send failed; sending datagrams one per call");
            self.gso = false;
            for datagram in self.run.chunks(self.segment) {
                let _ = socket.try_io(Interest::WRITABLE, || send(socket, self.to, datagram, None));
            }
        }
        self.run.clear();
        self.count = 0;
    }

    fn send(&self, socket: &UdpSocket) -> io::Result<()> {
        let segment = (self.count > 1).then_some(self.segment);
        send(socket, self.to, &self.run, segment)
    }
}

/// One send call: `bytes` as one datagram, or as datagrams of `segment`
/// bytes (GSO).
#[cfg(target_os = "linux")]
fn send(
    socket: &UdpSocket,
    to: Option<SocketAddr>,
    bytes: &[u8],
    segment: Option<usize>,
) -> io::Result<()> {
    use std::io::IoSlice;
    use std::os::fd::AsRawFd;

    use nix::sys::socket::{ControlMessage, MsgFlags, SockaddrStorage};

    // A run holds at least two datagrams within MAX_RUN_BYTES, so its
    // segment fits in 16 bits.
    let segment = segment.and_then(|s| u16::try_from(s).ok());
    let gso = segment.as_ref().map(ControlMessage::UdpGsoSegments);
    let to = to.map(SockaddrStorage::from);
    nix::sys::socket::sendmsg(
        socket.as_raw_fd(),
        &[IoSlice::new(bytes)],
        gso.as_slice(),
        MsgFlags::MSG_DONTWAIT,
        to.as_ref(),
    )?;
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn send(
    socket: &UdpSocket,
    to: Option<SocketAddr>,
    bytes: &[u8],
    _segment: Option<usize>,
) -> io::Result<()> {
    match to {
        Some(to) => socket.try_send_to(bytes, to),
        None => socket.try_send(bytes),
    }
    .map(drop)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Two connected data-path sockets (4 MiB buffers, GRO), as the
    /// tunnel binds them: everything is sent before anything is read.
    async fn pair() -> (UdpSocket, UdpSocket) {
        let a = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let b = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        a.connect(b.local_addr().unwrap()).await.unwrap();
        b.connect(a.local_addr().unwrap()).await.unwrap();
        (a, b)
    }

    /// Receives until `want` datagrams have arrived (failing after a few
    /// seconds without), counting the calls.
    async fn collect(inbox: &mut Inbox, socket: &UdpSocket, want: usize) -> (Vec<Vec<u8>>, usize) {
        let mut datagrams = Vec::new();
        let mut calls = 0;
        while datagrams.len() < want {
            tokio::time::timeout(Duration::from_secs(5), inbox.recv(socket))
                .await
                .unwrap_or_else(|_| panic!("{} of {want} datagrams arrived", datagrams.len()))
                .unwrap();
            calls += 1;
            datagrams.extend(inbox.datagrams().map(|(_, d)| d.to_vec()));
        }
        (datagrams, calls)
    }

    fn datagram(index: usize, len: usize) -> Vec<u8> {
        (0..len).map(|i| (index * 31 + i) as u8).collect()
    }

    #[tokio::test]
    async fn datagrams_keep_their_boundaries_and_order_through_runs() {
        let (a, b) = pair().await;
        let mut outbox = Outbox::new(WhenFull::Wait);
        // Runs of equal sizes, a shorter one closing a run, empty and
        // largest datagrams that must go alone.
        let mut sent: Vec<Vec<u8>> = (0..100).map(|i| datagram(i, 1400)).collect();
        sent.push(datagram(100, 700));
        sent.push(Vec::new());
        sent.extend((101..110).map(|i| datagram(i, 1400)));
        sent.push(datagram(110, 65_507));
        sent.push(datagram(111, 1));
        for d in &sent {
            outbox.push(&a, None, d).await;
        }
        outbox.flush(&a).await;

        let mut inbox = Inbox::new(Batch::Session);
        let (got, calls) = collect(&mut inbox, &b, sent.len()).await;
        assert_eq!(got.len(), sent.len());
        for (i, (got, sent)) in got.iter().zip(&sent).enumerate() {
            assert_eq!(got, sent, "datagram {i}");
        }
        // Sent as about six GSO runs and read as GRO trains in one
        // `recvmmsg` of a session's eight slots; without GRO it takes
        // fifteen calls.
        #[cfg(target_os = "linux")]
        assert!(
            calls <= 2,
            "{} datagrams took {calls} receive calls",
            sent.len()
        );
    }

    #[tokio::test]
    async fn many_senders_are_told_apart_in_one_batch() {
        let receiver = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let to = receiver.local_addr().unwrap();
        let mut senders = Vec::new();
        for i in 0..8u8 {
            let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            sender.send_to(&[i; 10], to).await.unwrap();
            senders.push(sender);
        }
        let mut inbox = Inbox::new(Batch::Shared);
        let mut seen = 0;
        while seen < senders.len() {
            inbox.recv(&receiver).await.unwrap();
            for (from, d) in inbox.datagrams() {
                let sender = &senders[usize::from(d[0])];
                assert_eq!(from, sender.local_addr().unwrap());
                assert_eq!(d, [d[0]; 10]);
                seen += 1;
            }
        }
    }

    #[tokio::test]
    async fn runs_are_cut_at_the_segment_limit() {
        let (a, b) = pair().await;
        let mut outbox = Outbox::new(WhenFull::Wait);
        // Trains above the UDP_MAX_SEGMENTS limit are cut into several
        // runs rather than refused.
        let sent: Vec<Vec<u8>> = (0..200).map(|i| datagram(i, 10)).collect();
        for d in &sent {
            outbox.push(&a, None, d).await;
        }
        outbox.flush(&a).await;
        let mut inbox = Inbox::new(Batch::Session);
        let (got, _) = collect(&mut inbox, &b, sent.len()).await;
        assert_eq!(got, sent);
    }
}
