//! Zero-copy splicing of two TCP sockets through a pipe per direction
//! (`splice(2)`, Linux): the bytes stay in the kernel.

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

/// Moves bytes `from` → `to` until end of stream, then half-closes `to`.
async fn one_way(from: &TcpStream, to: &TcpStream, pipe: Pipe) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        let filled = loop {
            from.readable().await?;
            match from.try_io(Interest::READABLE, || {
                Ok(rustix::pipe::splice(
                    from,
                    None,
                    &pipe.write,
                    None,
                    PIPE_SIZE,
                    flags(),
                )?)
            }) {
                Ok(n) => break n,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(error) => return Err(error),
            }
        };
        if filled == 0 {
            // The peer finished sending: pass the half-close on.
            let _ = rustix::net::shutdown(to, Shutdown::Write);
            return Ok(total);
        }
        let mut pending = filled;
        while pending > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                Ok(rustix::pipe::splice(
                    &pipe.read,
                    None,
                    to,
                    None,
                    pending,
                    flags(),
                )?)
            }) {
                Ok(n) => {
                    pending -= n;
                    total += n as u64;
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(error),
            }
        }
    }
}

/// Splices `a` ⇄ `b` until both directions end, or `None` when no pipes
/// could be made (the caller copies instead).
pub(crate) async fn bidirectional(a: &TcpStream, b: &TcpStream) -> Option<io::Result<(u64, u64)>> {
    let (up, down) = (Pipe::new().ok()?, Pipe::new().ok()?);
    Some(tokio::try_join!(one_way(a, b, up), one_way(b, a, down)))
}
