//! The JSON bodies of the auth and config webhooks, byte-compatible with
//! ContainerSSH 0.5, plus Kisara's additions under a `kisara` key that a
//! ContainerSSH-only webhook neither sends nor needs.
//!
//! Decoding is lenient ([`decode`]): unknown fields are ignored and counted
//! in the `kisara_webhook_unknown_fields_total` metric, missing optional
//! fields take defaults, and a body that cannot be understood is an error
//! naming the field.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use kisara_core::model::{ContainerId, LaunchRequest};
use kisara_core::{Secret, SessionConfig, SessionTarget};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::WebhookError;

/// The metadata key under which Kisara carries a user's team in
/// [`kisara_core::Identity::metadata`].
pub use kisara_core::TEAM_KEY;

/// A metadata or environment entry: `{"value": "...", "sensitive": false}`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Value {
    /// The value.
    #[serde(default)]
    pub value: String,
    /// Whether it is a secret (never logged).
    #[serde(default)]
    pub sensitive: bool,
}

impl Value {
    /// A non-sensitive value.
    pub fn new(value: impl Into<String>) -> Self {
        Self {
            value: value.into(),
            sensitive: false,
        }
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.sensitive {
            f.write_str("<sensitive>")
        } else {
            fmt::Debug::fmt(&self.value, f)
        }
    }
}

/// A file entry: `{"value": "<base64>", "sensitive": false}`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BinaryValue {
    /// The bytes, standard base64 on the wire.
    #[serde(default, with = "base64_bytes")]
    pub value: Vec<u8>,
    /// Whether it is a secret (never logged).
    #[serde(default)]
    pub sensitive: bool,
}

impl fmt::Debug for BinaryValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes>", self.value.len())
    }
}

/// Secret bytes (a password): standard base64 on the wire, never printed.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretBytes(#[serde(with = "base64_bytes")] pub Vec<u8>);

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Standard base64 for `Vec<u8>`, as Go's `encoding/json` writes `[]byte`.
mod base64_bytes {
    use super::*;

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        // Go writes `null` for a nil slice.
        let text = Option::<String>::deserialize(d)?.unwrap_or_default();
        STANDARD
            .decode(text.as_bytes())
            .map_err(|e| serde::de::Error::custom(format!("not standard base64: {e}")))
    }
}

/// Declares a message with ContainerSSH's connection fields
/// (`ConnectionAuthenticatedMetadata`) followed by its own.
macro_rules! message {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
        #[serde(rename_all = "camelCase")]
        pub struct $name {
            /// The client's `ip:port`.
            #[serde(default)]
            pub remote_address: String,
            /// Opaque, one per SSH connection (or Kisara session).
            #[serde(default)]
            pub connection_id: String,
            /// The pre-0.4 name of `connectionId`, still sent by old
            /// clients; read, never written (see [`Self::connection`]).
            #[serde(default, skip_serializing)]
            pub session_id: Option<String>,
            /// Metadata carried forward from earlier webhooks.
            #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
            pub metadata: BTreeMap<String, Value>,
            /// Environment variables for the user's session.
            #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
            pub environment: BTreeMap<String, Value>,
            /// Files written into the container, by path.
            #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
            pub files: BTreeMap<String, BinaryValue>,
            /// The SSH client's version string (empty outside SSH).
            #[serde(default)]
            pub client_version: String,
            /// The login name the client gave.
            #[serde(default)]
            pub username: String,
            /// The name the user was authenticated as.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub authenticated_username: Option<String>,
            $($(#[$fdoc])* pub $field: $ty,)*
        }

        impl $name {
            /// The connection id, from `connectionId` or the deprecated
            /// `sessionId`.
            pub fn connection(&self) -> &str {
                match &self.session_id {
                    Some(old) if self.connection_id.is_empty() => old,
                    _ => &self.connection_id,
                }
            }
        }
    };
}

message!(
    /// `POST <url>/password`.
    PasswordRequest {
        /// The password, standard base64 on the wire.
        #[serde(rename = "passwordBase64")]
        password: SecretBytes,
    }
);

message!(
    /// `POST <url>/pubkey`.
    PublicKeyRequest {
        /// The key in `authorized_keys` format (`ssh-ed25519 AAAA…`).
        public_key: String,
    }
);

message!(
    /// `POST <url>/authz`: may `authenticatedUsername` log in as
    /// `username`?
    AuthzRequest {}
);

message!(
    /// `POST <url>/token` (Kisara): a bearer token from the HTTP API or the
    /// web terminal. A ContainerSSH webhook answers 404, which reads as a
    /// rejection.
    TokenRequest {
        /// The token.
        token: Secret,
    }
);

message!(
    /// The answer to `/password`, `/pubkey`, `/authz` and `/token`.
    AuthResponse {
        /// Whether the user is let in. `false` is a denial, not an error.
        success: bool,
        /// Kisara's additions.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kisara: Option<KisaraIdentity>,
    }
);

/// What Kisara adds to an auth answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KisaraIdentity {
    /// Roles (`admin`, `player`, ...) that policies decide on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// The user's team.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
}

message!(
    /// `POST <config url>` (sent to the URL exactly as configured).
    ConfigRequest {
        /// Kisara's additions.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kisara: Option<KisaraConfigRequest>,
    }
);

/// What Kisara adds to a config request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KisaraConfigRequest {
    /// The session being opened.
    #[serde(default)]
    pub session: String,
    /// The user's roles.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// The user's team.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// The container the client asked for, if it named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_container: Option<String>,
}

message!(
    /// The answer to a config request.
    ConfigResponse {
        /// ContainerSSH's partial `AppConfig`, kept as sent (Kisara does not
        /// interpret it).
        #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
        config: serde_json::Value,
        /// Kisara's additions.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kisara: Option<KisaraConfigResponse>,
    }
);

/// What Kisara adds to a config answer: a session, or a refusal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KisaraConfigResponse {
    /// The session's configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<WireSession>,
    /// Set when the user may not open this session: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denied: Option<String>,
}

/// A session's configuration on the wire: [`SessionConfig`] with every
/// field but the target optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireSession {
    /// Run in this existing container…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// …or in one launched for the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch: Option<Box<LaunchRequest>>,
    /// The shell (default `/bin/sh`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
    /// End the session after this many seconds without input or output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<u64>,
    /// Record the session (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<bool>,
    /// Extra environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

impl WireSession {
    /// The core configuration, or an error naming the field at fault.
    pub fn into_config(self, message: &str) -> Result<SessionConfig, WebhookError> {
        let field_error = |reason: &str| WebhookError::Decode {
            message: message.to_owned(),
            path: "kisara.session".to_owned(),
            reason: reason.to_owned(),
        };
        let target = match (self.container, self.launch) {
            (Some(container), None) if !container.is_empty() => SessionTarget::Container {
                container: ContainerId::new(container),
            },
            (None, Some(request)) => SessionTarget::Launch { request },
            (Some(_), Some(_)) => return Err(field_error("sets both `container` and `launch`")),
            _ => return Err(field_error("sets neither `container` nor `launch`")),
        };
        let mut config = SessionConfig::new(target);
        if let Some(shell) = self.shell {
            if shell.is_empty() {
                return Err(field_error("`shell` is empty"));
            }
            config.shell = shell;
        }
        config.idle_timeout = self.idle_timeout_secs.map(Duration::from_secs);
        if let Some(record) = self.record {
            config.record = record;
        }
        config.env = self.env;
        Ok(config)
    }
}

impl From<&SessionConfig> for WireSession {
    fn from(config: &SessionConfig) -> Self {
        let (container, launch) = match &config.target {
            SessionTarget::Container { container } => (Some(container.to_string()), None),
            SessionTarget::Launch { request } => (None, Some(request.clone())),
        };
        Self {
            container,
            launch,
            shell: Some(config.shell.clone()),
            idle_timeout_secs: config.idle_timeout.map(|d| d.as_secs()),
            record: Some(config.record),
            env: config.env.clone(),
        }
    }
}

message!(
    /// `POST <session-ended url>` (Kisara): a session ended, so the platform
    /// can tear down what it set up (ContainerSSH has no such call).
    SessionEndedRequest {
        /// What ended, and how.
        kisara: KisaraSessionEnded,
    }
);

/// What ended, and how.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KisaraSessionEnded {
    /// The session.
    #[serde(default)]
    pub session: String,
    /// Why it ended (`exit`, `idle`, `disconnect`, ...).
    #[serde(default)]
    pub reason: String,
    /// The shell's exit code, when it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
}

/// A decoded body and the paths of the fields it ignored.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded<T> {
    /// The message.
    pub value: T,
    /// The JSON paths of unknown fields that were ignored.
    pub unknown: Vec<String>,
}

/// Decodes `body` as `T` leniently: unknown fields are ignored, logged and
/// counted in `kisara_webhook_unknown_fields_total{message}`; anything else
/// wrong is a [`WebhookError::Decode`] naming the field's path.
pub fn decode<T: DeserializeOwned>(message: &str, body: &[u8]) -> Result<Decoded<T>, WebhookError> {
    let mut unknown = Vec::new();
    let mut json = serde_json::Deserializer::from_slice(body);
    // `Option`s show as `?` segments, which say nothing to a reader.
    let decoded = serde_ignored::deserialize(&mut json, |path| {
        unknown.push(path.to_string().replace(".?", ""));
    })
    .and_then(|value| json.end().map(|()| value));
    // Tracking the path costs on every field, so only a body that failed
    // is decoded again to name where.
    let value: T = decoded.map_err(|_| failure_path::<T>(message, body))?;
    if !unknown.is_empty() {
        metrics::counter!("kisara_webhook_unknown_fields_total", "message" => message.to_owned())
            .increment(unknown.len() as u64);
        tracing::debug!(message, fields = ?unknown, "ignored unknown webhook fields");
    }
    Ok(Decoded { value, unknown })
}

/// Why `body` is no `T`, with the path of the field where decoding failed.
fn failure_path<T: DeserializeOwned>(message: &str, body: &[u8]) -> WebhookError {
    let mut track = serde_path_to_error::Track::new();
    let mut json = serde_json::Deserializer::from_slice(body);
    let result = T::deserialize(serde_path_to_error::Deserializer::new(
        &mut json, &mut track,
    ))
    .and_then(|_| json.end());
    WebhookError::Decode {
        message: message.to_owned(),
        path: track.path().to_string(),
        reason: result
            .err()
            .map_or_else(|| "invalid body".to_owned(), |e| e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_ignored_and_listed() {
        let decoded: Decoded<AuthResponse> = decode(
            "/password response",
            br#"{"success":true,"extra":1,"metadata":{"a":{"value":"b","sensitive":false,"x":2}}}"#,
        )
        .unwrap();
        assert!(decoded.value.success);
        assert_eq!(decoded.unknown, ["extra", "metadata.a.x"]);
    }

    #[test]
    fn a_wrong_field_is_named() {
        let err = decode::<AuthResponse>("/password response", br#"{"success":"yes"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/password response: success:"), "{err}");
        let err = decode::<AuthResponse>("/password response", br#"{"username":"a"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field `success`"), "{err}");
        let err = decode::<PasswordRequest>("/password request", br#"{"passwordBase64":"!!"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("passwordBase64: not standard base64"), "{err}");
    }

    #[test]
    fn trailing_garbage_is_an_error() {
        let err = decode::<AuthResponse>("x", br#"{"success":true} {"#).unwrap_err();
        assert!(matches!(err, WebhookError::Decode { .. }), "{err}");
    }

    #[test]
    fn the_old_session_id_is_read_as_the_connection() {
        let old: AuthzRequest = decode("x", br#"{"sessionId":"old"}"#).unwrap().value;
        assert_eq!(old.connection(), "old");
        let both: AuthzRequest = decode("x", br#"{"sessionId":"old","connectionId":"new"}"#)
            .unwrap()
            .value;
        assert_eq!(both.connection(), "new");
        assert!(!serde_json::to_string(&both).unwrap().contains("sessionId"));
    }

    #[test]
    fn sessions_need_exactly_one_target() {
        let err = WireSession::default()
            .into_config("m")
            .unwrap_err()
            .to_string();
        assert!(err.contains("kisara.session: sets neither"), "{err}");
        let session = WireSession {
            container: Some("web-1".into()),
            idle_timeout_secs: Some(30),
            ..WireSession::default()
        };
        let config = session.into_config("m").unwrap();
        assert_eq!(config.idle_timeout, Some(Duration::from_secs(30)));
        assert_eq!(WireSession::from(&config).into_config("m").unwrap(), config);
    }

    #[test]
    fn sensitive_values_are_not_printed() {
        let v = Value {
            value: "hunter2".into(),
            sensitive: true,
        };
        assert_eq!(format!("{v:?}"), "<sensitive>");
    }
}
