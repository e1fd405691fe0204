//! The routes without a token: the probes an orchestrator polls, the
//! version, and the document itself.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

use super::params::NoQuery;
use super::{ApiState, tag};
use crate::Readiness;

/// The version of the API's contract: it changes only when a change would
/// break a client of the previous one.
pub(super) const API_VERSION: &str = "1";

/// `{"status": "ok"}`.
#[derive(Serialize, ToSchema)]
#[schema(examples(json!({"status": "ok"})))]
pub(super) struct Health {
    /// Always `ok`: the process answers.
    status: HealthStatus,
}

/// The one status a process that answers has.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
enum HealthStatus {
    /// It answers.
    Ok,
}

/// What runs here.
#[derive(Serialize, ToSchema)]
#[schema(examples(json!({"name": "kisara-cluster", "version": "0.1.0", "api_version": "1"})))]
pub(super) struct Version {
    /// The crate serving the API.
    name: &'static str,
    /// Its version (semver).
    version: &'static str,
    /// The API contract's version, the `1` of `/v1/`.
    api_version: &'static str,
}

/// The process is up (liveness).
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "getHealth",
    tag = tag::OPERATIONS,
    responses((status = 200, description = "The process answers", body = Health))
)]
pub(super) async fn health(_query: NoQuery) -> axum::Json<Health> {
    axum::Json(Health {
        status: HealthStatus::Ok,
    })
}

/// Whether the server can serve (readiness).
///
/// Ready when a node is connected, every online node's engine answers and
/// the relays answer.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "getReadiness",
    tag = tag::OPERATIONS,
    responses(
        (status = 200, description = "Ready; `reasons` lists offline nodes, if any", body = Readiness),
        (status = 503, description = "Not ready; `reasons` says why", body = Readiness),
    )
)]
pub(super) async fn ready(State(state): State<ApiState>, _query: NoQuery) -> impl IntoResponse {
    let readiness = state.server.readiness().await;
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(readiness))
}

/// The version of the server and of the API.
#[utoipa::path(
    get,
    path = "/v1/version",
    operation_id = "getVersion",
    tag = tag::OPERATIONS,
    responses((status = 200, description = "The versions", body = Version))
)]
pub(super) async fn version(_query: NoQuery) -> axum::Json<Version> {
    axum::Json(Version {
        name: env!("CARGO_PKG_NAME"),
        version: env!("CARGO_PKG_VERSION"),
        api_version: API_VERSION,
    })
}

/// This document: OpenAPI 3.1, generated from the handlers and the types.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    operation_id = "getOpenApi",
    tag = tag::OPERATIONS,
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object))
)]
pub(super) async fn openapi_document(
    State(state): State<ApiState>,
    _query: NoQuery,
) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], state.document)
}
