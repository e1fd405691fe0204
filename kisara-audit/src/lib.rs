#![doc = include_str!("../README.md")]

mod error;
pub mod line_gate;
pub mod policy;

pub use error::AuditError;
pub use line_gate::{CompletedLine, GateAction, LineGate, UncertainMode, judge_line};
pub use policy::{Explanation, RulePolicy};
