//! [`WebhookClient`]: typed JSON calls to one webhook with a per-call
//! timeout, an overall deadline, retries with exponential backoff and jitter
//! (connect failures, timeouts and 5xx only), a circuit breaker and metrics.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kisara_core::sync::lock;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::WebhookError;
use crate::sign::Signer;
use crate::tls::ClientTls;
use crate::transport::{Endpoint, Transport};
use crate::wire::decode;

/// How a client calls its webhook.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientOptions {
    /// Longest one attempt may take, connect to last body byte (default 2 s,
    /// as ContainerSSH).
    pub timeout: Duration,
    /// Longest a call may take over all its attempts (default 10 s).
    pub deadline: Duration,
    /// The first backoff; each retry doubles it up to `max_backoff`, and a
    /// random half of it is jitter (default 100 ms).
    pub backoff: Duration,
    /// The longest backoff (default 2 s).
    pub max_backoff: Duration,
    /// Calls failed in a row that open the circuit breaker (default 5).
    pub breaker_failures: u32,
    /// How long an open breaker fails calls at once before letting one
    /// probe through (default 10 s).
    pub breaker_cooldown: Duration,
    /// The largest answer body accepted (default 1 MiB).
    pub max_response_bytes: usize,
    /// Kept-alive connections held for reuse (default 8).
    pub max_idle_connections: usize,
    /// TLS settings for `https://` URLs.
    pub tls: Option<ClientTls>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(2),
            deadline: Duration::from_secs(10),
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(10),
            max_response_bytes: 1 << 20,
            max_idle_connections: 8,
            tls: None,
        }
    }
}

impl ClientOptions {
    /// Every problem with the options at once.
    pub fn validate(&self) -> Result<(), WebhookError> {
        let mut problems = Vec::new();
        if self.timeout < Duration::from_millis(10) {
            problems.push(format!("timeout {:?} is under 10 ms", self.timeout));
        }
        if self.deadline < self.timeout {
            problems.push(format!(
                "deadline {:?} is shorter than the per-call timeout {:?}",
                self.deadline, self.timeout
            ));
        }
        if self.max_backoff < self.backoff {
            problems.push(format!(
                "max_backoff {:?} is shorter than backoff {:?}",
                self.max_backoff, self.backoff
            ));
        }
        if self.breaker_failures == 0 {
            problems.push("breaker_failures is 0; use at least 1".to_owned());
        }
        if self.max_response_bytes == 0 {
            problems.push("max_response_bytes is 0".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(WebhookError::Config {
                what: "webhook client options",
                message: problems.join("; "),
            })
        }
    }
}

#[derive(Debug, Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
    probing: bool,
}

/// A client of one webhook host: every Kisara client backend and the event
/// sender call through it.
#[derive(Debug)]
pub struct WebhookClient {
    transport: Transport,
    options: ClientOptions,
    breaker: Mutex<Breaker>,
}

impl WebhookClient {
    /// A client for the webhook at `url` (`http://` or `https://`, with the
    /// path that calls append to).
    pub fn new(url: &str, options: ClientOptions) -> Result<Self, WebhookError> {
        Self::build(url, options, None)
    }

    /// Like [`Self::new`], signing every body with `signer`.
    pub fn signed(url: &str, options: ClientOptions, signer: Signer) -> Result<Self, WebhookError> {
        Self::build(url, options, Some(signer))
    }

    fn build(
        url: &str,
        options: ClientOptions,
        signer: Option<Signer>,
    ) -> Result<Self, WebhookError> {
        options.validate()?;
        let transport = Transport::new(
            Endpoint::parse(url)?,
            options.tls.clone(),
            signer,
            options.max_response_bytes,
            options.max_idle_connections,
        )?;
        Ok(Self {
            transport,
            options,
            breaker: Mutex::new(Breaker::default()),
        })
    }

    /// The URL as configured.
    pub fn url(&self) -> &str {
        self.transport.endpoint().url()
    }

    /// `POST`s `request` to the client's URL followed by `suffix` (`""` or
    /// `"/password"`, ...) and decodes the answer leniently. `endpoint`
    /// labels the metrics.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        suffix: &str,
        request: &Req,
    ) -> Result<Resp, WebhookError> {
        let body = Bytes::from(
            serde_json::to_vec(request).map_err(|e| WebhookError::Decode {
                message: format!("{endpoint} request"),
                path: ".".to_owned(),
                reason: e.to_string(),
            })?,
        );
        let answer = self.post(endpoint, suffix, body).await?;
        decode::<Resp>(&format!("{endpoint} response"), &answer).map(|d| d.value)
    }

    /// `POST`s raw JSON `body` with retries, deadline, breaker and metrics;
    /// the answer's body on a 200.
    pub async fn post(
        &self,
        endpoint: &'static str,
        suffix: &str,
        body: Bytes,
    ) -> Result<Bytes, WebhookError> {
        let url = format!("{}{suffix}", self.url());
        let path = url_path(&url);
        let started = Instant::now();
        let result = match self.admit(&url) {
            Ok(()) => self.attempts(endpoint, &url, &path, body, started).await,
            Err(open) => Err(open),
        };
        self.settle(&result);
        let outcome = match &result {
            Ok(_) => "ok",
            Err(WebhookError::CircuitOpen { .. }) => "circuit_open",
            Err(WebhookError::Deadline { .. }) => "deadline",
            Err(_) => "error",
        };
        metrics::counter!("kisara_webhook_calls_total", "endpoint" => endpoint, "outcome" => outcome)
            .increment(1);
        metrics::histogram!("kisara_webhook_call_seconds", "endpoint" => endpoint)
            .record(started.elapsed().as_secs_f64());
        if let Err(err) = &result {
            tracing::warn!(endpoint, %err, "webhook call failed");
        }
        result
    }

    async fn attempts(
        &self,
        endpoint: &'static str,
        url: &str,
        path: &str,
        body: Bytes,
        started: Instant,
    ) -> Result<Bytes, WebhookError> {
        let deadline = started + self.options.deadline;
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let timeout = self.options.timeout.min(remaining);
            let result =
                match tokio::time::timeout(timeout, self.transport.post(url, path, body.clone()))
                    .await
                {
                    Ok(result) => result,
                    Err(_) => Err(WebhookError::Timeout {
                        url: url.to_owned(),
                        after: timeout,
                    }),
                };
            let err = match result {
                Ok(answer) => return Ok(answer),
                Err(err) if !err.is_retryable() => return Err(err),
                Err(err) => err,
            };
            let pause = self.backoff(attempt);
            if Instant::now() + pause >= deadline {
                return Err(WebhookError::Deadline {
                    url: url.to_owned(),
                    after: self.options.deadline,
                    attempts: attempt,
                    last: Box::new(err),
                });
            }
            tracing::debug!(endpoint, attempt, %err, ?pause, "webhook call failed; retrying");
            metrics::counter!("kisara_webhook_retries_total", "endpoint" => endpoint).increment(1);
            tokio::time::sleep(pause).await;
        }
    }

    /// Exponential backoff with "equal jitter": half fixed, half random, so
    /// many clients do not retry in step.
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .options
            .backoff
            .saturating_mul(1 << (attempt - 1).min(16))
            .min(self.options.max_backoff);
        let half = exp / 2;
        let jitter = half.mul_f64((random_u64() >> 11) as f64 / (1u64 << 53) as f64);
        half + jitter
    }

    /// Lets a call through unless the breaker is open; after the cooldown,
    /// exactly one probe goes through at a time.
    fn admit(&self, url: &str) -> Result<(), WebhookError> {
        let mut breaker = lock(&self.breaker);
        let Some(until) = breaker.open_until else {
            return Ok(());
        };
        let now = Instant::now();
        if now >= until && !breaker.probing {
            breaker.probing = true;
            return Ok(());
        }
        Err(WebhookError::CircuitOpen {
            url: url.to_owned(),
            failures: breaker.failures,
            retry_in: until.saturating_duration_since(now),
        })
    }

    fn settle(&self, result: &Result<Bytes, WebhookError>) {
        let mut breaker = lock(&self.breaker);
        match result {
            Ok(_) => *breaker = Breaker::default(),
            Err(WebhookError::CircuitOpen { .. }) => {}
            Err(_) => {
                breaker.failures += 1;
                breaker.probing = false;
                if breaker.failures >= self.options.breaker_failures {
                    if breaker.open_until.is_none() {
                        tracing::error!(
                            url = self.url(),
                            failures = breaker.failures,
                            "webhook circuit breaker opened"
                        );
                    }
                    breaker.open_until = Some(Instant::now() + self.options.breaker_cooldown);
                }
            }
        }
    }
}

/// The path and query of `url`, as sent on the request line.
fn url_path(url: &str) -> String {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    match after_scheme.find('/') {
        Some(i) => after_scheme[i..].to_owned(),
        None => "/".to_owned(),
    }
}

/// A random 64-bit number from the operating system.
pub(crate) fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the operating system's random source works");
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_keep_the_configured_prefix() {
        assert_eq!(url_path("http://h:1/auth/password"), "/auth/password");
        assert_eq!(url_path("http://h:1"), "/");
        assert_eq!(url_path("https://h/config?x=1"), "/config?x=1");
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let client = WebhookClient::new("http://127.0.0.1:1", ClientOptions::default()).unwrap();
        for attempt in 1..10 {
            let full = Duration::from_millis(100)
                .saturating_mul(1 << (attempt - 1))
                .min(Duration::from_secs(2));
            let pause = client.backoff(attempt);
            assert!(pause >= full / 2 && pause <= full, "{attempt}: {pause:?}");
        }
    }

    #[test]
    fn options_report_every_problem() {
        let options = ClientOptions {
            timeout: Duration::ZERO,
            breaker_failures: 0,
            ..ClientOptions::default()
        };
        let err = options.validate().unwrap_err().to_string();
        assert!(
            err.contains("timeout 0ns") && err.contains("breaker_failures"),
            "{err}"
        );
    }
}
