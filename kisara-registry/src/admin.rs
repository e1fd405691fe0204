//! The admin API: projects, members, the image index and the signing keys.
//! Every call needs HTTP basic credentials of an identity with Kisara's
//! `admin` role, checked through the same [`Authenticator`] as tokens.
//!
//! | Method and path | Body / answer |
//! |---|---|
//! | `GET /projects` | `[{"name","public"}]` |
//! | `PUT /projects/{name}` | `{"public": bool}` |
//! | `DELETE /projects/{name}` | |
//! | `GET /projects/{name}/members` | `[{"username","role"}]` |
//! | `PUT /projects/{name}/members/{user}` | `{"role": "admin"\|"developer"\|"guest"}` |
//! | `DELETE /projects/{name}/members/{user}` | |
//! | `GET /images[?repository=r]` | the index |
//! | `GET /keys/jwks` | the trusted keys as a JWKS |
//! | `GET /keys/rootcertbundle.pem` | their certificates |
//! | `POST /keys/rotate` | the new `{"kid"}`; restart the registry after it |

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use kisara_core::{Authenticator, roles};
use serde::Deserialize;

use crate::error::RegistryError;
use crate::keys::KidFormat;
use crate::service::basic_credentials;
use crate::store::{Project, Role, Store};
use crate::token::Issuer;

/// What the admin API works on.
#[derive(Debug, Clone)]
pub struct AdminApi {
    /// Projects, members, the index.
    pub store: Store,
    /// The signing keys.
    pub issuer: Issuer,
    /// Who may call it (identities with the `admin` role).
    pub authenticator: Arc<dyn Authenticator>,
    /// The certificate name of rotated keys.
    pub key_name: String,
    /// The kid format of rotated keys.
    pub kid: KidFormat,
}

/// An admin API error as `{"error": message}` with a status by kind.
#[derive(Debug)]
pub(crate) struct ApiError(pub(crate) StatusCode, pub(crate) String);

impl From<RegistryError> for ApiError {
    fn from(error: RegistryError) -> Self {
        let status = match &error {
            RegistryError::Invalid { .. } => StatusCode::BAD_REQUEST,
            RegistryError::NotFound { .. } => StatusCode::NOT_FOUND,
            RegistryError::Transition { .. } => StatusCode::CONFLICT,
            _ => {
                tracing::error!(%error, "admin call failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        Self(status, error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// A JSON body, refused with the failing field named.
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(body)).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("bad JSON body at {}: {}", e.path(), e.inner()),
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Visibility {
    public: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Membership {
    role: Role,
}

#[derive(Deserialize)]
struct ImageQuery {
    repository: Option<String>,
}

impl AdminApi {
    /// The router to mount (under `/admin`, say).
    pub fn router(self) -> Router {
        let api = Arc::new(self);
        Router::new()
            .route("/projects", get(list_projects))
            .route("/projects/{name}", put(put_project).delete(delete_project))
            .route("/projects/{name}/members", get(list_members))
            .route(
                "/projects/{name}/members/{user}",
                put(put_member).delete(delete_member),
            )
            .route("/images", get(list_images))
            .route("/keys/jwks", get(jwks))
            .route("/keys/rootcertbundle.pem", get(bundle))
            .route("/keys/rotate", post(rotate))
            .route_layer(middleware::from_fn_with_state(api.clone(), require_admin))
            .with_state(api)
    }
}

/// Lets only identities with the `admin` role through.
pub(crate) async fn require_admin(
    State(api): State<Arc<AdminApi>>,
    request: Request,
    next: Next,
) -> Response {
    let credentials = basic_credentials(request.headers()).ok().flatten();
    match admin_identity(&*api.authenticator, credentials).await {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

pub(crate) async fn admin_identity(
    authenticator: &dyn Authenticator,
    credentials: Option<kisara_core::Credentials>,
) -> ApiResult<()> {
    let unauthorised = || {
        ApiError(
            StatusCode::UNAUTHORIZED,
            "admin credentials needed".to_owned(),
        )
    };
    let credentials = credentials.ok_or_else(unauthorised)?;
    let identity = authenticator
        .authenticate(&credentials, None)
        .await
        .map_err(|_| unauthorised())?;
    if identity.has_role(roles::ADMIN) {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::FORBIDDEN,
            format!("{} does not have the admin role", identity.username),
        ))
    }
}

async fn list_projects(State(api): State<Arc<AdminApi>>) -> ApiResult<Response> {
    Ok(axum::Json(api.store.projects().await?).into_response())
}

async fn put_project(
    State(api): State<Arc<AdminApi>>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<StatusCode> {
    let Visibility { public } = json_body(&body)?;
    api.store.put_project(Project { name, public }).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_project(
    State(api): State<Arc<AdminApi>>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    api.store.delete_project(name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_members(
    State(api): State<Arc<AdminApi>>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let members: Vec<_> = api
        .store
        .members(name)
        .await?
        .into_iter()
        .map(|(username, role)| serde_json::json!({"username": username, "role": role}))
        .collect();
    Ok(axum::Json(members).into_response())
}

async fn put_member(
    State(api): State<Arc<AdminApi>>,
    Path((name, user)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<StatusCode> {
    let Membership { role } = json_body(&body)?;
    api.store.put_member(name, user, role).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_member(
    State(api): State<Arc<AdminApi>>,
    Path((name, user)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    api.store.delete_member(name, user).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_images(
    State(api): State<Arc<AdminApi>>,
    Query(query): Query<ImageQuery>,
) -> ApiResult<Response> {
    Ok(axum::Json(api.store.images(query.repository).await?).into_response())
}

async fn jwks(State(api): State<Arc<AdminApi>>) -> Response {
    let keys = api
        .issuer
        .keys()
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    axum::Json(keys.jwks()).into_response()
}

async fn bundle(State(api): State<Arc<AdminApi>>) -> Response {
    let keys = api
        .issuer
        .keys()
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    keys.bundle_pem().into_response()
}

async fn rotate(State(api): State<Arc<AdminApi>>) -> ApiResult<Response> {
    let mut keys = api
        .issuer
        .keys()
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    keys.rotate(&api.key_name, api.kid)?;
    tracing::info!(
        kid = keys.current().kid(),
        "signing key rotated; restart the registry to trust it"
    );
    Ok(axum::Json(serde_json::json!({"kid": keys.current().kid()})).into_response())
}
