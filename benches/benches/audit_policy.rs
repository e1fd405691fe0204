//! kisara-audit: command policy checks and the line gate, beside the
//! physical reference of reading the same bytes.
//!
//! Run with `cargo bench -p kisara-benches --bench audit_policy` (seconds;
//! `KISARA_BENCH_SMOKE=1` for a tiny run).
//!
//! - **policy**: `RulePolicy::check_argv` and `check_line` over a 100-rule
//!   set (player, author and admin rules over 90 programs, globs, regexes,
//!   path globs) on a mix of commands, in checks per second; the reference
//!   is `memchr` over the same command bytes (the least a check must do is
//!   read its input). Goal ≥ 1 M checks/s.
//! - **line gate**: typed input (text, Backspace, arrows, Ctrl-W, Enter) fed
//!   in 4 KiB reads, every line allowed, in ns per byte; the reference is
//!   finding the Enters with `memchr` and copying the bytes out, which any
//!   forwarding does. Goal ≤ 50 ns/byte.

// A bench reports on stdout.
#![allow(clippy::print_stdout)]

use std::hint::black_box;
use std::time::Instant;

use kisara_audit::policy::{PolicySpec, RuleSpec};
use kisara_audit::{GateAction, LineGate, RulePolicy, UncertainMode};
use kisara_benches::{Samples, Table, met, smoke};
use kisara_core::model::ContainerId;
use kisara_core::{CommandContext, Identity};

fn hundred_rules() -> RulePolicy {
    let mut rules = vec![
        RuleSpec::deny()
            .named("no-recursive-rm-of-root")
            .program(["rm"])
            .any_arg(["re:-[a-zA-Z]*[rR][a-zA-Z]*", "--recursive"])
            .any_arg(["/", "/*"]),
        RuleSpec::deny()
            .named("no-power")
            .program(["reboot", "shutdown", "halt"]),
        RuleSpec::deny()
            .named("no-interpreters")
            .roles(["player"])
            .program(["python*", "perl", "ruby", "php*", "node"]),
        RuleSpec::allow()
            .named("read-the-challenge")
            .roles(["player"])
            .program(["cat", "head", "tail"])
            .all_args(["-*", "/srv/challenge/**"]),
        RuleSpec::allow()
            .named("authors")
            .roles(["author"])
            .modules(["web-*"]),
    ];
    for i in 0..90 {
        let rule = if i % 2 == 0 {
            RuleSpec::allow()
        } else {
            RuleSpec::deny()
        }
        .named(format!("tool-{i:03}"))
        .roles([["player", "author", "admin"][i % 3]])
        .program([format!("tool{i:03}")])
        .any_arg([format!("--mode-{i}"), format!("/srv/data/{i}/**")]);
        rules.push(rule);
    }
    for i in 0..5 {
        rules.push(
            RuleSpec::deny()
                .named(format!("glob-{i}"))
                .program([format!("x{i}*")])
                .arg_at(1, ["re:--(force|yes)"]),
        );
    }
    assert_eq!(rules.len(), 100);
    RulePolicy::new(PolicySpec {
        rules,
        ..PolicySpec::default()
    })
    .expect("the bench's rules compile")
}

const ARGVS: &[&[&str]] = &[
    &["ls", "-la", "/srv/challenge"],
    &["cat", "/srv/challenge/flag.txt"],
    &["rm", "-rf", "/"],
    &["/usr/bin/tool042", "--mode-42", "/srv/data/42/x"],
    &["tool077", "-v"],
    &["x3-tool", "--force"],
    &[
        "env",
        "X=1",
        "busybox",
        "cat",
        "/srv/challenge/../../etc/passwd",
    ],
    &["python3", "-c", "print(1)"],
];

const LINES: &[&str] = &[
    "ls -la /srv/challenge",
    "cat /srv/challenge/flag.txt | grep -i ctf",
    "sh -c 'ls; rm -rf /'",
    "tool042 --mode-42 /srv/data/42/x && echo done",
];

fn rate(count: usize, seconds: f64) -> f64 {
    count as f64 / seconds
}

/// The median of `reps` timings of `run`, as per-second rates of `count`.
fn measure(reps: usize, count: usize, mut run: impl FnMut()) -> f64 {
    let mut samples = Samples::default();
    for _ in 0..reps {
        let start = Instant::now();
        run();
        samples.push_value(rate(count, start.elapsed().as_secs_f64()));
    }
    samples.median()
}

fn typed_input(bytes: usize) -> Vec<u8> {
    let lines: &[&[u8]] = &[
        b"ls -la /srv/challenge\r",
        b"cat /srv/challenge/flag.txtt\x7f\r",
        b"echo hello wrold\x17world\r",
        b"grep -r ctf /srv/challenge | sort | uniq -c\r",
        b"vim notes\x1b[D\x1b[Dx\r",
        "echo h\u{e9}llo w\u{f6}rld \u{1f600}\r".as_bytes(),
    ];
    let mut input = Vec::with_capacity(bytes);
    while input.len() < bytes {
        input.extend_from_slice(lines[input.len() % lines.len()]);
    }
    input
}

fn main() {
    let smoke = smoke();
    let reps = if smoke { 1 } else { 7 };
    let mut table = Table::new(&["measure", "Kisara", "reference", "ratio", "goal", "met?"]);

    let policy = hundred_rules();
    let mut player = Identity::new("alice");
    player.roles.push("player".to_owned());
    let context = CommandContext {
        identity: player,
        container: ContainerId::new("web-1"),
        owner: Some("alice".to_owned()),
        module: Some("crypto-1".to_owned()),
    };
    let argvs: Vec<Vec<String>> = ARGVS
        .iter()
        .map(|argv| argv.iter().map(|w| (*w).to_owned()).collect())
        .collect();
    let rounds = if smoke { 200 } else { 50_000 };
    let checks = rounds * argvs.len();
    let argv_rate = measure(reps, checks, || {
        for _ in 0..rounds {
            for argv in &argvs {
                black_box(policy.check_argv(&context, black_box(argv)).unwrap());
            }
        }
    });
    let line_checks = rounds * LINES.len();
    let line_rate = measure(reps, line_checks, || {
        for _ in 0..rounds {
            for line in LINES {
                black_box(policy.check_line(&context, black_box(line)).unwrap());
            }
        }
    });
    let reference_rate = measure(reps, checks, || {
        for _ in 0..rounds {
            for argv in &argvs {
                for word in argv {
                    black_box(memchr::memchr(b'/', black_box(word.as_bytes())));
                }
            }
        }
    });
    for (measure, kisara) in [
        ("policy checks/s, 100 rules, argv", argv_rate),
        ("policy checks/s, 100 rules, shell line", line_rate),
    ] {
        table.row(vec![
            measure.to_owned(),
            format!("{:.2} M/s", kisara / 1e6),
            format!("{:.1} M/s memchr", reference_rate / 1e6),
            format!("{:.3}×", kisara / reference_rate),
            "≥ 1 M/s".to_owned(),
            met(Some(kisara >= 1e6)),
        ]);
    }

    let input = typed_input(if smoke { 64 << 10 } else { 8 << 20 });
    let gate_rate = measure(reps, input.len(), || {
        let mut gate = LineGate::new(UncertainMode::Audit);
        let mut forwarded = 0usize;
        for chunk in input.chunks(4096) {
            let mut actions = gate.feed(chunk);
            while !actions.is_empty() {
                let mut next = Vec::new();
                for action in actions {
                    match action {
                        GateAction::Forward(bytes) => forwarded += bytes.len(),
                        GateAction::Decide(_) => next = gate.allow(),
                        GateAction::Show(_) => {}
                    }
                }
                actions = next;
            }
        }
        assert_eq!(forwarded, input.len());
    });
    let copy_rate = measure(reps, input.len(), || {
        let mut out = Vec::with_capacity(4096);
        for chunk in input.chunks(4096) {
            let mut rest = chunk;
            while let Some(at) = memchr::memchr(b'\r', rest) {
                out.clear();
                out.extend_from_slice(&rest[..=at]);
                black_box(&out);
                rest = &rest[at + 1..];
            }
            out.clear();
            out.extend_from_slice(rest);
            black_box(&out);
        }
    });
    let ns_per_byte = 1e9 / gate_rate;
    let reference_ns = 1e9 / copy_rate;
    table.row(vec![
        "line gate, ns per input byte".to_owned(),
        format!("{ns_per_byte:.2} ns"),
        format!("{reference_ns:.2} ns memchr+copy"),
        format!("{:.1}×", ns_per_byte / reference_ns),
        "≤ 50 ns".to_owned(),
        met(Some(ns_per_byte <= 50.0)),
    ]);
    println!("\n## Summary\n\n{table}");
}
