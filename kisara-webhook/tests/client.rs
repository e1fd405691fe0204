//! The client backends against real local servers: core's conformance
//! suites over the webhook, and servers that misbehave, with the outcome and
//! the number of attempts asserted.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    ALICE_KEY, Act, OPS_TOKEN, Scripted, counter, fast_options, identity, real_server, recorder,
};
use kisara_core::model::{ContainerId, SessionId};
use kisara_core::testing::access;
use kisara_core::{
    Authenticator, ConfigProvider, ConfigRequest, Credentials, ErrorKind, SessionConfig,
    SessionTarget,
};
use kisara_webhook::{ClientOptions, ServerOptions, WebhookAuthenticator, WebhookConfigProvider};
use tokio::net::TcpListener;

fn password(username: &str, password: &str) -> Credentials {
    Credentials::Password {
        username: username.into(),
        password: password.into(),
    }
}

#[tokio::test]
async fn the_webhook_authenticator_passes_the_authenticator_suite() {
    let addr = real_server(None, ServerOptions::default()).await;
    access::authenticator(|| async move {
        let authenticator =
            WebhookAuthenticator::new(&format!("http://{addr}"), fast_options()).unwrap();
        access::AuthFixture {
            authenticator: Arc::new(authenticator),
            accepted: vec![
                (password("alice", "correct horse"), "alice".into()),
                (
                    Credentials::PublicKey {
                        username: "alice".into(),
                        public_key: ALICE_KEY.replace("alice@laptop", "other-comment"),
                    },
                    "alice".into(),
                ),
                (
                    Credentials::BearerToken {
                        token: OPS_TOKEN.into(),
                    },
                    "ops".into(),
                ),
            ],
        }
    })
    .await;
}

fn config_request(username: &str, container: Option<&str>) -> ConfigRequest {
    ConfigRequest {
        session: SessionId::new("s-1"),
        identity: identity(username, &["player"], Some("blue")),
        remote: Some("127.0.0.1:40000".parse().unwrap()),
        requested_container: container.map(ContainerId::new),
    }
}

#[tokio::test]
async fn the_webhook_config_provider_passes_the_config_suite() {
    let addr = real_server(None, ServerOptions::default()).await;
    access::config_provider(|| async move {
        let provider =
            WebhookConfigProvider::new(&format!("http://{addr}/config"), fast_options()).unwrap();
        access::ConfigFixture {
            provider: Arc::new(provider),
            allowed: config_request("alice", Some("blue-web-1")),
            denied: config_request("alice", Some("red-web-1")),
        }
    })
    .await;
}

#[tokio::test]
async fn identities_carry_roles_and_team() {
    let addr = real_server(None, ServerOptions::default()).await;
    let authenticator =
        WebhookAuthenticator::new(&format!("http://{addr}"), fast_options()).unwrap();
    let alice = authenticator
        .authenticate(&password("alice", "correct horse"), None)
        .await
        .unwrap();
    assert_eq!(alice, identity("alice", &["player"], Some("blue")));
}

#[tokio::test]
async fn a_containerssh_only_webhook_works() {
    // No `kisara` keys anywhere, no /token: ContainerSSH's own shapes.
    let auth = Scripted::start(vec![Act::Ok(
        r#"{"success":true,"authenticatedUsername":"alice","metadata":{"team":{"value":"red","sensitive":false}}}"#,
    )])
    .await;
    let authenticator = WebhookAuthenticator::new(&auth.url(), fast_options()).unwrap();
    let alice = authenticator
        .authenticate(&password("alice", "pw"), None)
        .await
        .unwrap();
    assert_eq!(alice.metadata["team"], "red");
    assert!(alice.roles.is_empty());

    let no_token = Scripted::start(vec![Act::Status(404)]).await;
    let authenticator = WebhookAuthenticator::new(&no_token.url(), fast_options()).unwrap();
    let err = authenticator
        .authenticate(&Credentials::BearerToken { token: "t".into() }, None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err}");

    let config = Scripted::start(vec![Act::Ok(
        r#"{"config":{"backend":"docker"},"environment":{"TEAM":{"value":"red","sensitive":false}}}"#,
    )])
    .await;
    let default = SessionConfig::new(SessionTarget::Container {
        container: ContainerId::new("shared"),
    });
    let provider = WebhookConfigProvider::new(&config.url(), fast_options())
        .unwrap()
        .with_default(default);
    let session = provider
        .session_config(&config_request("alice", None))
        .await
        .unwrap();
    assert_eq!(session.env["TEAM"], "red");
    let provider = WebhookConfigProvider::new(&config.url(), fast_options()).unwrap();
    let err = provider
        .session_config(&config_request("alice", None))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("kisara.session: missing"), "{err}");
}

async fn outcome(script: Vec<Act>, options: ClientOptions) -> (kisara_core::Result<()>, usize) {
    let server = Scripted::start(script).await;
    let authenticator = WebhookAuthenticator::new(&server.url(), options).unwrap();
    let result = authenticator
        .authenticate(&password("alice", "pw"), None)
        .await
        .map(|_| ());
    (result, server.count())
}

const YES: &str = r#"{"success":true,"authenticatedUsername":"alice"}"#;
const NO: &str = r#"{"success":false}"#;

#[tokio::test]
async fn a_denial_is_never_retried() {
    let (result, attempts) = outcome(vec![Act::Ok(NO)], fast_options()).await;
    assert_eq!(result.unwrap_err().kind(), ErrorKind::Unauthenticated);
    assert_eq!(attempts, 1);
}

#[tokio::test]
async fn errors_5xx_are_retried_until_success() {
    let metrics = recorder();
    let script = vec![Act::Status(500), Act::Status(503), Act::Ok(YES)];
    let (result, attempts) = outcome(script, fast_options()).await;
    result.unwrap();
    assert_eq!(attempts, 3);
    assert_eq!(counter(&metrics, "kisara_webhook_retries_total"), 2);
}

#[tokio::test]
async fn errors_4xx_are_not_retried() {
    let (result, attempts) = outcome(vec![Act::Status(400)], fast_options()).await;
    let err = result.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(err.to_string().contains("HTTP 400"), "{err}");
    assert_eq!(attempts, 1);
}

#[tokio::test]
async fn slow_answers_time_out_and_are_retried() {
    let script = vec![
        Act::Slow(Duration::from_millis(600), YES),
        Act::Slow(Duration::from_millis(10), YES),
    ];
    let (result, attempts) = outcome(script, fast_options()).await;
    result.unwrap();
    assert_eq!(attempts, 2);
}

#[tokio::test]
async fn a_server_that_hangs_after_headers_fails_at_the_deadline() {
    let options = ClientOptions {
        deadline: Duration::from_secs(1),
        ..fast_options()
    };
    let started = Instant::now();
    let (result, attempts) = outcome(vec![Act::HangAfterHeaders], options).await;
    let err = result.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    let message = err.to_string();
    assert!(
        message.contains("within 1s") && message.contains("did not answer"),
        "{message}"
    );
    assert!((2..=4).contains(&attempts), "{attempts} attempts");
    assert!(started.elapsed() < Duration::from_millis(1500));
}

#[tokio::test]
async fn truncated_bodies_are_errors() {
    let (result, attempts) = outcome(vec![Act::Truncated], fast_options()).await;
    let err = result.unwrap_err().to_string();
    assert!(err.contains("the body broke off"), "{err}");
    assert_eq!(attempts, 1);
}

#[tokio::test]
async fn a_100_mb_body_is_rejected_by_size() {
    for act in [Act::Huge, Act::HugeChunked] {
        let started = Instant::now();
        let (result, attempts) = outcome(vec![act.clone()], fast_options()).await;
        let err = result.unwrap_err().to_string();
        assert!(
            err.contains("over the 1048576-byte limit"),
            "{act:?}: {err}"
        );
        assert_eq!(attempts, 1);
        assert!(started.elapsed() < Duration::from_secs(1), "{act:?}");
    }
}

#[tokio::test]
async fn a_wrong_content_type_is_an_error() {
    let (result, attempts) = outcome(vec![Act::WrongType], fast_options()).await;
    let err = result.unwrap_err().to_string();
    assert!(err.contains("content type \"text/html\""), "{err}");
    assert_eq!(attempts, 1);
}

#[tokio::test]
async fn undecodable_answers_name_the_field() {
    let (result, attempts) = outcome(vec![Act::Ok(r#"{"success":"yes"}"#)], fast_options()).await;
    let err = result.unwrap_err().to_string();
    assert!(
        err.contains("password response: success: invalid type"),
        "{err}"
    );
    assert_eq!(attempts, 1);
}

#[tokio::test]
async fn connection_refused_then_success() {
    let metrics = recorder();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let authenticator =
        WebhookAuthenticator::new(&format!("http://{addr}"), fast_options()).unwrap();
    let call = tokio::spawn(async move {
        authenticator
            .authenticate(&password("alice", "pw"), None)
            .await
    });
    tokio::time::sleep(Duration::from_millis(250)).await;
    let server = Scripted::on(TcpListener::bind(addr).await.unwrap(), vec![Act::Ok(YES)]);
    call.await.unwrap().unwrap();
    assert_eq!(server.count(), 1);
    assert!(counter(&metrics, "kisara_webhook_retries_total") >= 2);
}

#[tokio::test]
async fn a_dropped_connection_is_retried() {
    let (result, attempts) = outcome(vec![Act::Close, Act::Ok(YES)], fast_options()).await;
    result.unwrap();
    assert_eq!(attempts, 2);
}

#[tokio::test]
async fn connections_are_reused() {
    let server = Scripted::start(vec![Act::Ok(YES)]).await;
    let listener_connections = server.requests.clone();
    let authenticator = WebhookAuthenticator::new(&server.url(), fast_options()).unwrap();
    for _ in 0..5 {
        authenticator
            .authenticate(&password("alice", "pw"), None)
            .await
            .unwrap();
    }
    assert_eq!(
        listener_connections.load(std::sync::atomic::Ordering::SeqCst),
        5
    );
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn a_dead_webhook_opens_the_breaker_and_fails_fast() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let options = ClientOptions {
        deadline: Duration::from_millis(300),
        breaker_failures: 2,
        breaker_cooldown: Duration::from_millis(500),
        ..fast_options()
    };
    let authenticator = WebhookAuthenticator::new(&format!("http://{addr}"), options).unwrap();
    for _ in 0..2 {
        let err = authenticator
            .authenticate(&password("alice", "pw"), None)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
    }
    let started = Instant::now();
    let err = authenticator
        .authenticate(&password("alice", "pw"), None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(
        err.to_string().contains("failed 2 call(s) in a row"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_millis(50));
    // After the cooldown a probe goes through and, answered, closes it.
    let server = Scripted::on(TcpListener::bind(addr).await.unwrap(), vec![Act::Ok(YES)]);
    tokio::time::sleep(Duration::from_millis(550)).await;
    authenticator
        .authenticate(&password("alice", "pw"), None)
        .await
        .unwrap();
    authenticator
        .authenticate(&password("alice", "pw"), None)
        .await
        .unwrap();
    assert_eq!(server.count(), 2);
}
