//! The TCP data path on Linux: zero-copy splicing of two TCP sockets
//! through a pipe per direction (`splice(2)`: the bytes stay in the
//! kernel), raw or in the frames of a reused data connection, which may
//! also be a TLS session (copied) or paced by a bandwidth limit.
//!
//! Each direction starts by copying through a small buffer and switches to
//! splicing once a read fills that buffer: a splice round trip costs more
//! than `read` + `write` for a few bytes (the pipe's page bookkeeping, one
//! more wakeup), so request/response traffic stays on the copy path and
//! only bulk transfers pay for, and gain from, the pipe.

use std::io;
use std::os::fd::OwnedFd;

use std::sync::atomic::{AtomicBool, Ordering};

use rustix::net::{SendFlags, Shutdown};
use rustix::pipe::{PipeFlags, SpliceFlags};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest, ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use crate::bucket::TokenBucket;
use crate::transport::Conn;

/// Pipe capacity asked for: Linux's default ceiling for unprivileged
/// processes (`fs.pipe-max-size`); the kernel may grant less, down to the
/// 64 KiB default once a user holds many pipe pages. More bytes per splice
/// call means fewer calls and wakeups per byte; pages are only taken while
/// bytes wait in the pipe, so an idle connection costs none.
const PIPE_SIZE: usize = 1024 * 1024;

/// The copy path's buffer: a read that fills it marks the direction as
/// bulk, and a splice that moves less than it marks it as small again.
const COPY_SIZE: usize = 16 * 1024;

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let (read, write) = rustix::pipe::pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
        // Best effort: a smaller pipe only moves less per call.
        let _ = rustix::pipe::fcntl_setpipe_size(&write, PIPE_SIZE);
        Ok(Self { read, write })
    }
}

fn flags() -> SpliceFlags {
    SpliceFlags::NONBLOCK | SpliceFlags::MOVE
}

/// Runs `op` on `stream` when it is ready for `interest`, until it stops
/// reporting `WouldBlock`.
async fn when_ready<T>(
    stream: &TcpStream,
    interest: Interest,
    mut op: impl FnMut() -> io::Result<T>,
) -> io::Result<T> {
    loop {
        stream.ready(interest).await?;
        match stream.try_io(interest, &mut op) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            done => return done,
        }
    }
}

/// Moves up to `most` bytes waiting on `from` into `pipe`; 0 at end of
/// stream.
async fn fill(pipe: &Pipe, from: &TcpStream, most: usize) -> io::Result<usize> {
    when_ready(from, Interest::READABLE, || {
        Ok(rustix::pipe::splice(
            from,
            None,
            &pipe.write,
            None,
            most,
            flags(),
        )?)
    })
    .await
}

/// Moves the `filled` bytes waiting in `pipe` to `to`.
async fn drain(pipe: &Pipe, to: &TcpStream, filled: usize) -> io::Result<()> {
    let mut pending = filled;
    while pending > 0 {
        pending -= when_ready(to, Interest::WRITABLE, || {
            Ok(rustix::pipe::splice(
                &pipe.read,
                None,
                to,
                None,
                pending,
                flags(),
            )?)
        })
        .await?;
    }
    Ok(())
}

/// Writes all of `bytes` to `to`; with `more`, tells the kernel that more
/// follows at once (`MSG_MORE`), so a frame header leaves in one segment
/// with the payload spliced after it.
async fn write_all(to: &TcpStream, mut bytes: &[u8], more: bool) -> io::Result<()> {
    let flags = if more {
        SendFlags::NOSIGNAL | SendFlags::MORE
    } else {
        SendFlags::NOSIGNAL
    };
    while !bytes.is_empty() {
        let written = when_ready(to, Interest::WRITABLE, || {
            Ok(rustix::net::send(to, bytes, flags)?)
        })
        .await?;
        bytes = &bytes[written..];
    }
    Ok(())
}

/// Where a direction writes: a socket (spliced into once the traffic is
/// bulk) or the write half of a TLS session (copied, flushed per write).
enum Sink<'a> {
    Socket(&'a TcpStream),
    Session(WriteHalf<&'a mut Conn>),
}

impl<'a> Sink<'a> {
    /// Writes all of `bytes`; with `more`, more follows at once.
    async fn write_all(&mut self, bytes: &[u8], more: bool) -> io::Result<()> {
        match self {
            Self::Socket(to) => write_all(to, bytes, more).await,
            Self::Session(to) => {
                to.write_all(bytes).await?;
                if more { Ok(()) } else { to.flush().await }
            }
        }
    }

    /// The socket, when bytes may be spliced into it.
    fn socket(&self) -> Option<&'a TcpStream> {
        match self {
            Self::Socket(to) => Some(*to),
            Self::Session(_) => None,
        }
    }
}

/// Where a framed direction reads its frames: a socket (spliced from for
/// bulk frames) or the read half of a TLS session.
enum Source<'a> {
    Socket(&'a TcpStream),
    Session(ReadHalf<&'a mut Conn>),
}

impl<'a> Source<'a> {
    /// Reads what is there, up to `buffer.len()` bytes; 0 at end of stream.
    async fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Socket(from) => {
                when_ready(from, Interest::READABLE, || from.try_read(buffer)).await
            }
            Self::Session(from) => from.read(buffer).await,
        }
    }

    /// Reads exactly `buffer.len()` bytes.
    async fn read_exact(&mut self, buffer: &mut [u8]) -> io::Result<()> {
        let mut filled = 0;
        while filled < buffer.len() {
            let read = self.read(&mut buffer[filled..]).await?;
            if read == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            filled += read;
        }
        Ok(())
    }

    /// The socket, when bytes may be spliced out of it.
    fn socket(&self) -> Option<&'a TcpStream> {
        match self {
            Self::Socket(from) => Some(*from),
            Self::Session(_) => None,
        }
    }
}

/// How a direction hands its bytes on.
#[derive(Debug, Clone, Copy)]
enum Framing<'a> {
    /// Raw bytes; the end of the stream is passed on as a half-close.
    Raw,
    /// Frames of a [`HEADER`] and a payload, then an end marker, so that
    /// the connection outlives the stream. The direction stops once the
    /// flag is set (the other direction reset the source's socket), even
    /// while the source still has bytes to read.
    Framed(&'a AtomicBool),
}

/// Which side of a direction failed.
enum Broke {
    /// Reading the source (the visitor or the target went away), after
    /// this many bytes.
    Source(io::Error, u64),
    /// Writing the sink.
    Sink(io::Error),
}

impl From<Broke> for io::Error {
    fn from(broke: Broke) -> Self {
        match broke {
            Broke::Source(error, _) | Broke::Sink(error) => error,
        }
    }
}

/// Moves bytes `from` → `to` until end of stream, raw or framed; a raw
/// direction then half-closes `to`, a framed one leaves ending it to the
/// caller. With `pace`, each chunk waits for the bucket's tokens.
async fn one_way(
    from: &TcpStream,
    to: &mut Sink<'_>,
    framing: Framing<'_>,
    pace: Option<&TokenBucket>,
) -> Result<u64, Broke> {
    let (header, aborted) = match framing {
        Framing::Raw => (0, None),
        Framing::Framed(aborted) => (HEADER, Some(aborted)),
    };
    // A paced direction reads at most a burst at once and never splices
    // (a splice moves up to a pipe's worth in one go).
    let chunk = pace.map_or(COPY_SIZE, |bucket| bucket.chunk().min(COPY_SIZE));
    let splice_into = to.socket().filter(|_| pace.is_none());
    // The header goes in front of the copied bytes: one write per frame.
    let mut buffer = vec![0u8; header + chunk];
    // Made at the first bulk read and kept: an empty pipe holds no pages.
    let mut pipe: Option<Pipe> = None;
    let mut bulk = false;
    let mut total = 0u64;
    loop {
        let moved = match (&pipe, bulk, splice_into) {
            (Some(pipe), true, Some(socket)) => {
                let filled = fill(pipe, from, PIPE_SIZE)
                    .await
                    .map_err(|error| Broke::Source(error, total))?;
                if filled > 0 {
                    let length = (filled as u32).to_be_bytes();
                    write_all(socket, &length[..header], true)
                        .await
                        .map_err(Broke::Sink)?;
                    drain(pipe, socket, filled).await.map_err(Broke::Sink)?;
                }
                bulk = filled >= COPY_SIZE;
                filled
            }
            _ => {
                let read = when_ready(from, Interest::READABLE, || {
                    from.try_read(&mut buffer[header..])
                })
                .await
                .map_err(|error| Broke::Source(error, total))?;
                if read > 0 {
                    if let Some(bucket) = pace {
                        bucket.take(read).await;
                    }
                    buffer[..header].copy_from_slice(&(read as u32).to_be_bytes()[..header]);
                    to.write_all(&buffer[..header + read], false)
                        .await
                        .map_err(Broke::Sink)?;
                }
                if read == COPY_SIZE && splice_into.is_some() {
                    // Without a pipe (none could be made) the copy path
                    // carries everything.
                    pipe = pipe.or_else(|| Pipe::new().ok());
                    bulk = pipe.is_some();
                }
                read
            }
        };
        total += moved as u64;
        if moved == 0 || aborted.is_some_and(|aborted| aborted.load(Ordering::Relaxed)) {
            if let (Framing::Raw, Some(socket)) = (framing, to.socket()) {
                // The peer finished sending: pass the half-close on.
                let _ = rustix::net::shutdown(socket, Shutdown::Write);
            }
            return Ok(total);
        }
    }
}

/// Carries `a` ⇄ `b` until both directions end: copied while the traffic
/// is small, spliced once it is bulk.
pub(crate) async fn bidirectional(a: &TcpStream, b: &TcpStream) -> io::Result<(u64, u64)> {
    let (mut to_b, mut to_a) = (Sink::Socket(b), Sink::Socket(a));
    Ok(tokio::try_join!(
        one_way(a, &mut to_b, Framing::Raw, None),
        one_way(b, &mut to_a, Framing::Raw, None)
    )?)
}

/// A frame's header on a reused data connection: a big-endian `u32`, the
/// length of the payload that follows, or one of the two end markers.
const HEADER: usize = 4;
/// End marker: the sender's socket reached end of stream; the receiver
/// half-closes its own.
const END: u32 = 0;
/// End marker: the sender's socket failed (a reset) or the sender dropped
/// what it received; the receiver resets its own.
const RESET: u32 = u32::MAX;
/// The longest payload a frame may announce: a sender puts at most one
/// splice call's worth in a frame.
const MAX_PAYLOAD: usize = PIPE_SIZE;

/// Sends `local`'s bytes over `data` as frames, then the end marker:
/// [`RESET`] when `local` failed or the other direction gave up on it
/// (`aborted`), else [`END`]. Without `local` (a refused stream) only
/// [`RESET`] goes. Errs only when `data` fails.
async fn frame(
    local: Option<&TcpStream>,
    data: &mut Sink<'_>,
    aborted: &AtomicBool,
    pace: Option<&TokenBucket>,
) -> io::Result<u64> {
    let Some(local) = local else {
        data.write_all(&RESET.to_be_bytes(), false).await?;
        return Ok(0);
    };
    let (total, marker) = match one_way(local, data, Framing::Framed(aborted), pace).await {
        Ok(total) if !aborted.load(Ordering::Relaxed) => (total, END),
        Ok(total) => (total, RESET),
        Err(Broke::Source(error, total)) => {
            if error.kind() == io::ErrorKind::ConnectionReset {
                // Nothing left to tell a reset socket; the flag alone
                // makes the other direction drop what it still receives.
                aborted.store(true, Ordering::Relaxed);
            } else {
                abort(local, aborted);
            }
            (total, RESET)
        }
        Err(Broke::Sink(error)) => return Err(error),
    };
    data.write_all(&marker.to_be_bytes(), false).await?;
    Ok(total)
}

/// Resets `local` once both directions are done with it, and wakes this
/// connection's sending direction, which then ends with [`RESET`].
fn abort(local: &TcpStream, aborted: &AtomicBool) {
    aborted.store(true, Ordering::Relaxed);
    let _ = local.set_zero_linger();
    let _ = rustix::net::shutdown(local, Shutdown::Read);
}

/// Writes framed payloads from `data` to `local` until the other side's
/// end marker; once `aborted` (or without `local`) they are read and
/// dropped. Errs when `data` fails or carries something that is not a
/// frame, and when `local` fails while bytes are in flight (the other side
/// would keep sending for a socket that is gone: `data` must be closed).
async fn unframe(
    data: &mut Source<'_>,
    local: Option<&TcpStream>,
    aborted: &AtomicBool,
    pace: Option<&TokenBucket>,
) -> io::Result<u64> {
    // The socket the payload goes to, while it still takes any.
    let delivering = || local.filter(|_| !aborted.load(Ordering::Relaxed));
    let chunk = pace.map_or(COPY_SIZE, |bucket| bucket.chunk().min(COPY_SIZE));
    let splice_from = data.socket().filter(|_| pace.is_none());
    let mut buffer = vec![0u8; chunk];
    let mut pipe: Option<Pipe> = None;
    let mut total = 0u64;
    loop {
        let mut header = [0u8; HEADER];
        data.read_exact(&mut header).await?;
        let length = match u32::from_be_bytes(header) {
            END => {
                if let Some(local) = delivering() {
                    let _ = rustix::net::shutdown(local, Shutdown::Write);
                }
                return Ok(total);
            }
            RESET => {
                if let Some(local) = delivering() {
                    abort(local, aborted);
                }
                return Ok(total);
            }
            length if length as usize > MAX_PAYLOAD => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "a data frame announced {length} bytes; frames carry at most {MAX_PAYLOAD}"
                    ),
                ));
            }
            length => length as usize,
        };
        if length >= COPY_SIZE && pipe.is_none() && splice_from.is_some() {
            pipe = Pipe::new().ok();
        }
        let mut left = length;
        while left > 0 {
            // After a reset the rest of the stream is read and dropped.
            let local = delivering();
            let moved = match (&pipe, splice_from, local.filter(|_| length >= COPY_SIZE)) {
                (Some(pipe), Some(socket), Some(local)) => {
                    let filled = fill(pipe, socket, left).await?;
                    if filled == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    drain(pipe, local, filled).await?;
                    filled
                }
                _ => {
                    let want = left.min(chunk);
                    let read = data.read(&mut buffer[..want]).await?;
                    if read == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    if let Some(local) = local {
                        if let Some(bucket) = pace {
                            bucket.take(read).await;
                        }
                        write_all(local, &buffer[..read], false).await?;
                    }
                    read
                }
            };
            left -= moved;
            total += moved as u64;
        }
    }
}

/// Carries `local` ⇄ `data` as one stream of frames in each direction,
/// paced by `buckets` (`local` → `data`, `data` → `local`) when given.
/// Ok once both directions have ended with a marker: `data` is then clean
/// and may carry the next stream. A reset of `local` between transfers
/// (a visitor that leaves with `SO_LINGER` 0) reaches the other side's
/// socket as a reset and keeps `data` clean; so does a stream without
/// `local` (its target refused it): [`RESET`] goes at once and the other
/// side's frames are dropped. Errs when `data` fails or carries garbage,
/// or `local` fails mid-transfer; `data` must then be closed. A plain
/// `data` is spliced for bulk frames; under TLS the frames are copied
/// through the session.
pub(crate) async fn framed(
    local: Option<&TcpStream>,
    data: &mut Conn,
    buckets: Option<&(TokenBucket, TokenBucket)>,
) -> io::Result<(u64, u64)> {
    let (up, down) = match buckets {
        Some((up, down)) => (Some(up), Some(down)),
        None => (None, None),
    };
    if let Conn::Plain(socket) = data {
        let socket: &TcpStream = socket;
        return both_ways(
            local,
            Sink::Socket(socket),
            Source::Socket(socket),
            up,
            down,
        )
        .await;
    }
    let (read, write) = tokio::io::split(data);
    both_ways(local, Sink::Session(write), Source::Session(read), up, down).await
}

/// Runs [`frame`] and [`unframe`] together over one data connection.
async fn both_ways(
    local: Option<&TcpStream>,
    mut sink: Sink<'_>,
    mut source: Source<'_>,
    up: Option<&TokenBucket>,
    down: Option<&TokenBucket>,
) -> io::Result<(u64, u64)> {
    let aborted = AtomicBool::new(local.is_none());
    tokio::try_join!(
        frame(local, &mut sink, &aborted, up),
        unframe(&mut source, local, &aborted, down)
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::test_support::tcp_pair;

    /// One end of a data connection, held by one stream at a time.
    type Data = Arc<tokio::sync::Mutex<Conn>>;

    /// The task carrying one end of a framed stream.
    type Carrier = tokio::task::JoinHandle<io::Result<(u64, u64)>>;

    /// Both ends of a plain data connection.
    async fn data_pair() -> (Data, Data) {
        let (relay_data, client_data) = tcp_pair().await;
        let end = |stream| Arc::new(tokio::sync::Mutex::new(Conn::Plain(stream)));
        (end(relay_data), end(client_data))
    }

    /// Runs one framed stream between `relay_data` and `client_data`: a
    /// visitor pair on the relay's side, a target pair on the client's.
    /// Returns the visitor's and the target's ends and the two carriers.
    async fn framed_stream(
        relay_data: &Data,
        client_data: &Data,
    ) -> (TcpStream, TcpStream, Carrier, Carrier) {
        let (visitor, relay_side) = tcp_pair().await;
        let (client_side, target) = tcp_pair().await;
        let (relay, client) = (
            carry(Some(relay_side), relay_data),
            carry(Some(client_side), client_data),
        );
        (visitor, target, relay, client)
    }

    /// Carries one framed stream of `local` (none: refused) over `data`.
    fn carry(local: Option<TcpStream>, data: &Data) -> Carrier {
        let data = data.clone();
        tokio::spawn(
            async move { framed(local.as_ref(), &mut *data.lock_owned().await, None).await },
        )
    }

    /// Asserts that the data connection is clean: a short stream after the
    /// last one arrives whole, and both ends finish it.
    async fn carries_another_stream(relay_data: &Data, client_data: &Data) {
        let (mut visitor, mut target, relay, client) = framed_stream(relay_data, client_data).await;
        visitor.write_all(b"again").await.unwrap();
        visitor.shutdown().await.unwrap();
        let mut received = Vec::new();
        target.read_to_end(&mut received).await.unwrap();
        assert_eq!(received, b"again");
        drop(target);
        relay.await.unwrap().unwrap();
        client.await.unwrap().unwrap();
    }

    /// Asserts that `who` saw its connection reset.
    fn assert_reset(outcome: &io::Result<usize>, who: &str) {
        assert!(
            matches!(outcome, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
            "{who} saw {outcome:?}, not a reset"
        );
    }

    /// Asserts that both carriers of a stream ended cleanly and that the
    /// data connection then carries another stream.
    async fn both_end_and_another_stream_follows(
        relay: Carrier,
        client: Carrier,
        relay_data: &Data,
        client_data: &Data,
    ) {
        relay.await.unwrap().unwrap();
        client.await.unwrap().unwrap();
        carries_another_stream(relay_data, client_data).await;
    }

    /// Two streams in a row on one data connection, each with small
    /// writes, a 4 MiB bulk burst (spliced) and half-closes both ways:
    /// every byte arrives in order, each end of stream arrives as a
    /// half-close, and the connection is clean for the next stream.
    #[tokio::test]
    async fn framed_streams_follow_each_other_on_one_connection() {
        let (relay_data, client_data) = data_pair().await;
        let bulk: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
        for round in 0..2u8 {
            let (mut visitor, mut target, relay, client) =
                framed_stream(&relay_data, &client_data).await;
            let mut sent = vec![round; 10];
            sent.extend_from_slice(&bulk);
            visitor.write_all(&sent[..10]).await.unwrap();
            visitor.write_all(&sent[10..]).await.unwrap();
            visitor.shutdown().await.unwrap();
            let mut received = Vec::new();
            target.read_to_end(&mut received).await.unwrap();
            assert!(received == sent, "round {round}: bytes changed on the way");

            let reply: Vec<u8> = bulk.iter().rev().copied().collect();
            target.write_all(&reply).await.unwrap();
            target.shutdown().await.unwrap();
            let mut back = Vec::new();
            visitor.read_to_end(&mut back).await.unwrap();
            assert!(back == reply, "round {round}: the reply changed on the way");

            let up_down = (sent.len() as u64, reply.len() as u64);
            assert_eq!(relay.await.unwrap().unwrap(), up_down);
            assert_eq!(client.await.unwrap().unwrap(), (up_down.1, up_down.0));
        }
    }

    /// A visitor that leaves with a reset (`SO_LINGER` 0) resets the
    /// target's connection too, and the data connection carries the next
    /// stream.
    #[tokio::test]
    async fn a_reset_crosses_and_the_connection_stays_clean() {
        let (relay_data, client_data) = data_pair().await;

        let (mut visitor, mut target, relay, client) =
            framed_stream(&relay_data, &client_data).await;
        visitor.write_all(b"ping").await.unwrap();
        let mut ping = [0u8; 4];
        target.read_exact(&mut ping).await.unwrap();
        visitor.set_zero_linger().unwrap();
        drop(visitor);
        let mut rest = Vec::new();
        assert_reset(&target.read_to_end(&mut rest).await, "the target");
        both_end_and_another_stream_follows(relay, client, &relay_data, &client_data).await;
    }

    /// A stream refused on the client's side (no target socket) resets
    /// the visitor, even one sending in bulk: the frames it sent are
    /// dropped, and the data connection carries the next stream.
    #[tokio::test]
    async fn a_refused_stream_resets_the_visitor_and_the_connection_stays_clean() {
        let (relay_data, client_data) = data_pair().await;
        let (mut visitor, relay_side) = tcp_pair().await;
        let (relay, client) = (
            carry(Some(relay_side), &relay_data),
            carry(None, &client_data),
        );
        let outcome = async {
            visitor.write_all(&vec![1u8; 4 << 20]).await?;
            visitor.read_to_end(&mut Vec::new()).await
        };
        let outcome = tokio::time::timeout(std::time::Duration::from_secs(10), outcome)
            .await
            .expect("the visitor was left hanging");
        assert_reset(&outcome, "the visitor");
        both_end_and_another_stream_follows(relay, client, &relay_data, &client_data).await;
    }

    /// A visitor that resets while the target keeps sending ends the
    /// stream on both sides and resets the target's connection: what the
    /// target sends afterwards is not carried on for a visitor that is
    /// gone. With no bytes lost in the visitor's direction the data
    /// connection stays clean for the next stream.
    #[tokio::test]
    async fn a_reset_stops_a_target_that_keeps_sending() {
        let (relay_data, client_data) = data_pair().await;
        let (mut visitor, mut target, relay, client) =
            framed_stream(&relay_data, &client_data).await;
        let trickle = tokio::spawn(async move {
            loop {
                if let Err(error) = target.write_all(&[7u8; 1024]).await {
                    return error;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        });
        let mut some = vec![0u8; 4 * 1024];
        visitor.read_exact(&mut some).await.unwrap();
        visitor.set_zero_linger().unwrap();
        drop(visitor);

        let ended = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            (relay.await.unwrap(), client.await.unwrap())
        })
        .await
        .expect("the stream still runs for a visitor that is gone");
        let error = trickle.await.unwrap();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}");

        if let (Ok(_), Ok(_)) = ended {
            carries_another_stream(&relay_data, &client_data).await;
        }
    }

    /// A header announcing more than a frame may carry fails the stream
    /// with a message naming the length.
    #[tokio::test]
    async fn an_oversized_frame_fails_the_stream() {
        let (relay_data, mut client_data) = tcp_pair().await;
        let (mut visitor, relay_side) = tcp_pair().await;
        let relay = tokio::spawn(async move {
            framed(Some(&relay_side), &mut Conn::Plain(relay_data), None).await
        });
        client_data
            .write_all(&(u32::MAX - 1).to_be_bytes())
            .await
            .unwrap();
        let error = relay.await.unwrap().unwrap_err();
        assert!(
            error.to_string().contains(&(u32::MAX - 1).to_string()),
            "{error}"
        );
        visitor.shutdown().await.unwrap();
    }

    /// Small writes, a bulk burst, small writes again and a half-close in
    /// one direction (so it switches copy → splice → copy), a reply in the
    /// other: every byte arrives in order and the counts match.
    #[tokio::test]
    async fn bytes_keep_their_order_across_copy_and_splice() {
        let (mut visitor, relay_side) = tcp_pair().await;
        let (target_side, mut target) = tcp_pair().await;
        let carrier =
            tokio::spawn(async move { bidirectional(&relay_side, &target_side).await.unwrap() });

        let mut sent = Vec::new();
        for i in 0..50u8 {
            sent.extend_from_slice(&[i; 100]);
        }
        sent.extend((0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8));
        sent.extend_from_slice(b"tail after the bulk burst");
        let writer = {
            let sent = sent.clone();
            tokio::spawn(async move {
                for chunk in sent.chunks(100).take(50) {
                    visitor.write_all(chunk).await.unwrap();
                }
                visitor.write_all(&sent[5000..]).await.unwrap();
                visitor.shutdown().await.unwrap();
                let mut reply = Vec::new();
                visitor.read_to_end(&mut reply).await.unwrap();
                reply
            })
        };
        let mut received = Vec::new();
        target.read_to_end(&mut received).await.unwrap();
        assert!(received == sent, "bytes changed on the way");
        target.write_all(b"done").await.unwrap();
        target.shutdown().await.unwrap();

        assert_eq!(writer.await.unwrap(), b"done");
        let (up, down) = carrier.await.unwrap();
        assert_eq!((up, down), (sent.len() as u64, 4));
    }
}
