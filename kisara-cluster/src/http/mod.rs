//! The HTTP API: REST/JSON over the cluster [`Server`] handle, as a tower
//! service you can serve on its own or mount into an existing axum or hyper
//! application.
//!
//! Every route but the probes (`GET /healthz`, `GET /readyz`, `GET
//! /v1/version`) and the document (`GET /v1/openapi.json`) needs
//! `Authorization: Bearer <token>`, checked by an [`Authenticator`]. Errors
//! are JSON, `{"error": {"code": "...", "message": "..."}}`, with a stable
//! `code` (the [`ErrorKind`]) and a message naming the bad value. Bodies are
//! limited in size and decoded strictly: an unknown field is an error, and
//! nothing is created by a request that fails. Path parameters are checked
//! before any backend call. The OpenAPI 3.1 document, [`openapi`], is
//! generated from the handlers and the wire types, so a route cannot be
//! served without being described.
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
//! The route needs the bearer token like every other but the probes; in
//! Prometheus's scrape config, set `authorization: { credentials: <token> }`. Without
//! `with_metrics` it answers 404. A program without the API serves
//! [`metrics_router`] instead, on an address of its own.

mod agents;
mod document;
mod pages;
mod params;
mod probes;
mod recordings;
mod terminal;
mod upgrade;

pub use agents::agent_link;
pub use document::openapi;
pub use terminal::{MAX_CLIENT_FRAME, PING_EVERY, close_code};

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use params::{NoQuery, ValidPath};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::session::{Action, SessionEngine, SessionRequest, TicketBook, authorize};
use crate::{
    ClusterNetwork, ContainerQuery, Launched, NetworkRequest, PullEvent, REQUEST_ID_HEADER,
    RequestId, Server, drain_pull,
};
use kisara_core::model::{
    ContainerInfo, Exposure, ImageInfo, ImageRef, LaunchRequest, NetworkInfo, NodeId, NodeLoad,
    Progress,
};
use kisara_core::{Authenticator, Credentials, Error, ErrorKind, Identity};
use tracing::Instrument;

/// The largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// How long a launch may take when the request does not say.
const DEFAULT_LAUNCH_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stop waits for the container to exit before killing it, when
/// the request does not say.
const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
/// How long an exec through the API may run at most.
const MAX_EXEC_TIME: Duration = Duration::from_secs(300);
/// The media type of streamed pull progress, one JSON object per line.
const NDJSON: &str = "application/x-ndjson";
/// The media type of the Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The tags grouping the operations in the document.
mod tag {
    pub(super) const CONTAINERS: &str = "containers";
    pub(super) const NETWORKS: &str = "networks";
    pub(super) const IMAGES: &str = "images";
    pub(super) const NODES: &str = "nodes";
    pub(super) const OPERATIONS: &str = "operations";
    pub(super) const SESSIONS: &str = "sessions";
    pub(super) const RECORDINGS: &str = "recordings";
    pub(super) const AUDIT: &str = "audit";
}

/// Renders the embedding program's metrics in the Prometheus text format.
type RenderMetrics = Arc<dyn Fn() -> String + Send + Sync>;

#[derive(Clone)]
struct ApiState {
    server: Server,
    authenticator: Arc<dyn Authenticator>,
    metrics: Option<RenderMetrics>,
    sessions: SessionEngine,
    tickets: Arc<TicketBook>,
    /// The OpenAPI document, serialized once.
    document: Bytes,
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
            axum::routing::get(move || std::future::ready(prometheus_text(render()))),
        )
        .layer(axum::middleware::from_fn(request_span))
}

fn prometheus_text(text: String) -> Response {
    ([(header::CONTENT_TYPE, PROMETHEUS_TEXT)], text).into_response()
}

/// Builds the API router with options; see [`api`].
#[must_use]
pub struct ApiBuilder {
    server: Server,
    authenticator: Arc<dyn Authenticator>,
    metrics: Option<RenderMetrics>,
    sessions: Option<SessionEngine>,
    tickets: Arc<TicketBook>,
}

impl ApiBuilder {
    /// The API over `server`, every caller checked by `authenticator`.
    pub fn new(server: Server, authenticator: Arc<dyn Authenticator>) -> Self {
        Self {
            server,
            authenticator,
            metrics: None,
            sessions: None,
            tickets: Arc::new(TicketBook::default()),
        }
    }

    /// Execs and terminals go through `sessions` (default: an engine over
    /// the same server with its in-memory defaults, for tests and demos; a
    /// server gives it its policy, audit sink and recording store). The
    /// engine must be over the same [`Server`].
    pub fn with_sessions(mut self, sessions: SessionEngine) -> Self {
        self.sessions = Some(sessions);
        self
    }

    /// Terminal tickets are valid for `ttl` (default 60 s).
    pub fn with_ticket_ttl(mut self, ttl: Duration) -> Self {
        self.tickets = Arc::new(TicketBook::new(ttl));
        self
    }

    /// Serves `GET /metrics` with what `render` returns on each scrape: the
    /// Prometheus text exposition of the recorder the program installed
    /// (see the [module docs](self)).
    pub fn with_metrics(mut self, render: impl Fn() -> String + Send + Sync + 'static) -> Self {
        self.metrics = Some(Arc::new(render));
        self
    }

    /// The router.
    pub fn build(self) -> Router {
        let (router, document) = routes().split_for_parts();
        let document = document::complete(document);
        let state = ApiState {
            sessions: self
                .sessions
                .unwrap_or_else(|| SessionEngine::builder(self.server.clone()).build()),
            server: self.server,
            authenticator: self.authenticator,
            metrics: self.metrics,
            tickets: self.tickets,
            document: Bytes::from(document.to_json().expect("the OpenAPI document serializes")),
        };
        router
            .merge(pages::router())
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .layer(axum::middleware::from_fn(request_span))
            .with_state(state)
    }
}

/// Every route with its documentation: `routes!` registers a handler only
/// together with its `#[utoipa::path]`.
fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(document::base())
        .routes(routes!(probes::openapi_document))
        .routes(routes!(probes::health))
        .routes(routes!(probes::ready))
        .routes(routes!(probes::version))
        .routes(routes!(metrics))
        .routes(routes!(list_nodes))
        .routes(routes!(launch, list_containers))
        .routes(routes!(inspect, remove))
        .routes(routes!(stop))
        .routes(routes!(exposures))
        .routes(routes!(exec))
        .routes(routes!(create_network, list_networks))
        .routes(routes!(remove_network))
        .routes(routes!(list_images))
        .routes(routes!(pull_image))
        .routes(routes!(remove_image))
        .routes(routes!(terminal::issue_ticket))
        .routes(routes!(terminal::terminal_socket))
        .routes(routes!(terminal::exec_socket))
        .routes(routes!(recordings::list))
        .routes(routes!(recordings::inspect))
        .routes(routes!(recordings::cast))
        .routes(routes!(recordings::ticket))
        .routes(routes!(recordings::export))
        .routes(routes!(recordings::audit))
        .routes(routes!(recordings::follow))
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

/// Every error answer's body.
#[derive(Serialize, ToSchema)]
#[schema(examples(json!({"error": {"code": "not_found", "message": "container not found: \"web-1\""}})))]
struct ErrorBody {
    /// What went wrong.
    error: ErrorDetail,
}

/// An error's stable code and message, as every error body and every failed
/// node of a pull carries it.
#[derive(Debug, Serialize, ToSchema)]
struct ErrorDetail {
    /// What went wrong, stable for programs to branch on.
    #[schema(value_type = ErrorKind)]
    code: &'static str,
    /// What went wrong for people, naming the bad value.
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
        let body = ErrorBody { error: self.error };
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

/// An authenticated caller whose roles allow `P`'s action: a 403 naming
/// the user, the action and the roles that may, when not.
struct Allowed<P: Permission>(Identity, std::marker::PhantomData<P>);

/// An action a route needs, as a type, so a handler's signature says it.
trait Permission: Send + Sync {
    const ACTION: Action;
}

/// Reading the cluster's state: nodes, containers, networks, images.
struct Read;

impl Permission for Read {
    const ACTION: Action = Action::Read;
}

/// Launching, stopping and removing; networks and images.
struct Manage;

impl Permission for Manage {
    const ACTION: Action = Action::Manage;
}

impl<P: Permission> FromRequestParts<ApiState> for Allowed<P> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> ApiResult<Self> {
        let Caller(identity) = Caller::from_request_parts(parts, state).await?;
        authorize(&identity, P::ACTION)?;
        Ok(Self(identity, std::marker::PhantomData))
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
/// [`ApiError`]. Every body of the API is an object: serde would also take
/// a struct from an array of its fields, and one whose fields all have
/// defaults from `[]`.
fn decode_json<T: DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    let first = body.iter().find(|byte| !byte.is_ascii_whitespace());
    if first.is_some_and(|&byte| byte != b'{') {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorKind::Invalid.code(),
            format!(
                "request body is not a JSON object: it starts with {:?}",
                kisara_core::excerpt(&String::from_utf8_lossy(body))
            ),
        ));
    }
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

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorKind::NotSupported.code(),
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// The Prometheus metrics the embedding program exports.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "getMetrics",
    tag = tag::OPERATIONS,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The Prometheus text exposition format, rendered on each scrape",
            content_type = "text/plain; version=0.0.4; charset=utf-8", body = String,
            example = "# TYPE kisara_nodes_online gauge\nkisara_nodes_online 2\n"),
        (status = 404, description = "The program exports no metrics (built without `ApiBuilder::with_metrics`)", body = ErrorBody),
    )
)]
async fn metrics(
    State(state): State<ApiState>,
    _caller: Allowed<Read>,
    _query: NoQuery,
) -> ApiResult<Response> {
    let render = state.metrics.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorKind::NotFound.code(),
            "metrics are not exported: build the API with ApiBuilder::with_metrics",
        )
    })?;
    Ok(prometheus_text(render()))
}

/// Every node with its capacity and load, as placement sees it.
#[utoipa::path(
    get,
    path = "/v1/nodes",
    operation_id = "listNodes",
    tag = tag::NODES,
    security(("bearer" = [])),
    responses((status = 200, description = "The nodes, online or not", body = Vec<NodeLoad>))
)]
async fn list_nodes(
    State(state): State<ApiState>,
    _caller: Allowed<Read>,
    _query: NoQuery,
) -> impl IntoResponse {
    axum::Json(state.server.nodes())
}

/// Launches a container.
///
/// It is placed on a node (or the one asked for), started, and its ports
/// are exposed on a relay when the server has a tunnel.
#[utoipa::path(
    post,
    path = "/v1/containers",
    operation_id = "launchContainer",
    tag = tag::CONTAINERS,
    security(("bearer" = [])),
    params(params::LaunchParams),
    request_body = LaunchRequest,
    responses(
        (status = 201, description = "Launched (or, for a repeated idempotency key, launched before)", body = Launched),
        (status = 404, description = "The node or the image does not exist", body = ErrorBody),
        (status = 409, description = "A container of that name exists", body = ErrorBody),
        (status = 503, description = "No node has room (`exhausted`) or the node is offline (`unavailable`)", body = ErrorBody),
        (status = 504, description = "The launch took longer than `timeout_secs`", body = ErrorBody),
        (status = 500, description = "The engine failed", body = ErrorBody),
    )
)]
async fn launch(
    State(state): State<ApiState>,
    caller: Allowed<Manage>,
    uri: Uri,
    JsonBody(request): JsonBody<LaunchRequest>,
) -> ApiResult<impl IntoResponse> {
    let params: params::LaunchParams = query(&uri)?;
    let timeout = params
        .timeout_secs
        .map_or(DEFAULT_LAUNCH_TIMEOUT, Duration::from_secs);
    tracing::info!(user = %caller.0.username, image = %request.container.image, "launch through the API");
    let launched = state.server.launch_container(request, timeout).await?;
    tracing::Span::current().record("node", tracing::field::display(&launched.node));
    Ok((StatusCode::CREATED, axum::Json(launched)))
}

/// Something that lives on one node, with the node's id beside its own
/// fields.
#[derive(Serialize, ToSchema)]
struct Placed<T> {
    /// The node it is on.
    node: NodeId,
    #[serde(flatten)]
    item: T,
}

/// The Kisara containers of the cluster, running or not.
#[utoipa::path(
    get,
    path = "/v1/containers",
    operation_id = "listContainers",
    tag = tag::CONTAINERS,
    security(("bearer" = [])),
    params(params::ListParams),
    responses(
        (status = 200, description = "The containers with their nodes", body = [Placed<ContainerInfo>]),
        (status = 404, description = "The node does not exist", body = ErrorBody),
        (status = 503, description = "The node is offline", body = ErrorBody),
        (status = 500, description = "An engine failed", body = ErrorBody),
    )
)]
async fn list_containers(
    State(state): State<ApiState>,
    _caller: Allowed<Read>,
    uri: Uri,
) -> ApiResult<impl IntoResponse> {
    let params: params::ListParams = query(&uri)?;
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

/// One container and its node.
#[utoipa::path(
    get,
    path = "/v1/containers/{id}",
    operation_id = "inspectContainer",
    tag = tag::CONTAINERS,
    security(("bearer" = [])),
    params(params::ContainerPath),
    responses(
        (status = 200, description = "The container with its node", body = Placed<ContainerInfo>),
        (status = 404, description = "No such container", body = ErrorBody),
        (status = 503, description = "Its node is offline", body = ErrorBody),
        (status = 500, description = "The engine failed", body = ErrorBody),
    )
)]
async fn inspect(
    State(state): State<ApiState>,
    _caller: Allowed<Read>,
    _query: NoQuery,
    ValidPath(id): ValidPath<params::ContainerPath>,
) -> ApiResult<impl IntoResponse> {
    let (node, item) = state.server.inspect(&id).await?;
    Ok(axum::Json(Placed { node, item }))
}

/// The public addresses a container's ports are exposed on.
#[utoipa::path(
    get,
    path = "/v1/containers/{id}/exposures",
    operation_id = "listExposures",
    tag = tag::CONTAINERS,
    security(("bearer" = [])),
    params(params::ContainerPath),
    responses(
        (status = 200, description = "Its exposures (none without a tunnel)", body = Vec<Exposure>),
        (status = 404, description = "No such container", body = ErrorBody),
        (status = 503, description = "Its node or the relay is unavailable", body = ErrorBody),
        (status = 500, description = "The relay or the engine failed", body = ErrorBody),
    )
)]
async fn exposures(
    State(state): State<ApiState>,
    _caller: Allowed<Read>,
    _query: NoQuery,
    ValidPath(id): ValidPath<params::ContainerPath>,
) -> ApiResult<impl IntoResponse> {
    Ok(axum::Json(state.server.exposures(&id).await?))
}

/// Removes a container.
///
/// Running or not; its exposures are withdrawn. Removing one that is gone
/// is fine.
#[utoipa::path(
    delete,
    path = "/v1/containers/{id}",
    operation_id = "removeContainer",
    tag = tag::CONTAINERS,
    security(("bearer" = [])),
    params(params::ContainerPath),
    responses(
        (status = 204, description = "Removed, or there was no such container"),
        (status = 503, description = "Its node is offline", body = ErrorBody),
        (status = 500, description = "The engine failed", body = ErrorBody),
    )
)]
async fn remove(
    State(state): State<ApiState>,
    _caller: Allowed<Manage>,
    _query: NoQuery,
    ValidPath(id): ValidPath<params::ContainerPath>,
) -> ApiResult<StatusCode> {
    state.server.remove(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Stops a container (SIGTERM, then SIGKILL after the grace period).
#[utoipa::path(
    post,
    path = "/v1/containers/{id}/stop",
    operation_id = "stopContainer",
    tag = tag::CONTAINERS,
    security(("bearer" = [])),
    params(params::ContainerPath, params::StopParams),
    responses(
        (status = 204, description = "Stopped"),
        (status = 404, description = "No such container", body = ErrorBody),
        (status = 503, description = "Its node is offline", body = ErrorBody),
        (status = 504, description = "The engine did not stop it in time", body = ErrorBody),
        (status = 500, description = "The engine failed", body = ErrorBody),
    )
)]
async fn stop(
    State(state): State<ApiState>,
    _caller: Allowed<Manage>,
    ValidPath(id): ValidPath<params::ContainerPath>,
    uri: Uri,
) -> ApiResult<StatusCode> {
    let params: params::StopParams = query(&uri)?;
    let grace = params
        .grace_secs
        .map_or(DEFAULT_STOP_GRACE, Duration::from_secs);
    state.server.stop(&id, grace).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The body of `POST /v1/containers/{id}/exec`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({"command": ["sh", "-c", "cat /flag"], "env": {"LANG": "C.UTF-8"}, "timeout_secs": 10})))]
struct ExecRequest {
    /// The program and its arguments, run without a shell.
    #[schema(min_items = 1)]
    command: Vec<String>,
    /// Environment variables besides the container's.
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
    /// How long it may run, in seconds, at most 300 (the default); it is
    /// killed after that and the answer is a 504.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 300)]
    timeout_secs: Option<u64>,
}

/// What an exec printed and how it ended.
#[derive(Debug, Serialize, ToSchema)]
#[schema(examples(json!({"stdout": "flag{...}\n", "stderr": "", "exit_code": 0})))]
struct ExecResponse {
    /// Its standard output, as UTF-8 text (invalid bytes replaced).
    stdout: String,
    /// Its standard error, as UTF-8 text (invalid bytes replaced).
    stderr: String,
    /// Its exit code.
    exit_code: i64,
}

/// Runs a command in a running container to its end and answers its output.
#[utoipa::path(
    post,
    path = "/v1/containers/{id}/exec",
    operation_id = "execInContainer",
    tag = tag::CONTAINERS,
    security(("bearer" = [])),
    params(params::ContainerPath),
    request_body = ExecRequest,
    responses(
        (status = 200, description = "It ran to its end, with any exit code", body = ExecResponse),
        (status = 403, description = "The caller may not open sessions in this container, or the command policy denies the command (the message names the rule); a denied command never runs", body = ErrorBody),
        (status = 404, description = "No such container", body = ErrorBody),
        (status = 409, description = "The container is not running", body = ErrorBody),
        (status = 503, description = "Its node is offline", body = ErrorBody),
        (status = 504, description = "It ran longer than `timeout_secs` and was killed", body = ErrorBody),
        (status = 500, description = "The engine failed", body = ErrorBody),
    )
)]
async fn exec(
    State(state): State<ApiState>,
    caller: Caller,
    _query: NoQuery,
    ValidPath(id): ValidPath<params::ContainerPath>,
    JsonBody(request): JsonBody<ExecRequest>,
) -> ApiResult<impl IntoResponse> {
    let limit = request
        .timeout_secs
        .map_or(MAX_EXEC_TIME, |s| Duration::from_secs(s).min(MAX_EXEC_TIME));
    tracing::info!(user = %caller.0.username, container = %id, "exec through the API");
    let mut session = SessionRequest::exec(caller.0, id.clone(), request.command);
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

/// Creates a network.
///
/// Its subnet comes from the server's pool (or is the one given); it is a
/// bridge on every online node (or the one named), or one overlay.
#[utoipa::path(
    post,
    path = "/v1/networks",
    operation_id = "createNetwork",
    tag = tag::NETWORKS,
    security(("bearer" = [])),
    request_body = NetworkRequest,
    responses(
        (status = 201, description = "Created on the nodes", body = ClusterNetwork),
        (status = 404, description = "The node does not exist", body = ErrorBody),
        (status = 409, description = "A network of that name exists, or the subnet is taken", body = ErrorBody),
        (status = 501, description = "A node's runtime cannot make this kind of network", body = ErrorBody),
        (status = 503, description = "The pool is exhausted (`exhausted`), or no node is online (`unavailable`)", body = ErrorBody),
        (status = 500, description = "An engine failed", body = ErrorBody),
    )
)]
async fn create_network(
    State(state): State<ApiState>,
    _caller: Allowed<Manage>,
    _query: NoQuery,
    JsonBody(request): JsonBody<NetworkRequest>,
) -> ApiResult<impl IntoResponse> {
    let created = state.server.create_network(&request).await?;
    Ok((StatusCode::CREATED, axum::Json(created)))
}

/// The Kisara networks on every online node.
#[utoipa::path(
    get,
    path = "/v1/networks",
    operation_id = "listNetworks",
    tag = tag::NETWORKS,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The networks with their nodes", body = [Placed<NetworkInfo>]),
        (status = 503, description = "A node is unavailable", body = ErrorBody),
        (status = 500, description = "An engine failed", body = ErrorBody),
    )
)]
async fn list_networks(
    State(state): State<ApiState>,
    _caller: Allowed<Read>,
    _query: NoQuery,
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

/// Removes a network.
///
/// From every node; its subnet goes back to the pool. Removing one that is
/// gone is fine.
#[utoipa::path(
    delete,
    path = "/v1/networks/{name}",
    operation_id = "removeNetwork",
    tag = tag::NETWORKS,
    security(("bearer" = [])),
    params(params::NetworkPath),
    responses(
        (status = 204, description = "Removed, or there was no such network"),
        (status = 409, description = "Containers are still attached to it", body = ErrorBody),
        (status = 503, description = "A node is unavailable", body = ErrorBody),
        (status = 500, description = "An engine failed", body = ErrorBody),
    )
)]
async fn remove_network(
    State(state): State<ApiState>,
    _caller: Allowed<Manage>,
    _query: NoQuery,
    ValidPath(name): ValidPath<params::NetworkPath>,
) -> ApiResult<StatusCode> {
    state.server.remove_network(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The images on every online node, or on one.
#[utoipa::path(
    get,
    path = "/v1/images",
    operation_id = "listImages",
    tag = tag::IMAGES,
    security(("bearer" = [])),
    params(params::NodeParams),
    responses(
        (status = 200, description = "The images with their nodes (one entry per node that has it)", body = [Placed<ImageInfo>]),
        (status = 404, description = "The node does not exist", body = ErrorBody),
        (status = 503, description = "The node is offline", body = ErrorBody),
        (status = 500, description = "An engine failed", body = ErrorBody),
    )
)]
async fn list_images(
    State(state): State<ApiState>,
    _caller: Allowed<Read>,
    uri: Uri,
) -> ApiResult<impl IntoResponse> {
    let params: params::NodeParams = query(&uri)?;
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
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({"image": "registry.example.com:5000/ctf/web-1:v2", "node": "n1"})))]
struct PullRequest {
    /// The image to pull from its registry.
    image: ImageRef,
    /// Only onto this node; onto every online node when absent.
    #[serde(default)]
    node: Option<NodeId>,
}

/// How a node's pull ended.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
enum PullResult {
    /// The image is on the node.
    Ok,
    /// The pull failed; `error` says why.
    Error,
}

/// One line of a streamed pull, and one node's entry in a collected one:
/// `{"node", "progress"}` while it runs, then `{"node", "result": "ok"}` or
/// `{"node", "result": "error", "error": {"code", "message"}}`.
#[derive(Serialize, ToSchema)]
#[schema(examples(
    json!({"node": "n1", "progress": {"id": "a3ed95caeb02", "status": "Downloading", "current": 1048576, "total": 2811478}}),
    json!({"node": "n1", "result": "ok"}),
    json!({"node": "n2", "result": "error", "error": {"code": "not_found", "message": "image not found: \"ctf/web-1:v9\""}})
))]
struct PullLine {
    /// The node pulling.
    node: NodeId,
    /// A step of the pull, as the node's engine reports it; only on lines
    /// before the node's last.
    #[serde(skip_serializing_if = "Option::is_none")]
    progress: Option<Progress>,
    /// How the pull ended, on the node's last line.
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<PullResult>,
    /// Why it failed, when `result` is `error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorDetail>,
}

impl PullLine {
    fn done(node: NodeId, result: &kisara_core::Result<()>) -> Self {
        Self {
            node,
            progress: None,
            result: Some(if result.is_ok() {
                PullResult::Ok
            } else {
                PullResult::Error
            }),
            error: result.as_ref().err().map(ErrorDetail::from),
        }
    }
}

impl From<PullEvent> for PullLine {
    fn from(event: PullEvent) -> Self {
        match event {
            PullEvent::Progress { node, progress } => Self {
                node,
                progress: Some(progress),
                result: None,
                error: None,
            },
            PullEvent::Done { node, result } => Self::done(node, &result),
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

/// Pulls an image onto one node or every online node.
///
/// With `Accept: application/x-ndjson`, streams one `PullLine` per line as
/// the nodes pull (200 once started; each node's last line says how it
/// ended). Otherwise waits and answers one `PullLine` per node, or, when any
/// node failed, an error of the first failure's kind naming every failed
/// node.
#[utoipa::path(
    post,
    path = "/v1/images/pull",
    operation_id = "pullImage",
    tag = tag::IMAGES,
    security(("bearer" = [])),
    request_body = PullRequest,
    responses(
        (status = 200, description = "Pulled on every node; streamed, one `PullLine` per line, with `Accept: application/x-ndjson`",
            content(
                (Vec<PullLine> = "application/json"),
                (PullLine = "application/x-ndjson"),
            )),
        (status = 401, description = "A registry refused the node's credentials", body = ErrorBody),
        (status = 403, description = "A registry denied the pull", body = ErrorBody),
        (status = 404, description = "The node, or the image in its registry, does not exist", body = ErrorBody),
        (status = 503, description = "The node is offline, or the registry unreachable", body = ErrorBody),
        (status = 504, description = "The registry did not answer in time", body = ErrorBody),
        (status = 500, description = "An engine failed", body = ErrorBody),
    )
)]
async fn pull_image(
    State(state): State<ApiState>,
    caller: Allowed<Manage>,
    _query: NoQuery,
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
                serde_json::to_vec(&PullLine::from(event)).expect("a pull line serializes");
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
        .into_iter()
        .map(|(node, result)| PullLine::done(node, &result))
        .collect();
    Ok(axum::Json(done).into_response())
}

/// Removes an image.
///
/// From one node or every online node. Removing one that is gone is fine.
#[utoipa::path(
    delete,
    // A catch-all, so that a reference's `/` may come raw or as %2F; the
    // document names it `{image}`.
    path = "/v1/images/{*image}",
    operation_id = "removeImage",
    tag = tag::IMAGES,
    security(("bearer" = [])),
    params(params::ImagePath, params::NodeParams),
    responses(
        (status = 204, description = "Removed, or it was not there"),
        (status = 404, description = "The node does not exist", body = ErrorBody),
        (status = 409, description = "A container uses it", body = ErrorBody),
        (status = 503, description = "The node is offline", body = ErrorBody),
        (status = 500, description = "An engine failed", body = ErrorBody),
    )
)]
async fn remove_image(
    State(state): State<ApiState>,
    caller: Allowed<Manage>,
    ValidPath(image): ValidPath<params::ImagePath>,
    uri: Uri,
) -> ApiResult<StatusCode> {
    let params: params::NodeParams = query(&uri)?;
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
