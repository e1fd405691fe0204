//! Bad policy files: each refused at load time, naming the rule (index and
//! name), the field and the bad value.

use kisara_audit::{AuditError, RulePolicy};

fn load_error(policy: &str) -> String {
    let config = format!("{policy}\n[server]\nlisten = \"127.0.0.1:0\"\n");
    let err = RulePolicy::from_toml_str(&config, "bad.toml").unwrap_err();
    // It converts into kisara-core's error as invalid input.
    let message = err.to_string();
    let core: kisara_core::Error = err.into();
    assert_eq!(core.kind(), kisara_core::ErrorKind::Invalid, "{core}");
    message
}

#[test]
fn bad_rules_are_named_with_field_and_value() {
    let ok = "[[policy.rules]]\nname = \"fine\"\ndecision = \"allow\"\nprogram = \"ls\"\n\n";
    for (rule, expected) in [
        (
            "name = \"bad-regex\"\ndecision = \"deny\"\nargs = [{ any = [\"re:(\"] }]",
            &[
                "rule #1 (\"bad-regex\")",
                "field `args[0].any[0]`",
                "bad regex \"(\"",
            ][..],
        ),
        (
            "name = \"bad-glob\"\ndecision = \"deny\"\nprogram = [\"rm\", \"[ab\"]",
            &[
                "rule #1 (\"bad-glob\")",
                "field `program[1]`",
                "unclosed `[` in glob \"[ab\"",
            ],
        ),
        (
            "name = \"typo\"\ndecision = \"deny\"\nprogrm = \"rm\"",
            &[
                "rule #1 (\"typo\")",
                "field `progrm`",
                "unknown field `progrm`",
            ],
        ),
        (
            "name = \"maybe\"\ndecision = \"perhaps\"",
            &[
                "rule #1 (\"maybe\")",
                "field `decision`",
                "unknown variant `perhaps`",
                "(value: \"perhaps\")",
            ],
        ),
        (
            "decision = \"deny\"\nowners = [\"re:[\"]",
            &["rule #1:", "field `owners[0]`", "bad regex \"[\""],
        ),
        (
            "name = \"no-decision\"\nprogram = \"rm\"",
            &[
                "rule #1 (\"no-decision\")",
                "field `decision`",
                "missing field `decision`",
            ],
        ),
        (
            "name = \"two-kinds\"\ndecision = \"deny\"\nargs = [{ any = [\"-r\"], all = [\"/\"] }]",
            &[
                "rule #1 (\"two-kinds\")",
                "field `args[0]`",
                "exactly one of",
            ],
        ),
        (
            "name = \"position-0\"\ndecision = \"deny\"\nargs = [{ at = 0, is = \"rm\" }]",
            &["field `args[0].at`", "position 0 is the program"],
        ),
        (
            "name = \"arg-typo\"\ndecision = \"deny\"\nargs = [{ anny = [\"-r\"] }]",
            &[
                "rule #1 (\"arg-typo\")",
                "field `args`",
                "unknown field `anny`",
            ],
        ),
        (
            "name = \"wrong-type\"\ndecision = \"deny\"\nprogram = 3",
            &[
                "field `program`",
                "a pattern or a list of patterns",
                "(value: 3)",
            ],
        ),
        (
            "name = \"empty\"\ndecision = \"deny\"\nargs = [{ any = [] }]",
            &["field `args[0]`", "empty pattern list"],
        ),
        (
            "name = \"blank-role\"\ndecision = \"deny\"\nroles = [\" \"]",
            &["field `roles[0]`", "empty role \" \""],
        ),
    ] {
        let message = load_error(&format!("{ok}[[policy.rules]]\n{rule}\n"));
        assert!(message.starts_with("policy bad.toml: "), "{message}");
        for part in expected {
            assert!(message.contains(part), "{part:?} in {message:?}");
        }
    }
}

#[test]
fn bad_policy_tables_are_named() {
    for (policy, expected) in [
        (
            "[policy]\ndefault = \"maybe\"\n",
            &["[policy]: field `default`", "(value: \"maybe\")"][..],
        ),
        (
            "[policy]\nunparsable = \"shrug\"\n",
            &["field `unparsable`", "shrug"],
        ),
        ("[policy]\ndefalt = \"deny\"\n", &["unknown field `defalt`"]),
        (
            "[policy.role_defaults]\nplayer = \"perhaps\"\n",
            &["perhaps"],
        ),
        (
            "[policy]\nrules = 3\n",
            &["`policy.rules` must be an array of tables, not 3"],
        ),
        ("policy = 3\n", &["`policy` must be a table, not 3"]),
        ("[other]\n", &["there is no [policy] table"]),
        ("[policy\n", &["policy bad.toml: "]),
    ] {
        let message = load_error(policy);
        for part in expected {
            assert!(message.contains(part), "{part:?} in {message:?}");
        }
    }
}

#[test]
fn a_missing_file_names_its_path() {
    let err = RulePolicy::from_file("/nonexistent/kisara-policy.toml").unwrap_err();
    assert!(matches!(err, AuditError::PolicyRead { .. }), "{err}");
    assert!(
        err.to_string().contains("/nonexistent/kisara-policy.toml"),
        "{err}"
    );
    let core: kisara_core::Error = err.into();
    assert_eq!(core.kind(), kisara_core::ErrorKind::Unavailable);
}

#[test]
fn a_good_file_loads_from_disk() {
    let dir = std::env::temp_dir().join(kisara_core::testing::unique_name("policy"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kisara.toml");
    std::fs::write(
        &path,
        "[server]\nx = 1\n[policy]\ndefault = \"allow\"\n[[policy.rules]]\ndecision = \"deny\"\nprogram = \"rm\"\n",
    )
    .unwrap();
    let loaded = RulePolicy::from_file(&path);
    std::fs::remove_dir_all(&dir).unwrap();
    let policy = loaded.unwrap();
    let who = kisara_core::CommandContext {
        identity: kisara_core::Identity::new("x"),
        container: kisara_core::model::ContainerId::new("c"),
        owner: None,
        module: None,
    };
    assert!(policy.check_line(&who, "ls").unwrap().is_allowed());
    assert!(!policy.check_line(&who, "rm x").unwrap().is_allowed());
}
