//! [`WebhookSink`]: batched HTTP POSTs behind a durable local outbox.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kisara_core::sync::lock;
use kisara_core::{AuditEvent, AuditSink, Error, Result};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::sqlite::{SqliteConfig, SqliteSink};
use super::{Durability, StoredEvent};
use kisara_core::{AuditQuery, QueryOrder};

/// Where and how a [`WebhookSink`] delivers.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// The receiver, `http://host:port/path`.
    pub url: String,
    /// The outbox database (an SQLite file of its own per webhook).
    pub outbox: PathBuf,
    /// How durable an event is in the outbox when `record` returns.
    pub durability: Durability,
    /// At most this many events per POST.
    pub batch_max: usize,
    /// The first retry's delay; it doubles per failed attempt.
    pub backoff_initial: Duration,
    /// The longest delay between attempts.
    pub backoff_max: Duration,
    /// How long one POST may take before it counts as failed.
    pub request_timeout: Duration,
}

impl WebhookConfig {
    /// POSTs to `url` through the outbox `outbox`, up to 100 events each,
    /// retrying after 100 ms doubling up to 30 s.
    pub fn new(url: impl Into<String>, outbox: impl Into<PathBuf>) -> Self {
        Self {
            url: url.into(),
            outbox: outbox.into(),
            durability: Durability::Fsync,
            batch_max: 100,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Counters of a webhook's delivery.
#[derive(Debug, Default)]
struct Counters {
    delivered: AtomicU64,
    failed_attempts: AtomicU64,
}

/// An [`AuditSink`] that POSTs events as JSON arrays of [`StoredEvent`]s to
/// a URL. `record` puts the event into a local SQLite outbox; a background
/// task delivers the outbox in id order and deletes what the receiver
/// acknowledged with a 2xx answer, retrying failures with exponential
/// backoff and jitter for as long as it takes.
///
/// # Contract
///
/// - `record` returns `Ok` once the event is in the outbox (as durable as
///   [`WebhookConfig::durability`] says); a receiver that is down delays
///   delivery but loses nothing, also across restarts of the process.
/// - Delivery is **at least once**, in id order: a batch whose answer was
///   lost is sent again. Each event carries its outbox `id` (ascending,
///   never reused by the outbox) so the receiver can drop repeats.
/// - [`WebhookSink::shutdown`] stops taking events, keeps delivering for up
///   to its grace period and then stops; what is left stays in the outbox
///   and is delivered by the next sink opened on it.
pub struct WebhookSink {
    url: String,
    outbox: Arc<SqliteSink>,
    wake: Arc<Notify>,
    stop: watch::Sender<bool>,
    counters: Arc<Counters>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSink")
            .field("url", &self.url)
            .field("outbox", &self.outbox.path())
            .finish_non_exhaustive()
    }
}

impl WebhookSink {
    /// Opens the outbox and starts delivering what it holds; needs a Tokio
    /// runtime.
    pub async fn open(config: WebhookConfig) -> Result<Self> {
        let uri: Uri = config.url.parse().map_err(|e| {
            Error::invalid("webhook url", format!("{:?} is not a URL: {e}", config.url))
        })?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(Error::invalid(
                "webhook url",
                format!("{:?} must be http://host[:port]/path", config.url),
            ));
        }
        if config.batch_max == 0 || config.batch_max > AuditQuery::MAX_LIMIT {
            return Err(Error::invalid(
                "webhook batch size",
                format!(
                    "{} is not within 1..={}",
                    config.batch_max,
                    AuditQuery::MAX_LIMIT
                ),
            ));
        }
        let outbox = Arc::new(
            SqliteSink::open(SqliteConfig {
                path: config.outbox.clone(),
                durability: config.durability,
                owner_of: None,
            })
            .await?,
        );
        let wake = Arc::new(Notify::new());
        let (stop, stopped) = watch::channel(false);
        let counters = Arc::new(Counters::default());
        let delivery = Delivery {
            client: Client::builder(TokioExecutor::new()).build_http(),
            uri,
            config: config.clone(),
            outbox: outbox.clone(),
            wake: wake.clone(),
            counters: counters.clone(),
        };
        let task = tokio::spawn(delivery.run(stopped));
        Ok(Self {
            url: config.url,
            outbox,
            wake,
            stop,
            counters,
            task: Mutex::new(Some(task)),
        })
    }

    /// How many events wait in the outbox.
    pub async fn undelivered(&self) -> Result<u64> {
        self.outbox.count(&AuditQuery::default()).await
    }

    /// How many events the receiver acknowledged since the sink opened.
    pub fn delivered(&self) -> u64 {
        self.counters.delivered.load(Ordering::Relaxed)
    }

    /// How many POSTs failed (and were retried) since the sink opened.
    pub fn failed_attempts(&self) -> u64 {
        self.counters.failed_attempts.load(Ordering::Relaxed)
    }

    /// Stops taking events, delivers for up to `grace`, then stops; see the
    /// contract.
    pub async fn shutdown(&self, grace: Duration) {
        self.outbox.shutdown().await;
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline
            && self.undelivered().await.is_ok_and(|n| n > 0)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self.stop.send(true);
        let task = lock(&self.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl Drop for WebhookSink {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

#[async_trait]
impl AuditSink for WebhookSink {
    async fn record(&self, event: &AuditEvent) -> Result<()> {
        self.outbox.record(event).await?;
        self.wake.notify_one();
        Ok(())
    }
}

/// The background task's state.
struct Delivery {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
    config: WebhookConfig,
    outbox: Arc<SqliteSink>,
    wake: Arc<Notify>,
    counters: Arc<Counters>,
}

impl Delivery {
    async fn run(self, mut stopped: watch::Receiver<bool>) {
        let batch = AuditQuery {
            order: QueryOrder::OldestFirst,
            limit: self.config.batch_max,
            ..AuditQuery::default()
        };
        let mut attempt = 0u32;
        while !*stopped.borrow() {
            let events = match self.outbox.query(&batch).await {
                Ok(page) => page.events,
                Err(e) => {
                    tracing::warn!(url = %self.uri, error = %e, "cannot read the webhook outbox");
                    Vec::new()
                }
            };
            let Some(last) = events.last().map(|e| e.id) else {
                tokio::select! {
                    () = self.wake.notified() => {}
                    // The poll also picks up what another process left.
                    () = tokio::time::sleep(self.config.backoff_max) => {}
                    _ = stopped.changed() => return,
                }
                continue;
            };
            let failure = match self.post(&events).await {
                Ok(()) => match self.outbox.delete_through(last).await {
                    Ok(()) => {
                        attempt = 0;
                        self.counters
                            .delivered
                            .fetch_add(events.len() as u64, Ordering::Relaxed);
                        continue;
                    }
                    // Delivered but still in the outbox: sent again later,
                    // which the ids make harmless.
                    Err(e) => e.to_string(),
                },
                Err(why) => {
                    self.counters
                        .failed_attempts
                        .fetch_add(1, Ordering::Relaxed);
                    why
                }
            };
            attempt = attempt.saturating_add(1);
            let delay = backoff(
                attempt,
                self.config.backoff_initial,
                self.config.backoff_max,
            );
            tracing::warn!(url = %self.uri, attempt, ?delay, first_id = events[0].id, error = %failure, "webhook delivery failed; retrying");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = stopped.changed() => return,
            }
        }
    }

    /// POSTs one batch; `Err` says why it did not count as delivered.
    async fn post(&self, events: &[StoredEvent]) -> Result<(), String> {
        let body = serde_json::to_vec(events).map_err(|e| format!("encoding the batch: {e}"))?;
        let request = hyper::Request::post(self.uri.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("building the request: {e}"))?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                let cause = std::error::Error::source(&e).map(ToString::to_string);
                format!("{e}: {}", cause.unwrap_or_default())
            })?;
            let status = response.status();
            // Read the answer to the end so the connection can be reused.
            let _ = response.into_body().collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("the receiver answered {status}"))
            }
        };
        tokio::time::timeout(self.config.request_timeout, exchange)
            .await
            .map_err(|_| format!("no answer within {:?}", self.config.request_timeout))?
    }
}

/// The delay before retry `attempt` (1-based): `initial` doubled per
/// attempt, capped at `max`, then a random half of it taken off so that
/// many senders do not retry in step.
fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let doubled = initial.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let capped = doubled.min(max);
    let jitter = kisara_core::random::random_u64() % 1000;
    capped.mul_f64(0.5 + jitter as f64 / 2000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let initial = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for (attempt, full) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ] {
            let delay = backoff(attempt, initial, max);
            let full = Duration::from_millis(full);
            assert!(
                delay >= full / 2 && delay <= full,
                "attempt {attempt}: {delay:?}"
            );
        }
    }
}
