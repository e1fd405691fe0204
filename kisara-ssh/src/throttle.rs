//! Failure throttling: too many failed logins from one source, or for one
//! user, and further attempts are refused without asking the
//! authenticator until the window has passed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Counts failed logins per source address and per user name.
#[derive(Debug)]
pub(crate) struct FailureThrottle {
    max_failures: usize,
    window: Duration,
    failures: Mutex<HashMap<Subject, Vec<Instant>>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Subject {
    Source(IpAddr),
    User(String),
}

impl FailureThrottle {
    /// Blocks a source or user after `max_failures` failures within
    /// `window`.
    pub(crate) fn new(max_failures: usize, window: Duration) -> Self {
        Self {
            max_failures,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `source` or `user` failed too often lately.
    pub(crate) fn blocked(&self, source: Option<IpAddr>, user: &str) -> bool {
        let now = Instant::now();
        let mut failures = self.lock();
        Self::subjects(source, user).into_iter().any(|subject| {
            failures.get_mut(&subject).is_some_and(|times| {
                times.retain(|t| now.duration_since(*t) < self.window);
                times.len() >= self.max_failures
            })
        })
    }

    /// Counts one failure of `source` and `user`.
    pub(crate) fn failed(&self, source: Option<IpAddr>, user: &str) {
        let now = Instant::now();
        let mut failures = self.lock();
        // Forget subjects whose failures all aged out, so a scan of many
        // user names cannot grow the table without bound.
        failures.retain(|_, times| {
            times.retain(|t| now.duration_since(*t) < self.window);
            !times.is_empty()
        });
        for subject in Self::subjects(source, user) {
            failures.entry(subject).or_default().push(now);
        }
    }

    fn subjects(source: Option<IpAddr>, user: &str) -> Vec<Subject> {
        let mut subjects = vec![Subject::User(user.to_owned())];
        subjects.extend(source.map(Subject::Source));
        subjects
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Subject, Vec<Instant>>> {
        // A panic while holding it leaves counts that are still counts.
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_or_a_user_is_blocked_after_too_many_failures() {
        let throttle = FailureThrottle::new(2, Duration::from_secs(60));
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
        throttle.failed(Some(a), "alice");
        assert!(!throttle.blocked(Some(a), "bob"));
        throttle.failed(Some(a), "bob");
        // The source failed twice: every user from it is blocked.
        assert!(throttle.blocked(Some(a), "carol"));
        // Alice failed once, from elsewhere she may try.
        assert!(!throttle.blocked(Some(b), "alice"));
        throttle.failed(Some(b), "alice");
        // Now alice failed twice, from any source.
        assert!(throttle.blocked(Some("127.0.0.3".parse().unwrap()), "alice"));
    }

    #[test]
    fn failures_age_out_of_the_window() {
        let throttle = FailureThrottle::new(1, Duration::from_millis(50));
        throttle.failed(None, "alice");
        assert!(throttle.blocked(None, "alice"));
        std::thread::sleep(Duration::from_millis(80));
        assert!(!throttle.blocked(None, "alice"));
    }
}
