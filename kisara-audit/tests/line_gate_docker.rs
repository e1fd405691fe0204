//! The line gate in front of a real busybox `sh` on a TTY exec in a
//! container: the line the gate rebuilds is the line the shell runs (seen
//! from its `echo` output), a denied line never runs, and where the gate
//! says it is uncertain (cursor movement, a terminal reply with keys) the
//! shell indeed ran something else.
//!
//! Needs a Docker engine (fails loudly without one) and a static busybox
//! for the locally built test image.

use std::time::Duration;

use futures::StreamExt;
use kisara_audit::policy::{Decision, PolicySpec, RuleSpec};
use kisara_audit::{GateAction, LineGate, RulePolicy, UncertainMode, judge_line};
use kisara_core::model::{ExecOutput, ExecSpec, TtySize};
use kisara_core::{BoxStream, CommandContext, ContainerRuntime, Identity};
use kisara_docker::testing::{self, Cleanup};
use tokio::io::{AsyncWrite, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(20);

/// busybox `sh`'s prompt for root in `/`, on a line of its own (Ctrl-U
/// redraws it after a carriage return, which is no new prompt).
const PROMPT: &str = "\n/ # ";

struct Terminal {
    gate: LineGate,
    policy: RulePolicy,
    context: CommandContext,
    stdin: std::pin::Pin<Box<dyn AsyncWrite + Send>>,
    output: BoxStream<ExecOutput>,
    /// Everything the container sent back (echo, prompts, command output).
    seen: Vec<u8>,
    /// Prompts seen so far.
    prompts: usize,
    /// Every line the gate completed, with its uncertainty, and whether it
    /// was allowed.
    decided: Vec<(String, Option<&'static str>, bool)>,
}

impl Terminal {
    /// Types `keys` through the gate, as one read of the user's terminal.
    async fn type_keys(&mut self, keys: &[u8]) {
        let mut actions = self.gate.feed(keys);
        while !actions.is_empty() {
            let mut next = Vec::new();
            for action in actions {
                match action {
                    GateAction::Forward(bytes) => {
                        self.stdin.write_all(&bytes).await.unwrap();
                        self.stdin.flush().await.unwrap();
                    }
                    GateAction::Show(_) => {}
                    GateAction::Decide(line) => {
                        let (decision, _event) = judge_line(&self.policy, &self.context, &line)
                            .await
                            .unwrap();
                        let allowed = decision.is_allowed();
                        self.decided
                            .push((line.line.clone(), line.uncertain, allowed));
                        next = match decision {
                            kisara_core::PolicyDecision::Allow => self.gate.allow(),
                            kisara_core::PolicyDecision::Deny { reason } => self.gate.deny(&reason),
                        };
                    }
                }
            }
            actions = next;
        }
    }

    async fn read_until(&mut self, needle: &str) {
        let fut = async {
            while !String::from_utf8_lossy(&self.seen).contains(needle) {
                match self.output.next().await {
                    Some(Ok(ExecOutput::Stdout(b) | ExecOutput::Stderr(b))) => {
                        self.seen.extend_from_slice(&b);
                    }
                    other => panic!("output ended before {needle:?}: {other:?}"),
                }
            }
        };
        if tokio::time::timeout(WAIT, fut).await.is_err() {
            panic!(
                "no {needle:?} within {WAIT:?}; the terminal showed:\n{}",
                String::from_utf8_lossy(&self.seen)
            );
        }
    }

    /// Waits for the shell's next prompt, as a person would before typing
    /// on: keys sent while the shell is between its line editor's reads
    /// meet the kernel's cooked mode instead.
    async fn next_prompt(&mut self) {
        let wanted = self.prompts + 1;
        let fut = async {
            while String::from_utf8_lossy(&self.seen).matches(PROMPT).count() < wanted {
                match self.output.next().await {
                    Some(Ok(ExecOutput::Stdout(b) | ExecOutput::Stderr(b))) => {
                        self.seen.extend_from_slice(&b);
                    }
                    other => panic!("output ended before a prompt: {other:?}"),
                }
            }
        };
        if tokio::time::timeout(WAIT, fut).await.is_err() {
            panic!(
                "no prompt within {WAIT:?}; the terminal showed:\n{}",
                String::from_utf8_lossy(&self.seen)
            );
        }
        self.prompts = wanted;
    }

    fn shown(&self) -> String {
        String::from_utf8_lossy(&self.seen).into_owned()
    }
}

#[tokio::test]
async fn the_gate_rebuilds_what_busybox_sh_runs() {
    let runtime = testing::connect_default().await;
    let image = testing::test_image(&runtime).await;
    let cleanup = Cleanup::new(&runtime);
    let launched = runtime
        .launch(&cleanup.spec(&image, ["sleep", "3600"]))
        .await
        .unwrap();
    let spec = ExecSpec::new(["sh"])
        .with_tty(TtySize {
            rows: 24,
            cols: 200,
        })
        .with_stdin();
    let mut session = runtime.exec(&launched.id, &spec).await.unwrap();
    let policy = RulePolicy::new(PolicySpec {
        default: Decision::Allow,
        rules: vec![RuleSpec::deny().named("no-rm").program(["rm"])],
        ..PolicySpec::default()
    })
    .unwrap();
    let mut terminal = Terminal {
        gate: LineGate::new(UncertainMode::Audit),
        policy,
        context: CommandContext {
            identity: Identity::new("player"),
            container: launched.id.clone(),
            owner: None,
            module: None,
        },
        stdin: session.stdin.take().unwrap(),
        output: std::mem::replace(&mut session.output, Box::pin(futures::stream::empty())),
        seen: Vec::new(),
        prompts: 0,
        decided: Vec::new(),
    };
    terminal.next_prompt().await;

    // Editing keys the gate follows: what it rebuilds is what ran.
    let typed: &[&[&[u8]]] = &[
        &[b"echo k1 hellp\x7fo wor\x17world\r"],
        &[b"echo never\x15echo k2 yes\r"],
        &[
            "echo k3 h".as_bytes(),
            b"\xc3",
            "\u{a9}".as_bytes()[1..].as_ref(),
            b"llo\r",
        ],
        &[b"echo k4 bad\x03", b"echo k4 good\r"],
        &[b"echo k5 a\x08\x08\x085 b\r"],
    ];
    for keys in typed {
        let before = terminal.decided.len();
        for chunk in *keys {
            terminal.type_keys(chunk).await;
            if chunk.ends_with(b"\r") || chunk.ends_with(b"\x03") {
                terminal.next_prompt().await;
            }
        }
        let (line, uncertain, allowed) = terminal.decided[before].clone();
        assert!(allowed && uncertain.is_none(), "{line:?} {uncertain:?}");
        let printed = line.strip_prefix("echo ").expect("an echo line");
        terminal.read_until(&format!("\n{printed}\r")).await;
    }
    assert_eq!(
        terminal
            .decided
            .iter()
            .map(|d| d.0.as_str())
            .collect::<Vec<_>>(),
        [
            "echo k1 hello world",
            "echo k2 yes",
            "echo k3 h\u{e9}llo",
            "echo k4 good",
            "echo k5 b"
        ]
    );
    assert!(
        !terminal.shown().contains("\nk4 bad"),
        "Ctrl-C discarded the line"
    );

    // A denied line never runs: its Enter is replaced by Ctrl-C.
    for keys in [
        &b"touch /tmp/keep\r"[..],
        b"rm /tmp/keep\r",
        b"ls /tmp/keep && echo k6 still-there\r",
    ] {
        terminal.type_keys(keys).await;
        terminal.next_prompt().await;
    }
    terminal.read_until("\nk6 still-there\r").await;
    let rm = terminal
        .decided
        .iter()
        .find(|d| d.0 == "rm /tmp/keep")
        .unwrap();
    assert!(!rm.2, "rm was denied");

    // Cursor movement: the gate cannot follow it, says so, and is right to:
    // the shell inserted the X before the b.
    terminal.type_keys(b"echo k7 ab\x1b[DX\r").await;
    terminal.next_prompt().await;
    terminal.read_until("\nk7 aXb\r").await;
    let moved = terminal.decided.last().unwrap().clone();
    assert_eq!(
        (moved.0.as_str(), moved.1),
        ("echo k7 abX", Some("cursor movement"))
    );

    // A cursor position reply (busybox asked at the prompt) with keys in
    // the same read: busybox may drop those keys, so the line is uncertain.
    terminal
        .type_keys(b"\x1b[1;5Recho k8 x; echo k8 seen\r")
        .await;
    terminal.next_prompt().await;
    terminal.read_until("\nk8 seen\r").await;
    let replied = terminal.decided.last().unwrap().clone();
    assert_eq!(
        (replied.0.as_str(), replied.1),
        (
            "echo k8 x; echo k8 seen",
            Some("a terminal reply (the shell may drop keys sent with it)")
        )
    );
    // And rightly so: busybox dropped the keys read with the reply.
    assert!(
        !terminal.shown().contains("\nk8 x\r"),
        "busybox ran every key sent with the reply; the gate may trust replies again:\n{}",
        terminal.shown()
    );

    terminal.type_keys(b"exit 3\r").await;
    session.stdin = Some(terminal.stdin);
    session.output = terminal.output;
    let result = session.collect(&runtime, WAIT).await.unwrap();
    assert_eq!(result.exit_code, 3);
    cleanup.clean().await;
}
