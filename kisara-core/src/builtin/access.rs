//! Built-in access control: [`StaticAuthenticator`], [`StaticConfigProvider`]
//! and [`PrefixPolicy`].

use std::collections::BTreeMap;
use std::net::SocketAddr;

use async_trait::async_trait;

use crate::{
    Authenticator, CommandContext, CommandPolicy, ConfigProvider, ConfigRequest, Credentials,
    Error, Identity, PolicyDecision, Result, Secret, SessionConfig, SessionTarget,
};

/// The one message for every failed authentication, so a client cannot tell
/// an unknown user from a wrong secret.
const REJECTED: &str = "invalid credentials";

#[derive(Debug, Clone)]
struct User {
    identity: Identity,
    password: Option<Secret>,
    public_keys: Vec<String>,
}

/// An [`Authenticator`] over a fixed table of users (password, public keys)
/// and bearer tokens, compared in constant time.
#[derive(Debug, Default)]
pub struct StaticAuthenticator {
    users: BTreeMap<String, User>,
    tokens: Vec<(Secret, Identity)>,
}

impl StaticAuthenticator {
    /// An authenticator that accepts no one.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accepts `identity` with `password`.
    pub fn with_password(mut self, identity: Identity, password: impl Into<String>) -> Self {
        self.user_entry(identity).password = Some(Secret::new(password));
        self
    }

    /// Accepts `identity` with a public key in `authorized_keys` format.
    pub fn with_public_key(mut self, identity: Identity, public_key: impl Into<String>) -> Self {
        let key = normalize_key(&public_key.into());
        self.user_entry(identity).public_keys.push(key);
        self
    }

    /// Accepts bearer `token` as `identity`.
    pub fn with_token(mut self, identity: Identity, token: impl Into<String>) -> Self {
        self.tokens.push((Secret::new(token), identity));
        self
    }

    fn user_entry(&mut self, identity: Identity) -> &mut User {
        self.users.entry(identity.username.clone()).or_insert(User {
            identity,
            password: None,
            public_keys: Vec::new(),
        })
    }
}

/// `type base64 [comment]` → `type base64`: the comment is not part of the key.
fn normalize_key(key: &str) -> String {
    key.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

/// The one answer every built-in authenticator gives to wrong credentials,
/// whatever was wrong (unknown user, wrong secret, wrong kind), so that a
/// rejection tells an attacker nothing. Other authenticators answer with it
/// too.
pub fn rejected() -> Error {
    Error::Unauthenticated {
        message: REJECTED.to_owned(),
    }
}

#[async_trait]
impl Authenticator for StaticAuthenticator {
    async fn authenticate(
        &self,
        credentials: &Credentials,
        remote: Option<SocketAddr>,
    ) -> Result<Identity> {
        let accepted = match credentials {
            Credentials::Password { username, password } => {
                self.users.get(username).and_then(|user| {
                    let ok = user
                        .password
                        .as_ref()
                        .is_some_and(|secret| secret.matches(password));
                    ok.then(|| user.identity.clone())
                })
            }
            Credentials::PublicKey {
                username,
                public_key,
            } => self.users.get(username).and_then(|user| {
                let offered = Secret::new(normalize_key(public_key));
                // Check every key so the time does not reveal which one matched.
                let ok = user
                    .public_keys
                    .iter()
                    .fold(false, |found, key| offered.matches(key) | found);
                ok.then(|| user.identity.clone())
            }),
            Credentials::BearerToken { token } => {
                let mut found = None;
                for (secret, identity) in &self.tokens {
                    if secret.matches(token) && found.is_none() {
                        found = Some(identity.clone());
                    }
                }
                found
            }
        };
        accepted.ok_or_else(|| {
            tracing::info!(?remote, kind = ?std::mem::discriminant(credentials), "authentication rejected");
            rejected()
        })
    }
}

/// A [`ConfigProvider`] that gives every session the same configuration,
/// optionally with a different one per user.
#[derive(Debug, Clone)]
pub struct StaticConfigProvider {
    default: Option<SessionConfig>,
    per_user: BTreeMap<String, SessionConfig>,
}

impl StaticConfigProvider {
    /// Gives every session `default`; with `None`, only listed users get one.
    pub fn new(default: Option<SessionConfig>) -> Self {
        Self {
            default,
            per_user: BTreeMap::new(),
        }
    }

    /// Gives `username` its own configuration.
    pub fn with_user(mut self, username: impl Into<String>, config: SessionConfig) -> Self {
        self.per_user.insert(username.into(), config);
        self
    }
}

#[async_trait]
impl ConfigProvider for StaticConfigProvider {
    async fn session_config(&self, request: &ConfigRequest) -> Result<SessionConfig> {
        let username = &request.identity.username;
        let mut config = self
            .per_user
            .get(username)
            .or(self.default.as_ref())
            .cloned()
            .ok_or_else(|| {
                Error::permission_denied(format!("user {username:?} may not open sessions"))
            })?;
        if let Some(requested) = &request.requested_container {
            match &config.target {
                // The configured container is the only one this user may enter.
                SessionTarget::Container { container } if container != requested => {
                    return Err(Error::permission_denied(format!(
                        "user {username:?} may not enter container {requested}"
                    )));
                }
                SessionTarget::Container { .. } => {}
                SessionTarget::Launch { .. } => {
                    return Err(Error::permission_denied(format!(
                        "user {username:?} gets a container of their own, not {requested}"
                    )));
                }
            }
        }
        config
            .env
            .insert("KISARA_SESSION".to_owned(), request.session.to_string());
        Ok(config)
    }
}

/// A [`CommandPolicy`] of command prefixes: a command is denied when it starts
/// with a denied prefix (program, then arguments word by word); otherwise it
/// is allowed when it starts with an allowed prefix or when the default is
/// allow. Deny wins over allow. Roles listed as exempt bypass it.
///
/// `kisara-audit` has richer rules (argument patterns, per module); this is
/// the simple reference.
#[derive(Debug, Clone, Default)]
pub struct PrefixPolicy {
    default_allow: bool,
    allow: Vec<Vec<String>>,
    deny: Vec<Vec<String>>,
    exempt_roles: Vec<String>,
}

impl PrefixPolicy {
    /// Allows everything not denied.
    pub fn allow_by_default() -> Self {
        Self {
            default_allow: true,
            ..Self::default()
        }
    }

    /// Denies everything not allowed.
    pub fn deny_by_default() -> Self {
        Self::default()
    }

    /// Allows commands starting with `prefix`.
    pub fn allow<S: Into<String>>(mut self, prefix: impl IntoIterator<Item = S>) -> Self {
        self.allow
            .push(prefix.into_iter().map(Into::into).collect());
        self
    }

    /// Denies commands starting with `prefix`.
    pub fn deny<S: Into<String>>(mut self, prefix: impl IntoIterator<Item = S>) -> Self {
        self.deny.push(prefix.into_iter().map(Into::into).collect());
        self
    }

    /// Lets identities with `role` run anything.
    pub fn exempt_role(mut self, role: impl Into<String>) -> Self {
        self.exempt_roles.push(role.into());
        self
    }
}

fn starts_with(command: &[String], prefix: &[String]) -> bool {
    // The program is compared by its base name, so `/bin/rm` is `rm`.
    let base = |word: &str| word.rsplit('/').next().unwrap_or(word).to_owned();
    prefix.len() <= command.len()
        && prefix
            .iter()
            .zip(command)
            .enumerate()
            .all(|(i, (p, c))| if i == 0 { base(p) == base(c) } else { p == c })
}

#[async_trait]
impl CommandPolicy for PrefixPolicy {
    async fn check(&self, context: &CommandContext, command: &[String]) -> Result<PolicyDecision> {
        if command.is_empty() {
            return Err(Error::invalid("command", "the command is empty"));
        }
        if self
            .exempt_roles
            .iter()
            .any(|role| context.identity.has_role(role))
        {
            return Ok(PolicyDecision::Allow);
        }
        if let Some(prefix) = self.deny.iter().find(|prefix| starts_with(command, prefix)) {
            return Ok(PolicyDecision::Deny {
                reason: format!("denied by rule {:?}", prefix.join(" ")),
            });
        }
        if self.default_allow || self.allow.iter().any(|prefix| starts_with(command, prefix)) {
            return Ok(PolicyDecision::Allow);
        }
        Ok(PolicyDecision::Deny {
            reason: format!("{:?} matches no allowed command", command[0]),
        })
    }
}
