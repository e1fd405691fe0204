//! Conformance cases for [`Authenticator`], [`ConfigProvider`], [`AuditSink`]
//! and [`CommandPolicy`].
//!
//! Each fixture carries the backend and what the test must know about its
//! setup: credentials it accepts, requests it allows and denies, how to read
//! back what a sink kept.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::{Fixture, Outcome, suite, unique_name};
use crate::model::ContainerId;
use crate::model::{SessionId, Timestamp};
use crate::{
    AuditEvent, AuditEventKind, AuditLog, AuditQuery, AuditSink, Authenticator, CommandContext,
    CommandPolicy, ConfigProvider, ConfigRequest, Credentials, ErrorKind, PolicyDecision,
    QueryOrder, SessionKind,
};

/// An authenticator and credentials it accepts, with the user each proves.
#[derive(Debug, Clone)]
pub struct AuthFixture {
    /// The authenticator under test.
    pub authenticator: Arc<dyn Authenticator>,
    /// Credentials it accepts, each with the username it must return; cover
    /// every kind it handles.
    pub accepted: Vec<(Credentials, String)>,
}

impl Fixture for AuthFixture {}

suite!(authenticator, "Authenticator", AUTH_CASES: AuthFixture:
    accepted_credentials_give_their_identity,
    wrong_secrets_and_unknown_users_are_rejected_alike,
);

/// Every credential the fixture lists is accepted as its user.
pub async fn accepted_credentials_give_their_identity(fx: AuthFixture) -> Outcome {
    assert!(
        !fx.accepted.is_empty(),
        "the fixture lists no accepted credentials"
    );
    for (credentials, username) in &fx.accepted {
        let identity = fx
            .authenticator
            .authenticate(credentials, None)
            .await
            .unwrap();
        assert_eq!(&identity.username, username, "{credentials:?}");
    }
    Outcome::Passed
}

/// The same credential with a wrong secret, or for an unknown user, is
/// `Unauthenticated`, and every rejection reads the same.
pub async fn wrong_secrets_and_unknown_users_are_rejected_alike(fx: AuthFixture) -> Outcome {
    let mut wrong = Vec::new();
    for (credentials, _) in &fx.accepted {
        wrong.push(match credentials.clone() {
            Credentials::Password { username, password } => Credentials::Password {
                username,
                password: format!("{password}x"),
            },
            Credentials::PublicKey { username, .. } => Credentials::PublicKey {
                username,
                public_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKisaraKisaraKisaraKisaraKisaraKisaraKisaraK".into(),
            },
            Credentials::BearerToken { token } => Credentials::BearerToken {
                token: format!("{token}x"),
            },
        });
    }
    wrong.push(Credentials::Password {
        username: unique_name("nobody"),
        password: "password".into(),
    });
    wrong.push(Credentials::BearerToken {
        token: String::new(),
    });
    let mut messages = std::collections::BTreeSet::new();
    for credentials in &wrong {
        let err = fx
            .authenticator
            .authenticate(credentials, None)
            .await
            .unwrap_err();
        assert_eq!(
            err.kind(),
            ErrorKind::Unauthenticated,
            "{credentials:?}: {err}"
        );
        messages.insert(err.to_string());
    }
    assert_eq!(
        messages.len(),
        1,
        "rejections tell apart what was wrong: {messages:?}"
    );
    Outcome::Passed
}

/// A config provider with one request it allows and one it denies.
#[derive(Debug, Clone)]
pub struct ConfigFixture {
    /// The provider under test.
    pub provider: Arc<dyn ConfigProvider>,
    /// A request it answers with a configuration.
    pub allowed: ConfigRequest,
    /// A request it refuses.
    pub denied: ConfigRequest,
}

impl Fixture for ConfigFixture {}

suite!(config_provider, "ConfigProvider", CONFIG_CASES: ConfigFixture:
    allowed_requests_get_a_usable_config,
    denied_requests_are_permission_denied,
);

/// The allowed request gets a configuration with a shell, the same twice.
pub async fn allowed_requests_get_a_usable_config(fx: ConfigFixture) -> Outcome {
    let config = fx.provider.session_config(&fx.allowed).await.unwrap();
    assert!(!config.shell.is_empty(), "a session needs a shell");
    assert_eq!(
        fx.provider.session_config(&fx.allowed).await.unwrap(),
        config,
        "stable answers"
    );
    Outcome::Passed
}

/// The denied request is `PermissionDenied` naming the user or container.
pub async fn denied_requests_are_permission_denied(fx: ConfigFixture) -> Outcome {
    let err = fx.provider.session_config(&fx.denied).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    let message = err.to_string();
    let names_it = message.contains(&fx.denied.identity.username)
        || fx
            .denied
            .requested_container
            .as_ref()
            .is_some_and(|c| message.contains(c.as_str()));
    assert!(
        names_it,
        "the refusal names the user or container: {message}"
    );
    Outcome::Passed
}

/// Reads back what a sink kept for one session.
pub type AuditReader =
    Arc<dyn Fn(SessionId) -> Pin<Box<dyn Future<Output = Vec<AuditEvent>> + Send>> + Send + Sync>;

/// An audit sink and a way to read back what it kept.
#[derive(Clone)]
pub struct AuditFixture {
    /// The sink under test.
    pub sink: Arc<dyn AuditSink>,
    /// Its reader.
    pub read: AuditReader,
}

impl std::fmt::Debug for AuditFixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditFixture")
            .field("sink", &self.sink)
            .finish_non_exhaustive()
    }
}

impl Fixture for AuditFixture {}

suite!(audit_sink, "AuditSink", AUDIT_CASES: AuditFixture:
    recorded_events_read_back_in_order,
    concurrent_sessions_keep_their_own_order,
);

fn command_event(session: &SessionId, n: usize) -> AuditEvent {
    AuditEvent {
        time: Timestamp::now(),
        session: session.clone(),
        username: "auditor".into(),
        container: None,
        kind: AuditEventKind::Command {
            command: vec!["echo".into(), n.to_string()],
            decision: PolicyDecision::Allow,
            uncertain: false,
        },
    }
}

/// A session's events come back as recorded, in order.
pub async fn recorded_events_read_back_in_order(fx: AuditFixture) -> Outcome {
    let session = SessionId::new(unique_name("session"));
    let mut recorded = vec![AuditEvent {
        time: Timestamp::now(),
        session: session.clone(),
        username: "auditor".into(),
        container: None,
        kind: AuditEventKind::SessionStarted {
            kind: SessionKind::Terminal,
            remote: Some("127.0.0.1:40000".parse().unwrap()),
        },
    }];
    recorded.extend((0..10).map(|n| command_event(&session, n)));
    recorded.push(AuditEvent {
        time: Timestamp::now(),
        session: session.clone(),
        username: "auditor".into(),
        container: None,
        kind: AuditEventKind::SessionEnded {
            exit_code: Some(0),
            reason: "exit".into(),
        },
    });
    for event in &recorded {
        fx.sink.record(event).await.unwrap();
    }
    assert_eq!((fx.read)(session).await, recorded);
    Outcome::Passed
}

/// Two sessions recording at once each keep their own order.
pub async fn concurrent_sessions_keep_their_own_order(fx: AuditFixture) -> Outcome {
    let sessions: Vec<SessionId> = (0..2)
        .map(|_| SessionId::new(unique_name("session")))
        .collect();
    let writers: Vec<_> = sessions
        .iter()
        .map(|session| {
            let sink = fx.sink.clone();
            let session = session.clone();
            tokio::spawn(async move {
                for n in 0..50 {
                    sink.record(&command_event(&session, n)).await.unwrap();
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    for session in sessions {
        let expected: Vec<_> = (0..50).map(|n| command_event(&session, n).kind).collect();
        let kinds: Vec<_> = (fx.read)(session)
            .await
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, expected);
    }
    Outcome::Passed
}

/// A sink and the log reading it back (often one object).
#[derive(Clone)]
pub struct AuditLogFixture {
    /// Where events go.
    pub sink: Arc<dyn AuditSink>,
    /// Where they are read back.
    pub log: Arc<dyn AuditLog>,
}

impl std::fmt::Debug for AuditLogFixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLogFixture")
            .field("log", &self.log)
            .finish_non_exhaustive()
    }
}

impl Fixture for AuditLogFixture {}

suite!(audit_log, "AuditLog", AUDIT_LOG_CASES: AuditLogFixture:
    queries_filter_and_page_without_gaps,
    commands_are_found_by_their_text,
    bad_queries_name_the_field,
);

/// Records `n` command events of a fresh session in `container`, the odd
/// ones denied.
async fn record_commands(fx: &AuditLogFixture, container: &ContainerId, n: usize) -> SessionId {
    let session = SessionId::new(unique_name("session"));
    for i in 0..n {
        let mut event = command_event(&session, i);
        event.container = Some(container.clone());
        if i % 2 == 1 {
            event.kind = AuditEventKind::Command {
                command: vec!["rm".into(), format!("/tmp/{i}")],
                decision: PolicyDecision::Deny {
                    reason: "rule #1".into(),
                },
                uncertain: false,
            };
        }
        fx.sink.record(&event).await.unwrap();
    }
    session
}

/// Filters select, pages follow each other from their cursor in both
/// orders, and events recorded later are found from the last cursor.
pub async fn queries_filter_and_page_without_gaps(fx: AuditLogFixture) -> Outcome {
    let container = ContainerId::new(unique_name("container"));
    let session = record_commands(&fx, &container, 25).await;
    let _other = record_commands(&fx, &ContainerId::new(unique_name("container")), 5).await;
    for order in [QueryOrder::OldestFirst, QueryOrder::NewestFirst] {
        let mut query = AuditQuery {
            session: Some(session.clone()),
            order,
            limit: 10,
            ..AuditQuery::default()
        };
        let mut seen = Vec::new();
        loop {
            let page = fx.log.query(&query).await.unwrap();
            assert!(page.events.len() <= 10);
            seen.extend(page.events.iter().map(|e| e.id));
            match page.next {
                Some(next) => query.cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(seen.len(), 25, "{order:?}: {seen:?}");
        let mut sorted = seen.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 25, "no event twice");
        if order == QueryOrder::NewestFirst {
            sorted.reverse();
        }
        assert_eq!(seen, sorted, "{order:?} holds");
    }
    let denied = fx
        .log
        .query(&AuditQuery {
            container: Some(container.clone()),
            decision: Some("deny".into()),
            limit: AuditQuery::MAX_LIMIT,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(denied.events.len(), 12);
    assert!(
        denied
            .events
            .iter()
            .all(|e| e.event.container.as_ref() == Some(&container))
    );
    // Following: what comes after the newest id seen.
    let newest = fx
        .log
        .query(&AuditQuery {
            session: Some(session.clone()),
            limit: 1,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    let cursor = newest.events[0].id;
    let mut late = command_event(&session, 99);
    late.container = Some(container.clone());
    fx.sink.record(&late).await.unwrap();
    let after = fx
        .log
        .query(&AuditQuery {
            session: Some(session),
            order: QueryOrder::OldestFirst,
            cursor: Some(cursor),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(after.events.len(), 1);
    assert_eq!(after.events[0].event.kind, late.kind);
    Outcome::Passed
}

/// `command` finds command events by a part of their words.
pub async fn commands_are_found_by_their_text(fx: AuditLogFixture) -> Outcome {
    let container = ContainerId::new(unique_name("container"));
    record_commands(&fx, &container, 6).await;
    let found = |text: &str| {
        let query = AuditQuery {
            container: Some(container.clone()),
            command: Some(text.to_owned()),
            limit: AuditQuery::MAX_LIMIT,
            ..AuditQuery::default()
        };
        let log = fx.log.clone();
        async move { log.query(&query).await.unwrap().events.len() }
    };
    assert_eq!(found("rm /tmp/").await, 3);
    assert_eq!(found("rm /tmp/3").await, 1);
    assert_eq!(found("echo").await, 3);
    assert_eq!(found("echo 4").await, 1);
    assert_eq!(found("no such command").await, 0);
    Outcome::Passed
}

/// Bad limits, decisions, kinds, empty texts and backwards ranges are
/// refused by name.
pub async fn bad_queries_name_the_field(fx: AuditLogFixture) -> Outcome {
    let now = Timestamp::now();
    let cases = [
        (
            AuditQuery {
                limit: 0,
                ..AuditQuery::default()
            },
            "limit",
        ),
        (
            AuditQuery {
                limit: AuditQuery::MAX_LIMIT + 1,
                ..AuditQuery::default()
            },
            "limit",
        ),
        (
            AuditQuery {
                decision: Some("maybe".into()),
                ..AuditQuery::default()
            },
            "decision",
        ),
        (
            AuditQuery {
                kind: Some("DROP TABLE".into()),
                ..AuditQuery::default()
            },
            "kind",
        ),
        (
            AuditQuery {
                command: Some(String::new()),
                ..AuditQuery::default()
            },
            "command",
        ),
        (
            AuditQuery {
                since: Some(now),
                until: Some(Timestamp::from_unix_millis(
                    now.unix_millis().saturating_sub(1000),
                )),
                ..AuditQuery::default()
            },
            "time range",
        ),
    ];
    for (query, field) in cases {
        let error = fx.log.query(&query).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Invalid, "{query:?}");
        assert!(error.to_string().contains(field), "{error} names {field}");
    }
    Outcome::Passed
}

/// A command policy with commands it must allow and deny in their contexts.
#[derive(Debug, Clone)]
pub struct PolicyFixture {
    /// The policy under test.
    pub policy: Arc<dyn CommandPolicy>,
    /// Commands it allows.
    pub allowed: Vec<(CommandContext, Vec<String>)>,
    /// Commands it denies.
    pub denied: Vec<(CommandContext, Vec<String>)>,
}

impl Fixture for PolicyFixture {}

suite!(command_policy, "CommandPolicy", POLICY_CASES: PolicyFixture:
    declared_decisions_hold_and_repeat,
    empty_commands_are_invalid,
);

/// Allowed commands are allowed, denied ones denied with a reason, twice.
pub async fn declared_decisions_hold_and_repeat(fx: PolicyFixture) -> Outcome {
    assert!(
        !fx.allowed.is_empty() && !fx.denied.is_empty(),
        "the fixture lists both kinds"
    );
    for _ in 0..2 {
        for (context, command) in &fx.allowed {
            let decision = fx.policy.check(context, command).await.unwrap();
            assert_eq!(
                decision,
                PolicyDecision::Allow,
                "{command:?} as {}",
                context.identity.username
            );
        }
        for (context, command) in &fx.denied {
            match fx.policy.check(context, command).await.unwrap() {
                PolicyDecision::Deny { reason } => {
                    assert!(!reason.is_empty(), "a denial names its rule");
                }
                PolicyDecision::Allow => {
                    panic!("{command:?} as {} was allowed", context.identity.username)
                }
            }
        }
    }
    Outcome::Passed
}

/// An empty command is invalid.
pub async fn empty_commands_are_invalid(fx: PolicyFixture) -> Outcome {
    let (context, _) = fx
        .allowed
        .first()
        .or(fx.denied.first())
        .expect("the fixture lists commands");
    let err = fx.policy.check(context, &[]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    Outcome::Passed
}
