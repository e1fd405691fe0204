//! Property tests: decisions are deterministic and the indexed check agrees
//! with the full trace; no rule set, shell input or terminal input panics;
//! the line gate gives the same result however its input is split.
//!
//! Longer runs: `PROPTEST_CASES=100000 cargo test --release -p kisara-audit
//! --test policy_props`.

use kisara_audit::policy::shell::{quote_command, split_commands};
use kisara_audit::policy::{PolicySpec, RuleSpec};
use kisara_audit::{GateAction, LineGate, RulePolicy, UncertainMode};
use kisara_core::model::ContainerId;
use kisara_core::{CommandContext, Identity};
use proptest::prelude::*;

const TOKENS: &[&str] = &[
    "rm",
    "/bin/rm",
    "r''m",
    "\\rm",
    "ls",
    "cat",
    "sh",
    "-c",
    "bash",
    "env",
    "X=1",
    "busybox",
    "nice",
    "-n",
    "5",
    "timeout",
    "-rf",
    "-r",
    "/",
    "/*",
    "/srv/challenge/flag",
    "/srv/challenge/../../etc/passwd",
    "'ls; rm -rf /'",
    "\"a b\"",
    ";",
    "&&",
    "||",
    "|",
    "&",
    "\n",
    "$(id)",
    "`id`",
    "$HOME",
    "#",
    "if",
    "then",
    "fi",
    "*.txt",
    "2>&1",
    ">",
    "<",
    "(",
    "xargs",
    "eval",
    "'",
    "\"",
    "\\",
    "{a,b}",
    "!!",
    "python3",
    "reboot",
    "echo",
];

fn line() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(TOKENS), 0..12).prop_map(|t| t.join(" "))
}

fn context() -> impl Strategy<Value = CommandContext> {
    (
        prop::sample::subsequence(vec!["player", "author", "admin"], 0..=3),
        prop::option::of(prop::sample::select(vec!["web-easy", "pwn-1", "crypto"])),
    )
        .prop_map(|(roles, module)| {
            let mut identity = Identity::new("someone");
            identity.roles = roles.into_iter().map(str::to_owned).collect();
            CommandContext {
                identity,
                container: ContainerId::new("c-1"),
                owner: Some("someone".into()),
                module: module.map(str::to_owned),
            }
        })
}

fn pattern() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "rm",
            "ls",
            "cat",
            "/bin/rm",
            "python*",
            "-[rR]*",
            "/srv/challenge/**",
            "/",
            "/*",
            "re:-[a-z]*r[a-z]*",
            "re:.*",
            "*",
            "web-*",
        ])
        .prop_map(str::to_owned),
        "[a-z/*?\\[\\]!.-]{0,6}",
    ]
}

fn rule() -> impl Strategy<Value = RuleSpec> {
    (
        any::<bool>(),
        prop::sample::subsequence(vec!["player", "author", "admin"], 0..=2),
        prop::collection::vec(pattern(), 0..3),
        prop::collection::vec(pattern(), 0..2),
        prop::collection::vec((0..3usize, prop::collection::vec(pattern(), 1..3)), 0..3),
    )
        .prop_map(|(allow, roles, programs, modules, args)| {
            let mut rule = if allow {
                RuleSpec::allow()
            } else {
                RuleSpec::deny()
            }
            .roles(roles)
            .program(programs)
            .modules(modules);
            for (kind, patterns) in args {
                rule = match kind {
                    0 => rule.any_arg(patterns),
                    1 => rule.all_args(patterns),
                    _ => rule.arg_at(1, patterns),
                };
            }
            rule
        })
}

fn policy() -> impl Strategy<Value = Option<RulePolicy>> {
    prop::collection::vec(rule(), 0..12).prop_map(|rules| {
        RulePolicy::new(PolicySpec {
            rules,
            ..PolicySpec::default()
        })
        .ok()
    })
}

proptest! {
    #[test]
    fn decisions_are_deterministic_and_the_index_agrees_with_the_trace(
        policy in policy(),
        context in context(),
        line in line(),
    ) {
        let Some(policy) = policy else { return Ok(()) };
        let first = policy.check_line(&context, &line);
        let second = policy.check_line(&context, &line);
        match (first, second) {
            (Ok(first), Ok(second)) => {
                prop_assert_eq!(&first, &second);
                prop_assert_eq!(&policy.explain_line(&context, &line).decision, &first);
            }
            (Err(_), Err(_)) => prop_assert!(line.trim().is_empty()),
            (first, second) => prop_assert!(false, "{first:?} vs {second:?}"),
        }
    }

    #[test]
    fn policy_files_never_panic(body in prop::collection::vec(prop::sample::select(vec![
        "[policy]\n", "[[policy.rules]]\n", "decision = \"deny\"\n", "decision = \"maybe\"\n",
        "name = \"x\"\n", "program = \"[a\"\n", "program = [\"rm\", \"re:(\"]\n",
        "args = [{ any = [\"-r\"] }]\n", "args = [{ at = 0, is = \"x\" }]\n", "roles = 3\n",
        "default = \"allow\"\n", "[policy.role_defaults]\n", "player = \"deny\"\n", "x = 1\n",
        "unparsable = \"allow_audited\"\n", "\"\n", "[\n", "modules = [\"re:[\"]\n",
    ]), 0..10)) {
        let _ = RulePolicy::from_toml_str(&body.concat(), "prop.toml");
    }

    #[test]
    fn the_splitter_never_panics_and_quoting_round_trips(input in "\\PC{0,40}", line in line()) {
        let _ = split_commands(&input);
        if let Ok(commands) = split_commands(&line) {
            for words in commands {
                let quoted = quote_command(&words);
                prop_assert_eq!(split_commands(&quoted).unwrap(), vec![words], "{}", quoted);
            }
        }
    }

    #[test]
    fn the_gate_is_transparent_and_split_independent(
        input in prop::collection::vec(prop_oneof![
            any::<u8>(),
            prop::sample::select(b"\r\n\x1b[~O0123ABCD\x7f\x08\x15\x17\x03\x04\t\xc3\xa9".to_vec()),
        ], 0..200),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let whole = run_allowing(&[&input[..]]);
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
        points.sort_unstable();
        let mut pieces = Vec::new();
        let mut start = 0;
        for point in points {
            pieces.push(&input[start..point]);
            start = point;
        }
        pieces.push(&input[start..]);
        let split = run_allowing(&pieces);
        prop_assert_eq!(&split, &whole);
        // Allowing every line, the container gets exactly what was typed.
        prop_assert_eq!(&whole.0, &input);
    }
}

/// Feeds `pieces`, allowing each line: the bytes forwarded and the lines
/// decided (with their uncertainty).
fn run_allowing(pieces: &[&[u8]]) -> (Vec<u8>, Vec<(String, bool)>) {
    let mut gate = LineGate::new(UncertainMode::Audit);
    let mut forwarded = Vec::new();
    let mut lines = Vec::new();
    for piece in pieces {
        let mut actions = gate.feed(piece);
        while !actions.is_empty() {
            let mut next = Vec::new();
            for action in actions {
                match action {
                    GateAction::Forward(bytes) => forwarded.extend_from_slice(&bytes),
                    GateAction::Decide(line) => {
                        lines.push((line.line, line.uncertain.is_some()));
                        next = gate.allow();
                    }
                    GateAction::Show(_) => unreachable!("nothing is denied"),
                }
            }
            actions = next;
        }
    }
    (forwarded, lines)
}
