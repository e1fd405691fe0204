//! [`TerminalPolicy`]: judges what a user types into a terminal, line by
//! line, before the shell runs it.
//!
//! A terminal carries keystrokes, not commands. A policy on terminals
//! therefore needs two parts: an [`InputGate`] per session that rebuilds
//! the typed line from the raw bytes and holds back its Enter, and a judge
//! that turns a completed line into a [`PolicyDecision`] and the audit
//! event to record. The session engine drives both; Kisara's rule-based
//! implementation lives in `kisara-audit`.

use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::audit::{AuditEventKind, CommandContext, PolicyDecision};
use crate::Result;

/// What to do with a line the gate could not follow exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UncertainMode {
    /// Judge and audit the line as typed, marked `uncertain`.
    #[default]
    Audit,
    /// Deny it without asking the policy.
    Deny,
}

/// A line whose Enter the gate holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletedLine {
    /// The line as the gate rebuilt it.
    pub line: String,
    /// Why the line may differ from the shell's (the first cause seen:
    /// `cursor movement`, `history recall`, `tab completion`, ...).
    pub uncertain: Option<&'static str>,
    /// The gate's mode for uncertain lines.
    pub mode: UncertainMode,
}

/// What the caller of an [`InputGate`] must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateAction {
    /// Send these bytes to the container now.
    Forward(Vec<u8>),
    /// A line is complete and its Enter held: judge it, then call
    /// [`InputGate::allow`] or [`InputGate::deny`]. Input fed meanwhile is
    /// kept until then.
    Decide(CompletedLine),
    /// Write these bytes to the user's terminal (a denial's message).
    Show(Vec<u8>),
}

/// Rebuilds typed lines from one terminal's input and holds each line's
/// Enter until it is judged.
///
/// # Contract
///
/// - Pure and synchronous: the same input gives the same actions.
/// - Bytes before a line's end come back as [`GateAction::Forward`] at once
///   (the shell echoes them); the end of a line comes back as one
///   [`GateAction::Decide`] and is not forwarded.
/// - While a decision is pending, [`feed`](Self::feed) forwards nothing: it
///   keeps the input for after the decision.
/// - [`allow`](Self::allow) forwards the held Enter, then processes what
///   was kept; [`deny`](Self::deny) forwards no Enter, clears the line in
///   the shell, shows a message naming the reason, then processes what was
///   kept. Both return nothing when no decision is pending.
pub trait InputGate: Send + fmt::Debug {
    /// Takes input from the user's terminal.
    fn feed(&mut self, input: &[u8]) -> Vec<GateAction>;
    /// The pending line may run.
    fn allow(&mut self) -> Vec<GateAction>;
    /// The pending line must not run, because of `reason`.
    fn deny(&mut self, reason: &str) -> Vec<GateAction>;
}

/// Gives each terminal its [`InputGate`] and judges the lines they complete.
///
/// # Contract
///
/// - [`gate`](Self::gate) gives a fresh gate at an empty line for every
///   session.
/// - [`judge`](Self::judge) is deterministic for the same context and line,
///   and returns the decision with the audit event to record
///   ([`AuditEventKind::Command`] carrying that decision); a denial's reason
///   names the rule.
/// - A line the policy cannot parse is judged, never let through unjudged.
#[async_trait]
pub trait TerminalPolicy: Send + Sync + fmt::Debug {
    /// A gate for a new terminal.
    fn gate(&self) -> Box<dyn InputGate>;

    /// Judges `line` typed in `context`.
    async fn judge(
        &self,
        context: &CommandContext,
        line: &CompletedLine,
    ) -> Result<(PolicyDecision, AuditEventKind)>;
}
