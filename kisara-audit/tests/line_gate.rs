//! The line gate on terminal byte streams, and `judge_line` with policies.

use kisara_audit::line_gate::CLEAR_LINE;
use kisara_audit::policy::{PolicySpec, RuleSpec};
use kisara_audit::{CompletedLine, GateAction, LineGate, RulePolicy, UncertainMode, judge_line};
use kisara_core::builtin::PrefixPolicy;
use kisara_core::model::ContainerId;
use kisara_core::{AuditEventKind, CommandContext, Identity, PolicyDecision};

/// A completed line and why it is uncertain, if it is.
type Line = (String, Option<&'static str>);

/// Feeds `input` byte by byte (the worst split), allowing every line.
fn lines_of(input: &[u8]) -> Vec<Line> {
    let mut gate = LineGate::new(UncertainMode::Audit);
    let mut lines = Vec::new();
    for byte in input {
        let mut actions = gate.feed(std::slice::from_ref(byte));
        while let Some(GateAction::Decide(line)) = actions.pop() {
            lines.push((line.line, line.uncertain));
            actions = gate.allow();
        }
    }
    lines
}

#[test]
fn typed_streams_give_their_lines() {
    let certain = |line: &str| (line.to_owned(), None);
    let cases: &[(&[u8], Vec<Line>)] = &[
        (b"ls -la\r", vec![certain("ls -la")]),
        (b"ls\n", vec![certain("ls")]),
        (b"\r\r\n", vec![]),
        (
            "echo h\u{e9}llo \u{1f600}\r".as_bytes(),
            vec![certain("echo h\u{e9}llo \u{1f600}")],
        ),
        (b"rm -rf /tmpx\x7f\r", vec![certain("rm -rf /tmp")]),
        (b"lss\x08 -l\r", vec![certain("ls -l")]),
        ("caf\u{e9}\x7f\r".as_bytes(), vec![certain("caf")]),
        (b"rm -rf /\x15echo hi\r", vec![certain("echo hi")]),
        (b"echo rm -rf\x17\x17ok\r", vec![certain("echo ok")]),
        (b"echo a  \x17b\r", vec![certain("echo b")]),
        // Words end at spaces and tabs only (U+0085 is two bytes, no end).
        ("echo a\u{85}b\x17c\r".as_bytes(), vec![certain("echo c")]),
        (b"rm -rf /\x03ls\r", vec![certain("ls")]),
        (b"\x04", vec![]),
        (b"rm -rf /\x04", vec![certain("rm -rf /")]),
        (
            b"\x1b[200~ls\necho x\x1b[201~\r",
            vec![certain("ls"), certain("echo x")],
        ),
        (b"\x1b[200~a\tb\x1b[201~\r", vec![certain("a\tb")]),
        (b"\x1b[I\x1b[Ols\r", vec![certain("ls")]),
        // Replies to the shell's queries (cursor position, status, device):
        // busybox may drop keys that arrive with them.
        (
            b"\x1b[24;5Rls\r",
            vec![(
                "ls".into(),
                Some("a terminal reply (the shell may drop keys sent with it)"),
            )],
        ),
        (
            b"\x1b[0n\x1b[?62;22cls\r",
            vec![(
                "ls".into(),
                Some("a terminal reply (the shell may drop keys sent with it)"),
            )],
        ),
        (
            b"echo ab\x1b[DX\r",
            vec![("echo abX".into(), Some("cursor movement"))],
        ),
        (
            b"echo ab\x1bOD\r",
            vec![("echo ab".into(), Some("cursor movement"))],
        ),
        (b"\x1b[A\r", vec![("".into(), Some("history recall"))]),
        (b"\x1bOB\r", vec![("".into(), Some("history recall"))]),
        (
            b"ca\t /etc\r",
            vec![("ca /etc".into(), Some("tab completion"))],
        ),
        (
            b"\x12rm\r",
            vec![("rm".into(), Some("history search (Ctrl-R)"))],
        ),
        (
            b"\x01rm x\r",
            vec![(
                "rm x".into(),
                Some("an editing key (Ctrl-A, Ctrl-E, Ctrl-K, ...)"),
            )],
        ),
        (
            b"echo \x1bb\x1bfx\r",
            vec![("echo x".into(), Some("an Alt key or escape sequence"))],
        ),
        (
            b"echo \x1b[3~x\r",
            vec![("echo x".into(), Some("cursor movement"))],
        ),
        // Uncertainty ends with the line; Ctrl-C ends it too.
        (
            b"\x1b[Dls\rid\r",
            vec![("ls".into(), Some("cursor movement")), certain("id")],
        ),
        (b"\x1b[Dls\x03id\r", vec![certain("id")]),
        // After Ctrl-D on a non-empty line the line goes on, uncertain.
        (
            b"rm /x\x04y\r",
            vec![
                certain("rm /x"),
                ("rm /xy".into(), Some("Ctrl-D on a non-empty line")),
            ],
        ),
        (b"\x0cls\r", vec![certain("ls")]),
    ];
    for (input, expected) in cases {
        let got = lines_of(input);
        assert_eq!(&got, expected, "{:?}", String::from_utf8_lossy(input));
    }
}

#[test]
fn a_denied_enter_never_reaches_the_container() {
    let mut gate = LineGate::new(UncertainMode::Audit);
    let mut to_container = Vec::new();
    let mut to_user = Vec::new();
    let mut actions = gate.feed(b"rm -rf /\rls\r");
    while !actions.is_empty() {
        let mut next = Vec::new();
        for action in actions {
            match action {
                GateAction::Forward(bytes) => to_container.extend_from_slice(&bytes),
                GateAction::Show(bytes) => to_user.extend_from_slice(&bytes),
                GateAction::Decide(line) if line.line.starts_with("rm") => {
                    next = gate.deny("rule #0 \"no-rm\"");
                }
                GateAction::Decide(_) => next = gate.allow(),
            }
        }
        actions = next;
    }
    let mut expected = b"rm -rf /".to_vec();
    expected.extend_from_slice(CLEAR_LINE);
    expected.extend_from_slice(b"ls\r");
    assert_eq!(to_container, expected);
    assert_eq!(to_user, b"\r\nkisara: denied: rule #0 \"no-rm\"\r\n");
}

fn context(roles: &[&str]) -> CommandContext {
    let mut identity = Identity::new("alice");
    identity.roles = roles.iter().map(|r| (*r).to_owned()).collect();
    CommandContext {
        identity,
        container: ContainerId::new("web-1"),
        owner: None,
        module: None,
    }
}

fn completed(line: &str, uncertain: Option<&'static str>, mode: UncertainMode) -> CompletedLine {
    CompletedLine {
        line: line.to_owned(),
        uncertain,
        mode,
    }
}

#[tokio::test]
async fn judge_line_asks_the_policy_and_gives_the_audit_event() {
    let policy = RulePolicy::new(PolicySpec {
        default: kisara_audit::policy::Decision::Allow,
        rules: vec![
            RuleSpec::deny()
                .named("no-rm-root")
                .program(["rm"])
                .any_arg(["/", "/*"]),
            RuleSpec::deny()
                .named("no-dotfiles")
                .program(["cat"])
                .any_arg(["/root/.*"]),
        ],
        ..PolicySpec::default()
    })
    .unwrap();
    let who = context(&["player"]);
    let (decision, event) = judge_line(
        &policy,
        &who,
        &completed("ls | env rm -rf /*", None, UncertainMode::Audit),
    )
    .await
    .unwrap();
    assert!(matches!(&decision, PolicyDecision::Deny { reason } if reason.contains("no-rm-root")));
    assert_eq!(
        event,
        AuditEventKind::Command {
            command: ["ls", "|", "env", "rm", "-rf", "/*"]
                .map(str::to_owned)
                .to_vec(),
            decision,
            uncertain: false,
        }
    );
    // A pattern goes to the policy unquoted: `.*` could be `..`.
    let (decision, _) = judge_line(
        &policy,
        &who,
        &completed("cat /root/.*/x", None, UncertainMode::Audit),
    )
    .await
    .unwrap();
    assert!(
        matches!(&decision, PolicyDecision::Deny { reason } if reason.contains("may expand")),
        "{decision:?}"
    );
    // Unparsable: judged as `sh -c <line>` by the policy's own mode.
    let (decision, event) = judge_line(
        &policy,
        &who,
        &completed("echo $(id)", None, UncertainMode::Audit),
    )
    .await
    .unwrap();
    assert!(!decision.is_allowed());
    assert!(
        matches!(&event, AuditEventKind::Command { command, .. } if command[..2] == ["sh", "-c"])
    );
    // Uncertain lines: audited as typed, or denied unasked.
    let (decision, event) = judge_line(
        &policy,
        &who,
        &completed("ls", Some("history recall"), UncertainMode::Audit),
    )
    .await
    .unwrap();
    assert!(decision.is_allowed());
    assert!(matches!(
        event,
        AuditEventKind::Command {
            uncertain: true,
            ..
        }
    ));
    let (decision, _) = judge_line(
        &policy,
        &who,
        &completed("ls", Some("history recall"), UncertainMode::Deny),
    )
    .await
    .unwrap();
    assert!(
        matches!(&decision, PolicyDecision::Deny { reason } if reason.contains("history recall"))
    );
}

#[tokio::test]
async fn judge_line_works_with_any_command_policy() {
    let policy = PrefixPolicy::allow_by_default().deny(["rm", "-rf"]);
    let who = context(&[]);
    for (line, allowed) in [
        ("ls; \\rm -rf /", false),
        ("ls && echo rm -rf", true),
        ("busybox rm -rf /", true),
    ] {
        let (decision, _) = judge_line(&policy, &who, &completed(line, None, UncertainMode::Audit))
            .await
            .unwrap();
        assert_eq!(decision.is_allowed(), allowed, "{line}");
    }
}
