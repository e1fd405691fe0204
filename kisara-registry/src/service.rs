//! The token endpoint the registry's `auth.token.realm` points at:
//! `GET /token` with HTTP basic auth (what `docker login` and `docker pull`
//! send) or none (anonymous), and the OAuth2 `POST /token` form with
//! `grant_type=password` or `refresh_token`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kisara_core::{Authenticator, Credentials, Identity, roles};

use crate::error::{RegistryError, Result};
use crate::scope::{Action, Resource, Scope};
use crate::store::{Role, Store};
use crate::token::{Access, IssuedToken, Issuer, random_token, rfc3339};

/// Decides whether pulls of a repository are blocked (the image gate).
///
/// # Contract
///
/// - `Ok(true)` only when the gate holds an image of `repository` it
///   blocks; a repository it knows nothing of is `Ok(false)`.
/// - An error means the gate cannot decide; the token service then drops
///   `pull` (fails closed) and logs it.
#[async_trait]
pub trait PullGate: Send + Sync + std::fmt::Debug {
    /// Whether pulling from `repository` is blocked.
    async fn blocks_pull(&self, repository: &str) -> Result<bool>;
}

/// The token service: checks users through an [`Authenticator`], grants
/// by project role, signs with an [`Issuer`].
#[derive(Debug)]
pub struct TokenService {
    issuer: Issuer,
    service: String,
    authenticator: Arc<dyn Authenticator>,
    store: Store,
    gate: Option<Arc<dyn PullGate>>,
    refresh_lifetime: Duration,
}

/// The largest `POST` form accepted.
const MAX_FORM_BYTES: usize = 64 * 1024;

impl TokenService {
    /// Issues tokens for the registry whose `auth.token.service` is
    /// `service`.
    pub fn new(
        issuer: Issuer,
        service: impl Into<String>,
        authenticator: Arc<dyn Authenticator>,
        store: Store,
    ) -> Self {
        Self {
            issuer,
            service: service.into(),
            authenticator,
            store,
            gate: None,
            refresh_lifetime: Duration::from_secs(30 * 86_400),
        }
    }

    /// Drops `pull` on repositories `gate` blocks.
    pub fn with_gate(mut self, gate: Arc<dyn PullGate>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// How long refresh tokens live (default 30 days).
    pub fn with_refresh_lifetime(mut self, lifetime: Duration) -> Self {
        self.refresh_lifetime = lifetime;
        self
    }

    /// The issuer.
    pub fn issuer(&self) -> &Issuer {
        &self.issuer
    }

    /// The router to mount: `GET` and `POST /token`.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/token", get(get_token).post(post_token))
            .with_state(self)
    }

    /// What `identity` (`None`: anonymous) gets of `scopes`: per scope the
    /// intersection of the asked and the allowed actions, possibly none,
    /// never an error.
    pub async fn grant(
        &self,
        identity: Option<&Identity>,
        scopes: &[Scope],
    ) -> Result<Vec<Access>> {
        let superuser = identity.is_some_and(|i| i.has_role(roles::ADMIN));
        let projects = scopes
            .iter()
            .map(|s| match &s.resource {
                Resource::Repository(name) => name.project().to_owned(),
                Resource::Catalog => String::new(),
            })
            .collect();
        let standing = self
            .store
            .access_of(identity.map(|i| i.username.clone()), projects)
            .await?;
        let mut grants = Vec::with_capacity(scopes.len());
        for (scope, (public, role)) in scopes.iter().zip(standing) {
            let allowed: BTreeSet<Action> = match (&scope.resource, superuser) {
                (Resource::Catalog, true) => [Action::All].into(),
                (Resource::Catalog, false) => BTreeSet::new(),
                (Resource::Repository(_), true) => Role::Admin.actions().iter().copied().collect(),
                (Resource::Repository(_), false) => role
                    .map_or(&[][..], Role::actions)
                    .iter()
                    .copied()
                    .chain(public.then_some(Action::Pull))
                    .collect(),
            };
            let asked: BTreeSet<Action> = if scope.actions.contains(&Action::All) {
                match scope.resource {
                    Resource::Catalog => [Action::All].into(),
                    Resource::Repository(_) => Role::Admin.actions().iter().copied().collect(),
                }
            } else {
                scope.actions.clone()
            };
            let mut actions: Vec<Action> = asked.intersection(&allowed).copied().collect();
            if let (Resource::Repository(name), Some(gate)) = (&scope.resource, &self.gate)
                && actions.contains(&Action::Pull)
            {
                let blocked = gate.blocks_pull(name.as_str()).await.unwrap_or_else(|error| {
                    tracing::warn!(%error, repository = %name, "the image gate cannot decide: pull refused");
                    true
                });
                if blocked {
                    actions.retain(|a| *a != Action::Pull);
                }
            }
            grants.push(Access::new(&scope.resource, actions));
        }
        Ok(grants)
    }

    async fn answer(&self, ask: TokenRequest) -> Result<Response, Refusal> {
        if ask.service != self.service {
            return Err(Refusal::bad(format!(
                "unknown service {:?}; this token service serves {:?}",
                ask.service, self.service
            )));
        }
        let scopes = Scope::parse_all(ask.scopes.iter().map(String::as_str))
            .map_err(|e| Refusal::bad(e.to_string()))?;
        let identity = match ask.grant {
            Grant::Anonymous => None,
            Grant::Password(credentials) => Some(
                self.authenticator
                    .authenticate(&credentials, ask.remote)
                    .await
                    .map_err(Refusal::from_auth)?,
            ),
            Grant::Refresh(token) => Some(
                self.store
                    .refresh_identity(&token, self.service.clone())
                    .await
                    .map_err(|e| Refusal::internal(&e))?
                    .ok_or_else(|| {
                        Refusal::unauthorized("the refresh token is unknown or expired")
                    })?,
            ),
        };
        let access = self
            .grant(identity.as_ref(), &scopes)
            .await
            .map_err(|e| Refusal::internal(&e))?;
        let subject = identity.as_ref().map_or("", |i| i.username.as_str());
        let issued = self
            .issuer
            .issue(subject, &self.service, &access)
            .map_err(|e| Refusal::internal(&e))?;
        let refresh_token = match (&identity, ask.offline, ask.refresh_token) {
            (Some(_), _, Some(kept)) => Some(kept),
            (Some(identity), true, None) => {
                let token = random_token(32);
                self.store
                    .put_refresh_token(
                        &token,
                        identity,
                        self.service.clone(),
                        self.refresh_lifetime.as_secs(),
                    )
                    .await
                    .map_err(|e| Refusal::internal(&e))?;
                Some(token)
            }
            _ => None,
        };
        tracing::debug!(subject, ?access, "token issued");
        Ok(token_response(&issued, refresh_token))
    }
}

fn token_response(issued: &IssuedToken, refresh_token: Option<String>) -> Response {
    let mut body = serde_json::json!({
        "token": issued.token,
        "access_token": issued.token,
        "expires_in": issued.expires_in.as_secs(),
        "issued_at": rfc3339(issued.issued_at),
    });
    if let Some(refresh) = refresh_token {
        body["refresh_token"] = refresh.into();
    }
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// A refused token request, answered in the registry's error shape.
#[derive(Debug)]
pub(crate) struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Refusal {
    fn bad(message: String) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "INVALID_REQUEST",
            message,
        }
    }

    fn unauthorized(message: &str) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            code: "UNAUTHORIZED",
            message: message.to_owned(),
        }
    }

    fn from_auth(error: kisara_core::Error) -> Self {
        match error {
            kisara_core::Error::Unauthenticated { message } => Self::unauthorized(&message),
            other => {
                tracing::warn!(error = %other, "the authenticator cannot decide");
                Self {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    code: "UNAVAILABLE",
                    message: "the authenticator is unavailable".to_owned(),
                }
            }
        }
    }

    fn internal(error: &RegistryError) -> Self {
        tracing::error!(%error, "token request failed");
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "UNKNOWN",
            message: "the token service failed; see its log".to_owned(),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "errors": [{"code": self.code, "message": self.message}],
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"kisara-registry\""),
            );
        }
        response
    }
}

enum Grant {
    Anonymous,
    Password(Credentials),
    Refresh(String),
}

struct TokenRequest {
    service: String,
    scopes: Vec<String>,
    offline: bool,
    grant: Grant,
    refresh_token: Option<String>,
    remote: Option<SocketAddr>,
}

fn remote_of(request: &Request) -> Option<SocketAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

async fn get_token(State(service): State<Arc<TokenService>>, request: Request) -> Response {
    let remote = remote_of(&request);
    let result = (|| -> Result<TokenRequest, Refusal> {
        let pairs = form_pairs(request.uri().query().unwrap_or(""))?;
        let grant = match basic_credentials(request.headers())? {
            Some(credentials) => Grant::Password(credentials),
            None => Grant::Anonymous,
        };
        Ok(TokenRequest {
            service: single(&pairs, "service")?.unwrap_or_default(),
            scopes: all(&pairs, "scope"),
            offline: single(&pairs, "offline_token")?.is_some_and(|v| v == "true"),
            grant,
            refresh_token: None,
            remote,
        })
    })();
    match result {
        Ok(ask) => service
            .answer(ask)
            .await
            .unwrap_or_else(IntoResponse::into_response),
        Err(refusal) => refusal.into_response(),
    }
}

async fn post_token(State(service): State<Arc<TokenService>>, request: Request) -> Response {
    let remote = remote_of(&request);
    let body = match axum::body::to_bytes(request.into_body(), MAX_FORM_BYTES).await {
        Ok(body) => body,
        Err(e) => return Refusal::bad(format!("the form cannot be read: {e}")).into_response(),
    };
    let ask = std::str::from_utf8(&body)
        .map_err(|_| Refusal::bad("the form is not UTF-8".to_owned()))
        .and_then(form_pairs)
        .and_then(|pairs| {
            let required = |name: &str| {
                single(&pairs, name)?
                    .ok_or_else(|| Refusal::bad(format!("the form has no {name:?} field")))
            };
            let (grant, refresh_token) = match required("grant_type")?.as_str() {
                "password" => (
                    Grant::Password(Credentials::Password {
                        username: required("username")?,
                        password: required("password")?,
                    }),
                    None,
                ),
                "refresh_token" => {
                    let token = required("refresh_token")?;
                    (Grant::Refresh(token.clone()), Some(token))
                }
                other => {
                    return Err(Refusal::bad(format!(
                        "unsupported grant_type {other:?} (password or refresh_token)"
                    )));
                }
            };
            Ok(TokenRequest {
                service: required("service")?,
                scopes: all(&pairs, "scope"),
                offline: single(&pairs, "access_type")?.is_some_and(|v| v == "offline"),
                grant,
                refresh_token,
                remote,
            })
        });
    match ask {
        Ok(ask) => service
            .answer(ask)
            .await
            .unwrap_or_else(IntoResponse::into_response),
        Err(refusal) => refusal.into_response(),
    }
}

pub(crate) fn basic_credentials(headers: &HeaderMap) -> Result<Option<Credentials>, Refusal> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let malformed = || Refusal::unauthorized("the Authorization header is not HTTP basic auth");
    let value = value.to_str().map_err(|_| malformed())?;
    let (scheme, encoded) = value.split_once(' ').ok_or_else(malformed)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(malformed());
    }
    let decoded = STANDARD.decode(encoded.trim()).map_err(|_| malformed())?;
    let decoded = String::from_utf8(decoded).map_err(|_| malformed())?;
    let (username, password) = decoded.split_once(':').ok_or_else(malformed)?;
    Ok(Some(Credentials::Password {
        username: username.to_owned(),
        password: password.to_owned(),
    }))
}

/// The value of a parameter that may appear once.
fn single(pairs: &[(String, String)], name: &str) -> Result<Option<String>, Refusal> {
    let mut values = pairs.iter().filter(|(k, _)| k == name);
    let first = values.next().map(|(_, v)| v.clone());
    if values.next().is_some() {
        return Err(Refusal::bad(format!("{name:?} is given more than once")));
    }
    Ok(first)
}

fn all(pairs: &[(String, String)], name: &str) -> Vec<String> {
    pairs
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .collect()
}

/// `application/x-www-form-urlencoded` pairs (also a query string).
fn form_pairs(text: &str) -> Result<Vec<(String, String)>, Refusal> {
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((percent_decode(key)?, percent_decode(value)?))
        })
        .collect()
}

fn percent_decode(text: &str) -> Result<String, Refusal> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = text
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| Refusal::bad(format!("bad percent escape in {text:?}")))?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| Refusal::bad(format!("{text:?} is not UTF-8")))
}
