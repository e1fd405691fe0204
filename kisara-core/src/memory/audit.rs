//! [`MemoryAuditSink`]: the audit contract's reference, for tests.

use async_trait::async_trait;

use crate::model::SessionId;
use crate::sync::{Mutex, lock};
use crate::{AuditEvent, AuditSink, Result};

/// An [`AuditSink`] that keeps events in memory, for tests and as the
/// reference of the contract.
#[derive(Debug, Default)]
pub struct MemoryAuditSink {
    events: Mutex<Vec<AuditEvent>>,
}

impl MemoryAuditSink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every event recorded, in order.
    pub fn events(&self) -> Vec<AuditEvent> {
        lock(&self.events).clone()
    }

    /// The events of one session, in order.
    pub fn session(&self, session: &SessionId) -> Vec<AuditEvent> {
        lock(&self.events)
            .iter()
            .filter(|event| &event.session == session)
            .cloned()
            .collect()
    }
}

#[async_trait]
impl AuditSink for MemoryAuditSink {
    async fn record(&self, event: &AuditEvent) -> Result<()> {
        lock(&self.events).push(event.clone());
        Ok(())
    }
}
