//! The `webhook-server` binary end to end: `--check`, `hash-password`, and
//! a running server that Kisara's webhook client logs in through, reloaded
//! on SIGHUP and stopped by SIGTERM.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use kisara_core::{Authenticator, Credentials, ErrorKind};
use kisara_webhook::{ClientOptions, WebhookAuthenticator};

const BIN: &str = env!("CARGO_BIN_EXE_webhook-server");

fn sample() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf/users.toml")
}

fn hash(password: &str) -> String {
    let mut child = Command::new(BIN)
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

#[test]
fn check_accepts_the_sample_and_names_what_is_wrong_in_a_bad_file() {
    let output = Command::new(BIN)
        .arg("--check")
        .arg(sample())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("ok, 2 user(s)"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("users.toml");
    std::fs::write(&bad, "[[user]]\nname = \"eve\"\npassword = \"letmein\"\n").unwrap();
    let output = Command::new(BIN).arg("--check").arg(&bad).output().unwrap();
    let text = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("users.toml") && text.contains("\"eve\"") && text.contains("plain text"),
        "{text}"
    );

    let output = Command::new(BIN)
        .args(["--listen", "nowhere", "x.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("'nowhere'") && stderr.contains("--listen"),
        "{stderr}"
    );
}

fn password(username: &str, password: &str) -> Credentials {
    Credentials::Password {
        username: username.into(),
        password: password.into(),
    }
}

#[tokio::test]
async fn a_running_server_answers_reloads_on_sighup_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.toml");
    let entry = |name: &str, pw: &str| {
        format!("[[user]]\nname = \"{name}\"\npassword = \"{}\"\n", hash(pw))
    };
    std::fs::write(&users, entry("alice", "correct horse")).unwrap();
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0"])
        .arg(&users)
        .env("KISARA_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The log line names the address it bound.
    let mut log = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let address = loop {
        line.clear();
        assert!(
            log.read_line(&mut line).unwrap() > 0,
            "the server exited before listening"
        );
        if let Some(rest) = line.split("address=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    std::thread::spawn(move || std::io::copy(&mut log, &mut std::io::sink()));

    let webhook =
        WebhookAuthenticator::new(&format!("http://{address}"), ClientOptions::default()).unwrap();
    let alice = webhook
        .authenticate(&password("alice", "correct horse"), None)
        .await
        .unwrap();
    assert_eq!(alice.username, "alice");
    let err = webhook
        .authenticate(&password("alice", "wrong"), None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthenticated);
    let err = webhook
        .authenticate(&password("bob", "hunter2"), None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthenticated);

    std::fs::write(
        &users,
        entry("alice", "correct horse") + &entry("bob", "hunter2"),
    )
    .unwrap();
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match webhook
            .authenticate(&password("bob", "hunter2"), None)
            .await
        {
            Ok(bob) => break assert_eq!(bob.username, "bob"),
            Err(err) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "bob never got in: {err}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}
