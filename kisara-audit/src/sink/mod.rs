//! Durable [`AuditSink`](kisara_core::AuditSink)s: JSON lines files
//! ([`JsonlSink`], read back and followed by [`JsonlReader`]), an SQLite index
//! with a query API ([`SqliteSink`]), an HTTP webhook behind a durable outbox
//! ([`WebhookSink`]) and a fan-out ([`Tee`]).
//!
//! Every stored event gets an `id`: a sequence number, ascending in the order
//! the sink wrote the events, never reused by the same store, so a consumer
//! downstream can dedupe and resume.

use std::time::Duration;

use kisara_core::Error;

mod committer;
mod jsonl;
mod reader;
mod sqlite;
mod tee;
mod webhook;

pub use jsonl::{Clock, JsonlConfig, JsonlSink};
pub use kisara_core::{AuditPage, AuditQuery, QueryOrder, StoredEvent};
pub use reader::{Follow, JsonlReader, LineProblem, ReadReport};
pub use sqlite::{OwnerLookup, SqliteConfig, SqliteSink};
pub use tee::{Tee, TeePolicy};
pub use webhook::{WebhookConfig, WebhookSink};

/// When `record` returns, how safe the event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Every event is written and synced to disk (`fsync`) on its own before
    /// its `record` returns.
    Fsync,
    /// Events arriving within `every` of the first of a group are written
    /// together and synced once; each `record` returns after its group is
    /// synced. `Duration::ZERO` groups whatever queued up while the previous
    /// group was syncing.
    GroupCommit {
        /// How long a group stays open after its first event.
        every: Duration,
    },
    /// Written to the operating system, never synced: survives the process
    /// being killed, not a power loss. For tests and throwaway setups.
    None,
}

impl Durability {
    /// Whether a commit must reach the disk before it is acknowledged.
    fn syncs(self) -> bool {
        !matches!(self, Self::None)
    }
}

/// A failure of a sink's storage, naming what was being done to which file.
fn storage_error(
    backend: &'static str,
    doing: impl std::fmt::Display,
    source: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    Error::Backend {
        backend,
        message: format!("{doing}: {source}"),
        source: Some(Box::new(source)),
    }
}
