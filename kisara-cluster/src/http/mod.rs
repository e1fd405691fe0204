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
//! use kisara_cluster::Server;
//! use kisara_cluster::http::api;
//! use kisara_core::builtin::StaticAuthenticator;
//! use kisara_core::memory::MemorySubnetAllocator;
//! use kisara_core::Identity;
//!
//! let server = Server::builder(Arc::new(MemorySubnetAllocator::new("10.128.0.0/16".parse().unwrap(), 24).unwrap()))
//!     .build();
//! let tokens = StaticAuthenticator::new().with_token(Identity::new("platform"), "a-long-random-api-token");
//! let app: axum::Router = api(server, Arc::new(tokens));
//! // axum::serve(tokio::net::TcpListener::bind("127.0.0.1:7474").await?, app).await?;
//! # let _ = app; }
//! ```
//!
//! # Prometheus metrics
//!
//! `GET /metrics` serves the `metrics` facade's values in the Prometheus
//! text format. Kisara installs no recorder itself (a library must not take
//! the process-wide slot): the program installs one and hands the API a
//! function that renders it, through [`ApiBuilder::with_metrics`]. With
//! `metrics-exporter-prometheus` (`default-features = false` is enough):
//!
//! ```ignore
//! let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
//! let app = ApiBuilder::new(server, authenticator)
//!     .with_metrics(move || prometheus.render())
//!     .build();
//! ```
//!
//! The route needs the bearer token like every other; in Prometheus's
//! scrape config, set `authorization: { credentials: <token> }`. Without
//! `with_metrics` it answers 404. A program without the API serves
//! [`metrics_router`] instead, on an address of its own.

mod agents;
mod pages;
mod recordings;
mod terminal;
mod upgrade;

pub use agents::agent_link;
pub use terminal::{MAX_CLIENT_FRAME, PING_EVERY, close_code};

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::session::{SessionEngine, SessionRequest, TicketBook};
use crate::{
    ContainerQuery, NetworkRequest, PullEvent, REQUEST_ID_HEADER, RequestId, Server, drain_pull,
};
use kisara_core::model::{ContainerId, ImageRef, LaunchRequest, NodeId, Progress};
use kisara_core::{Authenticator, Credentials, Error, ErrorKind, Identity};
use tracing::Instrument;

/// The largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// How long a launch may take when the request does not say.
const DEFAULT_LAUNCH_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an exec through the API may run at most.
const MAX_EXEC_TIME: Duration = Duration::from_secs(300);
/// The media type of streamed pull progress, one JSON object per line.
const NDJSON: &str = "application/x-ndjson";
/// The media type of the Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders the embedding program's metrics in the Prometheus text format.
type RenderMetrics = Arc<dyn Fn() -> String + Send + Sync>;

#[derive(Clone)]
struct ApiState {
    server: Server,
    authenticator: Arc<dyn Authenticator>,
    metrics: Option<RenderMetrics>,
    sessions: SessionEngine,
    tickets: Arc<TicketBook>,
}

/// The API as an axum router (a tower service): serve it, or `nest` it into
/// your own router. The short way of [`ApiBuilder`] without options.
pub fn api(server: Server, authenticator: Arc<dyn Authenticator>) -> Router {
    ApiBuilder::new(server, authenticator).build()
}

/// `GET /metrics` alone, without authentication, rendering what `render`
/// returns on each scrape: for a program that serves no API (the relay)
/// and exposes its metrics on an address only the scraper reaches. See the
/// [module docs](self) for the recorder.
pub fn metrics_router(render: impl Fn() -> String + Send + Sync + 'static) -> Router {
    let render = Arc::new(render);
    Router::new()
        .route(
            "/metrics",
            get(move || std::future::ready(prometheus_text(render()))),
        )
        .layer(axum::middleware::from_fn(request_span))
}

fn prometheus_text(text: String) -> Response {
    ([(header::CONTENT_TYPE, PROMETHEUS_TEXT)], text).into_response()
}

/// Builds the API router with options; see [`api`].
#[must_use]
pub struct ApiBuilder {
    state: ApiState,
}

impl ApiBuilder {
    /// The API over `server`, every caller checked by `authenticator`.
    pub fn new(server: Server, authenticator: Arc<dyn Authenticator>) -> Self {
        Self {
            state: ApiState {
                sessions: SessionEngine::builder(server.clone()).build(),
                server,
                authenticator,
                metrics: None,
                tickets: Arc::new(TicketBook::default()),
            },
        }
    }

    /// Execs and terminals go through `sessions` (default: an engine over
    /// the same server with its in-memory defaults, for tests and demos; a
    /// server gives it its policy, audit sink and recording store). The
    /// engine must be over the same [`Server`].
    pub fn with_sessions(mut self, sessions: SessionEngine) -> Self {
        self.state.sessions = sessions;
        self
    }

    /// Terminal tickets are valid for `ttl` (default 60 s).
    pub fn with_ticket_ttl(mut self, ttl: Duration) -> Self {
        self.state.tickets = Arc::new(TicketBook::new(ttl));
        self
    }

    /// Serves `GET /metrics` with what `render` returns on each scrape: the
    /// Prometheus text exposition of the recorder the program installed
    /// (see the [module docs](self)).
    pub fn with_metrics(mut self, render: impl Fn() -> String + Send + Sync + 'static) -> Self {
        self.state.metrics = Some(Arc::new(render));
        self
    }

    /// The router.
    pub fn build(self) -> Router {
        Router::new()
            .route("/v1/openapi.json", get(openapi))
            .route("/metrics", get(metrics))
            .route("/v1/nodes", get(list_nodes))
            .route("/v1/containers", post(launch).get(list_containers))
            .route("/v1/containers/{id}", get(inspect).delete(remove))
            .route("/v1/containers/{id}/stop", post(stop))
            .route("/v1/containers/{id}/exposures", get(exposures))
            .route("/v1/containers/{id}/exec", post(exec))
            .route("/v1/networks", post(create_network).get(list_networks))
            .route("/v1/networks/{name}", delete(remove_network))
            .route("/v1/images", get(list_images))
            .route("/v1/images/pull", post(pull_image))
            // A catch-all, so that a reference's `/` may come raw or as %2F.
            .route("/v1/images/{*image}", delete(remove_image))
            .merge(terminal::routes())
            .merge(recordings::routes())
            .merge(pages::router())
            .fallback(not_found)
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .layer(axum::middleware::from_fn(request_span))
            .with_state(self.state)
    }
}

/// Runs each request in a span carrying its [`RequestId`] (the caller's
/// `x-request-id` when it is a sane token, else a fresh one), the method,
/// the path and, where the path names one, the container; answers with the
/// id in `x-request-id`. Mount it on routers of your own with
/// `axum::middleware::from_fn(request_span)`.
pub async fn request_span(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(RequestId::parse)
        .unwrap_or_else(RequestId::generate);
    let path = request.uri().path();
    let container = path
        .strip_prefix("/v1/containers/")
        .and_then(|rest| rest.split('/').next())
        .filter(|id| !id.is_empty());
    let span = tracing::info_span!(
        "http_request",
        request_id = %id,
        method = %request.method(),
        path,
        container,
        node = tracing::field::Empty,
    );
    let started = std::time::Instant::now();
    let mut response = id
        .clone()
        .scope(next.run(request))
        .instrument(span.clone())
        .await;
    span.in_scope(|| {
        tracing::debug!(status = response.status().as_u16(), elapsed = ?started.elapsed(), "answered");
    });
    if let Ok(value) = header::HeaderValue::from_str(id.as_str()) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

/// An error as the API answers it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: ErrorDetail,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a ErrorDetail,
}

/// An error's stable code and message, as every error body and every failed
/// node of a pull carries it.
#[derive(Debug, Serialize)]
struct ErrorDetail {
    code: &'static str,
    message: String,
}

impl From<&Error> for ErrorDetail {
    fn from(error: &Error) -> Self {
        Self {
            code: error.kind().code(),
            message: error.to_string(),
        }
    }
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            error: ErrorDetail {
                code,
                message: message.into(),
            },
        }
    }
}

/// The HTTP status that answers an error of `kind`.
fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::AlreadyExists | ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Invalid => StatusCode::BAD_REQUEST,
        ErrorKind::Exhausted | ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
        ErrorKind::NotSupported => StatusCode::NOT_IMPLEMENTED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        Self {
            status: status_of(error.kind()),
            error: ErrorDetail::from(&error),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: &self.error };
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
        let remote = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|info| info.0);
        Self::authenticate(state, &parts.headers, remote).await
    }
}

impl Caller {
    async fn authenticate(
        state: &ApiState,
        headers: &HeaderMap,
        remote: Option<std::net::SocketAddr>,
    ) -> ApiResult<Self> {
        let token = headers
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
        decode_json(&body).map(Self)
    }
}

/// Decodes a JSON request body strictly, failures answered as an
/// [`ApiError`].
fn decode_json<T: DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|error| {
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

/// One path parameter, percent-decoded; failures answered as an
/// [`ApiError`].
struct PathParam(String);

impl FromRequestParts<ApiState> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> ApiResult<Self> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Self(value))
            .map_err(|rejection| {
                ApiError::new(
                    rejection.status(),
                    ErrorKind::Invalid.code(),
                    rejection.body_text(),
                )
            })
    }
}

/// Decodes the query string strictly, answering failures as an [`ApiError`].
fn query<T: DeserializeOwned>(uri: &Uri) -> ApiResult<T> {
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

async fn metrics(State(state): State<ApiState>, _caller: Caller) -> ApiResult<Response> {
    let render = state.metrics.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorKind::NotFound.code(),
            "metrics are not exported: build the API with ApiBuilder::with_metrics",
        )
    })?;
    Ok(prometheus_text(render()))
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
    uri: Uri,
    JsonBody(request): JsonBody<LaunchRequest>,
) -> ApiResult<impl IntoResponse> {
    let params: LaunchParams = query(&uri)?;
    let timeout = params
        .timeout_secs
        .map_or(DEFAULT_LAUNCH_TIMEOUT, Duration::from_secs);
    tracing::info!(user = %caller.0.username, image = %request.container.image, "launch through the API");
    let launched = state.server.launch_container(request, timeout).await?;
    tracing::Span::current().record("node", tracing::field::display(&launched.node));
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
    uri: Uri,
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
    PathParam(id): PathParam,
) -> ApiResult<impl IntoResponse> {
    let (node, item) = state.server.inspect(&ContainerId::new(id)).await?;
    Ok(axum::Json(Placed { node, item }))
}

async fn exposures(
    State(state): State<ApiState>,
    _caller: Caller,
    PathParam(id): PathParam,
) -> ApiResult<impl IntoResponse> {
    Ok(axum::Json(
        state.server.exposures(&ContainerId::new(id)).await?,
    ))
}

async fn remove(
    State(state): State<ApiState>,
    _caller: Caller,
    PathParam(id): PathParam,
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
    PathParam(id): PathParam,
    uri: Uri,
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
    Caller(caller): Caller,
    PathParam(id): PathParam,
    JsonBody(request): JsonBody<ExecRequest>,
) -> ApiResult<impl IntoResponse> {
    let limit = request
        .timeout_secs
        .map_or(MAX_EXEC_TIME, |s| Duration::from_secs(s).min(MAX_EXEC_TIME));
    tracing::info!(user = %caller.username, container = %id, "exec through the API");
    let mut session = SessionRequest::exec(caller, ContainerId::new(id.clone()), request.command);
    session.env = request.env;
    // Dropping the session on timeout ends the process.
    let result = tokio::time::timeout(limit, state.sessions.exec(session))
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
    PathParam(name): PathParam,
) -> ApiResult<StatusCode> {
    state.server.remove_network(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The `node` query parameter of the image routes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeParams {
    node: Option<NodeId>,
}

async fn list_images(
    State(state): State<ApiState>,
    _caller: Caller,
    uri: Uri,
) -> ApiResult<impl IntoResponse> {
    let params: NodeParams = query(&uri)?;
    let found: Vec<_> = state
        .server
        .list_images(params.node.as_ref())
        .await?
        .into_iter()
        .map(|(node, item)| Placed { node, item })
        .collect();
    Ok(axum::Json(found))
}

/// The body of `POST /v1/images/pull`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PullRequest {
    image: ImageRef,
    #[serde(default)]
    node: Option<NodeId>,
}

/// One line of a streamed pull, and one node's entry in a collected one:
/// `{"node", "progress"}` while it runs, then `{"node", "result": "ok"}` or
/// `{"node", "result": "error", "error": {"code", "message"}}`.
#[derive(Serialize)]
struct PullLine<'a> {
    node: &'a NodeId,
    #[serde(skip_serializing_if = "Option::is_none")]
    progress: Option<&'a Progress>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorDetail>,
}

impl<'a> PullLine<'a> {
    fn done(node: &'a NodeId, result: &kisara_core::Result<()>) -> Self {
        Self {
            node,
            progress: None,
            result: Some(if result.is_ok() { "ok" } else { "error" }),
            error: result.as_ref().err().map(ErrorDetail::from),
        }
    }
}

impl<'a> From<&'a PullEvent> for PullLine<'a> {
    fn from(event: &'a PullEvent) -> Self {
        match event {
            PullEvent::Progress { node, progress } => Self {
                node,
                progress: Some(progress),
                result: None,
                error: None,
            },
            PullEvent::Done { node, result } => Self::done(node, result),
        }
    }
}

/// Whether the client asked for streamed progress (`Accept:
/// application/x-ndjson`).
fn wants_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|media| {
            let essence = media.split(';').next().unwrap_or_default().trim();
            essence.eq_ignore_ascii_case(NDJSON)
        })
}

async fn pull_image(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(request): JsonBody<PullRequest>,
) -> ApiResult<Response> {
    tracing::info!(user = %caller.0.username, image = %request.image, node = ?request.node, "image pull through the API");
    let pull = state
        .server
        .pull_image(&request.image, request.node.as_ref())?;
    if wants_ndjson(&headers) {
        let lines = pull.map(|event| {
            let mut line =
                serde_json::to_vec(&PullLine::from(&event)).expect("a pull line serializes");
            line.push(b'\n');
            Ok::<_, Infallible>(Bytes::from(line))
        });
        return Ok(([(header::CONTENT_TYPE, NDJSON)], Body::from_stream(lines)).into_response());
    }
    let outcomes = drain_pull(pull).await;
    // Failed nodes make the answer an error, of the first failure's kind,
    // naming every failed node.
    let mut failures = outcomes
        .iter()
        .filter_map(|(_, result)| result.as_ref().err());
    if let Some(first) = failures.next() {
        let kind = first.kind();
        let message = std::iter::once(first)
            .chain(failures)
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        return Err(ApiError::new(status_of(kind), kind.code(), message));
    }
    let done: Vec<_> = outcomes
        .iter()
        .map(|(node, result)| PullLine::done(node, result))
        .collect();
    Ok(axum::Json(done).into_response())
}

async fn remove_image(
    State(state): State<ApiState>,
    caller: Caller,
    PathParam(image): PathParam,
    uri: Uri,
) -> ApiResult<StatusCode> {
    let params: NodeParams = query(&uri)?;
    let image = ImageRef::parse(&image)?;
    tracing::info!(user = %caller.0.username, %image, node = ?params.node, "image removal through the API");
    state
        .server
        .remove_image(&image, params.node.as_ref())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// An error as the API answers it (status, JSON body), for handlers
/// outside this module.
pub(crate) fn error_response(error: Error) -> Response {
    ApiError::from(error).into_response()
}
