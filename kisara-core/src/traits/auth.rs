//! [`Authenticator`] (who is this) and [`ConfigProvider`] (what do they get).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::Result;
use crate::model::{ContainerId, LaunchRequest, SessionId, duration_secs};

/// Proof of identity offered by a client.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Credentials {
    /// A user name and password (SSH password auth, HTTP basic).
    Password {
        /// The user name.
        username: String,
        /// The password.
        password: String,
    },
    /// A user name and the public key the client proved it holds.
    PublicKey {
        /// The user name.
        username: String,
        /// The key in OpenSSH `authorized_keys` format.
        public_key: String,
    },
    /// A bearer token (HTTP API, web terminal).
    BearerToken {
        /// The token.
        token: String,
    },
}

impl fmt::Debug for Credentials {
    // Secrets never reach logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Password { username, .. } => f
                .debug_struct("Password")
                .field("username", username)
                .finish_non_exhaustive(),
            Self::PublicKey { username, .. } => f
                .debug_struct("PublicKey")
                .field("username", username)
                .finish_non_exhaustive(),
            Self::BearerToken { .. } => f.debug_struct("BearerToken").finish_non_exhaustive(),
        }
    }
}

/// The roles Kisara's authorisation knows (see `kisara-cluster`'s session
/// engine for what each may do).
pub mod roles {
    /// May do everything.
    pub const ADMIN: &str = "admin";
    /// A platform (a CTF front end, a lab portal): launches and manages
    /// containers and opens sessions on any of them.
    pub const PLATFORM: &str = "platform";
    /// A player: opens sessions on its own team's containers only.
    pub const PLAYER: &str = "player";
    /// Every role, for validation.
    pub const ALL: [&str; 3] = [ADMIN, PLATFORM, PLAYER];
}

/// The [`Identity::metadata`] key of a user's team: the owner label of the
/// containers a player may reach.
pub const TEAM_KEY: &str = "team";

/// Who a client is, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The user name.
    pub username: String,
    /// Roles (`admin`, `player`, ...) that policies decide on.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Anything else the authenticator knows (team, display name, ...).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

impl Identity {
    /// An identity with `username` and no roles.
    pub fn new(username: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            roles: Vec::new(),
            metadata: BTreeMap::new(),
        }
    }

    /// Whether it has `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// Adds `role`.
    pub fn with_role(mut self, role: impl Into<String>) -> Self {
        self.roles.push(role.into());
        self
    }

    /// Sets the team ([`TEAM_KEY`] in the metadata).
    pub fn with_team(mut self, team: impl Into<String>) -> Self {
        self.metadata.insert(TEAM_KEY.to_owned(), team.into());
        self
    }

    /// The team ([`TEAM_KEY`] in the metadata), if the authenticator gave
    /// one.
    pub fn team(&self) -> Option<&str> {
        self.metadata.get(TEAM_KEY).map(String::as_str)
    }
}

/// Decides who a client is.
///
/// # Contract
///
/// - Wrong, unknown or missing credentials give
///   [`crate::Error::Unauthenticated`] with the same message whatever was
///   wrong (unknown user, wrong password, wrong key), so a client learns
///   nothing about which part failed.
/// - Secrets are compared in constant time.
/// - A credential kind the authenticator does not handle is
///   [`crate::Error::Unauthenticated`] too, never a different kind.
/// - A backend that cannot decide (webhook down) gives
///   [`crate::Error::Unavailable`], never a silent accept.
#[async_trait]
pub trait Authenticator: Send + Sync + fmt::Debug {
    /// Checks `credentials` offered from `remote`.
    async fn authenticate(
        &self,
        credentials: &Credentials,
        remote: Option<SocketAddr>,
    ) -> Result<Identity>;
}

/// Where a session runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SessionTarget {
    /// An existing container.
    Container {
        /// The container.
        container: ContainerId,
    },
    /// A container launched for the session, removed when it ends.
    Launch {
        /// What to launch.
        request: Box<LaunchRequest>,
    },
}

/// The configuration of one session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    /// Where the session runs.
    pub target: SessionTarget,
    /// The shell to start.
    #[serde(default = "default_shell")]
    pub shell: Vec<String>,
    /// End the session after this long without input or output.
    #[serde(default, with = "duration_secs::option", rename = "idle_timeout_secs")]
    pub idle_timeout: Option<Duration>,
    /// Record the session as asciicast.
    #[serde(default = "default_record")]
    pub record: bool,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

fn default_shell() -> Vec<String> {
    vec!["/bin/sh".to_owned()]
}

fn default_record() -> bool {
    true
}

impl SessionConfig {
    /// A recorded `/bin/sh` session in `target` without idle timeout.
    pub fn new(target: SessionTarget) -> Self {
        Self {
            target,
            shell: default_shell(),
            idle_timeout: None,
            record: default_record(),
            env: BTreeMap::new(),
        }
    }
}

/// What the config provider is asked about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRequest {
    /// The session.
    pub session: SessionId,
    /// Who opened it.
    pub identity: Identity,
    /// From where.
    pub remote: Option<SocketAddr>,
    /// The container the client asked for, if it named one.
    pub requested_container: Option<ContainerId>,
}

/// Gives each session its configuration (ContainerSSH's config webhook).
///
/// # Contract
///
/// - Returns the configuration for the session, or
///   [`crate::Error::PermissionDenied`] when the identity may not open it
///   (for example a container of another owner), naming what was refused.
/// - [`crate::Error::Unavailable`] only when the provider cannot answer at
///   all; callers may retry that, and nothing else.
#[async_trait]
pub trait ConfigProvider: Send + Sync + fmt::Debug {
    /// The configuration for the session in `request`.
    async fn session_config(&self, request: &ConfigRequest) -> Result<SessionConfig>;
}
