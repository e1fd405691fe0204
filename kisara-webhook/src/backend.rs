//! The client backends: [`WebhookAuthenticator`] and
//! [`WebhookConfigProvider`] ask a platform's webhook through a
//! [`WebhookClient`].

use std::collections::BTreeMap;
use std::net::SocketAddr;

use async_trait::async_trait;
use kisara_core::model::SessionId;
use kisara_core::{
    Authenticator, ConfigProvider, ConfigRequest, Credentials, Error, Identity, Result,
    SessionConfig,
};

use crate::WebhookError;
use crate::client::{ClientOptions, WebhookClient, random_u64};
use crate::wire::{
    self, AuthResponse, ConfigResponse, KisaraConfigRequest, KisaraSessionEnded, PasswordRequest,
    PublicKeyRequest, SecretBytes, SessionEndedRequest, TEAM_KEY, TokenRequest, Value,
};

/// The one message for every rejection, so a client cannot tell an unknown
/// user from a wrong secret.
const REJECTED: &str = "invalid credentials";

fn rejected() -> Error {
    Error::Unauthenticated {
        message: REJECTED.to_owned(),
    }
}

/// An [`Authenticator`] that asks an auth webhook: `/password`, `/pubkey`,
/// and `/token` (Kisara's) for bearer tokens, under one base URL.
///
/// A `success:false` answer, and a 404 from `/token` (a ContainerSSH-only
/// webhook), are rejections; a webhook that gives no usable answer is
/// [`Error::Unavailable`], never an accept.
#[derive(Debug)]
pub struct WebhookAuthenticator {
    client: WebhookClient,
}

impl WebhookAuthenticator {
    /// Asks the webhook under `base_url` (e.g. `https://auth.example/ssh`).
    pub fn new(base_url: &str, options: ClientOptions) -> std::result::Result<Self, WebhookError> {
        WebhookClient::new(base_url, options).map(Self::with_client)
    }

    /// Asks through an existing client (signed, shared, ...).
    pub fn with_client(client: WebhookClient) -> Self {
        Self { client }
    }
}

fn common(remote: Option<SocketAddr>, username: &str) -> (String, String, String) {
    (
        remote.map(|r| r.to_string()).unwrap_or_default(),
        // ContainerSSH's id is per connection; each check here is its own.
        format!("{:016x}", random_u64()),
        username.to_owned(),
    )
}

#[async_trait]
impl Authenticator for WebhookAuthenticator {
    async fn authenticate(
        &self,
        credentials: &Credentials,
        remote: Option<SocketAddr>,
    ) -> Result<Identity> {
        let (endpoint, answer, asked_as) = match credentials {
            Credentials::Password { username, password } => {
                let (remote_address, connection_id, username) = common(remote, username);
                let request = PasswordRequest {
                    remote_address,
                    connection_id,
                    username: username.clone(),
                    password: SecretBytes(password.as_bytes().to_vec()),
                    ..PasswordRequest::default()
                };
                let answer = self.client.call("password", "/password", &request).await;
                ("password", answer, Some(username))
            }
            Credentials::PublicKey {
                username,
                public_key,
            } => {
                let (remote_address, connection_id, username) = common(remote, username);
                let request = PublicKeyRequest {
                    remote_address,
                    connection_id,
                    username: username.clone(),
                    public_key: public_key.clone(),
                    ..PublicKeyRequest::default()
                };
                let answer = self.client.call("pubkey", "/pubkey", &request).await;
                ("pubkey", answer, Some(username))
            }
            Credentials::BearerToken { token } => {
                if token.is_empty() {
                    return Err(rejected());
                }
                let (remote_address, connection_id, _) = common(remote, "");
                let request = TokenRequest {
                    remote_address,
                    connection_id,
                    token: token.as_str().into(),
                    ..TokenRequest::default()
                };
                match self.client.call("token", "/token", &request).await {
                    Err(WebhookError::Status { status: 404, .. }) => {
                        tracing::info!(
                            "the auth webhook has no /token; bearer tokens are rejected"
                        );
                        return Err(rejected());
                    }
                    answer => ("token", answer, None),
                }
            }
        };
        let response: AuthResponse = answer?;
        metrics::counter!(
            "kisara_webhook_auth_decisions_total",
            "endpoint" => endpoint,
            "decision" => if response.success { "accepted" } else { "rejected" },
        )
        .increment(1);
        if !response.success {
            tracing::info!(?remote, endpoint, "authentication rejected by the webhook");
            return Err(rejected());
        }
        identity(endpoint, &response, asked_as)
    }
}

/// The identity an accepting answer names: `authenticatedUsername`, else
/// the name asked about (a token has none, so it must be named).
fn identity(endpoint: &str, response: &AuthResponse, asked_as: Option<String>) -> Result<Identity> {
    let username = response
        .authenticated_username
        .clone()
        .filter(|name| !name.is_empty())
        .or(asked_as)
        .ok_or_else(|| WebhookError::Decode {
            message: format!("/{endpoint} response"),
            path: "authenticatedUsername".to_owned(),
            reason: "an accepted token must name its user".to_owned(),
        })?;
    let mut identity = Identity::new(username);
    identity.metadata = identity_metadata(response);
    if let Some(kisara) = &response.kisara {
        identity.roles.clone_from(&kisara.roles);
    }
    Ok(identity)
}

/// The non-sensitive `metadata` entries of an answer, plus the team.
fn identity_metadata(response: &AuthResponse) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = response
        .metadata
        .iter()
        .filter(|(_, v)| !v.sensitive)
        .map(|(k, v)| (k.clone(), v.value.clone()))
        .collect();
    if let Some(team) = response.kisara.as_ref().and_then(|k| k.team.clone()) {
        out.insert(TEAM_KEY.to_owned(), team);
    }
    out
}

/// A [`ConfigProvider`] that asks a config webhook (at its URL exactly as
/// configured), and tells a teardown URL when sessions end.
///
/// A ContainerSSH-only webhook answers without a `kisara.session`; the
/// provider then uses its default session, with the answer's `environment`
/// merged in.
#[derive(Debug)]
pub struct WebhookConfigProvider {
    client: WebhookClient,
    default: Option<SessionConfig>,
    session_ended: Option<WebhookClient>,
}

impl WebhookConfigProvider {
    /// Asks the webhook at `url`.
    pub fn new(url: &str, options: ClientOptions) -> std::result::Result<Self, WebhookError> {
        WebhookClient::new(url, options).map(Self::with_client)
    }

    /// Asks through an existing client.
    pub fn with_client(client: WebhookClient) -> Self {
        Self {
            client,
            default: None,
            session_ended: None,
        }
    }

    /// The session to use when an answer carries none (a ContainerSSH-only
    /// webhook).
    pub fn with_default(mut self, default: SessionConfig) -> Self {
        self.default = Some(default);
        self
    }

    /// Where [`Self::session_ended`] reports ended sessions.
    pub fn with_session_ended(mut self, client: WebhookClient) -> Self {
        self.session_ended = Some(client);
        self
    }

    /// Tells the teardown webhook that `session` of `identity` ended (a
    /// no-op without one).
    pub async fn session_ended(
        &self,
        session: &SessionId,
        identity: &Identity,
        reason: &str,
        exit_code: Option<i64>,
    ) -> Result<()> {
        let Some(client) = &self.session_ended else {
            return Ok(());
        };
        let request = SessionEndedRequest {
            connection_id: session.to_string(),
            username: identity.username.clone(),
            authenticated_username: Some(identity.username.clone()),
            metadata: wire_metadata(identity),
            kisara: KisaraSessionEnded {
                session: session.to_string(),
                reason: reason.to_owned(),
                exit_code,
            },
            ..SessionEndedRequest::default()
        };
        let _: serde_json::Value = client.call("session_ended", "", &request).await?;
        Ok(())
    }
}

fn wire_metadata(identity: &Identity) -> BTreeMap<String, Value> {
    identity
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), Value::new(v.clone())))
        .collect()
}

#[async_trait]
impl ConfigProvider for WebhookConfigProvider {
    async fn session_config(&self, request: &ConfigRequest) -> Result<SessionConfig> {
        let identity = &request.identity;
        let wire_request = wire::ConfigRequest {
            remote_address: request.remote.map(|r| r.to_string()).unwrap_or_default(),
            connection_id: request.session.to_string(),
            metadata: wire_metadata(identity),
            username: identity.username.clone(),
            authenticated_username: Some(identity.username.clone()),
            kisara: Some(KisaraConfigRequest {
                session: request.session.to_string(),
                roles: identity.roles.clone(),
                team: identity.metadata.get(TEAM_KEY).cloned(),
                requested_container: request.requested_container.as_ref().map(|c| c.to_string()),
            }),
            ..wire::ConfigRequest::default()
        };
        let response: ConfigResponse = self.client.call("config", "", &wire_request).await?;
        let kisara = response.kisara.unwrap_or_default();
        if let Some(reason) = kisara.denied {
            let what = request
                .requested_container
                .as_ref()
                .map_or_else(|| "a session".to_owned(), |c| format!("container {c}"));
            return Err(Error::permission_denied(format!(
                "{} may not open {what}: {reason}",
                identity.username
            )));
        }
        let mut config = match (kisara.session, &self.default) {
            (Some(session), _) => session.into_config("config response")?,
            (None, Some(default)) => default.clone(),
            (None, None) => {
                return Err(WebhookError::Decode {
                    message: "config response".to_owned(),
                    path: "kisara.session".to_owned(),
                    reason: "missing, and no default session is configured".to_owned(),
                }
                .into());
            }
        };
        for (name, value) in response.environment {
            config.env.entry(name).or_insert(value.value);
        }
        Ok(config)
    }
}
