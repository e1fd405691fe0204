//! The token bucket behind per-exposure bandwidth limits: one per
//! direction of an exposure, shared by its visitors.

use kisara_core::sync::lock;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

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
