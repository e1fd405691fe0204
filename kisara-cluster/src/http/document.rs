//! The OpenAPI document: what the handlers' `#[utoipa::path]`s and the wire
//! types' schemas say, completed with what holds for every route.

use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::Schema;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr};

use axum::http::header;
use utoipa::PartialSchema;
use utoipa::openapi::header::HeaderBuilder;

use super::probes::API_VERSION;
use super::{MAX_BODY_BYTES, routes, status_of, tag};
use crate::REQUEST_ID_HEADER;
use kisara_core::ErrorKind;

/// The name of the bearer security scheme.
const BEARER: &str = "bearer";

/// The routes whose last parameter takes the rest of the path, `/`s
/// included, as the router writes them and as OpenAPI does.
const CATCH_ALLS: &[(&str, &str)] = &[("/v1/images/{*image}", "/v1/images/{image}")];

/// Marks a path parameter that takes the rest of the path, `/`s included
/// (OpenAPI has no word for it).
const CATCH_ALL_EXTENSION: &str = "x-catch-all";

/// The API's OpenAPI 3.1 document, as `GET /v1/openapi.json` serves it.
pub fn openapi() -> OpenApi {
    complete(routes().split_for_parts().1)
}

/// What the routes add to: the title, the security scheme, the tags.
pub(super) fn base() -> OpenApi {
    let mut document = utoipa::openapi::OpenApiBuilder::new()
        .info(
            utoipa::openapi::InfoBuilder::new()
                .title("Kisara API")
                .version(API_VERSION)
                .description(Some(
                    "On-demand containers across a cluster of Docker hosts.\n\n\
                     Every route but the probes (`/healthz`, `/readyz`), `/v1/version` and this \
                     document needs `Authorization: Bearer <token>`. Errors are \
                     `{\"error\": {\"code\", \"message\"}}` with a stable `code` (see `ErrorKind`). \
                     Bodies are JSON, decoded strictly (an unknown field is a 400) and at most \
                     the size the 413 answers name. Timestamps are milliseconds since the Unix \
                     epoch, durations whole seconds (`*_secs`), sizes bytes, bandwidths bytes \
                     per second.",
                ))
                .license(Some(
                    utoipa::openapi::LicenseBuilder::new()
                        .name("MIT OR Apache-2.0")
                        .identifier(Some("MIT OR Apache-2.0"))
                        .build(),
                ))
                .build(),
        )
        .build();
    let components = document.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("An API token the server's authenticator knows"))
                .build(),
        ),
    );
    document.tags = Some(
        [
            (
                tag::CONTAINERS,
                "Launch, inspect, stop, remove and exec in containers",
            ),
            (
                tag::NETWORKS,
                "Networks with subnets from the server's pool",
            ),
            (tag::IMAGES, "Images on the nodes"),
            (tag::NODES, "The nodes (Docker hosts) of the cluster"),
            (
                tag::SESSIONS,
                "Terminals and interactive execs over WebSocket, through the session engine",
            ),
            (
                tag::RECORDINGS,
                "Recorded sessions: list, search, download, play, export",
            ),
            (tag::AUDIT, "The audit trail: query and follow"),
            (
                tag::OPERATIONS,
                "Probes, version, metrics and this document",
            ),
        ]
        .into_iter()
        .map(|(name, description)| {
            utoipa::openapi::tag::TagBuilder::new()
                .name(name)
                .description(Some(description))
                .build()
        })
        .collect(),
    );
    document
}

/// Adds what every route shares, so that no handler can forget it: a 401
/// and a 503 (the authenticator's) where a token is needed, a 400 for a malformed query string, parameter
/// or body, a 413 where a body is read; names catch-all paths as OpenAPI writes them,
/// marking their parameter; describes the error codes with their statuses
/// and the `x-request-id` header of every answer.
pub(super) fn complete(mut document: OpenApi) -> OpenApi {
    for (route, template) in CATCH_ALLS {
        let Some(mut item) = document.paths.paths.remove(*route) else {
            continue;
        };
        let name = template
            .rsplit_once('{')
            .map_or("", |(_, name)| name.trim_end_matches('}'));
        for operation in operations(&mut item) {
            for parameter in operation.parameters.iter_mut().flatten() {
                if parameter.name == name {
                    parameter.extensions = Some(
                        [(
                            CATCH_ALL_EXTENSION.to_owned(),
                            serde_json::Value::Bool(true),
                        )]
                        .into_iter()
                        .collect(),
                    );
                }
            }
        }
        document.paths.paths.insert((*template).to_owned(), item);
    }
    for item in document.paths.paths.values_mut() {
        for operation in operations(item) {
            let secured = operation
                .security
                .as_ref()
                .is_some_and(|requirements| !requirements.is_empty());
            if secured {
                add_error(
                    operation,
                    401,
                    "No bearer token, or one the server does not know",
                );
                // The authenticator's contract: a backend that cannot
                // decide is `unavailable`, never a silent accept.
                add_error(
                    operation,
                    503,
                    "The authenticator cannot decide (its backend is down)",
                );
                add_error(
                    operation,
                    403,
                    "The caller's roles do not allow it; the message names the roles that may",
                );
            }
            if operation.request_body.is_some() {
                add_error(
                    operation,
                    413,
                    &format!("The body is larger than {MAX_BODY_BYTES} bytes"),
                );
            }
            // Every route decodes its query string, if only to refuse one
            // it does not take.
            add_error(
                operation,
                400,
                "A parameter, the query string or the body is malformed; the message names it and the bad value",
            );
            for (status, response) in &mut operation.responses.responses {
                if let RefOr::T(response) = response {
                    if status == "401" {
                        response.headers.insert(
                            header::WWW_AUTHENTICATE.as_str().to_owned(),
                            HeaderBuilder::new()
                                .schema(String::schema())
                                .description(Some("`Bearer`"))
                                .build(),
                        );
                    }
                    response.headers.insert(
                        REQUEST_ID_HEADER.to_owned(),
                        HeaderBuilder::new()
                            .schema(String::schema())
                            .description(Some(
                                "The request's id: the caller's `x-request-id` when it is a sane \
                                 token, else a fresh one; the server's logs carry it",
                            ))
                            .build(),
                    );
                }
            }
        }
    }
    if let Some(components) = document.components.as_mut()
        && let Some(RefOr::T(Schema::Object(codes))) = components.schemas.get_mut("ErrorKind")
    {
        let table: String = ErrorKind::ALL
            .iter()
            .map(|kind| format!("\n- `{}`: {}", kind.code(), status_of(*kind)))
            .collect();
        codes.description = Some(format!(
            "The stable code of an error, with the HTTP status that answers an error of that \
             kind:{table}\n\nThe router answers an unknown path with 404 `not_found` and a \
             method the path does not take with 405 `not_supported`."
        ));
    }
    // The descriptions are the types' doc comments: their intra-doc links
    // mean nothing outside rustdoc.
    let mut json = serde_json::to_value(&document).expect("the OpenAPI document serializes");
    unlink_descriptions(&mut json);
    serde_json::from_value(json).expect("the OpenAPI document reads back")
}

/// Turns rustdoc's links (``[`Type::item`]``) into code (`` `Type::item` ``)
/// in every description and summary.
fn unlink_descriptions(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(object) => {
            for (key, value) in object.iter_mut() {
                match value {
                    serde_json::Value::String(text) if key == "description" || key == "summary" => {
                        *text = text.replace("[`", "`").replace("`]", "`");
                    }
                    _ => unlink_descriptions(value),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(unlink_descriptions),
        _ => {}
    }
}

/// The operations of a path, whatever their methods.
fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// Documents an error answer of `status`, unless the route describes its
/// own.
fn add_error(operation: &mut Operation, status: u16, description: &str) {
    operation
        .responses
        .responses
        .entry(status.to_string())
        .or_insert_with(|| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
                .into()
        });
}
