//! The HTTP API: REST/JSON over the cluster [`Server`] handle, as a tower
//! service you can serve on its own or mount into an existing axum or hyper
//! application.
//!
//! Every route needs `Authorization: Bearer <token>`, checked by an
//! [`Authenticator`]. Errors are JSON, `{"error": {"code": "...", "message":
//! "..."}}`, with a stable `code` (the [`ErrorKind`]) and a message naming the
//! bad value. Bodies are limited in size and decoded strictly: an unknown
//! field is an error, and nothing is created by a request that fails.
//! `GET /v1/openapi.json` describes it all.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::sync::Arc;
//! use kisara_core::cluster::Server;
//! use kisara_core::http::api;
//! use kisara_core::memory::{MemorySubnetAllocator, StaticAuthenticator};
//! use kisara_core::Identity;
//!
//! let server = Server::builder(Arc::new(MemorySubnetAllocator::new("10.128.0.0/16".parse().unwrap(), 24).unwrap()))
//!     .build();
//! let tokens = StaticAuthenticator::new().with_token(Identity::new("platform"), "a-long-random-api-token");
//! let app: axum::Router = api(server, Arc::new(tokens));
//! // axum::serve(tokio::net::TcpListener::bind("127.0.0.1:7474").await?, app).await?;
//! # let _ = app; }
//! ```

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::cluster::{ContainerQuery, NetworkRequest, Server};
use crate::model::{ContainerId, ExecSpec, LaunchRequest, NodeId};
use crate::{Authenticator, Credentials, Error, ErrorKind, Identity};

/// The largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// How long a launch may take when the request does not say.
const DEFAULT_LAUNCH_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an exec through the API may run at most.
const MAX_EXEC_TIME: Duration = Duration::from_secs(300);

#[derive(Clone)]
struct ApiState {
    server: Server,
    authenticator: Arc<dyn Authenticator>,
}

/// The API as an axum router (a tower service): serve it, or `nest` it into
/// your own router.
pub fn api(server: Server, authenticator: Arc<dyn Authenticator>) -> Router {
    let state = ApiState {
        server,
        authenticator,
    };
    Router::new()
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/nodes", get(list_nodes))
        .route("/v1/containers", post(launch).get(list_containers))
        .route("/v1/containers/{id}", get(inspect).delete(remove))
        .route("/v1/containers/{id}/stop", post(stop))
        .route("/v1/containers/{id}/exec", post(exec))
        .route("/v1/networks", post(create_network).get(list_networks))
        .route("/v1/networks/{name}", axum::routing::delete(remove_network))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// An error as the API answers it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let status = match error.kind() {
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::AlreadyExists | ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::Invalid => StatusCode::BAD_REQUEST,
            ErrorKind::Exhausted | ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
            ErrorKind::NotSupported => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, error.kind().code(), error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: &self.message,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The caller, authenticated from the bearer token.
struct Caller(Identity);

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> ApiResult<Self> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    ErrorKind::Unauthenticated.code(),
                    "missing bearer token: send Authorization: Bearer <token>",
                )
            })?;
        let remote = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|info| info.0);
        let identity = state
            .authenticator
            .authenticate(
                &Credentials::BearerToken {
                    token: token.trim().to_owned(),
                },
                remote,
            )
            .await?;
        Ok(Self(identity))
    }
}

/// A JSON body decoded strictly, every failure (too large, not JSON, wrong
/// shape) answered as an [`ApiError`].
struct JsonBody<T>(T);

impl<T: DeserializeOwned> FromRequest<ApiState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &ApiState) -> ApiResult<Self> {
        let body = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                let message = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    format!("request body is larger than {MAX_BODY_BYTES} bytes")
                } else {
                    rejection.body_text()
                };
                ApiError::new(rejection.status(), ErrorKind::Invalid.code(), message)
            })?;
        serde_json::from_slice(&body).map(Self).map_err(|error| {
            let what = match error.classify() {
                serde_json::error::Category::Data => "request body does not match the schema",
                _ => "request body is not valid JSON",
            };
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorKind::Invalid.code(),
                format!("{what}: {error}"),
            )
        })
    }
}

/// Decodes the query string strictly, answering failures as an [`ApiError`].
fn query<T: DeserializeOwned>(uri: &axum::http::Uri) -> ApiResult<T> {
    Query::<T>::try_from_uri(uri)
        .map(|Query(value)| value)
        .map_err(|error| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorKind::Invalid.code(),
                error.body_text(),
            )
        })
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorKind::NotFound.code(),
        "no such route",
    )
}

async fn openapi(_caller: Caller) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
}

async fn list_nodes(State(state): State<ApiState>, _caller: Caller) -> impl IntoResponse {
    axum::Json(state.server.nodes())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LaunchParams {
    timeout_secs: Option<u64>,
}

async fn launch(
    State(state): State<ApiState>,
    caller: Caller,
    uri: axum::http::Uri,
    JsonBody(request): JsonBody<LaunchRequest>,
) -> ApiResult<impl IntoResponse> {
    let params: LaunchParams = query(&uri)?;
    let timeout = params
        .timeout_secs
        .map_or(DEFAULT_LAUNCH_TIMEOUT, Duration::from_secs);
    tracing::info!(user = %caller.0.username, image = %request.container.image, "launch through the API");
    let launched = state.server.launch_container(request, timeout).await?;
    Ok((StatusCode::CREATED, axum::Json(launched)))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    owner: Option<String>,
    module: Option<String>,
    node: Option<NodeId>,
}

#[derive(Serialize)]
struct Placed<T> {
    node: NodeId,
    #[serde(flatten)]
    item: T,
}

async fn list_containers(
    State(state): State<ApiState>,
    _caller: Caller,
    uri: axum::http::Uri,
) -> ApiResult<impl IntoResponse> {
    let params: ListParams = query(&uri)?;
    let found = state
        .server
        .list(&ContainerQuery {
            owner: params.owner,
            module: params.module,
            node: params.node,
            ..ContainerQuery::default()
        })
        .await?;
    let found: Vec<_> = found
        .into_iter()
        .map(|(node, item)| Placed { node, item })
        .collect();
    Ok(axum::Json(found))
}

async fn inspect(
    State(state): State<ApiState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let (node, item) = state.server.inspect(&ContainerId::new(id)).await?;
    Ok(axum::Json(Placed { node, item }))
}

async fn remove(
    State(state): State<ApiState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.server.remove(&ContainerId::new(id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StopParams {
    grace_secs: Option<u64>,
}

async fn stop(
    State(state): State<ApiState>,
    _caller: Caller,
    Path(id): Path<String>,
    uri: axum::http::Uri,
) -> ApiResult<StatusCode> {
    let params: StopParams = query(&uri)?;
    let grace = Duration::from_secs(params.grace_secs.unwrap_or(10));
    state.server.stop(&ContainerId::new(id), grace).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The body of `POST /v1/containers/{id}/exec`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecRequest {
    command: Vec<String>,
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    timeout_secs: Option<u64>,
}

/// What an exec printed and how it ended; output is UTF-8 text (invalid
/// bytes replaced).
#[derive(Debug, Serialize)]
struct ExecResponse {
    stdout: String,
    stderr: String,
    exit_code: i64,
}

async fn exec(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(request): JsonBody<ExecRequest>,
) -> ApiResult<impl IntoResponse> {
    let mut spec = ExecSpec::new(request.command);
    spec.env = request.env;
    let limit = request
        .timeout_secs
        .map_or(MAX_EXEC_TIME, |s| Duration::from_secs(s).min(MAX_EXEC_TIME));
    tracing::info!(user = %caller.0.username, container = %id, command = ?spec.command, "exec through the API");
    let (runtime, session) = state
        .server
        .exec(&ContainerId::new(id.clone()), &spec)
        .await?;
    // Dropping the session on timeout ends the process.
    let result = tokio::time::timeout(limit, session.collect(&*runtime, Duration::from_secs(5)))
        .await
        .map_err(|_| Error::Timeout {
            operation: format!("exec in container {id}"),
            after: limit,
        })??;
    Ok(axum::Json(ExecResponse {
        stdout: String::from_utf8_lossy(&result.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&result.stderr).into_owned(),
        exit_code: result.exit_code,
    }))
}

async fn create_network(
    State(state): State<ApiState>,
    _caller: Caller,
    JsonBody(request): JsonBody<NetworkRequest>,
) -> ApiResult<impl IntoResponse> {
    let created = state.server.create_network(&request).await?;
    Ok((StatusCode::CREATED, axum::Json(created)))
}

async fn list_networks(
    State(state): State<ApiState>,
    _caller: Caller,
) -> ApiResult<impl IntoResponse> {
    let found: Vec<_> = state
        .server
        .list_networks()
        .await?
        .into_iter()
        .map(|(node, item)| Placed { node, item })
        .collect();
    Ok(axum::Json(found))
}

async fn remove_network(
    State(state): State<ApiState>,
    _caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    state.server.remove_network(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
