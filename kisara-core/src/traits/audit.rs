//! [`AuditSink`] (what happened) and [`CommandPolicy`] (what may happen).

use std::fmt;
use std::net::SocketAddr;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::auth::Identity;
use crate::Result;
use crate::model::{ContainerId, SessionId, Timestamp, TtySize};

/// How a session reached the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionKind {
    /// A one-shot exec through the API.
    Exec,
    /// The web terminal.
    Terminal,
    /// SSH.
    Ssh,
}

/// A policy's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum PolicyDecision {
    /// The command may run.
    Allow,
    /// The command must not run.
    Deny {
        /// Why, naming the rule; shown to the user.
        reason: String,
    },
}

impl PolicyDecision {
    /// Whether the command may run.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Allow)
    }
}

/// What happened in a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AuditEventKind {
    /// The session opened.
    SessionStarted {
        /// How.
        kind: SessionKind,
        /// From where.
        remote: Option<SocketAddr>,
    },
    /// A command was checked against the policy.
    Command {
        /// The command line, as words.
        command: Vec<String>,
        /// The policy's answer.
        decision: PolicyDecision,
        /// The line gate could not know the exact line (the cursor moved,
        /// history was recalled, completion ran): `command` is the line as
        /// typed, not necessarily what the shell ran.
        #[serde(default)]
        uncertain: bool,
    },
    /// The terminal was resized.
    Resize {
        /// The new size.
        size: TtySize,
    },
    /// The session ended.
    SessionEnded {
        /// The exit code, when a process exited.
        exit_code: Option<i64>,
        /// Why it ended (`exit`, `idle timeout`, `client closed`).
        reason: String,
    },
}

/// One audit event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// When.
    pub time: Timestamp,
    /// The session.
    pub session: SessionId,
    /// The user.
    pub username: String,
    /// The container, once known.
    pub container: Option<ContainerId>,
    /// What happened.
    #[serde(flatten)]
    pub kind: AuditEventKind,
}

/// Receives audit events.
///
/// # Contract
///
/// - When `record` returns `Ok`, the event is kept (durably, for sinks that
///   store to disk) and will be returned by the sink's reader.
/// - Events of one session are kept in the order they were recorded.
/// - A sink that cannot keep an event returns an error; callers treat that
///   as a reason to end the session rather than continue unaudited.
#[async_trait]
pub trait AuditSink: Send + Sync + fmt::Debug {
    /// Keeps one event.
    async fn record(&self, event: &AuditEvent) -> Result<()>;
}

/// The context a command is judged in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandContext {
    /// Who runs it.
    pub identity: Identity,
    /// In which container.
    pub container: ContainerId,
    /// The container's owner label, if any.
    pub owner: Option<String>,
    /// The container's module label, if any.
    pub module: Option<String>,
}

/// Decides whether a command may run.
///
/// # Contract
///
/// - Deterministic: the same context and command give the same decision.
/// - A denial carries a reason that names the rule which denied.
/// - An empty command is [`crate::Error::Invalid`].
/// - Denied commands never reach the container: callers check before they
///   exec, and audit every decision.
#[async_trait]
pub trait CommandPolicy: Send + Sync + fmt::Debug {
    /// Judges `command` (program and arguments) in `context`.
    async fn check(&self, context: &CommandContext, command: &[String]) -> Result<PolicyDecision>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_events_without_uncertain_read_as_certain() {
        // Events recorded before the line gate existed have no `uncertain`.
        let kind: AuditEventKind = serde_json::from_str(
            r#"{"type":"command","command":["ls"],"decision":{"decision":"allow"}}"#,
        )
        .unwrap();
        assert_eq!(
            kind,
            AuditEventKind::Command {
                command: vec!["ls".into()],
                decision: PolicyDecision::Allow,
                uncertain: false,
            }
        );
    }
}
