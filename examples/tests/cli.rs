//! Every example binary's command line: `--help` and `--version`, unknown
//! flags refused with exit status 2, and logs on stderr as plain text when
//! piped or as JSON lines with `--log-format json`.

use std::process::{Command, Output};

/// Every example binary, by name.
const BINARIES: [(&str, &str); 6] = [
    ("server", env!("CARGO_BIN_EXE_server")),
    ("agent", env!("CARGO_BIN_EXE_agent")),
    ("relay", env!("CARGO_BIN_EXE_relay")),
    ("dev", env!("CARGO_BIN_EXE_dev")),
    ("config-check", env!("CARGO_BIN_EXE_config-check")),
    ("webhook-server", env!("CARGO_BIN_EXE_webhook-server")),
];

/// The binaries that read a Kisara config file and log through `tracing`
/// when it cannot be loaded.
const CONFIG_READERS: [&str; 5] = ["server", "agent", "relay", "dev", "config-check"];

fn run(binary: &str, args: &[&str]) -> Output {
    let (_, path) = BINARIES
        .iter()
        .find(|(name, _)| *name == binary)
        .unwrap_or_else(|| panic!("no binary {binary}"));
    Command::new(path)
        .args(args)
        .env_remove("KISARA_LOG_FORMAT")
        .env_remove("NO_COLOR")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {binary}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_and_version_name_the_binary() {
    for (name, _) in BINARIES {
        let help = run(name, &["--help"]);
        let stdout = text(&help.stdout);
        assert_eq!(help.status.code(), Some(0), "{name} --help: {stdout}");
        assert!(
            stdout.contains(&format!("Usage: {name} ")),
            "{name}: {stdout}"
        );
        assert!(stdout.contains("--log-format"), "{name}: {stdout}");

        let version = run(name, &["--version"]);
        let stdout = text(&version.stdout);
        assert_eq!(version.status.code(), Some(0), "{name} --version");
        assert_eq!(
            stdout.trim(),
            format!("{name} {}", env!("CARGO_PKG_VERSION")),
            "{name} --version"
        );
    }
}

#[test]
fn the_config_file_is_a_positional_argument_with_a_default() {
    for name in CONFIG_READERS {
        let stdout = text(&run(name, &["--help"]).stdout);
        assert!(
            stdout.contains("[CONFIG]") && stdout.contains("[default: conf/kisara.toml]"),
            "{name}: {stdout}"
        );
    }
}

#[test]
fn unknown_flags_and_bad_values_exit_2_naming_them() {
    for (name, _) in BINARIES {
        let output = run(name, &["--no-such-flag"]);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{name}: {stderr}");
        assert!(
            stderr.contains("unexpected argument '--no-such-flag'"),
            "{name}: {stderr}"
        );
        let output = run(name, &["--log-format", "xml"]);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{name}: {stderr}");
        assert!(
            stderr.contains("'xml'") && stderr.contains("text, json"),
            "{name}: {stderr}"
        );
    }
    // One config file only.
    let output = run("server", &["a.toml", "b.toml"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("'b.toml'"));
}

#[test]
fn piped_logs_are_plain_text() {
    let missing = "/nonexistent/kisara.toml";
    for name in CONFIG_READERS {
        let output = run(name, &[missing]);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{name}: {stderr}");
        assert!(stderr.contains(missing), "{name}: {stderr}");
        assert!(
            !stderr.contains('\u{1b}'),
            "{name}: ANSI escapes in {stderr:?}"
        );
    }
}

#[test]
fn log_format_json_gives_json_lines() {
    let missing = "/nonexistent/kisara.toml";
    // config-check prints its verdict itself; the others log it.
    for name in ["server", "agent", "relay", "dev"] {
        let output = run(name, &["--log-format", "json", missing]);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{name}: {stderr}");
        let records: Vec<serde_json::Value> = stderr
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{name}: {line:?} is no JSON: {e}"))
            })
            .collect();
        let error = records
            .iter()
            .find(|record| record["level"] == "ERROR")
            .unwrap_or_else(|| panic!("{name}: no ERROR record in {stderr}"));
        assert!(
            error["message"]
                .as_str()
                .is_some_and(|m| m.contains(missing)),
            "{name}: {error}"
        );
        assert!(error["timestamp"].is_string(), "{name}: {error}");
    }
    // The environment variable does the same, for a service manager.
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../kisara-core/tests/fixtures/go-kisara-conf.toml"
    );
    let output = Command::new(env!("CARGO_BIN_EXE_config-check"))
        .arg(fixture)
        .env("KISARA_LOG_FORMAT", "json")
        .output()
        .unwrap();
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let warnings: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}")))
        .collect();
    assert!(
        warnings.iter().any(|record| record["level"] == "WARN"),
        "{stderr}"
    );
}
