//! Mapping bollard's errors into [`kisara_core::Error`] kinds.

use kisara_core::Error;

/// The backend name used in errors and logs.
pub(crate) const BACKEND: &str = "docker";

/// How to get an engine when none answers.
pub(crate) fn how_to_start(endpoint: &str) -> String {
    format!(
        "no Docker engine answers at {endpoint}: start one with `dockerd` (or `scripts/ensure-docker` in the \
         Kisara repository), or set DOCKER_HOST to an engine that runs"
    )
}

/// The HTTP status and message of an engine's error response, if it is one.
pub(crate) fn status_of(err: &bollard::errors::Error) -> Option<(u16, &str)> {
    match err {
        bollard::errors::Error::DockerResponseServerError {
            status_code,
            message,
        } => Some((*status_code, message.as_str())),
        _ => None,
    }
}

/// Whether the engine said the object does not exist.
pub(crate) fn is_not_found(err: &bollard::errors::Error) -> bool {
    matches!(status_of(err), Some((404, _)))
}

/// Maps a bollard error about `what` named `name` into a core error.
///
/// 404 is [`Error::NotFound`] for `what`/`name`, 409 a [`Error::Conflict`]
/// (callers that know a 409 means "name taken" map it to
/// [`Error::AlreadyExists`] themselves), 400 [`Error::Invalid`], transport
/// failures [`Error::Unavailable`] with how to start an engine.
pub(crate) fn map(
    err: bollard::errors::Error,
    endpoint: &str,
    what: &'static str,
    name: &str,
) -> Error {
    use bollard::errors::Error as B;
    match err {
        B::DockerResponseServerError {
            status_code,
            message,
        } => match status_code {
            404 => Error::not_found(what, name),
            409 => Error::conflict(format!("{what} {name:?}: {message}")),
            400 => Error::invalid(what, format!("{name:?}: {message}")),
            403 if message.contains("overlap") => {
                Error::conflict(format!("{what} {name:?}: {message}"))
            }
            503 => Error::Unavailable {
                message: format!("{what} {name:?}: the engine is not ready: {message}"),
                source: None,
            },
            _ => Error::Backend {
                backend: BACKEND,
                message: format!("{what} {name:?}: engine answered {status_code}: {message}"),
                source: None,
            },
        },
        B::RequestTimeoutError => Error::Timeout {
            operation: format!("docker request about {what} {name:?}"),
            after: std::time::Duration::ZERO,
        },
        err @ (B::SocketNotFoundError(_)
        | B::HyperLegacyError { .. }
        | B::HyperResponseError { .. }
        | B::IOError { .. }
        | B::UnsupportedURISchemeError { .. }) => Error::Unavailable {
            message: how_to_start(endpoint),
            source: Some(Box::new(err)),
        },
        other => Error::Backend {
            backend: BACKEND,
            message: format!("{what} {name:?}: {other}"),
            source: Some(Box::new(other)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kisara_core::ErrorKind;

    fn server(status_code: u16, message: &str) -> bollard::errors::Error {
        bollard::errors::Error::DockerResponseServerError {
            status_code,
            message: message.to_owned(),
        }
    }

    #[test]
    fn status_codes_map_to_kinds_naming_the_object() {
        let e = map(
            server(404, "No such container: x"),
            "unix:///s",
            "container",
            "web-1",
        );
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().contains("web-1"), "{e}");
        assert_eq!(
            map(server(409, "in use"), "", "container", "a").kind(),
            ErrorKind::Conflict
        );
        assert_eq!(
            map(server(400, "bad"), "", "network", "a").kind(),
            ErrorKind::Invalid
        );
        assert_eq!(
            map(server(500, "boom"), "", "network", "a").kind(),
            ErrorKind::Backend
        );
        assert!(map(server(503, "not a manager"), "", "network", "a").is_retryable());
    }

    #[test]
    fn missing_socket_says_how_to_start_an_engine() {
        let e = map(
            bollard::errors::Error::SocketNotFoundError("/nope".into()),
            "unix:///nope",
            "engine",
            "",
        );
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        let text = e.to_string();
        assert!(
            text.contains("unix:///nope")
                && text.contains("dockerd")
                && text.contains("DOCKER_HOST"),
            "{text}"
        );
    }
}
