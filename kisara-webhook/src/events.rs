//! Outgoing event webhooks: a platform learns of what happens in the
//! cluster (containers launched, stopped, died, OOM-killed or expired,
//! nodes connected or lost) without polling.
//!
//! [`EventSender::send`] never blocks and never fails its caller (a cluster
//! hook): it queues the event. Delivery goes through a [`WebhookClient`], so
//! it is signed when the client is, retried with backoff, and guarded by the
//! circuit breaker. Events with the same ordering key (the container) are
//! delivered one after another in the order they were sent; events of
//! different keys do not wait for each other. The queue is bounded: when it
//! is full, new events are dropped, counted in
//! `kisara_webhook_events_dropped_total` and logged, and an event that still
//! fails after [`EventOptions::attempts`] deliveries is dropped the same
//! way, so a dead receiver costs memory only up to the bound.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kisara_core::sync::lock;
use serde::Serialize;

use crate::WebhookClient;

/// How events are queued and retried.
#[derive(Debug, Clone)]
pub struct EventOptions {
    /// Most events waiting, over all keys (default 10,000).
    pub queue: usize,
    /// Deliveries of one event before it is dropped (default 10); each is a
    /// whole [`WebhookClient::post`] with its own retries.
    pub attempts: u32,
    /// The wait between two deliveries of one event, doubled each time up
    /// to a minute (default 1 s).
    pub backoff: Duration,
}

impl Default for EventOptions {
    fn default() -> Self {
        Self {
            queue: 10_000,
            attempts: 10,
            backoff: Duration::from_secs(1),
        }
    }
}

/// Events waiting, per ordering key.
#[derive(Debug, Default)]
struct Lanes {
    waiting: HashMap<String, VecDeque<Bytes>>,
    queued: usize,
}

/// Queues events and delivers them to one webhook; see the [module
/// docs](self). Cheap to clone; clones share the queue.
#[derive(Debug, Clone)]
pub struct EventSender {
    client: Arc<WebhookClient>,
    options: EventOptions,
    lanes: Arc<Mutex<Lanes>>,
}

/// Why an event was dropped, as the metric labels it.
fn dropped(reason: &'static str) {
    metrics::counter!("kisara_webhook_events_dropped_total", "reason" => reason).increment(1);
}

impl EventSender {
    /// Delivers to `client`'s URL.
    pub fn new(client: WebhookClient, options: EventOptions) -> Self {
        Self {
            client: Arc::new(client),
            options,
            lanes: Arc::default(),
        }
    }

    /// Queues `event` behind the earlier ones of `key` (`None`: a lane of
    /// its own). Returns whether it was queued: `false` when the queue is
    /// full or no Tokio runtime runs (both counted and logged).
    pub fn send(&self, key: Option<&str>, event: &impl Serialize) -> bool {
        let body = match serde_json::to_vec(event) {
            Ok(body) => Bytes::from(body),
            Err(error) => {
                tracing::warn!(%error, "an event that cannot be encoded is dropped");
                dropped("encoding");
                return false;
            }
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no runtime to deliver events on: event dropped");
            dropped("no_runtime");
            return false;
        };
        // Keyless events each get a lane, so they never wait for each other.
        let key = key.map_or_else(
            || format!("\u{0}{:016x}", kisara_core::random::random_u64()),
            str::to_owned,
        );
        let start_lane = {
            let mut lanes = lock(&self.lanes);
            if lanes.queued >= self.options.queue {
                drop(lanes);
                tracing::warn!(
                    queue = self.options.queue,
                    "event queue full: event dropped"
                );
                dropped("queue_full");
                return false;
            }
            lanes.queued += 1;
            let lane = lanes.waiting.entry(key.clone()).or_default();
            lane.push_back(body);
            // The lane's worker exists while the lane is non-empty.
            lane.len() == 1
        };
        if start_lane {
            runtime.spawn(self.clone().deliver_lane(key));
        }
        true
    }

    /// How many events wait (or are being delivered).
    pub fn queued(&self) -> usize {
        lock(&self.lanes).queued
    }

    /// Delivers `key`'s events in order until its lane is empty.
    async fn deliver_lane(self, key: String) {
        loop {
            let Some(body) = lock(&self.lanes)
                .waiting
                .get(&key)
                .and_then(|lane| lane.front().cloned())
            else {
                return;
            };
            self.deliver(body).await;
            let mut lanes = lock(&self.lanes);
            lanes.queued -= 1;
            let lane = lanes.waiting.get_mut(&key).expect("a worker's lane stays");
            lane.pop_front();
            if lane.is_empty() {
                lanes.waiting.remove(&key);
                return;
            }
        }
    }

    /// One event, tried up to [`EventOptions::attempts`] times.
    async fn deliver(&self, body: Bytes) {
        let mut backoff = self.options.backoff;
        for attempt in 1..=self.options.attempts {
            match self.client.post("event", "", body.clone()).await {
                Ok(_) => {
                    metrics::counter!("kisara_webhook_events_delivered_total").increment(1);
                    return;
                }
                Err(error) if attempt < self.options.attempts => {
                    tracing::debug!(%error, attempt, "event not delivered yet");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
                Err(error) => {
                    tracing::warn!(%error, attempts = attempt, "event dropped after its last delivery attempt");
                    dropped("undeliverable");
                }
            }
        }
    }
}
