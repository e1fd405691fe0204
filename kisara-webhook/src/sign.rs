//! Optional HMAC-SHA256 signatures of request bodies, for platforms that
//! cannot do mTLS: `X-Kisara-Signature: t=<unix seconds>,v1=<hex>` where the
//! MAC covers `<t>.<body>`, so a captured request cannot be replayed outside
//! the window nor with another body.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use kisara_core::Secret;
use sha2::Sha256;

use crate::WebhookError;

/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "x-kisara-signature";

/// Signs and verifies request bodies with a shared secret.
#[derive(Debug, Clone)]
pub struct Signer {
    secret: Secret,
    window: Duration,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Signer {
    /// Signs with `secret`; verification accepts timestamps up to `window`
    /// away from now (in either direction, for clock skew).
    pub fn new(secret: Secret, window: Duration) -> Result<Self, WebhookError> {
        if secret.len() < 16 {
            return Err(WebhookError::Config {
                what: "signing secret",
                message: format!(
                    "{} bytes is too short to resist guessing; use at least 16",
                    secret.len()
                ),
            });
        }
        Ok(Self { secret, window })
    }

    fn mac(&self, timestamp: u64, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.secret.expose().as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The header value for `body`, signed now.
    pub fn sign(&self, body: &[u8]) -> String {
        self.sign_at(unix_now(), body)
    }

    fn sign_at(&self, timestamp: u64, body: &[u8]) -> String {
        let tag = self.mac(timestamp, body).finalize().into_bytes();
        let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        format!("t={timestamp},v1={hex}")
    }

    /// Checks `header` against `body`: well formed, inside the window, and
    /// the MAC matches (in constant time).
    pub fn verify(&self, header: Option<&str>, body: &[u8]) -> Result<(), WebhookError> {
        let header = header
            .ok_or_else(|| WebhookError::Signature(format!("no {SIGNATURE_HEADER} header")))?;
        let mut timestamp = None;
        let mut tag = None;
        for part in header.split(',') {
            match part.trim().split_once('=') {
                Some(("t", t)) => timestamp = t.parse::<u64>().ok(),
                Some(("v1", v)) => tag = decode_hex(v),
                _ => {}
            }
        }
        let (Some(timestamp), Some(tag)) = (timestamp, tag) else {
            return Err(WebhookError::Signature(format!(
                "{SIGNATURE_HEADER} {header:?} is not `t=<unix seconds>,v1=<hex>`"
            )));
        };
        let skew = unix_now().abs_diff(timestamp);
        if skew > self.window.as_secs() {
            return Err(WebhookError::Signature(format!(
                "timestamp {timestamp} is {skew} s from now, outside the {:?} window",
                self.window
            )));
        }
        self.mac(timestamp, body).verify_slice(&tag).map_err(|_| {
            WebhookError::Signature("the signature does not match the body".to_owned())
        })
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        Signer::new(Secret::new("0123456789abcdef"), Duration::from_secs(300)).unwrap()
    }

    #[test]
    fn a_signed_body_verifies_and_a_changed_one_does_not() {
        let s = signer();
        let header = s.sign(b"{}");
        s.verify(Some(&header), b"{}").unwrap();
        let err = s.verify(Some(&header), b"{ }").unwrap_err().to_string();
        assert!(err.contains("does not match"), "{err}");
        let err = s.verify(None, b"{}").unwrap_err().to_string();
        assert!(err.contains("no x-kisara-signature"), "{err}");
        let err = s.verify(Some("v1=zz"), b"{}").unwrap_err().to_string();
        assert!(err.contains("is not `t="), "{err}");
    }

    #[test]
    fn stale_signatures_are_replays() {
        let s = signer();
        let header = s.sign_at(unix_now() - 301, b"{}");
        let err = s.verify(Some(&header), b"{}").unwrap_err().to_string();
        assert!(err.contains("outside the 300s window"), "{err}");
    }

    #[test]
    fn short_secrets_are_refused() {
        let err = Signer::new(Secret::new("short"), Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains("5 bytes"), "{err}");
    }
}
