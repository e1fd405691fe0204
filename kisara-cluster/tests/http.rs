//! The HTTP API without a socket: requests through the tower service, every
//! answer checked against the OpenAPI document.

mod common;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use http_body_util::BodyExt;
use kisara_cluster::http::{ApiBuilder, MAX_BODY_BYTES, api, metrics_router};
use kisara_cluster::{ContainerQuery, Server};
use kisara_core::Identity;
use kisara_core::builtin::StaticAuthenticator;
use kisara_core::memory::{MemoryRuntime, MemorySubnetAllocator};
use kisara_core::model;
use kisara_core::model::{ImageRef, NodeCapacity, NodeId};
use serde_json::{Value, json};
use tower::ServiceExt;

const TOKEN: &str = "test-token-0123456789abcdef";
/// In the simulated registry of node n1.
const REGISTRY_IMAGE: &str = "registry.example.com:5000/ctf/pwn-2:v1";

fn authenticator() -> Arc<StaticAuthenticator> {
    Arc::new(
        StaticAuthenticator::new().with_token(Identity::new("platform").with_role("admin"), TOKEN),
    )
}

async fn setup() -> (Server, Router) {
    let server = Server::builder(Arc::new(
        MemorySubnetAllocator::new("10.140.0.0/16".parse().unwrap(), 24).unwrap(),
    ))
    .build();
    let runtime = MemoryRuntime::new();
    runtime.add_image(&ImageRef::parse("ctf/web-1:latest").unwrap(), None);
    runtime.add_registry_image(&ImageRef::parse(REGISTRY_IMAGE).unwrap());
    let capacity = NodeCapacity {
        max_containers: 10,
        bandwidth_in: 1 << 20,
        bandwidth_out: 1 << 20,
    };
    server
        .connect_node(NodeId::new("n1").unwrap(), capacity, Arc::new(runtime))
        .await
        .unwrap();
    let app = api(server.clone(), authenticator());
    (server, app)
}

/// Sends a request with `headers` to the API; the status, the content type
/// and the body, which the document must describe for the route and
/// status.
async fn send(
    app: &Router,
    method: &str,
    uri: &str,
    headers: &[(header::HeaderName, String)],
    body: Option<String>,
) -> (StatusCode, String, Vec<u8>) {
    let (status, answer_headers, body) = exchange(app, method, uri, headers, body).await;
    common::CONTRACT.check(method, uri, status.as_u16(), &answer_headers, &body);
    (status, content_type(&answer_headers), body)
}

/// [`send`] to a router that is not the API, which the document does not
/// describe.
async fn send_unchecked(
    app: &Router,
    method: &str,
    uri: &str,
    headers: &[(header::HeaderName, String)],
    body: Option<String>,
) -> (StatusCode, String, Vec<u8>) {
    let (status, answer_headers, body) = exchange(app, method, uri, headers, body).await;
    (status, content_type(&answer_headers), body)
}

/// One request and its answer: the status, the headers, the body.
async fn exchange(
    app: &Router,
    method: &str,
    uri: &str,
    headers: &[(header::HeaderName, String)],
    body: Option<String>,
) -> (StatusCode, HeaderMap, Vec<u8>) {
    let mut request = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(name, value);
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
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, bytes.to_vec())
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .map(|value| value.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

fn bearer(token: &str) -> (header::HeaderName, String) {
    (header::AUTHORIZATION, format!("Bearer {token}"))
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<String>,
) -> (StatusCode, Value) {
    let headers: Vec<_> = token.map(bearer).into_iter().collect();
    let (status, _, bytes) = send(app, method, uri, &headers, body).await;
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
        "/v1/images",
        "/metrics",
    ] {
        let (status, _) = call(&app, "GET", route, None, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{route}");
    }
    let pull = json!({"image": REGISTRY_IMAGE}).to_string();
    let (status, _) = call(&app, "POST", "/v1/images/pull", None, Some(pull)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = call(&app, "DELETE", "/v1/images/ctf/web-1:latest", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(image_nodes(&server, "ctf/web-1:latest").await, ["n1"]);
}

/// The nodes that hold `image`, asked of the server directly.
async fn image_nodes(server: &Server, image: &str) -> Vec<String> {
    server
        .list_images(None)
        .await
        .unwrap()
        .into_iter()
        .filter(|(_, info)| info.tags.iter().any(|tag| tag == image))
        .map(|(node, _)| node.to_string())
        .collect()
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
async fn the_document_and_the_probes_are_served_without_a_token() {
    let (server, app) = setup().await;
    let (status, doc) = call(&app, "GET", "/v1/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        doc,
        serde_json::to_value(kisara_cluster::http::openapi()).unwrap(),
        "the served document is the generated one"
    );
    let (status, health) = call(&app, "GET", "/healthz", None, None).await;
    assert_eq!((status, health), (StatusCode::OK, json!({"status": "ok"})));
    let (status, version) = call(&app, "GET", "/v1/version", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(version["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(version["api_version"], "1");
    let (status, ready) = call(&app, "GET", "/readyz", None, None).await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    assert_eq!(ready, json!({"ready": true, "reasons": []}));
    drop(server);
}

/// A relay link that does not answer.
#[derive(Debug)]
struct UnreachableRelay;

#[async_trait::async_trait]
impl kisara_core::Tunnel for UnreachableRelay {
    fn supports(&self, _protocol: model::Protocol) -> bool {
        true
    }

    async fn expose(
        &self,
        _request: &model::ExposeRequest,
    ) -> kisara_core::Result<model::Exposure> {
        Err(kisara_core::Error::unavailable("relay link down"))
    }

    async fn withdraw(&self, _exposure: &model::ExposureId) -> kisara_core::Result<()> {
        Err(kisara_core::Error::unavailable("relay link down"))
    }

    async fn list(
        &self,
        _filter: &model::LabelFilter,
    ) -> kisara_core::Result<Vec<model::Exposure>> {
        Err(kisara_core::Error::unavailable("relay link down"))
    }
}

/// A memory node whose engine stops answering once `down` is set (only its
/// node stats are asked when readiness is probed).
#[derive(Debug, Default)]
struct FailingEngine {
    inner: MemoryRuntime,
    down: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl kisara_core::ContainerRuntime for FailingEngine {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn capabilities(&self) -> kisara_core::RuntimeCapabilities {
        self.inner.capabilities()
    }
    async fn create_network(
        &self,
        spec: &model::NetworkSpec,
    ) -> kisara_core::Result<model::NetworkInfo> {
        self.inner.create_network(spec).await
    }
    async fn inspect_network(
        &self,
        network: &model::NetworkId,
    ) -> kisara_core::Result<model::NetworkInfo> {
        self.inner.inspect_network(network).await
    }
    async fn list_networks(
        &self,
        filter: &model::LabelFilter,
    ) -> kisara_core::Result<Vec<model::NetworkInfo>> {
        self.inner.list_networks(filter).await
    }
    async fn remove_network(&self, network: &model::NetworkId) -> kisara_core::Result<()> {
        self.inner.remove_network(network).await
    }
    async fn launch(
        &self,
        spec: &model::ContainerSpec,
    ) -> kisara_core::Result<model::ContainerInfo> {
        self.inner.launch(spec).await
    }
    async fn stop(
        &self,
        container: &model::ContainerId,
        grace: std::time::Duration,
    ) -> kisara_core::Result<()> {
        self.inner.stop(container, grace).await
    }
    async fn remove(&self, container: &model::ContainerId) -> kisara_core::Result<()> {
        self.inner.remove(container).await
    }
    async fn inspect(
        &self,
        container: &model::ContainerId,
    ) -> kisara_core::Result<model::ContainerInfo> {
        self.inner.inspect(container).await
    }
    async fn list(
        &self,
        filter: &model::LabelFilter,
    ) -> kisara_core::Result<Vec<model::ContainerInfo>> {
        self.inner.list(filter).await
    }
    async fn exec(
        &self,
        container: &model::ContainerId,
        spec: &model::ExecSpec,
    ) -> kisara_core::Result<kisara_core::ExecSession> {
        self.inner.exec(container, spec).await
    }
    async fn resize_exec(
        &self,
        exec: &model::ExecId,
        size: model::TtySize,
    ) -> kisara_core::Result<()> {
        self.inner.resize_exec(exec, size).await
    }
    async fn exec_status(&self, exec: &model::ExecId) -> kisara_core::Result<model::ExecStatus> {
        self.inner.exec_status(exec).await
    }
    async fn copy_to(
        &self,
        container: &model::ContainerId,
        dir: &str,
        archive: kisara_core::ByteStream,
    ) -> kisara_core::Result<()> {
        self.inner.copy_to(container, dir, archive).await
    }
    async fn copy_from(
        &self,
        container: &model::ContainerId,
        path: &str,
    ) -> kisara_core::Result<kisara_core::ByteStream> {
        self.inner.copy_from(container, path).await
    }
    async fn pull_image(
        &self,
        image: &ImageRef,
    ) -> kisara_core::Result<kisara_core::ProgressStream> {
        self.inner.pull_image(image).await
    }
    async fn build_image(
        &self,
        spec: &model::BuildSpec,
        context: kisara_core::ByteStream,
    ) -> kisara_core::Result<kisara_core::ProgressStream> {
        self.inner.build_image(spec, context).await
    }
    async fn list_images(&self) -> kisara_core::Result<Vec<model::ImageInfo>> {
        self.inner.list_images().await
    }
    async fn remove_image(&self, image: &str) -> kisara_core::Result<()> {
        self.inner.remove_image(image).await
    }
    async fn events(
        &self,
        filter: &model::LabelFilter,
    ) -> kisara_core::Result<kisara_core::EventStream> {
        self.inner.events(filter).await
    }
    async fn container_stats(
        &self,
        container: &model::ContainerId,
    ) -> kisara_core::Result<model::ContainerStats> {
        self.inner.container_stats(container).await
    }
    async fn node_stats(&self) -> kisara_core::Result<model::NodeStats> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(kisara_core::Error::unavailable(
                "engine socket: connection refused",
            ));
        }
        self.inner.node_stats().await
    }
}

#[tokio::test]
async fn readiness_names_why_the_server_cannot_serve() {
    let subnets =
        || Arc::new(MemorySubnetAllocator::new("10.140.0.0/16".parse().unwrap(), 24).unwrap());
    let capacity = NodeCapacity {
        max_containers: 10,
        bandwidth_in: 1 << 20,
        bandwidth_out: 1 << 20,
    };
    let server = Server::builder(subnets()).build();
    let app = api(server.clone(), authenticator());
    let (status, ready) = call(&app, "GET", "/readyz", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        ready,
        json!({"ready": false, "reasons": ["no node is connected"]})
    );

    // An offline node is named, but another that serves keeps it ready.
    for node in ["n1", "n2"] {
        server
            .connect_node(
                NodeId::new(node).unwrap(),
                capacity,
                Arc::new(MemoryRuntime::new()),
            )
            .await
            .unwrap();
    }
    server.disconnect_node(&NodeId::new("n2").unwrap(), "test");
    let (status, ready) = call(&app, "GET", "/readyz", None, None).await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    assert_eq!(
        ready["reasons"],
        json!(["node n2 is offline: its link is down"])
    );
    server.disconnect_node(&NodeId::new("n1").unwrap(), "test");
    let (status, ready) = call(&app, "GET", "/readyz", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    assert_eq!(ready["reasons"][0], "no node is connected");

    // A node whose engine does not answer.
    let engine = Arc::new(FailingEngine::default());
    server
        .connect_node(NodeId::new("n3").unwrap(), capacity, engine.clone())
        .await
        .unwrap();
    let (status, _) = call(&app, "GET", "/readyz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    engine.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let (status, ready) = call(&app, "GET", "/readyz", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    assert_eq!(
        ready["reasons"][0],
        "node n3's engine does not answer: unavailable: engine socket: connection refused"
    );

    // A relay link that does not answer.
    let server = Server::builder(subnets())
        .with_tunnel(Arc::new(UnreachableRelay))
        .build();
    server
        .connect_node(
            NodeId::new("n1").unwrap(),
            capacity,
            Arc::new(MemoryRuntime::new()),
        )
        .await
        .unwrap();
    let app = api(server, authenticator());
    let (status, ready) = call(&app, "GET", "/readyz", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    assert_eq!(
        ready["reasons"],
        json!(["the server's relay link does not answer: unavailable: relay link down"])
    );
}

#[tokio::test]
async fn empty_and_malformed_path_parameters_are_a_400_naming_the_parameter() {
    let (_, app) = setup().await;
    let exec = json!({"command": ["true"]}).to_string();
    let cases = [
        (
            "POST",
            "/v1/containers//exec",
            Some(exec.clone()),
            "path parameter id",
        ),
        ("POST", "/v1/containers/..%2Fx/exec", Some(exec), "\"../x\""),
        ("GET", "/v1/containers/-rm", None, "\"-rm\""),
        ("POST", "/v1/containers/a%20b/stop", None, "\"a b\""),
        ("DELETE", "/v1/networks/%2E%2E", None, "path parameter name"),
        (
            "DELETE",
            "/v1/images/Bad%20Image",
            None,
            "path parameter image",
        ),
    ];
    for (method, uri, body, needle) in cases {
        let (status, error) = call(&app, method, uri, Some(TOKEN), body).await;
        assert_eq!(
            (status, error_code(&error)),
            (StatusCode::BAD_REQUEST, "invalid"),
            "{method} {uri}: {error}"
        );
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{method} {uri}: {message}");
    }
    let (status, error) = call(&app, "GET", "/v1/nodes?verbose=1", Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("verbose")
    );
}

#[tokio::test]
async fn images_are_pulled_listed_and_removed_through_the_api() {
    let (server, app) = setup().await;
    let pull = json!({"image": REGISTRY_IMAGE}).to_string();
    let (status, pulled) = call(&app, "POST", "/v1/images/pull", Some(TOKEN), Some(pull)).await;
    assert_eq!(status, StatusCode::OK, "{pulled}");
    assert_eq!(pulled, json!([{"node": "n1", "result": "ok"}]));

    for uri in ["/v1/images", "/v1/images?node=n1"] {
        let (status, listed) = call(&app, "GET", uri, Some(TOKEN), None).await;
        assert_eq!(status, StatusCode::OK, "{listed}");
        let tagged: Vec<&Value> = listed
            .as_array()
            .unwrap()
            .iter()
            .filter(|image| {
                image["tags"]
                    .as_array()
                    .unwrap()
                    .contains(&json!(REGISTRY_IMAGE))
            })
            .collect();
        assert_eq!(tagged.len(), 1, "{uri}: {listed}");
        assert_eq!(tagged[0]["node"], "n1");
        assert!(tagged[0]["id"].as_str().unwrap().starts_with("sha256:"));
    }

    // The reference percent-encoded, or raw: both name one image.
    let encoded = REGISTRY_IMAGE.replace('/', "%2F").replace(':', "%3A");
    let (status, body) = call(
        &app,
        "DELETE",
        &format!("/v1/images/{encoded}?node=n1"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert!(image_nodes(&server, REGISTRY_IMAGE).await.is_empty());
    let pull = json!({"image": REGISTRY_IMAGE, "node": "n1"}).to_string();
    let (status, _) = call(&app, "POST", "/v1/images/pull", Some(TOKEN), Some(pull)).await;
    assert_eq!(status, StatusCode::OK);
    let raw = format!("/v1/images/{REGISTRY_IMAGE}");
    let (status, body) = call(&app, "DELETE", &raw, Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert!(image_nodes(&server, REGISTRY_IMAGE).await.is_empty());
    // Removing what is gone is fine.
    let (status, _) = call(&app, "DELETE", &raw, Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn a_pull_streams_progress_as_json_lines_when_asked() {
    let (server, app) = setup().await;
    let headers = [
        bearer(TOKEN),
        (
            header::ACCEPT,
            "application/json, application/x-ndjson".to_owned(),
        ),
    ];
    let pull = json!({"image": REGISTRY_IMAGE}).to_string();
    let (status, content_type, body) =
        send(&app, "POST", "/v1/images/pull", &headers, Some(pull)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "application/x-ndjson");
    let lines: Vec<Value> = String::from_utf8(body)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let (last, progress) = lines.split_last().unwrap();
    assert_eq!(*last, json!({"node": "n1", "result": "ok"}));
    assert!(!progress.is_empty());
    for line in progress {
        assert_eq!(line["node"], "n1");
        assert!(line["progress"]["status"].is_string(), "{line}");
    }
    assert_eq!(image_nodes(&server, REGISTRY_IMAGE).await, ["n1"]);

    // A node's failure is its last line, with the stable code.
    let pull = json!({"image": "ctf/nowhere:v1"}).to_string();
    let (status, _, body) = send(&app, "POST", "/v1/images/pull", &headers, Some(pull)).await;
    assert_eq!(status, StatusCode::OK);
    let last: Value =
        serde_json::from_str(String::from_utf8(body).unwrap().lines().last().unwrap()).unwrap();
    assert_eq!(last["result"], "error");
    assert_eq!(last["error"]["code"], "not_found");
}

#[tokio::test]
async fn bad_image_requests_are_json_errors_naming_the_bad_value() {
    let (server, app) = setup().await;
    let launch = json!({"container": {"image": "ctf/web-1:latest"}}).to_string();
    let (status, _) = call(&app, "POST", "/v1/containers", Some(TOKEN), Some(launch)).await;
    assert_eq!(status, StatusCode::CREATED);
    let pull = |body: Value| ("POST", "/v1/images/pull".to_owned(), Some(body.to_string()));
    let cases = [
        (
            pull(json!({"image": "Bad Image"})),
            StatusCode::BAD_REQUEST,
            vec!["Bad Image"],
        ),
        (
            pull(json!({"image": REGISTRY_IMAGE, "nodes": "n1"})),
            StatusCode::BAD_REQUEST,
            vec!["nodes"],
        ),
        (
            pull(json!({"image": REGISTRY_IMAGE, "node": "ghost"})),
            StatusCode::NOT_FOUND,
            vec!["ghost"],
        ),
        (
            pull(json!({"image": "ctf/nowhere:v1"})),
            StatusCode::NOT_FOUND,
            vec!["ctf/nowhere:v1", "n1"],
        ),
        (
            ("DELETE", "/v1/images/Bad%20Image".to_owned(), None),
            StatusCode::BAD_REQUEST,
            vec!["Bad Image"],
        ),
        (
            (
                "DELETE",
                "/v1/images/ctf/web-1:latest?node=ghost".to_owned(),
                None,
            ),
            StatusCode::NOT_FOUND,
            vec!["ghost"],
        ),
        (
            ("DELETE", "/v1/images/ctf/web-1:latest".to_owned(), None),
            StatusCode::CONFLICT,
            vec!["ctf/web-1:latest", "n1"],
        ),
        (
            ("GET", "/v1/images?node=ghost".to_owned(), None),
            StatusCode::NOT_FOUND,
            vec!["ghost"],
        ),
        (
            ("GET", "/v1/images?node=../etc".to_owned(), None),
            StatusCode::BAD_REQUEST,
            vec!["../etc"],
        ),
    ];
    for ((method, uri, body), status, needles) in cases {
        let (got, error) = call(&app, method, &uri, Some(TOKEN), body.clone()).await;
        assert_eq!(got, status, "{method} {uri} {body:?}: {error}");
        let message = error["error"]["message"].as_str().unwrap();
        for needle in needles {
            assert!(message.contains(needle), "{method} {uri}: {message}");
        }
    }
    assert!(image_nodes(&server, REGISTRY_IMAGE).await.is_empty());
    assert_eq!(image_nodes(&server, "ctf/web-1:latest").await, ["n1"]);
}

#[tokio::test]
async fn metrics_are_rendered_by_the_programs_exporter_on_each_scrape() {
    let (server, app) = setup().await;
    let (status, error) = call(&app, "GET", "/metrics", Some(TOKEN), None).await;
    assert_eq!(
        (status, error_code(&error)),
        (StatusCode::NOT_FOUND, "not_found")
    );
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("with_metrics")
    );

    let scrapes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = scrapes.clone();
    let app = ApiBuilder::new(server, authenticator())
        .with_metrics(move || {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            format!("# TYPE scrapes_total counter\nscrapes_total {n}\n")
        })
        .build();
    for n in 1..=2 {
        let (status, content_type, body) =
            send(&app, "GET", "/metrics", &[bearer(TOKEN)], None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
        let text = String::from_utf8(body).unwrap();
        assert!(text.ends_with(&format!("scrapes_total {n}\n")), "{text}");
    }
    let (status, _, _) = send(&app, "GET", "/metrics", &[], None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_metrics_router_serves_metrics_alone_without_a_token() {
    let scrapes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = scrapes.clone();
    let app = metrics_router(move || {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        format!("scrapes_total {n}\n")
    });
    for n in 1..=2 {
        let (status, content_type, body) = send_unchecked(&app, "GET", "/metrics", &[], None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
        assert_eq!(
            String::from_utf8(body).unwrap(),
            format!("scrapes_total {n}\n")
        );
    }
    for (method, path) in [("GET", "/v1/nodes"), ("POST", "/metrics")] {
        let (status, _, _) = send_unchecked(&app, method, path, &[], None).await;
        assert!(status.is_client_error(), "{method} {path}: {status}");
    }
    assert_eq!(scrapes.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test]
async fn every_answer_carries_a_request_id() {
    use kisara_cluster::link::{AgentGateway, LinkOptions};

    let (server, app) = setup().await;
    let gateway = AgentGateway::new(
        server,
        kisara_core::Secret::new("agent-token-0123456789abcdef"),
        LinkOptions::default(),
    )
    .unwrap();
    let routers = [
        ("API, refused", app.clone(), "/v1/nodes"),
        ("API, unknown route", app, "/v1/nowhere"),
        ("metrics", metrics_router(String::new), "/metrics"),
        (
            "agent link, refused",
            kisara_cluster::http::agent_link(gateway),
            "/v1/agents/link",
        ),
    ];
    for (what, router, uri) in routers {
        let request = Request::get(uri)
            .header("x-request-id", "req-from-caller")
            .body(Body::empty())
            .unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        assert_eq!(
            response.headers()["x-request-id"],
            "req-from-caller",
            "{what}"
        );
        let response = router
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let fresh = response.headers()["x-request-id"].to_str().unwrap();
        assert_eq!(fresh.len(), 16, "{what}: {fresh}");
    }
}
