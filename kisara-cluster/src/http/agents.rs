//! The server's agent endpoint as an axum route: checks the token, then
//! upgrades to a WebSocket and hands it to the [`AgentGateway`].

use axum::Router;
use axum::extract::{Request, State};
use axum::http::header;
use axum::response::Response;

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
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Err(error) = gateway.authorize(authorization) {
        tracing::warn!(%error, "agent link refused");
        return error_response(error);
    }
    let served = super::upgrade::upgrade(
        &mut request,
        websocket_config(),
        "agent link",
        |ws| async move {
            if let Err(error) = gateway.serve(ws).await {
                tracing::warn!(%error, "agent link failed");
            }
        },
    );
    served.unwrap_or_else(error_response)
}
