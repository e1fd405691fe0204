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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AuditEventKind {
    /// The session opened.
    SessionStarted {
        /// How.
        kind: SessionKind,
        /// From where: the client's address and port.
        #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, example = "192.0.2.7:51234"))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

/// An event as a log keeps it: the [`AuditEvent`] serde form plus its `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(examples(json!({"id": 42, "time": 1_767_787_230_000_u64, "session": "c0ffee0123456789", "username": "alice", "container": "4f1c2a9b7e3d", "type": "command", "command": ["cat", "/flag"], "decision": {"decision": "allow"}, "uncertain": false}))))]
pub struct StoredEvent {
    /// The log's sequence number of the event: increasing in the order
    /// events were recorded.
    pub id: u64,
    /// The event.
    #[serde(flatten)]
    pub event: AuditEvent,
}

/// Which end of the results comes first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum QueryOrder {
    /// Highest id first.
    #[default]
    NewestFirst,
    /// Lowest id first.
    OldestFirst,
}

/// A filter over the stored events; every field set must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditQuery {
    /// Events of this session.
    pub session: Option<SessionId>,
    /// Events of this user.
    pub username: Option<String>,
    /// Events in this container.
    pub container: Option<ContainerId>,
    /// Events in containers of this owner, for logs that know owners.
    pub owner: Option<String>,
    /// Events of this kind: the serde tag, e.g. `command`, `session_started`.
    pub kind: Option<String>,
    /// Command events with this decision: `allow` or `deny`.
    pub decision: Option<String>,
    /// Command events whose words, joined by spaces, contain this text.
    pub command: Option<String>,
    /// Events at or after this time.
    pub since: Option<Timestamp>,
    /// Events before this time.
    pub until: Option<Timestamp>,
    /// The order of the page.
    pub order: QueryOrder,
    /// At most this many events per page, 1 to [`AuditQuery::MAX_LIMIT`].
    pub limit: usize,
    /// Continue after this id: a previous [`AuditPage::next`].
    pub cursor: Option<u64>,
}

impl Default for AuditQuery {
    fn default() -> Self {
        Self {
            session: None,
            username: None,
            container: None,
            owner: None,
            kind: None,
            decision: None,
            command: None,
            since: None,
            until: None,
            order: QueryOrder::default(),
            limit: 100,
            cursor: None,
        }
    }
}

impl AuditQuery {
    /// The largest page.
    pub const MAX_LIMIT: usize = 10_000;

    /// Checks the query, naming the bad field.
    pub fn validate(&self) -> Result<()> {
        if self.limit == 0 || self.limit > Self::MAX_LIMIT {
            return Err(crate::Error::invalid(
                "audit query limit",
                format!("{} is not within 1..={}", self.limit, Self::MAX_LIMIT),
            ));
        }
        if let Some(decision) = &self.decision
            && decision != "allow"
            && decision != "deny"
        {
            return Err(crate::Error::invalid(
                "audit query decision",
                format!("{decision:?} is neither \"allow\" nor \"deny\""),
            ));
        }
        if let Some(kind) = &self.kind
            && (kind.is_empty() || !kind.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        {
            return Err(crate::Error::invalid(
                "audit query kind",
                format!("{kind:?} is not an event kind such as \"command\""),
            ));
        }
        if self.command.as_ref().is_some_and(String::is_empty) {
            return Err(crate::Error::invalid(
                "audit query command",
                "the text to search commands for is empty",
            ));
        }
        if let (Some(since), Some(until)) = (self.since, self.until)
            && since > until
        {
            return Err(crate::Error::invalid(
                "audit query time range",
                format!(
                    "since {} ms is after until {} ms",
                    since.unix_millis(),
                    until.unix_millis()
                ),
            ));
        }
        Ok(())
    }

    /// Whether `event` passes the filters other than `owner` (order,
    /// limit and cursor aside): the reference for every log.
    pub fn matches(&self, event: &AuditEvent) -> bool {
        let (kind, decision, command) = match &event.kind {
            AuditEventKind::SessionStarted { .. } => ("session_started", None, None),
            AuditEventKind::Command {
                command, decision, ..
            } => (
                "command",
                Some(if decision.is_allowed() {
                    "allow"
                } else {
                    "deny"
                }),
                Some(command.join(" ")),
            ),
            AuditEventKind::Resize { .. } => ("resize", None, None),
            AuditEventKind::SessionEnded { .. } => ("session_ended", None, None),
        };
        self.session.as_ref().is_none_or(|s| *s == event.session)
            && self.username.as_ref().is_none_or(|u| *u == event.username)
            && self
                .container
                .as_ref()
                .is_none_or(|c| event.container.as_ref() == Some(c))
            && self.kind.as_deref().is_none_or(|k| k == kind)
            && self.decision.as_deref().is_none_or(|d| Some(d) == decision)
            && self
                .command
                .as_deref()
                .is_none_or(|text| command.is_some_and(|words| words.contains(text)))
            && self.since.is_none_or(|since| event.time >= since)
            && self.until.is_none_or(|until| event.time < until)
    }
}

/// One page of results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(examples(json!({"events": [{"id": 42, "time": 1_767_787_230_000_u64, "session": "c0ffee0123456789", "username": "alice", "container": "4f1c2a9b7e3d", "type": "command", "command": ["cat", "/flag"], "decision": {"decision": "allow"}, "uncertain": false}], "next": 42}))))]
pub struct AuditPage {
    /// The events, in the query's order.
    pub events: Vec<StoredEvent>,
    /// The cursor of the next page, when the page was full.
    pub next: Option<u64>,
}

/// Reads back what an [`AuditSink`] kept.
///
/// # Contract
///
/// - `query` returns the events matching every filter set, in the order
///   asked, at most `limit`; `next` is the last event's id when the page is
///   full, and continuing from it neither repeats nor skips an event.
/// - Ids increase in the order events were recorded; an event recorded
///   after a query is found by querying again from its `next`.
/// - A bad query is [`crate::Error::Invalid`] naming the field
///   ([`AuditQuery::validate`]); a filter the log cannot apply (`owner`
///   without owner data) is [`crate::Error::NotSupported`], never ignored.
#[async_trait]
pub trait AuditLog: Send + Sync + fmt::Debug {
    /// One page of the events matching `query`.
    async fn query(&self, query: &AuditQuery) -> Result<AuditPage>;
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
