//! [`MemoryAuditSink`]: the audit sink's and log's contract reference, for
//! tests.

use async_trait::async_trait;

use crate::model::SessionId;
use crate::sync::{Mutex, lock};
use crate::{
    AuditEvent, AuditLog, AuditPage, AuditQuery, AuditSink, QueryOrder, Result, StoredEvent,
};

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
impl AuditLog for MemoryAuditSink {
    async fn query(&self, query: &AuditQuery) -> Result<AuditPage> {
        query.validate()?;
        if query.owner.is_some() {
            return Err(crate::Error::not_supported(
                "the memory audit log",
                "filtering by owner: it keeps no owners",
            ));
        }
        let events = lock(&self.events);
        // Ids are positions from 1, so a cursor is where to go on from.
        let stored = events.iter().enumerate().map(|(i, event)| StoredEvent {
            id: i as u64 + 1,
            event: event.clone(),
        });
        let matching = |stored: &StoredEvent| query.matches(&stored.event);
        let page: Vec<StoredEvent> = match query.order {
            QueryOrder::OldestFirst => stored
                .filter(|s| query.cursor.is_none_or(|cursor| s.id > cursor))
                .filter(matching)
                .take(query.limit)
                .collect(),
            QueryOrder::NewestFirst => stored
                .rev()
                .filter(|s| query.cursor.is_none_or(|cursor| s.id < cursor))
                .filter(matching)
                .take(query.limit)
                .collect(),
        };
        let next = (page.len() == query.limit)
            .then(|| page.last().map(|s| s.id))
            .flatten();
        Ok(AuditPage { events: page, next })
    }
}

#[async_trait]
impl AuditSink for MemoryAuditSink {
    async fn record(&self, event: &AuditEvent) -> Result<()> {
        lock(&self.events).push(event.clone());
        Ok(())
    }
}
