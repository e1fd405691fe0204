//! `config-check` against real files: the Go original's sample, a typo, and
//! a production config with the sample's weak token.

use std::process::Command;

fn config_check(path: &std::path::Path, env: &[(&str, &str)]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_config-check"))
        .arg(path)
        .envs(env.iter().copied())
        .output()
        .expect("run config-check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../kisara-core/tests/fixtures")
        .join(name)
}

#[test]
fn the_go_sample_is_accepted_and_secrets_stay_hidden() {
    let (ok, text) = config_check(&fixture("go-kisara-conf.toml"), &[]);
    assert!(ok, "{text}");
    assert!(text.contains("max_containers: 80"), "{text}");
    assert!(!text.contains("testtest"), "a token was printed: {text}");
    // Its warnings went to a pipe: plain text, no colour codes.
    assert!(
        text.contains("WARN") && !text.contains('\u{1b}'),
        "{text:?}"
    );
}

#[test]
fn a_typo_is_refused_naming_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kisara.toml");
    std::fs::write(&path, "[agent]\nmax_contianers = 3\n").unwrap();
    let (ok, text) = config_check(&path, &[]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("max_contianers") && text.contains("kisara.toml"),
        "{text}"
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prod.toml");
    std::fs::write(
        &path,
        "[kisara]\nmode = \"prod\"\ntoken = \"test\"\n\n[agent]\nmax_containers = 0\n",
    )
    .unwrap();
    let (ok, text) = config_check(&path, &[("KISARA_CONTAINERS__PIDS", "0")]);
    assert!(!ok, "{text}");
    for key in ["kisara.token", "agent.max_containers", "containers.pids"] {
        assert!(text.contains(key), "{key} missing from: {text}");
    }
}

#[test]
fn a_missing_file_is_named() {
    let (ok, text) = config_check(std::path::Path::new("/nonexistent/kisara.toml"), &[]);
    assert!(!ok);
    assert!(text.contains("/nonexistent/kisara.toml"), "{text}");
}

#[test]
fn help_names_the_default_file_and_exit_codes() {
    let output = Command::new(env!("CARGO_BIN_EXE_config-check"))
        .arg("--help")
        .output()
        .expect("run config-check");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("Usage: config-check [OPTIONS] [CONFIG]"),
        "{text}"
    );
    assert!(
        text.contains("conf/kisara.toml") && text.contains("Exit status"),
        "{text}"
    );
    let bad = Command::new(env!("CARGO_BIN_EXE_config-check"))
        .arg("--verbose")
        .output()
        .expect("run config-check");
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("unexpected argument '--verbose'"),
        "{stderr}"
    );
}

#[test]
fn a_reader_that_goes_away_early_is_no_crash() {
    // Like `config-check | head -1`: the pipe closes before the output is
    // written.
    let mut child = Command::new(env!("CARGO_BIN_EXE_config-check"))
        .arg(fixture("go-kisara-conf.toml"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run config-check");
    drop(child.stdout.take());
    let output = child.wait_with_output().expect("wait for config-check");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{:?}: {stderr}", output.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
