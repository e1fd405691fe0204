//! The server's agent endpoint as an axum route: checks the token, then
//! upgrades to a WebSocket and hands it to the [`AgentGateway`].

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use kisara_core::Error;

use super::error_response;
use crate::link::{AGENT_LINK_PATH, AgentGateway, websocket_config};

/// A router serving agent links at [`AGENT_LINK_PATH`]; merge it into the
/// API router (or any axum app).
pub fn agent_link(gateway: AgentGateway) -> Router {
    Router::new()
        .route(AGENT_LINK_PATH, axum::routing::get(upgrade))
        .layer(axum::middleware::from_fn(super::request_span))
        .with_state(gateway)
}

async fn upgrade(State(gateway): State<AgentGateway>, mut request: Request) -> Response {
    let headers = request.headers();
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Err(error) = gateway.authorize(authorization) {
        tracing::warn!(%error, "agent link refused");
        return error_response(error);
    }
    let key = match websocket_key(headers) {
        Ok(key) => key,
        Err(error) => return error_response(error),
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(websocket_config()),
                )
                .await;
                if let Err(error) = gateway.serve(ws).await {
                    tracing::warn!(%error, "agent link failed");
                }
            }
            Err(error) => tracing::warn!(%error, "agent link upgrade failed"),
        }
    });
    (
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
        .into_response()
}

/// The `Sec-WebSocket-Accept` for a valid upgrade request.
fn websocket_key(headers: &HeaderMap) -> kisara_core::Result<String> {
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
            format!(
                "{AGENT_LINK_PATH} takes a WebSocket upgrade (Connection: upgrade, Upgrade: websocket)"
            ),
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
