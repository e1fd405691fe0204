//! What the routes take besides a body: their path parameters, checked
//! before any backend call, and their query strings. The same types are
//! decoded and documented.

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use utoipa::IntoParams;

use super::{ApiError, ApiResult, ApiState};
use kisara_core::model::{ContainerId, ImageRef, NodeId};
use kisara_core::{Error, ErrorKind};

/// The parameters of a route's path, as documented, checked by
/// [`PathParams::check`] before the handler calls anything.
pub(super) trait PathParams: DeserializeOwned + Send {
    /// What the handler works with.
    type Checked;

    /// The checked value, or an [`Error::Invalid`] naming the parameter and
    /// the bad value.
    fn check(self) -> kisara_core::Result<Self::Checked>;
}

/// A route's path parameters, percent-decoded and checked; failures are a
/// 400 naming the parameter.
pub(super) struct ValidPath<T: PathParams>(pub(super) T::Checked);

impl<T: PathParams> FromRequestParts<ApiState> for ValidPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> ApiResult<Self> {
        let axum::extract::Path(params) =
            axum::extract::Path::<T>::from_request_parts(parts, state)
                .await
                .map_err(|rejection| {
                    // A 400 for what the client sent (not UTF-8, not the
                    // documented shape); a 500 only for a route whose
                    // parameters the handler misnames, a bug.
                    ApiError::new(
                        rejection.status(),
                        ErrorKind::Invalid.code(),
                        rejection.body_text(),
                    )
                })?;
        Ok(Self(params.check()?))
    }
}

/// Whether `name` is 1 to `max` characters of `[A-Za-z0-9_.-]` starting
/// with a letter or digit: the names Docker gives containers and networks,
/// and the hex ids it gives everything. The path parameters' `pattern`
/// says the same in the document (the contract test sends what the pattern
/// refuses and expects a 4xx).
fn is_docker_name(name: &str, max: usize) -> bool {
    name.len() <= max
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The container a route is about.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct ContainerPath {
    /// The container's id (or a unique prefix of it) or its name.
    #[param(
        min_length = 1,
        max_length = 255,
        pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        example = "web-1"
    )]
    id: String,
}

impl PathParams for ContainerPath {
    type Checked = ContainerId;

    fn check(self) -> kisara_core::Result<ContainerId> {
        if !is_docker_name(&self.id, 255) {
            return Err(Error::invalid(
                "path parameter id",
                format!(
                    "{:?} is not a container id or name: 1 to 255 of [A-Za-z0-9_.-], starting with a letter or digit",
                    self.id
                ),
            ));
        }
        Ok(ContainerId::new(self.id))
    }
}

/// The network a route is about.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct NetworkPath {
    /// The network's name, as it was created.
    #[param(
        min_length = 1,
        max_length = 128,
        pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        example = "team-7"
    )]
    name: String,
}

impl PathParams for NetworkPath {
    type Checked = String;

    fn check(self) -> kisara_core::Result<String> {
        if !is_docker_name(&self.name, 128) {
            return Err(Error::invalid(
                "path parameter name",
                format!(
                    "{:?} is not a network name: 1 to 128 of [A-Za-z0-9_.-], starting with a letter or digit",
                    self.name
                ),
            ));
        }
        Ok(self.name)
    }
}

/// The image a route is about.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct ImagePath {
    /// The image reference; its `/` may be sent raw or as `%2F`, its `:`
    /// raw or as `%3A`.
    #[param(min_length = 1, example = "ctf/web-1:latest")]
    image: String,
}

impl PathParams for ImagePath {
    type Checked = ImageRef;

    fn check(self) -> kisara_core::Result<ImageRef> {
        ImageRef::parse(&self.image)
            .map_err(|error| Error::invalid("path parameter image", error.to_string()))
    }
}

/// The query of `POST /v1/containers`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct LaunchParams {
    /// How long the launch (pull excluded: the image must be on the node)
    /// may take, in seconds; 60 when absent. The launch is undone when it
    /// times out.
    #[param(minimum = 0, example = 30)]
    pub(super) timeout_secs: Option<u64>,
}

/// The query of `GET /v1/containers`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ListParams {
    /// Only the containers launched for this owner (`container.owner`).
    #[param(example = "team-7")]
    pub(super) owner: Option<String>,
    /// Only the containers of this module (`container.module`).
    #[param(example = "web-1")]
    pub(super) module: Option<String>,
    /// Only the containers on this node.
    pub(super) node: Option<NodeId>,
}

/// The query of `POST /v1/containers/{id}/stop`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct StopParams {
    /// How long the container may take to exit after SIGTERM before it is
    /// killed, in seconds; 10 when absent.
    #[param(minimum = 0, example = 5)]
    pub(super) grace_secs: Option<u64>,
}

/// The `node` query parameter of the image routes.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct NodeParams {
    /// Only on this node; on every online node when absent.
    pub(super) node: Option<NodeId>,
}

/// The query string of a route that takes no query parameters: there must
/// be none, rather than some the route would silently ignore.
pub(super) struct NoQuery;

impl<S: Send + Sync> FromRequestParts<S> for NoQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> ApiResult<Self> {
        match parts.uri.query() {
            None | Some("") => Ok(Self),
            Some(query) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorKind::Invalid.code(),
                format!(
                    "{} takes no query parameters, got {query:?}",
                    parts.uri.path()
                ),
            )),
        }
    }
}
