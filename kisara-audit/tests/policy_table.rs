//! The README's CTF policy against a table of commands (plain, shell-wrapped
//! and obfuscated), each with its decision and the rule that decides; and
//! the `CommandPolicy` conformance suite.

use std::sync::Arc;

use kisara_audit::RulePolicy;
use kisara_audit::policy::TraceStep;
use kisara_core::model::ContainerId;
use kisara_core::testing::access;
use kisara_core::{CommandContext, CommandPolicy, Identity, PolicyDecision};

/// The policy block of the README (the documented example is the tested one).
fn readme_policy() -> RulePolicy {
    let readme = include_str!("../README.md");
    let block = readme
        .split_once("<!-- policy-example -->\n```toml\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .map(|(block, _)| block)
        .expect("the README has the policy example block");
    RulePolicy::from_toml_str(block, "README.md").unwrap()
}

fn context(user: &str, roles: &[&str], module: &str) -> CommandContext {
    let mut identity = Identity::new(user);
    identity.roles = roles.iter().map(|r| (*r).to_owned()).collect();
    CommandContext {
        identity,
        container: ContainerId::new(format!("{module}-1")),
        owner: Some(user.to_owned()),
        module: Some(module.to_owned()),
    }
}

/// `allow:<rule>`: allowed, `<rule>` matched; `allow:none`: nothing runs;
/// `deny:<rule>`: denied by that rule; `deny:default`: by a default;
/// `deny:unparsable`: the input cannot be judged.
fn assert_expected(policy: &RulePolicy, who: &CommandContext, input: &str, expected: &str) {
    let explanation = policy.explain_line(who, input);
    let decision = policy.check_line(who, input).unwrap();
    assert_eq!(
        decision, explanation.decision,
        "{input:?}: check and explain agree"
    );
    let (kind, rule) = expected.split_once(':').unwrap();
    let matched: Vec<&str> = explanation
        .steps
        .iter()
        .filter_map(|step| match step {
            TraceStep::Rule {
                name,
                matched: true,
                ..
            } => name.as_deref(),
            _ => None,
        })
        .collect();
    match (kind, &decision) {
        ("allow", PolicyDecision::Allow) if rule == "none" => {
            assert!(matched.is_empty(), "{input:?}: {explanation}");
        }
        ("allow", PolicyDecision::Allow) => {
            assert!(
                matched.contains(&rule),
                "{input:?} not by {rule}:\n{explanation}"
            );
        }
        ("deny", PolicyDecision::Deny { reason }) => {
            let needle = match rule {
                "default" => "no rule allows".to_owned(),
                "unparsable" => "cannot judge".to_owned(),
                rule => format!("{rule:?} denies"),
            };
            assert!(
                reason.contains(&needle),
                "{input:?}: {reason}\n{explanation}"
            );
        }
        _ => panic!(
            "{input:?} as {}: expected {expected}, got {decision:?}\n{explanation}",
            who.identity.username
        ),
    }
}

#[test]
fn the_ctf_policy_decides_the_table() {
    let policy = readme_policy();
    let player = context("alice", &["player"], "web-easy");
    let author_home = context("bob", &["author"], "web-easy");
    let author_away = context("bob", &["author"], "crypto-1");
    let admin = context("root", &["admin"], "crypto-1");
    let guest = context("guest", &[], "web-easy");
    let both = context("carol", &["player", "author"], "crypto-1");
    let table: &[(&CommandContext, &str, &str)] = &[
        (&player, "ls -la /srv/challenge", "allow:player-tools"),
        (
            &player,
            "cat /srv/challenge/flag.txt",
            "allow:read-the-challenge",
        ),
        (
            &player,
            "cat -n /srv/challenge/a /srv/challenge/b",
            "allow:read-the-challenge",
        ),
        (
            &player,
            "cat /srv/challenge/../../etc/passwd",
            "deny:read-only-the-challenge",
        ),
        (&player, "cat /etc/passwd", "deny:read-only-the-challenge"),
        (&player, "cat flag.txt", "deny:read-only-the-challenge"),
        (
            &player,
            "cat //srv//challenge/./flag",
            "allow:read-the-challenge",
        ),
        (
            &player,
            "/bin/cat /srv/challenge/x",
            "allow:read-the-challenge",
        ),
        (
            &player,
            "head -n 5 /srv/challenge/x",
            "deny:read-only-the-challenge",
        ),
        (
            &player,
            "head -n5 /srv/challenge/x",
            "allow:read-the-challenge",
        ),
        (&player, "rm -rf /", "deny:no-recursive-rm-of-root"),
        (&player, "rm -fr /", "deny:no-recursive-rm-of-root"),
        (&player, "rm -r -f /", "deny:no-recursive-rm-of-root"),
        (&player, "rm --recursive //", "deny:no-recursive-rm-of-root"),
        (&player, "rm -rf /*", "deny:no-recursive-rm-of-root"),
        (&player, "/bin/rm -rf /", "deny:no-recursive-rm-of-root"),
        (&player, "r''m -rf /", "deny:no-recursive-rm-of-root"),
        (&player, "\\rm -rf /", "deny:no-recursive-rm-of-root"),
        (&player, "\"rm\" -Rf /.", "deny:no-recursive-rm-of-root"),
        (&player, "env rm -rf /", "deny:no-recursive-rm-of-root"),
        (
            &player,
            "env -i PATH=/bin rm -rf /",
            "deny:no-recursive-rm-of-root",
        ),
        (&player, "busybox rm -rf /", "deny:no-recursive-rm-of-root"),
        (
            &player,
            "sh -c 'ls; rm -rf /'",
            "deny:no-recursive-rm-of-root",
        ),
        (
            &player,
            "bash -c \"busybox rm -rf /\"",
            "deny:no-recursive-rm-of-root",
        ),
        (
            &player,
            "nice -n 10 nohup timeout 5 rm -rf /",
            "deny:no-recursive-rm-of-root",
        ),
        (&player, "ls && rm -rf /", "deny:no-recursive-rm-of-root"),
        (&player, "ls | rm -rf /", "deny:no-recursive-rm-of-root"),
        (&player, "ls\nrm -rf /", "deny:no-recursive-rm-of-root"),
        (&player, "ls & rm -rf /", "deny:no-recursive-rm-of-root"),
        (
            &player,
            "if true; then rm -rf /; fi",
            "deny:no-recursive-rm-of-root",
        ),
        (
            &player,
            "sh -c 'sh -c \"rm -rf /\"'",
            "deny:no-recursive-rm-of-root",
        ),
        (&player, "exec rm -rf /", "deny:no-recursive-rm-of-root"),
        (&player, "command rm -rf /", "deny:no-recursive-rm-of-root"),
        (
            &player,
            "stdbuf -oL rm -rf /",
            "deny:no-recursive-rm-of-root",
        ),
        (
            &player,
            "timeout -s KILL 5 rm -rf /",
            "deny:no-recursive-rm-of-root",
        ),
        (&player, "FOO=bar rm -rf /", "deny:no-recursive-rm-of-root"),
        (&player, "$(echo rm) -rf /", "deny:unparsable"),
        (&player, "`echo rm` -rf /", "deny:unparsable"),
        (&player, "eval rm -rf /", "deny:unparsable"),
        (&player, "echo $HOME", "deny:unparsable"),
        (&player, "cat < /etc/shadow", "deny:unparsable"),
        (&player, "echo x > /etc/passwd", "deny:unparsable"),
        (&player, "ls /srv/challenge/.*/../..", "deny:unparsable"),
        (&player, "/bin/r? -rf /", "deny:unparsable"),
        (&player, "r{m,} -rf /", "deny:unparsable"),
        (&player, "xargs rm", "deny:unparsable"),
        (&player, "find / -exec rm {} \\;", "deny:unparsable"),
        (&player, "!!", "deny:unparsable"),
        (&player, "echo rm -rf / | sh", "deny:default"),
        (&player, "rm file.txt", "deny:default"),
        (&player, "sudo rm -rf /", "deny:default"),
        (&player, "/tmp/solve", "deny:default"),
        (&player, "/srv/challenge/../../tmp/solve", "deny:default"),
        (&player, "/srv/challenge/solve --fast", "allow:solve-script"),
        (
            &player,
            "python3 -c 'import os'",
            "deny:no-network-or-interpreters",
        ),
        (
            &player,
            "/usr/bin/python3.11",
            "deny:no-network-or-interpreters",
        ),
        (
            &player,
            "curl http://127.0.0.1/",
            "deny:no-network-or-interpreters",
        ),
        (
            &player,
            "env X=1 nc -l 4444",
            "deny:no-network-or-interpreters",
        ),
        (&player, "reboot", "deny:no-power"),
        (&player, "/sbin/shutdown -h now", "deny:no-power"),
        (&player, "echo hello world", "allow:player-tools"),
        (
            &player,
            "grep -r flag /srv/challenge | wc -l",
            "allow:player-tools",
        ),
        (&player, "id; whoami; pwd", "allow:player-tools"),
        (&player, "echo 'rm -rf /'", "allow:player-tools"),
        (&player, "ls *.txt 2>&1", "allow:player-tools"),
        (&player, "# rm -rf /", "allow:none"),
        (
            &author_home,
            "rm -rf /var/www/cache",
            "allow:authors-in-their-modules",
        ),
        (&author_home, "rm -rf /", "deny:no-recursive-rm-of-root"),
        (
            &author_home,
            "python3 manage.py migrate",
            "allow:authors-in-their-modules",
        ),
        (&author_away, "ls /srv", "allow:authors-look-around"),
        (&author_away, "cat /etc/passwd", "allow:authors-look-around"),
        (&author_away, "rm x", "deny:default"),
        (&admin, "rm -rf /", "deny:no-recursive-rm-of-root"),
        (&admin, "reboot", "deny:no-power"),
        (&admin, "rm -rf /var/lib/x", "allow:admins"),
        (&admin, "$(echo rm) -rf /", "deny:unparsable"),
        (&guest, "ls", "deny:default"),
        (&both, "rm x", "deny:default"),
        (&both, "ls /srv", "allow:player-tools"),
    ];
    assert!(table.len() >= 60);
    for (who, input, expected) in table {
        assert_expected(&policy, who, input, expected);
    }
}

#[test]
fn defaults_name_whose_they_are() {
    let policy = readme_policy();
    let deny = |who: &CommandContext, line: &str| match policy.check_line(who, line).unwrap() {
        PolicyDecision::Deny { reason } => reason,
        PolicyDecision::Allow => panic!("{line:?} allowed"),
    };
    let reason = deny(&context("guest", &[], "web-easy"), "ls");
    assert!(reason.contains("the overall default is deny"), "{reason}");
    let reason = deny(&context("alice", &["player"], "web-easy"), "rm x");
    assert!(
        reason.contains("the default for role \"player\" is deny"),
        "{reason}"
    );
    // Roles grant: an admin default allows whatever else the identity holds.
    let decision = policy
        .check_line(&context("dave", &["player", "admin"], "web-easy"), "sudo x")
        .unwrap();
    assert_eq!(decision, PolicyDecision::Allow);
}

#[test]
fn a_denial_names_the_rule_and_what_matched() {
    let policy = readme_policy();
    let player = context("alice", &["player"], "web-easy");
    let PolicyDecision::Deny { reason } = policy.check_line(&player, "ls; env rm -Rf /").unwrap()
    else {
        panic!("allowed");
    };
    assert_eq!(
        reason,
        "rule #0 \"no-recursive-rm-of-root\" denies \"rm -Rf /\" (program \"rm\" ~ \"rm\"; \
         argument \"-Rf\" ~ \"re:-[a-zA-Z]*[rR][a-zA-Z]*\"; argument \"/\" ~ \"/\")"
    );
    let explanation = policy.explain_line(&player, "ls; env rm -Rf /").to_string();
    for part in [
        "command [\"ls\"]",
        "skipped rule #0 \"no-recursive-rm-of-root\": program \"ls\" matches none of [\"rm\"]",
        "matched rule #6 \"player-tools\"",
        "command [\"rm\", \"-Rf\", \"/\"] (run through env)",
        "denied: rule #0",
    ] {
        assert!(explanation.contains(part), "{part:?} in\n{explanation}");
    }
}

#[tokio::test]
async fn exec_argvs_are_judged_without_a_shell() {
    let policy = readme_policy();
    let player = context("alice", &["player"], "web-easy");
    let argv = |words: &[&str]| words.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>();
    for (command, allowed) in [
        (argv(&["sh", "-c", "ls; rm -rf /"]), false),
        (argv(&["/bin/busybox", "rm", "-rf", "/"]), false),
        (argv(&["cat", "/srv/challenge/flag"]), true),
        // No shell runs an argv: `$(...)` is a plain argument here.
        (argv(&["echo", "$(rm -rf /)"]), true),
        (argv(&["env", "-S", "rm -rf /"]), false),
    ] {
        let decision = policy.check(&player, &command).await.unwrap();
        assert_eq!(decision.is_allowed(), allowed, "{command:?}: {decision:?}");
    }
    let err = policy.check(&player, &[]).await.unwrap_err();
    assert_eq!(err.kind(), kisara_core::ErrorKind::Invalid);
}

#[tokio::test]
async fn rule_policy_passes_the_policy_suite() {
    access::command_policy(|| async {
        let player = context("alice", &["player"], "web-easy");
        let admin = context("root", &["admin"], "web-easy");
        let words = |line: &str| line.split(' ').map(str::to_owned).collect::<Vec<_>>();
        access::PolicyFixture {
            policy: Arc::new(readme_policy()),
            allowed: vec![
                (player.clone(), words("ls -la /")),
                (player.clone(), words("cat /srv/challenge/flag")),
                (admin.clone(), words("rm -rf /var/x")),
            ],
            denied: vec![
                (player.clone(), words("rm -rf /")),
                (player, words("cat /etc/passwd")),
                (admin, words("/sbin/reboot now")),
            ],
        }
    })
    .await;
}
