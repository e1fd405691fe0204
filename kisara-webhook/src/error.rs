//! The one error type of `kisara-webhook`.

use std::time::Duration;

/// Everything that can go wrong talking to or serving a webhook.
///
/// Callers of the [`Authenticator`](kisara_core::Authenticator) and
/// [`ConfigProvider`](kisara_core::ConfigProvider) backends see these
/// converted into [`kisara_core::Error`] kinds; the variants say which.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A body could not be understood: the message names the field.
    #[error("cannot decode the {message}: {path}: {reason}")]
    Decode {
        /// Which message, e.g. `"/password response"`.
        message: String,
        /// The JSON path of the field that failed (`.` for the whole body).
        path: String,
        /// What was wrong with it.
        reason: String,
    },
    /// A URL, certificate, key or option is wrong.
    #[error("invalid {what}: {message}")]
    Config {
        /// Which setting, e.g. `"webhook url"`.
        what: &'static str,
        /// What is wrong, naming the bad value.
        message: String,
    },
    /// The webhook could not be reached (connect or TLS failure, reset).
    #[error("cannot reach the webhook at {url}: {reason}")]
    Connect {
        /// The URL called.
        url: String,
        /// Why, as the transport reported it.
        reason: String,
    },
    /// The TLS handshake failed (untrusted or expired certificate, wrong
    /// name, no common version); a retry cannot help.
    #[error("TLS with the webhook at {url} failed: {reason}")]
    Tls {
        /// The URL called.
        url: String,
        /// What rustls reported.
        reason: String,
    },
    /// One call took longer than the per-call timeout.
    #[error("the webhook at {url} did not answer within {after:?}")]
    Timeout {
        /// The URL called.
        url: String,
        /// The per-call timeout.
        after: Duration,
    },
    /// The webhook answered with a status other than 200.
    #[error("the webhook at {url} answered HTTP {status}")]
    Status {
        /// The URL called.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The answer broke the protocol (content type, size, truncated body).
    #[error("bad answer from the webhook at {url}: {reason}")]
    Protocol {
        /// The URL called.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// The circuit breaker is open after repeated failures.
    #[error(
        "the webhook at {url} failed {failures} call(s) in a row; not calling it for {retry_in:?}"
    )]
    CircuitOpen {
        /// The URL.
        url: String,
        /// Consecutive failed calls that opened the breaker.
        failures: u32,
        /// How long until a probe call is let through.
        retry_in: Duration,
    },
    /// The overall deadline passed before any attempt succeeded.
    #[error(
        "the webhook at {url} gave no usable answer within {after:?} ({attempts} attempt(s)); last error: {last}"
    )]
    Deadline {
        /// The URL.
        url: String,
        /// The overall deadline.
        after: Duration,
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        last: Box<WebhookError>,
    },
    /// A signed request failed verification (bad, missing or stale signature).
    #[error("request signature rejected: {0}")]
    Signature(String),
    /// A file the configuration names was refused (a TLS certificate or
    /// key), as `kisara_core` reports it: the message names the file.
    #[error(transparent)]
    Core(#[from] kisara_core::Error),
}

impl WebhookError {
    /// Whether another attempt may succeed: connect failures, timeouts and
    /// 5xx answers. A denial is an answer, never an error, so it never
    /// retries.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::Timeout { .. } => true,
            Self::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

impl From<WebhookError> for kisara_core::Error {
    fn from(err: WebhookError) -> Self {
        match err {
            WebhookError::Config { what, message } => Self::invalid(what, message),
            WebhookError::Core(err) => err,
            // The webhook cannot decide: never a silent accept.
            other => Self::Unavailable {
                message: other.to_string(),
                source: Some(Box::new(other)),
            },
        }
    }
}
