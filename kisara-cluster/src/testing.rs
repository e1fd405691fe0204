//! The API's contract, for tests (the `testing` feature): every answer a
//! test receives is checked against what the OpenAPI document says of its
//! route and status, so that the document and the server cannot disagree.
//! The crate's own HTTP tests and the end-to-end tests of the binaries
//! check every answer with [`CONTRACT`].
//!
//! ```
//! use kisara_cluster::testing::CONTRACT;
//! let mut headers = axum::http::HeaderMap::new();
//! headers.insert("content-type", "application/json".parse().unwrap());
//! headers.insert("x-request-id", "r-1".parse().unwrap());
//! CONTRACT.check("GET", "/healthz", 200, &headers, br#"{"status":"ok"}"#);
//! ```

use std::sync::LazyLock;

use axum::http::{HeaderMap, header};
use serde_json::{Value, json};

/// The document, as the server serves it.
pub static CONTRACT: LazyLock<Contract> = LazyLock::new(|| {
    Contract::new(serde_json::to_value(crate::http::openapi()).expect("the document serializes"))
});

/// An OpenAPI document, to check answers against.
pub struct Contract {
    document: Value,
}

/// An operation of the document: its path template, method and description.
pub struct Operation<'a> {
    /// The path template, `/v1/containers/{id}`.
    pub template: &'a str,
    /// The method, lowercase as the document writes it.
    pub method: &'a str,
    /// The operation object.
    pub operation: &'a Value,
}

impl Contract {
    /// Checks answers against `document` (an OpenAPI 3.1 document as JSON).
    pub fn new(document: Value) -> Self {
        Self { document }
    }

    /// The document.
    pub fn document(&self) -> &Value {
        &self.document
    }

    /// Every operation, in the document's order.
    pub fn operations(&self) -> Vec<Operation<'_>> {
        let mut all = Vec::new();
        for (template, item) in self.document["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("a path item") {
                if operation.get("responses").is_some() {
                    all.push(Operation {
                        template,
                        method,
                        operation,
                    });
                }
            }
        }
        all
    }

    /// The operation answering `method` on `path` (no query string), found
    /// as the router finds it: first the route, the template matching the
    /// most literal segments (a parameter matches one segment, a catch-all
    /// one, marked `x-catch-all`, the rest of the path), then the method on
    /// that route.
    pub fn operation(&self, method: &str, path: &str) -> Option<Operation<'_>> {
        let segments: Vec<&str> = path.split('/').collect();
        let matched: Vec<(usize, Operation<'_>)> = self
            .operations()
            .into_iter()
            .filter_map(|candidate| {
                let template: Vec<&str> = candidate.template.split('/').collect();
                let catch_all = catch_all(&candidate);
                Some((matches(&template, &segments, catch_all)?, candidate))
            })
            .collect();
        let route = matched
            .iter()
            .max_by_key(|(literals, _)| *literals)?
            .1
            .template;
        matched
            .into_iter()
            .map(|(_, operation)| operation)
            .find(|operation| {
                operation.template == route && operation.method.eq_ignore_ascii_case(method)
            })
    }

    /// Resolves a local `$ref` (`#/components/...`) once, or returns
    /// `value` itself.
    pub fn resolve<'a>(&'a self, value: &'a Value) -> &'a Value {
        match value.get("$ref").and_then(Value::as_str) {
            Some(reference) => {
                let pointer = reference.strip_prefix('#').expect("a local $ref");
                self.document
                    .pointer(pointer)
                    .unwrap_or_else(|| panic!("{reference} resolves"))
            }
            None => value,
        }
    }

    /// The errors of `instance` against `schema`, a schema of the document
    /// whose `$ref`s resolve against the document's components.
    pub fn errors(&self, schema: &Value, instance: &Value) -> Vec<String> {
        let mut root = match schema {
            Value::Object(object) => object.clone(),
            other => panic!("not a schema object: {other}"),
        };
        root.insert("components".to_owned(), self.document["components"].clone());
        let validator = jsonschema::draft202012::new(&Value::Object(root))
            .unwrap_or_else(|error| panic!("{schema} is not a valid JSON schema: {error}"));
        validator
            .iter_errors(instance)
            .map(|error| format!("{} at {}", error, error.instance_path()))
            .collect()
    }

    /// Panics unless the answer `status`, `headers`, `body` to `method`
    /// `uri` is what the document says it may be: a documented status, its
    /// documented headers, a documented media type and a body of its
    /// schema.
    pub fn check(&self, method: &str, uri: &str, status: u16, headers: &HeaderMap, body: &[u8]) {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .map(|value| value.to_str().expect("a textual content type"))
            .unwrap_or_default();
        let path = uri.split('?').next().unwrap_or_default();
        let what = format!("{method} {uri} answered {status}");
        let Some(operation) = self.operation(method, path) else {
            // The router's fallbacks: no such route, or not that method.
            assert!(
                status == 404 || status == 405,
                "{what}, but the document has no such operation"
            );
            self.check_json(
                &what,
                &json!({"$ref": "#/components/schemas/ErrorBody"}),
                body,
            );
            return;
        };
        let responses = &operation.operation["responses"];
        let response = responses.get(status.to_string()).unwrap_or_else(|| {
            panic!(
                "{what}: {} documents only {:?}: {}",
                operation.template,
                responses.as_object().unwrap().keys().collect::<Vec<_>>(),
                String::from_utf8_lossy(body)
            )
        });
        let response = self.resolve(response);
        for name in response
            .get("headers")
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(|documented| documented.keys())
        {
            assert!(
                headers.contains_key(name.as_str()),
                "{what} without its documented {name} header"
            );
        }
        let Some(content) = response.get("content").and_then(Value::as_object) else {
            assert!(
                body.is_empty(),
                "{what}: documented without a body, but has {}",
                String::from_utf8_lossy(body)
            );
            return;
        };
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let (_, media) = content
            .iter()
            .find(|(documented, _)| {
                documented.split(';').next().unwrap_or_default().trim() == essence
            })
            .unwrap_or_else(|| {
                panic!(
                    "{what} as {content_type:?}; documented: {:?}",
                    content.keys().collect::<Vec<_>>()
                )
            });
        let schema = &media["schema"];
        match essence.as_str() {
            "application/x-ndjson" => {
                let text = std::str::from_utf8(body).expect("NDJSON is UTF-8");
                assert!(text.ends_with('\n'), "{what}: every line ends with \\n");
                for line in text.lines() {
                    self.check_json(&what, schema, line.as_bytes());
                }
            }
            "application/json" => self.check_json(&what, schema, body),
            _ => {
                let text = String::from_utf8(body.to_vec()).expect("text is UTF-8");
                let errors = self.errors(schema, &Value::String(text));
                assert!(errors.is_empty(), "{what}: {errors:?}");
            }
        }
    }

    fn check_json(&self, what: &str, schema: &Value, body: &[u8]) {
        let value: Value = serde_json::from_slice(body).unwrap_or_else(|error| {
            panic!(
                "{what}: not JSON ({error}): {}",
                String::from_utf8_lossy(body)
            )
        });
        let errors = self.errors(schema, &value);
        assert!(
            errors.is_empty(),
            "{what}: the body does not match the documented schema {schema}: {errors:?}\n{value:#}"
        );
    }
}

/// Whether the operation's last path parameter takes the rest of the path.
fn catch_all(operation: &Operation<'_>) -> bool {
    operation.operation["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|parameter| parameter["in"] == "path" && parameter["x-catch-all"] == true)
}

/// How many literal segments of `template` match `segments`, when it
/// matches at all; its last segment takes the rest when `catch_all`.
fn matches(template: &[&str], segments: &[&str], catch_all: bool) -> Option<usize> {
    let is_parameter = |segment: &str| segment.starts_with('{') && segment.ends_with('}');
    if segments.len() < template.len() || (segments.len() > template.len() && !catch_all) {
        return None;
    }
    let mut literals = 0;
    for (at, (expected, got)) in template.iter().zip(segments).enumerate() {
        if is_parameter(expected) {
            // As the router does: an empty segment is a parameter's value
            // between two others (`/v1/containers//exec`), not at the end
            // (`/v1/containers/`).
            if got.is_empty() && at + 1 == segments.len() {
                return None;
            }
            continue;
        }
        if expected != got {
            return None;
        }
        literals += 1;
    }
    Some(literals)
}
