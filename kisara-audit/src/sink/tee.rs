//! [`Tee`]: one sink fanning out to several.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use kisara_core::{AuditEvent, AuditSink, Error, Result};

/// What a [`Tee`] does when one of its sinks fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TeePolicy {
    /// The failure is the `record`'s error: the caller ends the session.
    Required,
    /// The failure is logged (tracing `warn`) and counted, and the event
    /// counts as kept when the required sinks kept it.
    BestEffort,
}

struct Branch {
    sink: Arc<dyn AuditSink>,
    policy: TeePolicy,
    failures: AtomicU64,
}

/// An [`AuditSink`] that records every event to each of its sinks at once.
///
/// # Contract
///
/// - `record` returns after every sink answered; it fails when a
///   [`TeePolicy::Required`] sink failed, naming that sink, even if others
///   kept the event.
/// - Each sink sees the events in the order they were recorded.
/// - A [`TeePolicy::BestEffort`] sink's failures never fail `record`; they
///   are logged and counted in [`Tee::best_effort_failures`].
/// - A tee has no state of its own to flush: shut down its sinks.
#[derive(Default)]
pub struct Tee {
    branches: Vec<Branch>,
}

impl fmt::Debug for Tee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.branches.iter().map(|b| (&b.sink, b.policy)))
            .finish()
    }
}

impl Tee {
    /// A tee with no sinks yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `sink` with `policy`.
    #[must_use]
    pub fn with(mut self, sink: Arc<dyn AuditSink>, policy: TeePolicy) -> Self {
        self.branches.push(Branch {
            sink,
            policy,
            failures: AtomicU64::new(0),
        });
        self
    }

    /// How often each sink failed, in the order they were added (only
    /// best-effort sinks count; a required one's failure is the error).
    pub fn best_effort_failures(&self) -> Vec<u64> {
        self.branches
            .iter()
            .map(|b| b.failures.load(Ordering::Relaxed))
            .collect()
    }
}

#[async_trait]
impl AuditSink for Tee {
    async fn record(&self, event: &AuditEvent) -> Result<()> {
        if self.branches.is_empty() {
            return Err(Error::invalid(
                "audit tee",
                "it has no sinks, so no event would be kept",
            ));
        }
        let results =
            futures::future::join_all(self.branches.iter().map(|b| b.sink.record(event))).await;
        let mut required_failure = None;
        for (index, (branch, result)) in self.branches.iter().zip(results).enumerate() {
            let Err(e) = result else { continue };
            match branch.policy {
                TeePolicy::Required => {
                    required_failure.get_or_insert(Error::Backend {
                        backend: "audit-tee",
                        message: format!("required sink #{index} {:?} failed: {e}", branch.sink),
                        source: Some(Box::new(e)),
                    });
                }
                TeePolicy::BestEffort => {
                    branch.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(sink = ?branch.sink, index, error = %e, "best-effort audit sink failed");
                }
            }
        }
        required_failure.map_or(Ok(()), Err)
    }
}
