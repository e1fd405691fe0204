//! The HTTP API without a socket: requests through the tower service.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use kisara_core::Identity;
use kisara_core::cluster::{ContainerQuery, Server};
use kisara_core::http::{MAX_BODY_BYTES, api};
use kisara_core::memory::{MemoryRuntime, MemorySubnetAllocator, StaticAuthenticator};
use kisara_core::model::{ImageRef, NodeCapacity, NodeId};
use serde_json::{Value, json};
use tower::ServiceExt;

const TOKEN: &str = "test-token-0123456789abcdef";

async fn setup() -> (Server, Router) {
    let server = Server::builder(Arc::new(
        MemorySubnetAllocator::new("10.140.0.0/16".parse().unwrap(), 24).unwrap(),
    ))
    .build();
    let runtime = MemoryRuntime::new();
    runtime.add_image(&ImageRef::parse("ctf/web-1:latest").unwrap(), None);
    let capacity = NodeCapacity {
        max_containers: 10,
        bandwidth_in: 1 << 20,
        bandwidth_out: 1 << 20,
    };
    server
        .connect_node(NodeId::new("n1").unwrap(), capacity, Arc::new(runtime))
        .await
        .unwrap();
    let auth = StaticAuthenticator::new().with_token(Identity::new("platform"), TOKEN);
    let app = api(server.clone(), Arc::new(auth));
    (server, app)
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<String>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = match body {
        Some(body) => request
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .unwrap(),
        None => request.body(Body::empty()).unwrap(),
    };
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)))
    };
    (status, value)
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {body}"))
}

#[tokio::test]
async fn launch_inspect_exec_list_and_remove_through_the_api() {
    let (_, app) = setup().await;
    let (status, network) = call(
        &app,
        "POST",
        "/v1/networks",
        Some(TOKEN),
        Some(json!({"name": "team-1"}).to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{network}");
    let launch = json!({
        "lifetime_secs": 3600,
        "container": {"image": "ctf/web-1:latest", "owner": "team-1", "networks": ["team-1"], "ports": ["80/tcp"]}
    });
    let (status, launched) = call(
        &app,
        "POST",
        "/v1/containers?timeout_secs=30",
        Some(TOKEN),
        Some(launch.to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{launched}");
    assert_eq!(launched["node"], "n1");
    let id = launched["container"]["id"].as_str().unwrap().to_owned();
    assert!(launched["container"]["labels"]["io.kisara.expires-at"].is_string());

    let (status, inspected) = call(
        &app,
        "GET",
        &format!("/v1/containers/{id}"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(inspected["node"], "n1");
    assert_eq!(inspected["state"], "running");

    let exec = json!({"command": ["sh", "-c", "echo hi; echo oops >&2; exit 4"]});
    let (status, output) = call(
        &app,
        "POST",
        &format!("/v1/containers/{id}/exec"),
        Some(TOKEN),
        Some(exec.to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{output}");
    assert_eq!(
        output,
        json!({"stdout": "hi\n", "stderr": "oops\n", "exit_code": 4})
    );

    let (status, listed) = call(
        &app,
        "GET",
        "/v1/containers?owner=team-1",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let (_, none) = call(
        &app,
        "GET",
        "/v1/containers?owner=team-2",
        Some(TOKEN),
        None,
    )
    .await;
    assert!(none.as_array().unwrap().is_empty());

    let (status, _) = call(
        &app,
        "POST",
        &format!("/v1/containers/{id}/stop?grace_secs=1"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = call(
        &app,
        "DELETE",
        &format!("/v1/containers/{id}"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = call(
        &app,
        "GET",
        &format!("/v1/containers/{id}"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let (status, _) = call(&app, "DELETE", "/v1/networks/team-1", Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn missing_and_wrong_tokens_are_refused_alike_before_anything_happens() {
    let (server, app) = setup().await;
    let body = json!({"container": {"image": "ctf/web-1:latest"}}).to_string();
    for token in [None, Some("wrong-token"), Some("")] {
        let (status, error) = call(&app, "POST", "/v1/containers", token, Some(body.clone())).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(error_code(&error), "unauthenticated");
    }
    assert!(
        server
            .list(&ContainerQuery::default())
            .await
            .unwrap()
            .is_empty(),
        "nothing launched"
    );
    for route in [
        "/v1/nodes",
        "/v1/containers",
        "/v1/networks",
        "/v1/openapi.json",
    ] {
        let (status, _) = call(&app, "GET", route, None, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{route}");
    }
}

#[tokio::test]
async fn bad_input_is_a_json_error_naming_the_bad_value_and_creates_nothing() {
    let (server, app) = setup().await;
    let cases = [
        ("{not json", StatusCode::BAD_REQUEST, "not valid JSON"),
        (
            r#"{"container": {"imgae": "ctf/web-1"}}"#,
            StatusCode::BAD_REQUEST,
            "imgae",
        ),
        (
            r#"{"container": {"image": "Bad Image"}}"#,
            StatusCode::BAD_REQUEST,
            "Bad Image",
        ),
        (
            r#"{"container": {"image": "ctf/web-1:latest", "ports": ["80/tcp", "99999/tcp"]}}"#,
            StatusCode::BAD_REQUEST,
            "99999",
        ),
        (
            r#"{"container": {"image": "ctf/web-1:latest", "ports": ["80/sctp"]}}"#,
            StatusCode::BAD_REQUEST,
            "sctp",
        ),
        (
            r#"{"node": "ghost", "container": {"image": "ctf/web-1:latest"}}"#,
            StatusCode::NOT_FOUND,
            "ghost",
        ),
        (
            r#"{"node": "../etc", "container": {"image": "ctf/web-1:latest"}}"#,
            StatusCode::BAD_REQUEST,
            "../etc",
        ),
        (
            r#"{"container": {"image": "ctf/missing:v1"}}"#,
            StatusCode::NOT_FOUND,
            "ctf/missing",
        ),
    ];
    for (body, status, needle) in cases {
        let (got, error) = call(
            &app,
            "POST",
            "/v1/containers",
            Some(TOKEN),
            Some(body.to_owned()),
        )
        .await;
        assert_eq!(got, status, "{body}: {error}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{body}: {message}");
    }
    let huge = format!(
        r#"{{"container": {{"image": "ctf/web-1:latest", "env": {{"X": "{}"}}}}}}"#,
        "a".repeat(MAX_BODY_BYTES)
    );
    let (status, error) = call(&app, "POST", "/v1/containers", Some(TOKEN), Some(huge)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{error}");
    assert_eq!(error_code(&error), "invalid");
    let (status, error) = call(&app, "GET", "/v1/containers?bogus=1", Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    assert!(
        server
            .list(&ContainerQuery::default())
            .await
            .unwrap()
            .is_empty(),
        "nothing half-created"
    );
    let (status, error) = call(&app, "GET", "/v1/nope", Some(TOKEN), None).await;
    assert_eq!(
        (status, error_code(&error)),
        (StatusCode::NOT_FOUND, "not_found")
    );
}

#[tokio::test]
async fn the_openapi_document_lists_every_route() {
    let (_, app) = setup().await;
    let (status, doc) = call(&app, "GET", "/v1/openapi.json", Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/v1/nodes",
        "/v1/containers",
        "/v1/containers/{id}",
        "/v1/containers/{id}/exec",
        "/v1/networks",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is documented");
    }
}
