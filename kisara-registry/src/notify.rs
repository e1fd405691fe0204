//! The registry's `notifications` endpoint: the envelope of events it
//! posts, checked by a shared secret header, deduplicated by event id, with
//! pushed and deleted manifests recorded in the image index.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use kisara_core::Secret;
use serde::Deserialize;

use crate::store::{ImageRecord, Store};
use crate::token::unix_now;

/// The largest envelope accepted (the registry batches a few events).
const MAX_ENVELOPE_BYTES: usize = 1 << 20;

/// Told of every manifest newly in the index (to queue a scan).
pub trait PushHook: Send + Sync + std::fmt::Debug {
    /// `image` was pushed.
    fn pushed(&self, image: &ImageRecord);
}

/// Receives the registry's notifications.
#[derive(Debug)]
pub struct NotificationIntake {
    store: Store,
    secret: Secret,
    hook: Option<Arc<dyn PushHook>>,
}

#[derive(Debug, Deserialize)]
struct Envelope {
    events: Vec<Event>,
}

#[derive(Debug, Deserialize)]
struct Event {
    id: String,
    action: String,
    #[serde(default)]
    target: Target,
    #[serde(default)]
    actor: Actor,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Target {
    #[serde(default)]
    media_type: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    digest: String,
    #[serde(default)]
    repository: String,
    #[serde(default)]
    tag: String,
}

#[derive(Debug, Default, Deserialize)]
struct Actor {
    #[serde(default)]
    name: String,
}

/// Manifests (and manifest lists and OCI indexes) are images; blob events
/// (layers, configs) are not indexed.
fn is_manifest(media_type: &str) -> bool {
    media_type.contains("manifest") || media_type.contains("image.index")
}

impl NotificationIntake {
    /// Records into `store`; the registry must send `Authorization: Bearer
    /// <secret>` (its endpoint's `headers`).
    pub fn new(store: Store, secret: Secret) -> Self {
        Self {
            store,
            secret,
            hook: None,
        }
    }

    /// Tells `hook` of each pushed manifest.
    pub fn with_hook(mut self, hook: Arc<dyn PushHook>) -> Self {
        self.hook = Some(hook);
        self
    }

    /// The router to mount: `POST /notifications`.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/notifications", post(receive))
            .with_state(self)
    }

    fn authorised(&self, headers: &HeaderMap) -> bool {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|offered| self.secret.matches(offered))
    }

    async fn record(&self, envelope: Envelope) -> crate::Result<(usize, usize)> {
        let (mut recorded, mut duplicates) = (0, 0);
        for event in envelope.events {
            if !self.store.first_sighting(event.id.clone()).await? {
                duplicates += 1;
                continue;
            }
            let target = event.target;
            match event.action.as_str() {
                "push" if is_manifest(&target.media_type) => {
                    let image = ImageRecord {
                        repository: target.repository,
                        digest: target.digest,
                        tag: target.tag,
                        media_type: target.media_type,
                        size: target.size,
                        actor: event.actor.name,
                        pushed_at: unix_now(),
                    };
                    self.store.record_push(image.clone()).await?;
                    tracing::info!(repository = %image.repository, tag = %image.tag, digest = %image.digest, actor = %image.actor, "manifest pushed");
                    if let Some(hook) = &self.hook {
                        hook.pushed(&image);
                    }
                    recorded += 1;
                }
                // A delete names the manifest by digest only.
                "delete" if !target.digest.is_empty() => {
                    self.store
                        .record_delete(target.repository.clone(), target.digest.clone())
                        .await?;
                    tracing::info!(repository = %target.repository, digest = %target.digest, "manifest deleted");
                    recorded += 1;
                }
                _ => {}
            }
        }
        Ok((recorded, duplicates))
    }
}

async fn receive(
    State(intake): State<Arc<NotificationIntake>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !intake.authorised(&headers) {
        tracing::warn!("a notification with a missing or wrong secret was refused");
        return (
            StatusCode::UNAUTHORIZED,
            "the Authorization header does not carry the notification secret\n",
        )
            .into_response();
    }
    if body.len() > MAX_ENVELOPE_BYTES {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the envelope is over {MAX_ENVELOPE_BYTES} bytes\n"),
        )
            .into_response();
    }
    let envelope: Envelope =
        match serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(&body)) {
            Ok(envelope) => envelope,
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("bad notification envelope at {}: {}\n", e.path(), e.inner()),
                )
                    .into_response();
            }
        };
    match intake.record(envelope).await {
        Ok((recorded, duplicates)) => axum::Json(serde_json::json!({
            "recorded": recorded,
            "duplicates": duplicates,
        }))
        .into_response(),
        Err(error) => {
            // A 5xx makes the registry retry the envelope later.
            tracing::error!(%error, "recording notifications failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "recording failed\n").into_response()
        }
    }
}
