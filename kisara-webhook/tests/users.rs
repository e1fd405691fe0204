//! The users file behind the webhook-server example: core's access suites,
//! argon2 hashes only, and bad files named precisely.

use std::sync::Arc;

use kisara_core::model::{ContainerId, SessionId};
use kisara_core::testing::access::{self, AuthFixture, ConfigFixture};
use kisara_core::{Authenticator, ConfigProvider, ConfigRequest, Credentials, ErrorKind, Identity};
use kisara_webhook::{UsersFile, hash_password};

const ALICE_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@laptop";

fn users() -> UsersFile {
    let hash = hash_password("correct horse").unwrap();
    UsersFile::parse(&format!(
        r#"
[[user]]
name = "alice"
password = "{hash}"
keys = ["{ALICE_KEY}"]
roles = ["player"]
team = "blue"
[user.session]
target = {{ type = "container", container = "blue-web-1" }}
idle_timeout_secs = 900

[[user]]
name = "bob"
keys = ["{ALICE_KEY}"]
"#
    ))
    .unwrap()
}

fn request(username: &str, container: Option<&str>) -> ConfigRequest {
    ConfigRequest {
        identity: Identity::new(username),
        session: SessionId::new("s-1"),
        remote: None,
        requested_container: container.map(ContainerId::new),
    }
}

#[tokio::test]
async fn the_users_file_passes_the_authenticator_suite() {
    let users = users();
    access::authenticator(|| async {
        AuthFixture {
            authenticator: Arc::new(users.clone()),
            accepted: vec![
                (
                    Credentials::Password {
                        username: "alice".into(),
                        password: "correct horse".into(),
                    },
                    "alice".into(),
                ),
                (
                    Credentials::PublicKey {
                        username: "bob".into(),
                        public_key: ALICE_KEY.into(),
                    },
                    "bob".into(),
                ),
            ],
        }
    })
    .await;
}

#[tokio::test]
async fn the_users_file_passes_the_config_provider_suite() {
    let users = users();
    access::config_provider(|| async {
        ConfigFixture {
            provider: Arc::new(users.clone()),
            allowed: request("alice", Some("blue-web-1")),
            denied: request("alice", Some("red-web-1")),
        }
    })
    .await;
}

#[tokio::test]
async fn identities_carry_roles_and_team_and_sessions_their_config() {
    let users = users();
    let alice = users
        .authenticate(
            &Credentials::PublicKey {
                username: "alice".into(),
                public_key: ALICE_KEY.into(),
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(alice.roles, ["player"]);
    assert_eq!(alice.metadata["team"], "blue");
    let config = users.session_config(&request("alice", None)).await.unwrap();
    assert_eq!(
        config.idle_timeout,
        Some(std::time::Duration::from_secs(900))
    );
    // bob has a key and no session config: he may log in but not open a
    // session.
    let err = users
        .session_config(&request("bob", None))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    // bob has no password: a password login is the usual rejection.
    let err = users
        .authenticate(
            &Credentials::Password {
                username: "bob".into(),
                password: String::new(),
            },
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthenticated);
}

#[test]
fn hashes_are_salted_argon2id() {
    let (one, two) = (hash_password("pw").unwrap(), hash_password("pw").unwrap());
    assert!(one.starts_with("$argon2id$"), "{one}");
    assert_ne!(one, two, "every hash has its own salt");
}

#[test]
fn bad_files_are_refused_naming_the_user_and_what_is_wrong() {
    let cases = [
        (
            "[[user]]\nname = \"carol\"\npassword = \"hunter2\"\n",
            "plain text",
        ),
        (
            "[[user]]\nname = \"carol\"\npassword = \"$argon2id$nonsense\"\n",
            "argon2",
        ),
        (
            "[[user]]\nname = \"carol\"\nkeys = [\"AAAA\"]\n",
            "\"AAAA\"",
        ),
        (
            "[[user]]\nname = \"carol\"\nkeys = [\"rsa AAAA\"]\n",
            "unknown key type \"rsa\"",
        ),
        (
            "[[user]]\nname = \"carol\"\n[[user]]\nname = \"carol\"\n",
            "twice",
        ),
        ("[[user]]\nname = \"\"\n", "empty"),
        ("[[user]]\nname = \"carol\"\npasword = \"x\"\n", "pasword"),
        (
            "[[user]]\nname = \"carol\"\n[user.session]\ntarget = { type = \"vm\" }\n",
            "vm",
        ),
    ];
    for (text, expected) in cases {
        let err = UsersFile::parse(text).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
        let message = err.to_string();
        assert!(message.contains(expected), "{text:?}: {message}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.toml");
    std::fs::write(
        &path,
        "[[user]]\nname = \"carol\"\npassword = \"hunter2\"\n",
    )
    .unwrap();
    let err = UsersFile::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("users.toml") && err.contains("user 1 (\"carol\")"),
        "{err}"
    );
}

#[tokio::test]
async fn a_reload_takes_a_good_file_and_keeps_the_users_on_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.toml");
    let entry = |name: &str| format!("[[user]]\nname = \"{name}\"\nkeys = [\"{ALICE_KEY}\"]\n");
    std::fs::write(&path, entry("alice")).unwrap();
    let users = UsersFile::load(&path).unwrap();
    let shared = users.clone();
    let login = |username: &str| Credentials::PublicKey {
        username: username.into(),
        public_key: ALICE_KEY.into(),
    };
    assert!(shared.authenticate(&login("dave"), None).await.is_err());

    std::fs::write(&path, entry("alice") + &entry("dave")).unwrap();
    assert_eq!(users.reload().unwrap(), 2);
    assert_eq!(
        shared
            .authenticate(&login("dave"), None)
            .await
            .unwrap()
            .username,
        "dave"
    );

    std::fs::write(&path, "[[user]]\nname = \"dave\"\npassword = \"plain\"\n").unwrap();
    let err = users.reload().unwrap_err().to_string();
    assert!(err.contains("plain text"), "{err}");
    assert_eq!(shared.len(), 2, "a bad file changes nothing");
    assert!(shared.authenticate(&login("dave"), None).await.is_ok());
}
