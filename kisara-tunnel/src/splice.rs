//! Carrying a visitor's bytes between two streams: a buffered copy, paced
//! by a [`TokenBucket`] per direction when the exposure is limited,
//! zero-copy between plain TCP sockets on Linux, and framed over reused
//! data connections (both in `zero_copy`).

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::bucket::TokenBucket;

/// Copy buffer for unlimited connections, each direction.
pub(crate) const COPY_BUFFER: usize = 64 * 1024;

/// Copies `from` to `to` until end of stream, paced by `bucket`, then shuts
/// `to` down for writing.
async fn copy_paced<R, W>(from: &mut R, to: &mut W, bucket: &TokenBucket) -> std::io::Result<u64>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut buffer = vec![0u8; bucket.chunk()];
    let mut total = 0u64;
    loop {
        let n = from.read(&mut buffer).await?;
        if n == 0 {
            to.shutdown().await?;
            return Ok(total);
        }
        bucket.take(n).await;
        to.write_all(&buffer[..n]).await?;
        total += n as u64;
    }
}

/// Splices `a` ⇄ `b` until both directions end. With `buckets` (`a`→`b`,
/// `b`→`a`) each direction is paced; without, a plain buffered copy.
pub(crate) async fn splice<A, B>(
    a: &mut A,
    b: &mut B,
    buckets: Option<&(TokenBucket, TokenBucket)>,
) -> std::io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    match buckets {
        None => tokio::io::copy_bidirectional_with_sizes(a, b, COPY_BUFFER, COPY_BUFFER).await,
        Some((up, down)) => {
            let (mut a_read, mut a_write) = tokio::io::split(a);
            let (mut b_read, mut b_write) = tokio::io::split(b);
            tokio::try_join!(
                copy_paced(&mut a_read, &mut b_write, up),
                copy_paced(&mut b_read, &mut a_write, down),
            )
        }
    }
}

/// Splices two plain TCP sockets without limits: zero-copy through pipes
/// for bulk traffic on Linux, a buffered copy elsewhere.
pub(crate) async fn splice_tcp(
    a: &mut tokio::net::TcpStream,
    b: &mut tokio::net::TcpStream,
) -> std::io::Result<(u64, u64)> {
    #[cfg(target_os = "linux")]
    return crate::zero_copy::bidirectional(a, b).await;
    #[cfg(not(target_os = "linux"))]
    splice(a, b, None).await
}

/// Whether this build carries TCP visitors over reused data connections
/// (framed, see [`splice_framed`]); elsewhere each visitor takes a fresh one.
pub(crate) const FRAMING: bool = cfg!(target_os = "linux");

/// Carries one visitor `local` ⇄ `data` in frames, paced by `buckets`
/// (`local` → `data`, `data` → `local`) when given, so that `data` may
/// carry the next visitor once this returns Ok. Without `local` (its
/// target could not be reached) the visitor is turned away with a reset
/// and `data` stays usable. Only where [`FRAMING`] holds.
pub(crate) async fn splice_framed(
    local: Option<&tokio::net::TcpStream>,
    data: &mut crate::transport::Conn,
    buckets: Option<&(TokenBucket, TokenBucket)>,
) -> std::io::Result<(u64, u64)> {
    #[cfg(target_os = "linux")]
    return crate::zero_copy::framed(local, data, buckets).await;
    #[cfg(not(target_os = "linux"))]
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        format!(
            "framed data connections need Linux; {local:?} ⇄ {data:?} cannot be carried{}",
            if buckets.is_some() { " (paced)" } else { "" }
        ),
    ))
}
