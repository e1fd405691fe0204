//! WebSocket upgrades on the API's routes (agent links, sessions), done on
//! hyper's upgrade with tokio-tungstenite so both ends of the link and the
//! session sockets speak one WebSocket library.

use std::future::Future;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use kisara_core::{Error, Result};

/// The server's end of an upgraded connection.
pub(crate) type ServerSocket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Checks that `request` asks for a WebSocket, then answers `101` and runs
/// `serve` on the socket once the client switched; a request that is no
/// valid upgrade gets a 400 naming what is missing. `what` names the
/// endpoint in logs.
pub(crate) fn upgrade<F, Fut>(
    request: &mut Request,
    config: WebSocketConfig,
    what: &'static str,
    serve: F,
) -> Result<Response>
where
    F: FnOnce(ServerSocket) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let key = websocket_key(request.uri().path(), request.headers())?;
    let on_upgrade = hyper::upgrade::on(&mut *request);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let socket = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                serve(socket).await;
            }
            Err(error) => tracing::warn!(%error, "{what} upgrade failed"),
        }
    });
    Ok((
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, HeaderValue::from_static("upgrade")),
            (header::UPGRADE, HeaderValue::from_static("websocket")),
            (
                header::SEC_WEBSOCKET_ACCEPT,
                HeaderValue::from_str(&key).expect("base64 is a valid header"),
            ),
        ],
    )
        .into_response())
}

/// The `Sec-WebSocket-Accept` for a valid upgrade request to `path`.
fn websocket_key(path: &str, headers: &HeaderMap) -> Result<String> {
    let has = |name: header::HeaderName, wanted: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(wanted))
            })
    };
    if !has(header::UPGRADE, "websocket") || !has(header::CONNECTION, "upgrade") {
        return Err(Error::invalid(
            "upgrade",
            format!("{path} takes a WebSocket upgrade (Connection: upgrade, Upgrade: websocket)"),
        ));
    }
    if !has(header::SEC_WEBSOCKET_VERSION, "13") {
        return Err(Error::invalid(
            "sec-websocket-version",
            "only WebSocket version 13 is spoken",
        ));
    }
    let key = headers.get(header::SEC_WEBSOCKET_KEY).ok_or_else(|| {
        Error::invalid("sec-websocket-key", "the upgrade has no Sec-WebSocket-Key")
    })?;
    Ok(derive_accept_key(key.as_bytes()))
}
