//! Round trips of ContainerSSH's documented request and response bodies
//! (0.5 docs and OpenAPI file, kept under `tests/fixtures/`): every field
//! survives, and extra fields are accepted and counted.

use kisara_webhook::wire::{
    AuthResponse, AuthzRequest, ConfigRequest, ConfigResponse, PasswordRequest, PublicKeyRequest,
    decode,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Decodes a fixture, re-encodes it and compares the JSON trees.
fn round_trip<T: Serialize + DeserializeOwned>(name: &str) -> T {
    let body = fixture(name);
    let decoded = decode::<T>(name, &body).unwrap();
    assert!(decoded.unknown.is_empty(), "{name}: {:?}", decoded.unknown);
    let original: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let encoded = serde_json::to_value(&decoded.value).unwrap();
    assert_eq!(encoded, original, "{name} changed in a round trip");
    decoded.value
}

#[test]
fn password_requests_round_trip() {
    let request: PasswordRequest = round_trip("password-request.json");
    assert_eq!(request.password.0, b"hunter2");
    assert_eq!(request.files["/etc/motd"].value, b"hello\n");
    assert!(!format!("{request:?}").contains("hunter2"));
}

#[test]
fn pubkey_requests_round_trip() {
    let request: PublicKeyRequest = round_trip("pubkey-request.json");
    assert!(request.public_key.starts_with("ssh-ed25519 "));
}

#[test]
fn authz_requests_round_trip() {
    let request: AuthzRequest = round_trip("authz-request.json");
    assert_eq!(
        request.authenticated_username.as_deref(),
        Some("alice@example.com")
    );
    assert!(request.metadata["oauth2_token"].sensitive);
}

#[test]
fn auth_responses_round_trip() {
    let response: AuthResponse = round_trip("auth-response.json");
    assert!(response.success);
    assert_eq!(response.files["/root/.ssh/id_ed25519"].value, b"secret");
}

#[test]
fn config_requests_and_responses_round_trip() {
    let _: ConfigRequest = round_trip("config-request.json");
    let response: ConfigResponse = round_trip("config-response.json");
    assert_eq!(
        response.config["docker"]["connection"]["host"],
        "tcp://10.0.0.2:2376"
    );
    let kisara: ConfigResponse = round_trip("kisara-config-response.json");
    let session = kisara.kisara.unwrap().session.unwrap();
    let config = session.into_config("config response").unwrap();
    assert_eq!(config.shell, ["/bin/bash", "-l"]);
}

#[test]
fn extra_fields_are_accepted_and_counted() {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let decoded = metrics::with_local_recorder(&recorder, || {
        decode::<AuthResponse>("/password response", &fixture("auth-response-extra.json"))
    })
    .unwrap();
    assert!(decoded.value.success);
    assert_eq!(decoded.value.kisara.unwrap().roles, ["player"]);
    assert_eq!(
        decoded.unknown,
        ["reason", "expires", "metadata.team.ttl", "kisara.avatar"]
    );
    let counted: u64 = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == "kisara_webhook_unknown_fields_total")
        .map(|(.., value)| match value {
            metrics_util::debugging::DebugValue::Counter(n) => n,
            other => panic!("{other:?}"),
        })
        .sum();
    assert_eq!(counted, 4);
}
