//! Per-exposure limits: a token bucket per direction and the byte copy that
//! honours it.

use kisara_core::sync::lock;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// Copy buffer for unlimited connections, each direction.
pub(crate) const COPY_BUFFER: usize = 64 * 1024;

/// A token bucket: `rate` bytes per second with a small burst. Takers may
/// go into debt and then sleep it off, so a large read never waits forever.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// A bucket of `rate` bytes per second, starting full. The burst is a
    /// tenth of a second of traffic, at least 1 KiB and at most 256 KiB.
    pub(crate) fn new(rate: u64) -> Self {
        let rate = rate.max(1) as f64;
        let burst = (rate / 10.0).clamp(1024.0, 256.0 * 1024.0);
        Self {
            rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// The largest chunk worth reading at once under this bucket.
    pub(crate) fn chunk(&self) -> usize {
        self.burst as usize
    }

    /// Takes `n` bytes' worth, returning how long to wait first.
    fn debit(&self, n: usize) -> Duration {
        let mut state = lock(&self.state);
        let now = Instant::now();
        let (tokens, at) = *state;
        let tokens =
            (tokens + now.duration_since(at).as_secs_f64() * self.rate).min(self.burst) - n as f64;
        *state = (tokens, now);
        if tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-tokens / self.rate)
        }
    }

    /// Waits until `n` bytes may pass.
    pub(crate) async fn take(&self, n: usize) {
        let wait = self.debit(n);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Takes `n` bytes' worth if they are available now (for datagrams,
    /// which are dropped rather than queued). A full bucket lets `n` pass
    /// even beyond the burst, on credit: a datagram larger than the burst
    /// (a 1400-byte one under a slow limit) is paced, not dropped forever.
    pub(crate) fn try_take(&self, n: usize) -> bool {
        let mut state = lock(&self.state);
        let now = Instant::now();
        let (tokens, at) = *state;
        let tokens = (tokens + now.duration_since(at).as_secs_f64() * self.rate).min(self.burst);
        if tokens >= (n as f64).min(self.burst) {
            *state = (tokens - n as f64, now);
            true
        } else {
            *state = (tokens, now);
            false
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bucket_paces_to_its_rate() {
        let bucket = TokenBucket::new(10_000);
        let start = Instant::now();
        let mut sent = 0;
        while sent < 50_000 {
            bucket.take(1000).await;
            sent += 1000;
        }
        let took = start.elapsed().as_secs_f64();
        // 50 kB at 10 kB/s, less the 1 KiB burst.
        assert!((4.8..=5.1).contains(&took), "took {took} s");
    }

    #[test]
    fn try_take_refuses_without_tokens() {
        let bucket = TokenBucket::new(10_000);
        assert!(bucket.try_take(1024));
        assert!(!bucket.try_take(1024));
    }

    /// Datagrams larger than the burst (1 KiB at 8 kB/s) pass at the rate.
    #[tokio::test(start_paused = true)]
    async fn datagrams_beyond_the_burst_pass_at_the_rate() {
        let bucket = TokenBucket::new(8_000);
        assert!(bucket.try_take(1400), "a full bucket refused");
        assert!(!bucket.try_take(1400));
        // 376 bytes in debt, full again 1400 bytes' worth later: 0.175 s,
        // one datagram per 0.175 s being 8 kB/s.
        tokio::time::advance(Duration::from_millis(170)).await;
        assert!(!bucket.try_take(1400), "passed before the bucket refilled");
        tokio::time::advance(Duration::from_millis(10)).await;
        assert!(bucket.try_take(1400), "the bucket did not refill");
    }
}
