//! Zero-copy splicing of two TCP sockets through a pipe per direction
//! (`splice(2)`, Linux): the bytes stay in the kernel.
//!
//! Each direction starts by copying through a small buffer and switches to
//! splicing once a read fills that buffer: a splice round trip costs more
//! than `read` + `write` for a few bytes (the pipe's page bookkeeping, one
//! more wakeup), so request/response traffic stays on the copy path and
//! only bulk transfers pay for, and gain from, the pipe.

use std::io;
use std::os::fd::OwnedFd;

use rustix::net::Shutdown;
use rustix::pipe::{PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

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

/// Writes all of `bytes` to `to`.
async fn write_all(to: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        let written = when_ready(to, Interest::WRITABLE, || to.try_write(bytes)).await?;
        bytes = &bytes[written..];
    }
    Ok(())
}

/// Moves bytes `from` → `to` until end of stream, then half-closes `to`.
async fn one_way(from: &TcpStream, to: &TcpStream) -> io::Result<u64> {
    let mut buffer = vec![0u8; COPY_SIZE];
    // Made at the first bulk read and kept: an empty pipe holds no pages.
    let mut pipe: Option<Pipe> = None;
    let mut bulk = false;
    let mut total = 0u64;
    loop {
        let moved = match (&pipe, bulk) {
            (Some(pipe), true) => {
                let filled = when_ready(from, Interest::READABLE, || {
                    Ok(rustix::pipe::splice(
                        from,
                        None,
                        &pipe.write,
                        None,
                        PIPE_SIZE,
                        flags(),
                    )?)
                })
                .await?;
                drain(pipe, to, filled).await?;
                bulk = filled >= COPY_SIZE;
                filled
            }
            _ => {
                let read =
                    when_ready(from, Interest::READABLE, || from.try_read(&mut buffer)).await?;
                write_all(to, &buffer[..read]).await?;
                if read == COPY_SIZE {
                    // Without a pipe (none could be made) the copy path
                    // carries everything.
                    pipe = pipe.or_else(|| Pipe::new().ok());
                    bulk = pipe.is_some();
                }
                read
            }
        };
        if moved == 0 {
            // The peer finished sending: pass the half-close on.
            let _ = rustix::net::shutdown(to, Shutdown::Write);
            return Ok(total);
        }
        total += moved as u64;
    }
}

/// Carries `a` ⇄ `b` until both directions end: copied while the traffic
/// is small, spliced once it is bulk.
pub(crate) async fn bidirectional(a: &TcpStream, b: &TcpStream) -> io::Result<(u64, u64)> {
    tokio::try_join!(one_way(a, b), one_way(b, a))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A connected loopback pair.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dialed = TcpStream::connect(listener.local_addr().unwrap());
        let (dialed, accepted) = tokio::join!(dialed, listener.accept());
        (dialed.unwrap(), accepted.unwrap().0)
    }

    /// Small writes, a bulk burst, small writes again and a half-close in
    /// one direction (so it switches copy → splice → copy), a reply in the
    /// other: every byte arrives in order and the counts match.
    #[tokio::test]
    async fn bytes_keep_their_order_across_copy_and_splice() {
        let (mut visitor, relay_side) = pair().await;
        let (target_side, mut target) = pair().await;
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
