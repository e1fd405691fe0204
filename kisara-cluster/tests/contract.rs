//! The API against its OpenAPI document: requests generated from the
//! document for every operation (valid ones, and ones the document's
//! schemas refuse) get documented answers and never a 5xx; the router
//! serves what the document lists and nothing else; the examples are valid.

mod common;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use kisara_cluster::Server;
use kisara_cluster::http::ApiBuilder;
use kisara_core::Identity;
use kisara_core::builtin::StaticAuthenticator;
use kisara_core::memory::{MemoryRuntime, MemorySubnetAllocator};
use kisara_core::model::{ImageRef, NodeCapacity, NodeId};
use serde_json::{Map, Value, json};
use tower::ServiceExt;

use common::CONTRACT;
use kisara_cluster::testing::Operation;

const TOKEN: &str = "test-token-0123456789abcdef";
const PLATFORM_TOKEN: &str = "platform-token-0123456789abcdef";
/// A player of a team that owns no container.
const PLAYER_TOKEN: &str = "player-token-0123456789abcdef";
/// A known user without roles.
const NOBODY_TOKEN: &str = "nobody-token-0123456789abcdef";

/// A server with one node holding the images the document's examples name,
/// and the API over it with metrics.
async fn setup() -> Router {
    let server = Server::builder(Arc::new(
        MemorySubnetAllocator::new("10.140.0.0/16".parse().unwrap(), 24).unwrap(),
    ))
    .build();
    let runtime = MemoryRuntime::new();
    runtime.add_image(&ImageRef::parse("ctf/web-1:latest").unwrap(), None);
    runtime.add_registry_image(&ImageRef::parse("registry.example.com:5000/ctf/web-1:v2").unwrap());
    let capacity = NodeCapacity {
        max_containers: 10,
        bandwidth_in: 1 << 20,
        bandwidth_out: 1 << 20,
    };
    server
        .connect_node(NodeId::new("n1").unwrap(), capacity, Arc::new(runtime))
        .await
        .unwrap();
    let tokens = StaticAuthenticator::new()
        .with_token(Identity::new("admin").with_role("admin"), TOKEN)
        .with_token(Identity::new("ctfd").with_role("platform"), PLATFORM_TOKEN)
        .with_token(
            Identity::new("mallory")
                .with_role("player")
                .with_team("team-9"),
            PLAYER_TOKEN,
        )
        .with_token(Identity::new("nobody"), NOBODY_TOKEN);
    ApiBuilder::new(server, Arc::new(tokens))
        .with_metrics(|| "# TYPE up gauge\nup 1\n".to_owned())
        .build()
}

/// Sends a request and checks the answer against the document; the status,
/// which must not be a 5xx: bad input is never the server's fault.
async fn send(
    app: &Router,
    method: &str,
    uri: &str,
    token: bool,
    body: Option<&[u8]>,
) -> StatusCode {
    let (status, answer) = send_any(app, method, uri, token, body).await;
    assert!(
        !status.is_server_error(),
        "{method} {uri} {:?}: {status} {answer}",
        body.map(String::from_utf8_lossy),
    );
    status
}

/// [`send`], whatever the status; the status and the body.
async fn send_any(
    app: &Router,
    method: &str,
    uri: &str,
    token: bool,
    body: Option<&[u8]>,
) -> (StatusCode, String) {
    send_as(app, method, uri, token.then_some(TOKEN), body).await
}

/// [`send_any`] with `token` (none: no `Authorization`).
async fn send_as(
    app: &Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> (StatusCode, String) {
    let mut request = Request::builder().method(method).uri(uri);
    let path = uri.split('?').next().unwrap_or_default();
    if CONTRACT
        .operation(method, path)
        .is_some_and(|operation| operation.operation["responses"].get("101").is_some())
    {
        // A WebSocket route: asked as a browser asks.
        request = request
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_VERSION, "13")
            .header(header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==");
    }
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = match body {
        Some(body) => request
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_vec())),
        None => request.body(Body::empty()),
    }
    .unwrap_or_else(|error| panic!("{method} {uri}: {error}"));
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    // A stream of server-sent events does not end: only its head is checked.
    let streamed = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"text/event-stream"));
    let bytes = if streamed {
        axum::body::Bytes::new()
    } else {
        response.into_body().collect().await.unwrap().to_bytes()
    };
    CONTRACT.check(method, uri, status.as_u16(), &headers, &bytes);
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// Percent-encodes everything but the unreserved characters.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                char::from(byte).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

/// The operation's parameters `in` path or query.
fn parameters<'a>(operation: &Operation<'a>, location: &str) -> Vec<&'a Value> {
    operation.operation["parameters"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter(|parameter| parameter["in"] == location)
                .collect()
        })
        .unwrap_or_default()
}

/// The template with its path parameters replaced: `replace` gives the
/// value of each, raw (it is percent-encoded here).
fn fill(operation: &Operation<'_>, replace: impl Fn(&Value) -> String) -> String {
    let mut path = operation.template.to_owned();
    for parameter in parameters(operation, "path") {
        let name = parameter["name"].as_str().unwrap();
        let value = replace(parameter);
        // The image reference's `/` and `:` go raw, as the catch-all takes
        // them; anything else is encoded.
        let encoded = if name == "image" {
            value
                .split('/')
                .map(encode)
                .collect::<Vec<_>>()
                .join("/")
                .replace("%3A", ":")
        } else {
            encode(&value)
        };
        path = path.replace(&format!("{{{name}}}"), &encoded);
    }
    path
}

/// The example recording id of `path` replaced by a recording that
/// exists: ids are generated by the store, so no example names one. The
/// execs sent before made it.
async fn with_fixtures(app: &Router, operation: &Operation<'_>, path: String) -> String {
    if !operation.template.starts_with("/v1/recordings/{id}") {
        return path;
    }
    let (status, body) = send_any(app, "GET", "/v1/recordings", true, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let listed: Value = serde_json::from_str(&body).unwrap();
    let id = listed["recordings"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no recording to name in {}: {body}", operation.template));
    let example = parameters(operation, "path")[0]["example"]
        .as_str()
        .unwrap();
    path.replace(example, id)
}

/// The query string of the operation's required query parameters, from
/// their examples (an array's items each as the parameter, exploded);
/// empty when it has none.
fn required_query(operation: &Operation<'_>) -> String {
    let mut pairs = Vec::new();
    for parameter in parameters(operation, "query") {
        if parameter["required"] != true {
            continue;
        }
        let name = parameter["name"].as_str().unwrap();
        match &parameter["example"] {
            Value::Array(items) => pairs.extend(
                items
                    .iter()
                    .map(|item| format!("{name}={}", encode(item.as_str().unwrap()))),
            ),
            Value::String(value) => pairs.push(format!("{name}={}", encode(value))),
            other => pairs.push(format!("{name}={other}")),
        }
    }
    if pairs.is_empty() {
        String::new()
    } else {
        format!("?{}", pairs.join("&"))
    }
}

/// A parameter's documented example.
fn example(parameter: &Value) -> String {
    parameter["example"]
        .as_str()
        .unwrap_or_else(|| panic!("path parameter without an example: {parameter}"))
        .to_owned()
}

/// The schema of the operation's JSON request body, if it takes one.
fn body_schema<'a>(operation: &Operation<'a>) -> Option<&'a Value> {
    operation
        .operation
        .get("requestBody")
        .map(|body| &body["content"]["application/json"]["schema"])
}

/// The first example of a schema, following its `$ref`.
fn schema_example(schema: &Value) -> Value {
    CONTRACT.resolve(schema)["examples"][0].clone()
}

/// A JSON value of another type than `schema` allows.
fn wrong_type(schema: &Value) -> Value {
    let schema = CONTRACT.resolve(schema);
    let types: Vec<&str> = match &schema["type"] {
        Value::String(one) => vec![one.as_str()],
        Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if types.contains(&"string") || schema.get("oneOf").is_some() || schema.get("allOf").is_some() {
        json!({"not": ["a", "string"]})
    } else {
        json!("not-of-this-type")
    }
}

/// Bodies the schema refuses, built from its valid `example`: another type
/// at the top, each required field missing, an unknown field, each field
/// of another type; the same one level down, in object fields.
fn invalid_bodies(schema: &Value, example: &Value) -> Vec<(String, Value)> {
    let mut bodies = vec![
        ("an array".to_owned(), json!([])),
        ("a string".to_owned(), json!("body")),
        ("null".to_owned(), Value::Null),
    ];
    bodies.extend(invalid_objects("", schema, example));
    bodies
}

fn invalid_objects(at: &str, schema: &Value, example: &Value) -> Vec<(String, Value)> {
    let schema = CONTRACT.resolve(schema);
    let (Some(properties), Some(valid)) = (
        schema.get("properties").and_then(Value::as_object),
        example.as_object(),
    ) else {
        return Vec::new();
    };
    let with = |change: &dyn Fn(&mut Map<String, Value>)| {
        let mut changed = valid.clone();
        change(&mut changed);
        Value::Object(changed)
    };
    let mut bodies = Vec::new();
    for required in schema["required"].as_array().into_iter().flatten() {
        let name = required.as_str().unwrap();
        bodies.push((
            format!("{at}{name} missing"),
            with(&|body| {
                body.remove(name);
            }),
        ));
    }
    if schema.get("additionalProperties") == Some(&Value::Bool(false)) {
        bodies.push((
            format!("{at}an unknown field"),
            with(&|body| {
                body.insert("bogus_field".to_owned(), json!(1));
            }),
        ));
    }
    for (name, property) in properties {
        bodies.push((
            format!("{at}{name} of another type"),
            with(&|body| {
                body.insert(name.clone(), wrong_type(property));
            }),
        ));
        if let Some(nested) = valid.get(name) {
            for (what, value) in invalid_objects(&format!("{at}{name}."), property, nested) {
                bodies.push((
                    what,
                    with(&|body| {
                        body.insert(name.clone(), value.clone());
                    }),
                ));
            }
        }
    }
    bodies
}

/// Odd values for parameters: empty, too long, of the wrong alphabet,
/// path tricks, control bytes.
const GARBAGE: [&str; 10] = [
    "",
    "-starts-with-a-dash",
    "has space",
    "..",
    "nul\0byte",
    "ünïcode",
    "12abc",
    "-1",
    "a/../../etc/passwd",
    "%2e%2e",
];

/// [`GARBAGE`] and a value too long for any name.
fn odd_values() -> Vec<String> {
    GARBAGE
        .iter()
        .map(|value| (*value).to_owned())
        .chain(["x".repeat(300)])
        .collect()
}

/// Whether the parameter's schema refuses `value`, judged as the server
/// decodes parameters: from text, a number where the schema takes one, an
/// item where it takes an array.
fn refused_by_schema(parameter: &Value, value: &str) -> bool {
    let schema = CONTRACT.resolve(&parameter["schema"]);
    // A repeated (exploded) parameter's value is one item.
    let schema = if schema["type"] == "array" {
        &schema["items"]
    } else {
        schema
    };
    let numeric = CONTRACT.resolve(schema)["type"] == "integer";
    let instance = match value.parse::<i64>() {
        Ok(number) if numeric => Value::from(number),
        _ => Value::String(value.to_owned()),
    };
    !CONTRACT.errors(schema, &instance).is_empty()
}

#[tokio::test]
async fn requests_generated_from_the_document_get_documented_answers_and_never_a_5xx() {
    let app = setup().await;
    let mut operations = CONTRACT.operations();
    // Stops, then removals last, so that what the others name still exists
    // and runs.
    operations.sort_by_key(|operation| match operation.method {
        "delete" => 2,
        _ if operation.template.ends_with("/stop") => 1,
        _ => 0,
    });
    let mut sent = 0;
    for operation in &operations {
        let method = operation.method.to_ascii_uppercase();
        let name = operation.operation["operationId"].as_str().unwrap();
        let path = with_fixtures(&app, operation, fill(operation, example)).await;
        let path = format!("{path}{}", required_query(operation));
        let secured = operation.operation.get("security").is_some();
        let body = body_schema(operation).map(|schema| {
            let valid = schema_example(schema);
            assert!(!valid.is_null(), "{name}: the request body has no example");
            (schema, valid)
        });
        let valid_body = body.as_ref().map(|(_, valid)| valid.to_string());

        // The valid request, as the document's examples make it.
        let status = send(
            &app,
            &method,
            &path,
            true,
            valid_body.as_deref().map(str::as_bytes),
        )
        .await;
        assert!(
            status.is_success() || status == StatusCode::SWITCHING_PROTOCOLS,
            "{name}: {method} {path}: {status}"
        );
        sent += 1;

        if secured {
            let status = send(
                &app,
                &method,
                &path,
                false,
                valid_body.as_deref().map(str::as_bytes),
            )
            .await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{name} without a token");
            sent += 1;
        }
        for parameter in parameters(operation, "path") {
            for value in odd_values() {
                let odd_path = fill(operation, |other| {
                    if other["name"] == parameter["name"] {
                        value.clone()
                    } else {
                        example(other)
                    }
                });
                let status = send(
                    &app,
                    &method,
                    &odd_path,
                    true,
                    valid_body.as_deref().map(str::as_bytes),
                )
                .await;
                // What the schema refuses is a 4xx; what it lets through is
                // the handler's to judge, never with a 5xx (`send` checks).
                if refused_by_schema(parameter, &value) {
                    assert!(
                        status.is_client_error(),
                        "{name} with path {odd_path:?}: {status}"
                    );
                }
                sent += 1;
            }
        }
        let mut bad_queries = vec!["bogus_parameter=1".to_owned()];
        for parameter in parameters(operation, "query") {
            let name = parameter["name"].as_str().unwrap();
            bad_queries.extend(
                odd_values()
                    .into_iter()
                    .filter(|value| refused_by_schema(parameter, value))
                    .map(|bad| format!("{name}={}", encode(&bad))),
            );
        }
        for query in &bad_queries {
            let joint = if path.contains('?') { '&' } else { '?' };
            let uri = format!("{path}{joint}{query}");
            let status = send(
                &app,
                &method,
                &uri,
                true,
                valid_body.as_deref().map(str::as_bytes),
            )
            .await;
            assert!(status.is_client_error(), "{name} with ?{query}: {status}");
            sent += 1;
        }
        if let Some((schema, valid)) = &body {
            for (what, invalid) in invalid_bodies(schema, valid) {
                assert!(
                    !CONTRACT.errors(schema, &invalid).is_empty(),
                    "{name}: the body with {what} is valid by the schema: {invalid}"
                );
                let status = send(
                    &app,
                    &method,
                    &path,
                    true,
                    Some(invalid.to_string().as_bytes()),
                )
                .await;
                assert_eq!(
                    status,
                    StatusCode::BAD_REQUEST,
                    "{name} with {what}: {invalid}"
                );
                sent += 1;
            }
            let status = send(&app, &method, &path, true, Some(b"{not json")).await;
            assert_eq!(
                status,
                StatusCode::BAD_REQUEST,
                "{name} with a body that is not JSON"
            );
            sent += 1;
        }
    }
    assert!(sent > 100, "only {sent} requests generated");
}

/// Which roles may call an operation, by its tag: the cluster's state and
/// sessions are for admins and platforms (players reach only their own
/// team's containers, through tickets or sessions), recordings and the
/// audit trail for admins alone.
fn platform_may(operation: &Operation<'_>) -> bool {
    let tag = operation.operation["tags"][0].as_str().unwrap();
    !matches!(tag, "recordings" | "audit")
}

#[tokio::test]
async fn every_secured_operation_holds_callers_to_their_roles() {
    let app = setup().await;
    let operations = CONTRACT.operations();
    let valid = |id: &str| {
        let operation = operations
            .iter()
            .find(|operation| operation.operation["operationId"] == id)
            .unwrap();
        let body = body_schema(operation).map(|schema| schema_example(schema).to_string());
        (fill(operation, example), body)
    };
    // What the others name: the example container, and a recording of an
    // exec in it.
    for id in ["launchContainer", "execInContainer"] {
        let (path, body) = valid(id);
        let (status, answer) = send_any(
            &app,
            "POST",
            &path,
            true,
            body.as_deref().map(str::as_bytes),
        )
        .await;
        assert!(status.is_success(), "{id}: {status} {answer}");
    }
    let mut operations: Vec<_> = operations
        .iter()
        .filter(|operation| operation.operation.get("security").is_some())
        .collect();
    operations.sort_by_key(|operation| match operation.method {
        "delete" => 2,
        _ if operation.template.ends_with("/stop") => 1,
        _ => 0,
    });
    let mut checked = 0;
    for operation in operations {
        let method = operation.method.to_ascii_uppercase();
        let name = operation.operation["operationId"].as_str().unwrap();
        let path = with_fixtures(&app, operation, fill(operation, example)).await;
        let path = format!("{path}{}", required_query(operation));
        let body = body_schema(operation).map(|schema| schema_example(schema).to_string());
        for (role, token, may) in [
            ("none", NOBODY_TOKEN, false),
            ("player of another team", PLAYER_TOKEN, false),
            ("platform", PLATFORM_TOKEN, platform_may(operation)),
        ] {
            let (status, answer) = send_as(
                &app,
                &method,
                &path,
                Some(token),
                body.as_deref().map(str::as_bytes),
            )
            .await;
            assert!(
                !status.is_server_error(),
                "{name} as {role}: {status} {answer}"
            );
            if may {
                assert_ne!(status, StatusCode::FORBIDDEN, "{name} as {role}: {answer}");
            } else {
                assert_eq!(status, StatusCode::FORBIDDEN, "{name} as {role}: {answer}");
                assert!(
                    answer.contains("permission_denied"),
                    "{name} as {role}: {answer}"
                );
            }
        }
        checked += 1;
    }
    assert!(checked > 20, "only {checked} operations checked");
}

/// An authenticator whose backend is down.
#[derive(Debug)]
struct DownAuthenticator;

#[async_trait::async_trait]
impl kisara_core::Authenticator for DownAuthenticator {
    async fn authenticate(
        &self,
        _credentials: &kisara_core::Credentials,
        _remote: Option<std::net::SocketAddr>,
    ) -> kisara_core::Result<Identity> {
        Err(kisara_core::Error::unavailable(
            "the token webhook does not answer",
        ))
    }
}

#[tokio::test]
async fn every_route_that_needs_a_token_answers_503_when_the_authenticator_cannot_decide() {
    let server = Server::builder(Arc::new(
        MemorySubnetAllocator::new("10.140.0.0/16".parse().unwrap(), 24).unwrap(),
    ))
    .build();
    let app = kisara_cluster::http::api(server, Arc::new(DownAuthenticator));
    for operation in CONTRACT.operations() {
        let method = operation.method.to_ascii_uppercase();
        let path = fill(&operation, example);
        let body = body_schema(&operation).map(|schema| schema_example(schema).to_string());
        let (status, _) = send_any(
            &app,
            &method,
            &path,
            true,
            body.as_deref().map(str::as_bytes),
        )
        .await;
        if operation.operation.get("security").is_some() {
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{method} {path}");
        } else {
            // The probes and the document never ask the authenticator.
            assert_ne!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
        }
    }
}

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "PATCH"];

#[tokio::test]
async fn the_router_serves_every_documented_operation_and_nothing_else() {
    let app = setup().await;
    let operations = CONTRACT.operations();
    let templates: std::collections::BTreeSet<&str> = operations
        .iter()
        .map(|operation| operation.template)
        .collect();
    for template in templates {
        let on_path: Vec<&Operation<'_>> = operations
            .iter()
            .filter(|operation| operation.template == template)
            .collect();
        let path = fill(on_path[0], example);
        for method in METHODS {
            let documented = on_path
                .iter()
                .any(|operation| operation.method.eq_ignore_ascii_case(method));
            // Without a token: nothing is changed, and the route answers
            // with its own status, not the router's.
            let status = send(&app, method, &path, false, None).await;
            if documented {
                assert!(
                    status != StatusCode::METHOD_NOT_ALLOWED && status != StatusCode::NOT_FOUND,
                    "{method} {template} is documented but not served: {status}"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {template} is served but not documented"
                );
            }
        }
    }
    for undocumented in [
        "/",
        "/v1",
        "/v1/containers/web-1/logs",
        "/v2/nodes",
        "/v1/agents/link",
    ] {
        for method in METHODS {
            let status = send(&app, method, undocumented, true, None).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {undocumented}");
        }
    }
}

#[test]
fn every_body_has_an_example_and_every_example_matches_its_schema() {
    let document = CONTRACT.document();
    for (name, schema) in document["components"]["schemas"].as_object().unwrap() {
        for example in schema["examples"].as_array().into_iter().flatten() {
            let errors = CONTRACT.errors(
                &json!({"$ref": format!("#/components/schemas/{name}")}),
                example,
            );
            assert!(errors.is_empty(), "{name}'s example {example}: {errors:?}");
        }
    }
    for operation in CONTRACT.operations() {
        let name = operation.operation["operationId"].as_str().unwrap();
        for parameter in operation.operation["parameters"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(example) = parameter.get("example") {
                let errors = CONTRACT.errors(&parameter["schema"], example);
                assert!(errors.is_empty(), "{name}: {parameter}: {errors:?}");
            }
        }
        let bodies = operation.operation.get("requestBody").into_iter().chain(
            operation.operation["responses"]
                .as_object()
                .unwrap()
                .values(),
        );
        for body in bodies {
            for (media, content) in body["content"].as_object().into_iter().flatten() {
                let schema = CONTRACT.resolve(&content["schema"]);
                let described = if schema["type"] == "array" {
                    CONTRACT.resolve(&schema["items"])
                } else {
                    schema
                };
                let has_example = described.get("examples").is_some()
                    || content.get("example").is_some()
                    || described["allOf"].as_array().is_some_and(|parts| {
                        parts
                            .iter()
                            .any(|part| CONTRACT.resolve(part).get("examples").is_some())
                    });
                let free_form =
                    described["type"] == "object" && described.get("properties").is_none();
                assert!(
                    has_example || free_form,
                    "{name}: a {media} body without an example: {described}"
                );
            }
        }
    }
}

#[test]
fn the_checker_refuses_answers_the_document_does_not_describe() {
    let refused = |method: &'static str,
                   uri: &'static str,
                   status: u16,
                   content_type: &'static str,
                   body: &'static [u8]| {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
        headers.insert("x-request-id", "req-1".parse().unwrap());
        std::panic::catch_unwind(|| CONTRACT.check(method, uri, status, &headers, body)).is_err()
    };
    assert!(!refused(
        "GET",
        "/healthz",
        200,
        "application/json",
        br#"{"status": "ok"}"#
    ));
    assert!(refused(
        "GET",
        "/healthz",
        200,
        "application/json",
        br#"{"status": "fine"}"#
    ));
    assert!(refused(
        "GET",
        "/healthz",
        418,
        "application/json",
        br#"{"status": "ok"}"#
    ));
    assert!(refused(
        "GET",
        "/v1/nodes",
        200,
        "application/json",
        br#"[{"node": 5}]"#
    ));
    assert!(refused("GET", "/v1/nodes", 200, "text/html", b"[]"));
    assert!(refused(
        "DELETE",
        "/v1/containers/web-1",
        204,
        "application/json",
        b"{}"
    ));
    assert!(refused(
        "POST",
        "/v1/images/pull",
        200,
        "application/x-ndjson",
        b"{\"node\": \"n1\", \"result\": \"maybe\"}\n"
    ));
    assert!(refused(
        "GET",
        "/v1/nowhere",
        404,
        "application/json",
        br#"{"error": {"code": "lost", "message": "x"}}"#
    ));
    assert!(!refused(
        "GET",
        "/v1/nowhere",
        404,
        "application/json",
        br#"{"error": {"code": "not_found", "message": "no such route"}}"#
    ));
}

/// The route × status table of the crate README, as the document makes it.
fn status_table() -> String {
    let mut rows = vec![
        "| operation | route | token | statuses |".to_owned(),
        "|---|---|---|---|".to_owned(),
    ];
    for operation in CONTRACT.operations() {
        let statuses: Vec<&str> = operation.operation["responses"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        rows.push(format!(
            "| `{}` | `{} {}` | {} | {} |",
            operation.operation["operationId"].as_str().unwrap(),
            operation.method.to_ascii_uppercase(),
            operation.template,
            if operation.operation.get("security").is_some() {
                "yes"
            } else {
                "no"
            },
            statuses.join(", ")
        ));
    }
    rows.join("\n")
}

#[test]
fn the_readme_route_table_is_the_documents() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let (start, end) = ("<!-- routes:start -->\n", "\n<!-- routes:end -->");
    let table = readme
        .split_once(start)
        .and_then(|(_, rest)| rest.split_once(end))
        .map(|(table, _)| table)
        .unwrap_or_else(|| panic!("README.md has no table between {start:?} and {end:?}"));
    let expected = status_table();
    if std::env::var_os("KISARA_BLESS").is_some() && table != expected {
        // `KISARA_BLESS=1 cargo test --test contract` rewrites the table.
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
        std::fs::write(path, readme.replacen(table, &expected, 1)).unwrap();
        return;
    }
    assert_eq!(
        table, expected,
        "README.md's route table is not the document's; put this between the markers:\n{expected}"
    );
}
