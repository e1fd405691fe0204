//! Request ids, so one operation can be followed through the logs: the HTTP
//! API gives every request one (the caller's `x-request-id` when it is a
//! sane token, else a fresh one), puts it on the request's span and in the
//! response header, and the agent link carries it to the agent, whose span
//! for that request names it too.

use std::fmt;
use std::future::Future;

/// The HTTP header that carries a request id, both ways.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Longest id taken from a caller.
const MAX_LEN: usize = 64;

tokio::task_local! {
    static CURRENT: RequestId;
}

/// One request's id: 1 to 64 characters of `[A-Za-z0-9._:-]`, so it is
/// safe in a header and a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
    /// A fresh id: 16 hex digits.
    pub fn generate() -> Self {
        Self(format!("{:016x}", kisara_core::random::random_u64()))
    }

    /// `text` as an id, or `None` when it is empty, too long or has a
    /// character that does not belong in a header or log line.
    pub fn parse(text: &str) -> Option<Self> {
        let sane = (1..=MAX_LEN).contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        sane.then(|| Self(text.to_owned()))
    }

    /// The id of the request the current task works for, if any.
    pub fn current() -> Option<Self> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// Runs `work` as part of this request: [`current`](Self::current)
    /// returns this id inside it.
    pub async fn scope<F: Future>(self, work: F) -> F::Output {
        CURRENT.scope(self, work).await
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sane_tokens_are_taken_from_callers() {
        for good in ["a", "req-42", "2f1c.9:x_y", &"x".repeat(64)] {
            assert_eq!(RequestId::parse(good).unwrap().as_str(), good);
        }
        for bad in ["", "a b", "line\nbreak", "ünï", "a/b", &"x".repeat(65)] {
            assert_eq!(RequestId::parse(bad), None, "{bad:?}");
        }
        let fresh = RequestId::generate();
        assert_eq!(fresh.as_str().len(), 16);
        assert_ne!(fresh, RequestId::generate());
    }

    #[tokio::test]
    async fn the_current_id_is_the_scope_s() {
        assert_eq!(RequestId::current(), None);
        let id = RequestId::parse("req-1").unwrap();
        let seen = id.clone().scope(async { RequestId::current() }).await;
        assert_eq!(seen, Some(id));
        assert_eq!(RequestId::current(), None);
    }
}
