//! The server side, for platforms written in Rust: implement
//! [`WebhookHandler`], mount [`router`] in an axum app (or serve it alone
//! with [`WebhookServer`], plain or TLS/mTLS), and ContainerSSH or Kisara can
//! ask it.
//!
//! Routes: `POST /password`, `/pubkey`, `/authz`, `/token`, and the config
//! and teardown paths from [`ServerOptions`] (`/config`, `/session-ended`).
//! Bodies over the size limit get 413, undecodable ones 400 naming the
//! field, a bad signature 401, a handler slower than the timeout 503, and a
//! handler error 500 (which clients retry).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use kisara_core::lifecycle::{Service, ServiceContext};
use kisara_core::{
    Authenticator, ConfigProvider, Credentials, Error, ErrorKind, Identity, model::ContainerId,
    model::SessionId,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::WebhookError;
use crate::sign::{SIGNATURE_HEADER, Signer};
use crate::tls::{ReloadingTls, ServerTls};
use crate::wire::{
    self, AuthResponse, AuthzRequest, ConfigResponse, KisaraConfigResponse, KisaraIdentity,
    PasswordRequest, PublicKeyRequest, SessionEndedRequest, TEAM_KEY, TokenRequest, WireSession,
    decode,
};

/// What a platform implements to answer the webhooks.
///
/// Return `Ok` with `success:false` (see [`AuthResponse::rejected`]) to deny;
/// an `Err` means "cannot decide" and becomes a 500, which clients retry.
#[async_trait]
pub trait WebhookHandler: Send + Sync + 'static {
    /// `/password`: is this the user's password?
    async fn password(&self, request: PasswordRequest) -> kisara_core::Result<AuthResponse>;

    /// `/pubkey`: is this one of the user's keys?
    async fn pubkey(&self, request: PublicKeyRequest) -> kisara_core::Result<AuthResponse>;

    /// `/authz`: may `authenticatedUsername` log in as `username`? By
    /// default only as themselves.
    async fn authz(&self, request: AuthzRequest) -> kisara_core::Result<AuthResponse> {
        let same = request
            .authenticated_username
            .as_deref()
            .is_none_or(|name| name == request.username);
        Ok(if same {
            AuthResponse::accepted(request.username, KisaraIdentity::default())
        } else {
            AuthResponse::rejected()
        })
    }

    /// `/token` (Kisara): whose bearer token is this? By default no one's.
    async fn token(&self, request: TokenRequest) -> kisara_core::Result<AuthResponse> {
        let _ = request;
        Ok(AuthResponse::rejected())
    }

    /// The config webhook: what does this session get?
    async fn config(&self, request: wire::ConfigRequest) -> kisara_core::Result<ConfigResponse>;

    /// The teardown call (Kisara): a session ended. By default nothing.
    async fn session_ended(&self, request: SessionEndedRequest) -> kisara_core::Result<()> {
        let _ = request;
        Ok(())
    }
}

impl AuthResponse {
    /// A `success:true` answer for `username`.
    pub fn accepted(username: impl Into<String>, kisara: KisaraIdentity) -> Self {
        let username = username.into();
        let empty = kisara == KisaraIdentity::default();
        Self {
            authenticated_username: Some(username.clone()),
            username,
            success: true,
            kisara: (!empty).then_some(kisara),
            ..Self::default()
        }
    }

    /// A `success:false` answer.
    pub fn rejected() -> Self {
        Self::default()
    }
}

/// How the server side reads requests.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The largest request body (default 64 KiB; auth bodies are tiny).
    pub max_body_bytes: usize,
    /// Longest a handler may take before the client gets 503 (default 5 s).
    pub timeout: Duration,
    /// When set, every request must carry a valid signature.
    pub signer: Option<Signer>,
    /// The config webhook's path (default `/config`, as ContainerSSH's
    /// example and OpenAPI file).
    pub config_path: String,
    /// The teardown path (default `/session-ended`).
    pub session_ended_path: String,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 << 10,
            timeout: Duration::from_secs(5),
            signer: None,
            config_path: "/config".to_owned(),
            session_ended_path: "/session-ended".to_owned(),
        }
    }
}

struct Shared {
    handler: Arc<dyn WebhookHandler>,
    options: ServerOptions,
}

type SharedState = Arc<Shared>;

/// The webhook routes over `handler`, to mount (`.nest("/hooks", ...)`) or
/// serve.
pub fn router(handler: Arc<dyn WebhookHandler>, options: ServerOptions) -> Router {
    let limit = options.max_body_bytes;
    let config_path = options.config_path.clone();
    let ended_path = options.session_ended_path.clone();
    let shared: SharedState = Arc::new(Shared { handler, options });
    Router::new()
        .route(
            "/password",
            hook("/password", |h, r| async move { h.password(r).await }),
        )
        .route(
            "/pubkey",
            hook("/pubkey", |h, r| async move { h.pubkey(r).await }),
        )
        .route(
            "/authz",
            hook("/authz", |h, r| async move { h.authz(r).await }),
        )
        .route(
            "/token",
            hook("/token", |h, r| async move { h.token(r).await }),
        )
        .route(
            &config_path,
            hook("config", |h, r| async move { h.config(r).await }),
        )
        .route(
            &ended_path,
            hook("session-ended", |h, r| async move {
                h.session_ended(r).await.map(|()| serde_json::json!({}))
            }),
        )
        .layer(DefaultBodyLimit::max(limit))
        .with_state(shared)
}

/// `POST` on one webhook: [`endpoint`] calling the handler with `call`.
fn hook<Req, Resp, F, Fut>(name: &'static str, call: F) -> MethodRouter<SharedState>
where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    F: Fn(Arc<dyn WebhookHandler>, Req) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = kisara_core::Result<Resp>> + Send + 'static,
{
    post(
        move |State(shared): State<SharedState>, headers: HeaderMap, body: Bytes| async move {
            endpoint(shared, name, &headers, &body, call).await
        },
    )
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    let message = message.into();
    tracing::info!(%status, message, "webhook request refused");
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

/// One endpoint: content type, signature, lenient decoding, the handler
/// under a timeout, and the answer as JSON.
async fn endpoint<Req, Resp, F, Fut>(
    shared: SharedState,
    name: &'static str,
    headers: &HeaderMap,
    body: &[u8],
    call: F,
) -> Response
where
    Req: DeserializeOwned,
    Resp: Serialize,
    F: FnOnce(Arc<dyn WebhookHandler>, Req) -> Fut,
    Fut: Future<Output = kisara_core::Result<Resp>>,
{
    if let Some(kind) = headers.get(header::CONTENT_TYPE) {
        let kind = kind.to_str().unwrap_or("").to_ascii_lowercase();
        if kind.split(';').next().map(str::trim) != Some("application/json") {
            return refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("content type {kind:?}, expected application/json"),
            );
        }
    }
    if let Some(signer) = &shared.options.signer {
        let header = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
        if let Err(err) = signer.verify(header, body) {
            return refuse(StatusCode::UNAUTHORIZED, err.to_string());
        }
    }
    let request = match decode::<Req>(&format!("{name} request"), body) {
        Ok(decoded) => decoded.value,
        Err(err) => return refuse(StatusCode::BAD_REQUEST, err.to_string()),
    };
    let timeout = shared.options.timeout;
    match tokio::time::timeout(timeout, call(shared.handler.clone(), request)).await {
        Ok(Ok(answer)) => axum::Json(answer).into_response(),
        Ok(Err(err)) => {
            tracing::warn!(endpoint = name, %err, "webhook handler failed");
            refuse(StatusCode::INTERNAL_SERVER_ERROR, err.to_string())
        }
        Err(_) => refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{name}: no answer within {timeout:?}"),
        ),
    }
}

/// A [`WebhookHandler`] over any [`Authenticator`] and [`ConfigProvider`]:
/// a platform with its own backends serves them as webhooks unchanged.
#[derive(Debug, Clone)]
pub struct BackendHandler {
    authenticator: Arc<dyn Authenticator>,
    config: Arc<dyn ConfigProvider>,
}

impl BackendHandler {
    /// Serves `authenticator` and `config`.
    pub fn new(authenticator: Arc<dyn Authenticator>, config: Arc<dyn ConfigProvider>) -> Self {
        Self {
            authenticator,
            config,
        }
    }

    async fn check(
        &self,
        credentials: Credentials,
        remote: &str,
    ) -> kisara_core::Result<AuthResponse> {
        let remote = remote.parse::<SocketAddr>().ok();
        match self.authenticator.authenticate(&credentials, remote).await {
            Ok(identity) => Ok(accepted(identity)),
            Err(err) if err.kind() == ErrorKind::Unauthenticated => Ok(AuthResponse::rejected()),
            Err(err) => Err(err),
        }
    }
}

fn accepted(identity: Identity) -> AuthResponse {
    let kisara = KisaraIdentity {
        team: identity.metadata.get(TEAM_KEY).cloned(),
        roles: identity.roles,
    };
    let mut answer = AuthResponse::accepted(identity.username, kisara);
    answer.metadata = identity
        .metadata
        .into_iter()
        .filter(|(k, _)| k != TEAM_KEY)
        .map(|(k, v)| (k, wire::Value::new(v)))
        .collect();
    answer
}

#[async_trait]
impl WebhookHandler for BackendHandler {
    async fn password(&self, request: PasswordRequest) -> kisara_core::Result<AuthResponse> {
        // A password that is not UTF-8 cannot match a stored one.
        let Ok(password) = String::from_utf8(request.password.0) else {
            return Ok(AuthResponse::rejected());
        };
        let credentials = Credentials::Password {
            username: request.username,
            password,
        };
        self.check(credentials, &request.remote_address).await
    }

    async fn pubkey(&self, request: PublicKeyRequest) -> kisara_core::Result<AuthResponse> {
        let credentials = Credentials::PublicKey {
            username: request.username,
            public_key: request.public_key,
        };
        self.check(credentials, &request.remote_address).await
    }

    async fn token(&self, request: TokenRequest) -> kisara_core::Result<AuthResponse> {
        let credentials = Credentials::BearerToken {
            token: request.token.expose().to_owned(),
        };
        self.check(credentials, &request.remote_address).await
    }

    async fn config(&self, request: wire::ConfigRequest) -> kisara_core::Result<ConfigResponse> {
        let kisara = request.kisara.clone().unwrap_or_default();
        let mut identity = Identity::new(
            request
                .authenticated_username
                .clone()
                .unwrap_or_else(|| request.username.clone()),
        );
        identity.roles = kisara.roles;
        identity.metadata = request
            .metadata
            .iter()
            .filter(|(_, v)| !v.sensitive)
            .map(|(k, v)| (k.clone(), v.value.clone()))
            .collect();
        if let Some(team) = kisara.team {
            identity.metadata.insert(TEAM_KEY.to_owned(), team);
        }
        let session = if kisara.session.is_empty() {
            request.connection().to_owned()
        } else {
            kisara.session
        };
        let core_request = kisara_core::ConfigRequest {
            session: SessionId::new(session),
            identity,
            remote: request.remote_address.parse().ok(),
            requested_container: kisara.requested_container.map(ContainerId::new),
        };
        let answer = match self.config.session_config(&core_request).await {
            Ok(config) => KisaraConfigResponse {
                session: Some(WireSession::from(&config)),
                denied: None,
            },
            Err(err) if err.kind() == ErrorKind::PermissionDenied => KisaraConfigResponse {
                session: None,
                denied: Some(denied_reason(&err)),
            },
            Err(err) => return Err(err),
        };
        Ok(ConfigResponse {
            username: request.username,
            authenticated_username: request.authenticated_username,
            connection_id: request.connection_id,
            remote_address: request.remote_address,
            kisara: Some(answer),
            ..ConfigResponse::default()
        })
    }
}

fn denied_reason(err: &Error) -> String {
    match err {
        Error::PermissionDenied { message } => message.clone(),
        other => other.to_string(),
    }
}

/// Serves a [`Router`] on a TCP listener, plain or TLS (mTLS when the
/// [`ServerTls`] names a client CA), with certificates reloaded when their
/// files change.
pub struct WebhookServer {
    /// Taken by [`WebhookServer::serve`] and dropped when it stops
    /// accepting, so that the port refuses connections from then on.
    listener: std::sync::Mutex<Option<TcpListener>>,
    addr: SocketAddr,
    app: Router,
    tls: Option<Arc<ReloadingTls<ServerTls>>>,
}

impl std::fmt::Debug for WebhookServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookServer")
            .field("address", &self.addr)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// Longest a client may take to send its request headers or finish TLS.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl WebhookServer {
    /// Binds `addr`; with `tls`, loads its files now (an error names the bad
    /// one).
    pub async fn bind(
        addr: SocketAddr,
        app: Router,
        tls: Option<ServerTls>,
    ) -> Result<Self, WebhookError> {
        let tls = tls.map(ReloadingTls::new).transpose()?.map(Arc::new);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| Error::unavailable(format!("cannot listen on {addr}: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::unavailable(format!("no address for {addr}: {e}")))?;
        Ok(Self {
            listener: std::sync::Mutex::new(Some(listener)),
            addr,
            app,
            tls,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The TLS configuration, to [`ReloadingTls::reload`] on SIGHUP.
    pub fn tls(&self) -> Option<Arc<ReloadingTls<ServerTls>>> {
        self.tls.clone()
    }

    /// Serves until `stop` completes, then closes the port and lets open
    /// requests finish. A server serves once: a second call returns at
    /// once.
    pub async fn serve(&self, stop: impl Future<Output = ()>) {
        let Some(listener) = kisara_core::sync::lock(&self.listener).take() else {
            tracing::warn!(address = %self.addr, "this webhook server has served already");
            return;
        };
        let mut connections = JoinSet::new();
        let (closing, closed) = tokio::sync::watch::channel(false);
        tokio::pin!(stop);
        loop {
            let (tcp, peer) = tokio::select! {
                () = &mut stop => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Out of descriptors and the like: pause, not crash.
                        tracing::warn!(%err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let app = self.app.clone();
            let acceptor = self
                .tls
                .as_ref()
                .map(|tls| TlsAcceptor::from(tls.current()));
            let mut closed = closed.clone();
            connections.spawn(async move {
                let service = TowerToHyperService::new(app);
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(HANDSHAKE_TIMEOUT);
                let result = match acceptor {
                    None => {
                        let conn = builder.serve_connection(TokioIo::new(tcp), service);
                        drive(conn, &mut closed).await
                    }
                    Some(acceptor) => {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(stream)) => {
                                let conn = builder.serve_connection(TokioIo::new(stream), service);
                                drive(conn, &mut closed).await
                            }
                            Ok(Err(err)) => {
                                tracing::info!(%peer, %err, "TLS handshake refused");
                                return;
                            }
                            Err(_) => return,
                        }
                    }
                };
                if let Err(err) = result {
                    tracing::debug!(%peer, %err, "webhook connection ended with an error");
                }
            });
            // Reap finished connections so the set does not grow.
            while connections.try_join_next().is_some() {}
        }
        drop(listener);
        let _ = closing.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while connections.join_next().await.is_some() {}
        })
        .await;
    }
}

async fn drive<I, S>(
    conn: hyper::server::conn::http1::Connection<I, S>,
    closed: &mut tokio::sync::watch::Receiver<bool>,
) -> hyper::Result<()>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::pin!(conn);
    let closing = async {
        // The guard `wait_for` returns is not `Send`; drop it at once.
        let _ = closed.wait_for(|closing| *closing).await.map(|_| ());
    };
    tokio::select! {
        result = conn.as_mut() => result,
        () = closing => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}

#[async_trait]
impl Service for WebhookServer {
    fn name(&self) -> &str {
        "webhook-server"
    }

    async fn run(&self, ctx: ServiceContext) -> kisara_core::Result<()> {
        ctx.running();
        self.serve(ctx.stop_requested()).await;
        Ok(())
    }
}
