//! What the routes take besides a body: their path parameters, checked
//! before any backend call, and their query strings. The same types are
//! decoded and documented.

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use utoipa::IntoParams;

use super::{ApiError, ApiResult, ApiState, query};
use kisara_core::model::{ContainerId, ImageRef, NodeId};
use kisara_core::model::{SessionId, Timestamp};
use kisara_core::{AuditQuery, QueryOrder, RecordingId};
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

/// The recording a route is about.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct RecordingPath {
    /// The recording's id, as its store generated it.
    #[param(
        min_length = 32,
        max_length = 32,
        pattern = "^[0-9a-f]{32}$",
        example = "5d1f0c9a3b7e4f2a8c6d0e1b9a7f3c5d"
    )]
    id: String,
}

impl PathParams for RecordingPath {
    type Checked = RecordingId;

    fn check(self) -> kisara_core::Result<RecordingId> {
        RecordingId::parse(&self.id)
    }
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

/// The query of the terminal socket.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct TerminalParams {
    /// A ticket from `POST /v1/containers/{id}/terminal`, for browsers,
    /// which cannot send a bearer token on a WebSocket; without one, the
    /// bearer token is needed.
    #[param(example = "9f2c6a1e0b7d4c3a8e5f1d2b6c9a0e7f3b1d5c8a2e4f6b0d")]
    pub(super) ticket: Option<String>,
    /// The terminal's columns; 80 when absent.
    #[param(minimum = 1, maximum = 1000, example = 120)]
    pub(super) cols: Option<u16>,
    /// The terminal's rows; 24 when absent.
    #[param(minimum = 1, maximum = 1000, example = 40)]
    pub(super) rows: Option<u16>,
}

/// The query of the exec socket; `command` is repeated, one word each.
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ExecSocketParams {
    /// The command, one word per parameter:
    /// `command=sh&command=-c&command=id`.
    #[param(required = true, min_items = 1, example = json!(["sh"]), explode = true)]
    pub(super) command: Vec<String>,
    /// Whether to allocate a terminal (stdout and stderr then arrive merged
    /// as stdout); false when absent.
    #[param(example = true)]
    pub(super) tty: Option<bool>,
    /// The terminal's columns, with `tty`; 80 when absent.
    #[param(minimum = 1, maximum = 1000, example = 120)]
    pub(super) cols: Option<u16>,
    /// The terminal's rows, with `tty`; 24 when absent.
    #[param(minimum = 1, maximum = 1000, example = 40)]
    pub(super) rows: Option<u16>,
}

impl ExecSocketParams {
    /// Decodes the exec socket's query: serde's form decoding takes no
    /// repeated keys, so the pairs are read one by one.
    pub(super) fn decode(uri: &axum::http::Uri) -> ApiResult<Self> {
        let pairs: Vec<(String, String)> = query(uri)?;
        let mut params = Self::default();
        for (key, value) in pairs {
            let number = |value: &str| {
                value.parse::<u16>().map_err(|_| {
                    ApiError::from(Error::invalid(
                        "query",
                        format!("{key}={value:?} is not a number"),
                    ))
                })
            };
            match key.as_str() {
                "command" => params.command.push(value),
                "tty" => {
                    params.tty = Some(value.parse().map_err(|_| {
                        Error::invalid("query", format!("tty={value:?} is neither true nor false"))
                    })?);
                }
                "cols" => params.cols = Some(number(&value)?),
                "rows" => params.rows = Some(number(&value)?),
                other => {
                    return Err(Error::invalid(
                        "query",
                        format!("unknown parameter {other:?}: expected command, tty, cols, rows"),
                    )
                    .into());
                }
            }
        }
        if params.command.is_empty() {
            return Err(Error::invalid(
                "command",
                "name the command, one word per command= parameter",
            )
            .into());
        }
        Ok(params)
    }
}

/// The query of `GET /v1/recordings`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct RecordingListParams {
    /// Only recordings of sessions in this container.
    #[param(example = "4f1c2a9b7e3d")]
    pub(super) container: Option<String>,
    /// Only recordings of this user.
    #[param(example = "alice")]
    pub(super) user: Option<String>,
    /// Started at or after, in ms since the epoch.
    #[param(minimum = 0, example = 1_767_787_200_000_u64)]
    pub(super) since: Option<u64>,
    /// Started before, in ms since the epoch.
    #[param(minimum = 0, example = 1_767_790_800_000_u64)]
    pub(super) until: Option<u64>,
    /// Only recordings of sessions that ran a command containing this.
    #[param(example = "cat /flag")]
    pub(super) command: Option<String>,
    /// How many to answer, 1 to 1000; 100 when absent.
    #[param(minimum = 1, maximum = 1000, example = 50)]
    pub(super) limit: Option<usize>,
    /// How many matching recordings to skip first.
    #[param(minimum = 0, example = 0)]
    pub(super) offset: Option<usize>,
}

/// The query of `GET /v1/recordings/{id}/cast`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct CastParams {
    /// A playback ticket for this recording, for the player page; without
    /// one, an admin's bearer token is needed.
    #[param(example = "0e7f3b1d5c8a2e4f6b0d9f2c6a1e0b7d4c3a8e5f1d2b6c9a")]
    pub(super) ticket: Option<String>,
}

/// The query of the audit routes: [`AuditQuery`]'s fields, times in ms.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct AuditParams {
    /// Events of this session.
    #[param(example = "s-5d1f0c9a3b7e")]
    pub(super) session: Option<String>,
    /// Events of this user.
    #[param(example = "alice")]
    pub(super) user: Option<String>,
    /// Events in this container.
    #[param(example = "4f1c2a9b7e3d")]
    pub(super) container: Option<String>,
    /// Events in containers of this owner (team).
    #[param(example = "team-7")]
    pub(super) owner: Option<String>,
    /// Events of this kind: `session_started`, `command`, `resize`,
    /// `session_ended`.
    #[param(example = "command")]
    pub(super) kind: Option<String>,
    /// Command events with this decision: `allow` or `deny`.
    #[param(example = "deny")]
    pub(super) decision: Option<String>,
    /// Command events whose command line contains this text.
    #[param(example = "cat /flag")]
    pub(super) command: Option<String>,
    /// At or after, in ms since the epoch.
    #[param(minimum = 0, example = 1_767_787_200_000_u64)]
    pub(super) since: Option<u64>,
    /// Before, in ms since the epoch.
    #[param(minimum = 0, example = 1_767_790_800_000_u64)]
    pub(super) until: Option<u64>,
    /// `newest_first` (the default) or `oldest_first`.
    #[param(inline)]
    pub(super) order: Option<QueryOrder>,
    /// How many events a page holds at most; 100 when absent.
    #[param(minimum = 1, example = 100)]
    pub(super) limit: Option<usize>,
    /// Continue after this event id: a page's `next`.
    #[param(minimum = 0, example = 42)]
    pub(super) cursor: Option<u64>,
}

impl AuditParams {
    pub(super) fn into_query(self) -> ApiResult<AuditQuery> {
        let query = AuditQuery {
            session: self.session.map(SessionId::new),
            username: self.user,
            container: self.container.map(ContainerId::new),
            owner: self.owner,
            kind: self.kind,
            decision: self.decision,
            command: self.command,
            since: self.since.map(Timestamp::from_unix_millis),
            until: self.until.map(Timestamp::from_unix_millis),
            order: self.order.unwrap_or_default(),
            limit: self.limit.unwrap_or(100),
            cursor: self.cursor,
        };
        query.validate()?;
        Ok(query)
    }
}
