//! The session engine over in-memory nodes: authorisation by role and team,
//! policy before exec, the audit trail in order, recordings, terminal line
//! gating, idle timeout and lifetime, clients that leave or stop reading,
//! sinks that fail.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kisara_audit::{LineGatePolicy, UncertainMode};
use kisara_cluster::Server;
use kisara_cluster::session::{
    ADMIN_ROLE, EndReason, PLATFORM_ROLE, PLAYER_ROLE, Session, SessionEnd, SessionEngine,
    SessionInput, SessionLimits, SessionOutput, SessionRequest,
};
use kisara_core::builtin::PrefixPolicy;
use kisara_core::memory::{
    MemoryAuditSink, MemoryRecordingStore, MemoryRuntime, MemorySubnetAllocator,
};
use kisara_core::model::{
    ContainerId, ContainerSpec, ImageRef, LaunchRequest, NodeCapacity, NodeId, TtySize,
};
use kisara_core::{
    AuditEvent, AuditEventKind, AuditSink, Error, ErrorKind, EventData, Identity, RecordingStore,
};

const WAIT: Duration = Duration::from_secs(10);
const SIZE: TtySize = TtySize { rows: 24, cols: 80 };

struct Fixture {
    engine: SessionEngine,
    audit: Arc<MemoryAuditSink>,
    recordings: Arc<MemoryRecordingStore>,
    red: ContainerId,
    blue: ContainerId,
}

async fn server() -> Server {
    let image = ImageRef::parse("busybox:latest").unwrap();
    let runtime = MemoryRuntime::new();
    runtime.add_image(&image, None);
    let server = Server::builder(Arc::new(
        MemorySubnetAllocator::new("10.131.0.0/16".parse().unwrap(), 24).unwrap(),
    ))
    .build();
    let capacity = NodeCapacity {
        max_containers: 10,
        bandwidth_in: 1 << 20,
        bandwidth_out: 1 << 20,
    };
    server
        .connect_node(NodeId::new("n1").unwrap(), capacity, Arc::new(runtime))
        .await
        .unwrap();
    server
}

async fn launch(server: &Server, owner: &str) -> ContainerId {
    let mut spec = ContainerSpec::new(ImageRef::parse("busybox:latest").unwrap());
    spec.owner = Some(owner.into());
    server
        .launch_container(LaunchRequest::new(spec), WAIT)
        .await
        .unwrap()
        .container
        .id
}

async fn fixture_with(limits: SessionLimits, audit_sink: Option<Arc<dyn AuditSink>>) -> Fixture {
    let server = server().await;
    let red = launch(&server, "red").await;
    let blue = launch(&server, "blue").await;
    let audit = Arc::new(MemoryAuditSink::new());
    let recordings = Arc::new(MemoryRecordingStore::new());
    let policy = Arc::new(PrefixPolicy::allow_by_default().deny(["rm"]));
    let engine = SessionEngine::builder(server)
        .with_command_policy(policy.clone())
        .with_terminal_policy(Arc::new(LineGatePolicy::new(policy, UncertainMode::Audit)))
        .with_audit(audit_sink.unwrap_or_else(|| audit.clone()))
        .with_recordings(recordings.clone())
        .with_limits(limits)
        .build();
    Fixture {
        engine,
        audit,
        recordings,
        red,
        blue,
    }
}

async fn fixture() -> Fixture {
    fixture_with(SessionLimits::default(), None).await
}

fn player(team: &str) -> Identity {
    Identity::new(format!("{team}-player"))
        .with_role(PLAYER_ROLE)
        .with_team(team)
}

fn kinds(events: &[AuditEvent]) -> Vec<String> {
    events
        .iter()
        .map(|event| match &event.kind {
            AuditEventKind::SessionStarted { kind, .. } => format!("started {kind:?}"),
            AuditEventKind::Command {
                command, decision, ..
            } => format!(
                "{} {}",
                if decision.is_allowed() {
                    "allow"
                } else {
                    "deny"
                },
                command.join(" ")
            ),
            AuditEventKind::Resize { size } => format!("resize {}x{}", size.cols, size.rows),
            AuditEventKind::SessionEnded { exit_code, reason } => {
                format!("ended {exit_code:?} {reason}")
            }
        })
        .collect()
}

#[tokio::test]
async fn an_exec_is_authorised_judged_audited_and_recorded() {
    let f = fixture().await;
    let result = f
        .engine
        .exec(SessionRequest::exec(
            player("red"),
            f.red.clone(),
            ["sh", "-c", "echo out; echo err >&2; exit 3"],
        ))
        .await
        .unwrap();
    assert_eq!(result.stdout, b"out\n");
    assert_eq!(result.stderr, b"err\n");
    assert_eq!(result.exit_code, 3);
    let events = f.audit.events();
    assert_eq!(
        kinds(&events),
        [
            "started Exec",
            "allow sh -c echo out; echo err >&2; exit 3",
            "ended Some(3) exit"
        ]
    );
    assert!(
        events
            .iter()
            .all(|e| e.username == "red-player" && e.container.as_ref() == Some(&f.red))
    );
    assert!(events.windows(2).all(|w| w[0].session == w[1].session));
    let recordings = f.recordings.list(&Default::default()).await.unwrap();
    assert_eq!(recordings.len(), 1);
    assert_eq!(recordings[0].end_reason.as_deref(), Some("exit"));
}

#[tokio::test]
async fn a_denied_exec_never_runs_and_says_which_rule() {
    let f = fixture().await;
    let error = f
        .engine
        .exec(SessionRequest::exec(
            player("red"),
            f.red.clone(),
            ["rm", "-rf", "/"],
        ))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::PermissionDenied);
    assert!(error.to_string().contains("rm"), "{error}");
    assert_eq!(
        kinds(&f.audit.events()),
        ["started Exec", "deny rm -rf /", "ended None denied"]
    );
    assert!(
        f.recordings
            .list(&Default::default())
            .await
            .unwrap()
            .is_empty(),
        "a denied command opens no recording"
    );
}

#[tokio::test]
async fn roles_and_teams_decide_who_reaches_which_container() {
    let f = fixture().await;
    let echo = |who: Identity, container: &ContainerId| {
        SessionRequest::exec(who, container.clone(), ["echo", "hi"])
    };
    let admin = Identity::new("root").with_role(ADMIN_ROLE);
    let platform = Identity::new("ctfd").with_role(PLATFORM_ROLE);
    for (who, container) in [
        (admin, &f.blue),
        (platform, &f.red),
        (player("red"), &f.red),
        (player("blue"), &f.blue),
    ] {
        let result = f.engine.exec(echo(who.clone(), container)).await;
        assert!(
            result.is_ok(),
            "{} on {container}: {result:?}",
            who.username
        );
    }
    for (who, container) in [
        (player("red"), &f.blue),
        (player("blue"), &f.red),
        (Identity::new("nobody"), &f.red),
        (Identity::new("red").with_team("red"), &f.red),
    ] {
        let error = f
            .engine
            .exec(echo(who.clone(), container))
            .await
            .unwrap_err();
        assert_eq!(
            error.kind(),
            ErrorKind::PermissionDenied,
            "{} on {container}",
            who.username
        );
    }
    let missing = f
        .engine
        .exec(echo(player("red"), &ContainerId::new("no-such-container")))
        .await
        .unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::NotFound);
}

/// Sends `input` and reads what comes back until `until` shows up.
async fn type_and_read(session: &mut Session, input: &[u8], until: &str) -> String {
    session
        .input
        .send(SessionInput::Data(Bytes::copy_from_slice(input)))
        .await
        .unwrap();
    let mut seen = String::new();
    tokio::time::timeout(WAIT, async {
        while !seen.contains(until) {
            match session.output.recv().await {
                Some(SessionOutput::Stdout(bytes) | SessionOutput::Stderr(bytes)) => {
                    seen.push_str(&String::from_utf8_lossy(&bytes));
                }
                None => break,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{until:?} did not come back; saw {seen:?}"));
    seen
}

async fn ended(session: Session) -> SessionEnd {
    let Session {
        mut output,
        ended,
        input,
        ..
    } = session;
    let end = tokio::time::timeout(WAIT, async {
        while output.recv().await.is_some() {}
        ended.await.unwrap()
    })
    .await
    .expect("the session ends");
    drop(input);
    end
}

#[tokio::test]
async fn a_terminal_judges_every_line_and_shows_denials() {
    let f = fixture().await;
    let mut session = f
        .engine
        .open(SessionRequest::terminal(player("red"), f.red.clone(), SIZE))
        .await
        .unwrap();
    let seen = type_and_read(&mut session, b"echo kisara-42\r", "kisara-42").await;
    assert!(seen.contains("kisara-42"), "{seen}");
    let seen = type_and_read(&mut session, b"rm -rf /\r", "denied").await;
    assert!(seen.contains("kisara: denied: "), "{seen}");
    session
        .input
        .send(SessionInput::Resize(TtySize {
            rows: 40,
            cols: 100,
        }))
        .await
        .unwrap();
    let seen = type_and_read(&mut session, b"stty size\r", "40 100").await;
    assert!(seen.contains("40 100"), "{seen}");
    session
        .input
        .send(SessionInput::Data(Bytes::from_static(b"exit 5\r")))
        .await
        .unwrap();
    let recording = session.recording.clone().expect("recorded");
    let end = ended(session).await;
    assert_eq!(
        end,
        SessionEnd {
            exit_code: Some(5),
            reason: EndReason::Exit
        }
    );

    let events = kinds(&f.audit.events());
    assert_eq!(
        events,
        [
            "started Terminal",
            "allow echo kisara-42",
            "deny rm -rf /",
            "resize 100x40",
            "allow stty size",
            "allow exit 5",
            "ended Some(5) exit"
        ]
    );
    let played = f.recordings.open(&recording).await.unwrap();
    let events: Vec<_> = futures::StreamExt::collect::<Vec<_>>(played.events).await;
    let markers: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.as_ref().unwrap().data {
            EventData::Marker(label) => Some(label.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        markers,
        ["echo kisara-42", "denied: rm -rf /", "stty size", "exit 5"]
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(&e.as_ref().unwrap().data, EventData::Resize(s) if s.rows == 40))
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(&e.as_ref().unwrap().data, EventData::Input(_)))
    );
}

#[tokio::test]
async fn idle_sessions_and_old_sessions_end_with_their_reason() {
    let limits = SessionLimits {
        idle_timeout: Some(Duration::from_millis(300)),
        ..SessionLimits::default()
    };
    let f = fixture_with(limits, None).await;
    let session = f
        .engine
        .open(SessionRequest::terminal(player("red"), f.red.clone(), SIZE))
        .await
        .unwrap();
    let end = ended(session).await;
    assert_eq!(
        end.reason,
        EndReason::IdleTimeout(Duration::from_millis(300))
    );
    assert_eq!(end.exit_code, None);
    let last = f.audit.events().pop().unwrap();
    assert!(
        matches!(&last.kind, AuditEventKind::SessionEnded { reason, .. } if reason.starts_with("idle timeout")),
        "{last:?}"
    );

    let limits = SessionLimits {
        max_lifetime: Duration::from_millis(500),
        ..SessionLimits::default()
    };
    let f = fixture_with(limits, None).await;
    let mut session = f
        .engine
        .open(SessionRequest::terminal(player("red"), f.red.clone(), SIZE))
        .await
        .unwrap();
    // Activity does not extend a lifetime.
    type_and_read(&mut session, b"echo busy\r", "busy").await;
    let end = ended(session).await;
    assert_eq!(
        end.reason,
        EndReason::LifetimeReached(Duration::from_millis(500))
    );
}

#[tokio::test]
async fn a_client_that_leaves_ends_its_session() {
    let f = fixture().await;
    let session = f
        .engine
        .open(SessionRequest::terminal(player("red"), f.red.clone(), SIZE))
        .await
        .unwrap();
    let Session {
        input,
        output,
        ended,
        ..
    } = session;
    drop(input);
    drop(output);
    let end = tokio::time::timeout(WAIT, ended).await.unwrap().unwrap();
    assert_eq!(end.reason, EndReason::ClientClosed);
    assert!(
        kinds(&f.audit.events())
            .last()
            .unwrap()
            .ends_with("client closed")
    );
}

#[tokio::test]
async fn stdin_end_of_file_reaches_the_process() {
    let f = fixture().await;
    let mut request = SessionRequest::exec(player("red"), f.red.clone(), ["cat"]);
    request.stdin = true;
    let mut session = f.engine.open(request).await.unwrap();
    let seen = type_and_read(&mut session, b"line one\n", "line one").await;
    assert_eq!(seen, "line one\n");
    session.input.send(SessionInput::Eof).await.unwrap();
    let end = ended(session).await;
    assert_eq!(
        end,
        SessionEnd {
            exit_code: Some(0),
            reason: EndReason::Exit
        }
    );
}

/// Keeps `allowed` events, then fails every one.
#[derive(Debug)]
struct FailingSink {
    allowed: Mutex<usize>,
}

#[async_trait]
impl AuditSink for FailingSink {
    async fn record(&self, _event: &AuditEvent) -> kisara_core::Result<()> {
        let mut allowed = self.allowed.lock().unwrap();
        if *allowed == 0 {
            return Err(Error::unavailable("the audit disk is full"));
        }
        *allowed -= 1;
        Ok(())
    }
}

#[tokio::test]
async fn no_access_goes_unaudited() {
    // The start cannot be audited: no session.
    let sink = Arc::new(FailingSink {
        allowed: Mutex::new(0),
    });
    let f = fixture_with(SessionLimits::default(), Some(sink)).await;
    let error = f
        .engine
        .open(SessionRequest::terminal(player("red"), f.red.clone(), SIZE))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("audit disk is full"), "{error}");

    // The start is audited, the first command cannot be: the line never
    // runs and the session ends.
    let sink = Arc::new(FailingSink {
        allowed: Mutex::new(1),
    });
    let f = fixture_with(SessionLimits::default(), Some(sink)).await;
    let session = f
        .engine
        .open(SessionRequest::terminal(player("red"), f.red.clone(), SIZE))
        .await
        .unwrap();
    session
        .input
        .send(SessionInput::Data(Bytes::from_static(b"echo never-ran\r")))
        .await
        .unwrap();
    let Session {
        mut output,
        ended,
        input,
        ..
    } = session;
    let mut seen = Vec::new();
    while let Some(SessionOutput::Stdout(bytes) | SessionOutput::Stderr(bytes)) =
        tokio::time::timeout(WAIT, output.recv()).await.unwrap()
    {
        seen.extend_from_slice(&bytes);
    }
    let end = ended.await.unwrap();
    drop(input);
    assert!(
        matches!(&end.reason, EndReason::AuditFailed(why) if why.contains("audit disk is full")),
        "{end:?}"
    );
    assert!(
        !String::from_utf8_lossy(&seen).contains("never-ran\r\n"),
        "the unaudited line must not run: {seen:?}"
    );
}

#[tokio::test]
async fn bad_terminal_sizes_are_refused_by_name() {
    let f = fixture().await;
    for size in [
        TtySize { rows: 0, cols: 0 },
        TtySize {
            rows: 65535,
            cols: 65535,
        },
    ] {
        let error = f
            .engine
            .open(SessionRequest::terminal(player("red"), f.red.clone(), size))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Invalid);
        assert!(error.to_string().contains("terminal size"), "{error}");
    }
    assert!(f.audit.events().is_empty(), "nothing opened");
}
