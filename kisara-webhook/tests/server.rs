//! The server side through its tower service: what a platform mounting
//! `router` answers to bodies too big, of the wrong type, undecodable,
//! unsigned or badly signed, and to handlers that fail or hang.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use kisara_core::{Error, Secret};
use kisara_webhook::sign::SIGNATURE_HEADER;
use kisara_webhook::wire::{
    AuthResponse, ConfigRequest, ConfigResponse, PasswordRequest, PublicKeyRequest,
    SessionEndedRequest,
};
use kisara_webhook::{ServerOptions, Signer, WebhookHandler, router};
use serde_json::Value;
use tower::ServiceExt;

const PASSWORD_REQUEST: &str = include_str!("fixtures/password-request.json");

async fn post(
    app: &axum::Router,
    path: &str,
    content_type: Option<&str>,
    extra: Option<(&str, String)>,
    body: impl Into<Body>,
) -> (StatusCode, Value) {
    let mut request = Request::post(path);
    if let Some(kind) = content_type {
        request = request.header(header::CONTENT_TYPE, kind);
    }
    if let Some((name, value)) = extra {
        request = request.header(name, value);
    }
    let response = app
        .clone()
        .oneshot(request.body(body.into()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, json)
}

fn backends_app(options: ServerOptions) -> axum::Router {
    router(Arc::new(common::backends()), options)
}

fn error_text(body: &Value) -> &str {
    body["error"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_platform_s_answers_pass_through() {
    let app = backends_app(ServerOptions::default());
    // "hunter2" is not alice's password: a denial is a 200 with success:false.
    let (status, body) = post(
        &app,
        "/password",
        Some("application/json"),
        None,
        PASSWORD_REQUEST,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["success"], false);
    let right = PASSWORD_REQUEST.replace("aHVudGVyMg==", "Y29ycmVjdCBob3JzZQ==");
    let (status, body) = post(
        &app,
        "/password",
        Some("application/json; charset=utf-8"),
        None,
        right,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["success"], true);
    assert_eq!(body["authenticatedUsername"], "alice");
}

#[tokio::test]
async fn bad_requests_are_refused_with_the_reason() {
    let app = backends_app(ServerOptions {
        max_body_bytes: 1024,
        ..ServerOptions::default()
    });
    let (status, _) = post(
        &app,
        "/password",
        Some("application/json"),
        None,
        vec![b' '; 4096],
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    let (status, body) = post(
        &app,
        "/password",
        Some("text/plain"),
        None,
        PASSWORD_REQUEST,
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(error_text(&body).contains("text/plain"), "{body}");

    let (status, body) = post(
        &app,
        "/password",
        Some("application/json"),
        None,
        r#"{"username": 5}"#,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_text(&body).contains("username"), "{body}");

    let (status, _) = post(&app, "/nowhere", Some("application/json"), None, "{}").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn signed_servers_take_only_fresh_signatures_of_the_same_body() {
    let signer = Signer::new(
        Secret::new("a shared secret of some length"),
        Duration::from_secs(300),
    )
    .unwrap();
    let app = backends_app(ServerOptions {
        signer: Some(signer.clone()),
        ..ServerOptions::default()
    });
    let json = Some("application/json");
    let signed = signer.sign(PASSWORD_REQUEST.as_bytes());
    let (status, body) = post(
        &app,
        "/password",
        json,
        Some((SIGNATURE_HEADER, signed.clone())),
        PASSWORD_REQUEST,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let (status, body) = post(&app, "/password", json, None, PASSWORD_REQUEST).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(error_text(&body).contains(SIGNATURE_HEADER), "{body}");

    // The same signature over another body.
    let other = PASSWORD_REQUEST.replace("alice", "mallory");
    let (status, _) = post(
        &app,
        "/password",
        json,
        Some((SIGNATURE_HEADER, signed)),
        other,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Another secret.
    let stranger = Signer::new(
        Secret::new("not the shared secret at all"),
        Duration::from_secs(300),
    )
    .unwrap();
    let forged = stranger.sign(PASSWORD_REQUEST.as_bytes());
    let (status, _) = post(
        &app,
        "/password",
        json,
        Some((SIGNATURE_HEADER, forged)),
        PASSWORD_REQUEST,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A signature from an hour ago is outside the window: a replay.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let old = signer.sign(PASSWORD_REQUEST.as_bytes());
    let tag = old.split_once(",v1=").unwrap().1;
    let replayed = format!("t={},v1={tag}", now - 3600);
    let (status, _) = post(
        &app,
        "/password",
        json,
        Some((SIGNATURE_HEADER, replayed)),
        PASSWORD_REQUEST,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// A handler that fails, hangs, or counts teardown calls.
#[derive(Default)]
struct Troubled {
    ended: AtomicUsize,
}

#[async_trait]
impl WebhookHandler for Troubled {
    async fn password(&self, _: PasswordRequest) -> kisara_core::Result<AuthResponse> {
        Err(Error::unavailable("the user database is down"))
    }
    async fn pubkey(&self, _: PublicKeyRequest) -> kisara_core::Result<AuthResponse> {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(AuthResponse::rejected())
    }
    async fn config(&self, _: ConfigRequest) -> kisara_core::Result<ConfigResponse> {
        Ok(ConfigResponse::default())
    }
    async fn session_ended(&self, _: SessionEndedRequest) -> kisara_core::Result<()> {
        self.ended.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test]
async fn failing_and_hanging_handlers_are_500_and_503() {
    let handler = Arc::new(Troubled::default());
    let app = router(
        handler.clone(),
        ServerOptions {
            timeout: Duration::from_millis(100),
            ..ServerOptions::default()
        },
    );
    let json = Some("application/json");
    let (status, body) = post(&app, "/password", json, None, PASSWORD_REQUEST).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        error_text(&body).contains("user database is down"),
        "{body}"
    );

    let pubkey = include_str!("fixtures/pubkey-request.json");
    let (status, body) = post(&app, "/pubkey", json, None, pubkey).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(error_text(&body).contains("100ms"), "{body}");

    let ended = serde_json::json!({
        "username": "alice",
        "connectionId": "0123456789ABCDEF",
        "kisara": {"session": "s-1", "reason": "exit", "exitCode": 0}
    });
    let (status, body) = post(&app, "/session-ended", json, None, ended.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(handler.ended.load(Ordering::SeqCst), 1);
}
