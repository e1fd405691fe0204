#![doc = include_str!("../README.md")]

pub mod cast;
mod error;
pub mod line_gate;
pub mod policy;
pub mod sink;

pub use cast::{CastReader, CastReaderOptions, CastStore, CastStoreOptions};
pub use error::AuditError;
pub use line_gate::{
    CompletedLine, GateAction, LineGate, LineGatePolicy, UncertainMode, judge_line,
};
pub use policy::{Explanation, RulePolicy};
pub use sink::{
    Durability, JsonlConfig, JsonlReader, JsonlSink, SqliteConfig, SqliteSink, StoredEvent, Tee,
    TeePolicy, WebhookConfig, WebhookSink,
};
