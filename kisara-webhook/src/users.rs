//! A users file as an [`Authenticator`] and a [`ConfigProvider`]: what the
//! `webhook-server` example answers from, and a starting point for small
//! deployments that keep their users in a TOML file instead of a database.
//!
//! ```toml
//! [[user]]
//! name = "alice"
//! # An argon2 PHC string (`webhook-server hash-password` makes one).
//! password = "$argon2id$v=19$m=19456,t=2,p=1$..."
//! keys = ["ssh-ed25519 AAAAC3Nza... alice@laptop"]
//! roles = ["player"]
//! team = "blue"
//!
//! # What her sessions get: a kisara_core::SessionConfig.
//! [user.session]
//! target = { type = "container", container = "blue-web-1" }
//! idle_timeout_secs = 900
//! ```
//!
//! Passwords are only ever stored as argon2 hashes and checked off the async
//! threads; an unknown user costs the same hash check as a known one, so
//! the time of an answer does not tell which names exist. Every rejection is
//! [`rejected`], the same for every cause.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use argon2::password_hash::SaltString;
use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use async_trait::async_trait;
use kisara_core::builtin::{StaticAuthenticator, StaticConfigProvider, rejected};
use kisara_core::{
    Authenticator, ConfigProvider, ConfigRequest, Credentials, Error, Identity, Result,
    SessionConfig,
};
use serde::Deserialize;

use crate::wire::TEAM_KEY;

/// One `[[user]]` of the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    name: String,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    team: Option<String>,
    #[serde(default)]
    session: Option<SessionConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersToml {
    #[serde(default)]
    user: Vec<UserEntry>,
}

/// Users loaded from a TOML file; see the [module docs](self). Clones share
/// one set of users, which [`reload`](Self::reload) replaces for all.
#[derive(Clone)]
pub struct UsersFile {
    current: Arc<RwLock<Arc<Users>>>,
    path: Option<PathBuf>,
}

/// One version of the file's contents.
struct Users {
    /// name → (identity, argon2 PHC string).
    passwords: BTreeMap<String, (Identity, String)>,
    /// Public keys, and the rejection for everything else.
    keys: StaticAuthenticator,
    sessions: StaticConfigProvider,
    count: usize,
}

/// What an unknown user's password is checked against, so that it takes as
/// long as a known user's.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password("decoy").expect("hashing a constant works"))
}

/// An argon2id PHC string for `password`, with a fresh random salt: what
/// goes in a user's `password` field.
///
/// # Errors
///
/// When the system's random source fails.
pub fn hash_password(password: &str) -> Result<String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| Error::unavailable(format!("no random salt: {e}")))?;
    let salt = SaltString::encode_b64(&salt)
        .map_err(|e| Error::invalid("password salt", e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| Error::invalid("password", e.to_string()))
}

/// Whether `hash` is a whole argon2 PHC string: algorithm, salt and hash.
fn check_hash(hash: &str) -> std::result::Result<(), String> {
    let parsed = PasswordHash::new(hash).map_err(|e| e.to_string())?;
    if !parsed.algorithm.as_str().starts_with("argon2") {
        return Err(format!(
            "algorithm {:?} is not argon2",
            parsed.algorithm.as_str()
        ));
    }
    if parsed.salt.is_none() || parsed.hash.is_none() {
        return Err("it has no salt or no hash".to_owned());
    }
    argon2::Params::try_from(&parsed).map_err(|e| e.to_string())?;
    Ok(())
}

impl UsersFile {
    /// Reads and checks `path`.
    ///
    /// # Errors
    ///
    /// An unreadable file, bad TOML or an unknown key (naming line and key),
    /// and per user: a name given twice, a password that is no argon2 PHC
    /// string (plain text is refused), a malformed key.
    pub fn load(path: &Path) -> Result<Self> {
        Ok(Self {
            current: Arc::new(RwLock::new(Arc::new(Users::load(path)?))),
            path: Some(path.to_owned()),
        })
    }

    /// Reads the file again and, when it checks out, answers from it from
    /// now on; a bad file leaves the users as they were (the error says
    /// why). Returns how many users the file lists.
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load), or [`Error::Invalid`] for users made by
    /// [`parse`](Self::parse), which have no file.
    pub fn reload(&self) -> Result<usize> {
        let Some(path) = &self.path else {
            return Err(Error::invalid(
                "users file",
                "these users were not read from a file",
            ));
        };
        let users = Arc::new(Users::load(path)?);
        let count = users.count;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = users;
        Ok(count)
    }

    /// Checks the text of a users file; see [`load`](Self::load).
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load).
    pub fn parse(text: &str) -> Result<Self> {
        Ok(Self {
            current: Arc::new(RwLock::new(Arc::new(Users::parse(text)?))),
            path: None,
        })
    }

    fn users(&self) -> Arc<Users> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// How many users the file lists.
    pub fn len(&self) -> usize {
        self.users().count
    }

    /// Whether the file lists no user.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Users {
    fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::invalid("users file", format!("cannot read {}: {e}", path.display()))
        })?;
        Self::parse(&text).map_err(|e| match e {
            Error::Invalid { what, message } => {
                Error::invalid(what, format!("{}: {message}", path.display()))
            }
            other => other,
        })
    }

    fn parse(text: &str) -> Result<Self> {
        let file: UsersToml =
            toml::from_str(text).map_err(|e| Error::invalid("users file", e.to_string()))?;
        let mut passwords = BTreeMap::new();
        let mut keys = StaticAuthenticator::new();
        let mut sessions = StaticConfigProvider::new(None);
        let mut seen = std::collections::BTreeSet::new();
        for (index, user) in file.user.iter().enumerate() {
            let at = |message: String| {
                Error::invalid(
                    "users file",
                    format!("user {} ({:?}): {message}", index + 1, user.name),
                )
            };
            if user.name.is_empty() {
                return Err(at("`name` is empty".into()));
            }
            if !seen.insert(user.name.clone()) {
                return Err(at("the name is given twice".into()));
            }
            let mut identity = Identity::new(&user.name);
            identity.roles.clone_from(&user.roles);
            if let Some(team) = &user.team {
                identity.metadata.insert(TEAM_KEY.to_owned(), team.clone());
            }
            if let Some(hash) = &user.password {
                check_hash(hash).map_err(|why| {
                    at(format!(
                        "`password` must be an argon2 PHC string (`webhook-server hash-password` makes one), not {}: {why}",
                        if hash.starts_with('$') { "this" } else { "plain text" }
                    ))
                })?;
                passwords.insert(user.name.clone(), (identity.clone(), hash.clone()));
            }
            for key in &user.keys {
                let mut words = key.split_whitespace();
                let (Some(kind), Some(_)) = (words.next(), words.next()) else {
                    return Err(at(format!(
                        "key {key:?} is not `<type> <base64> [comment]`"
                    )));
                };
                if !(kind.starts_with("ssh-")
                    || kind.starts_with("ecdsa-")
                    || kind.starts_with("sk-"))
                {
                    return Err(at(format!("key {key:?}: unknown key type {kind:?}")));
                }
                keys = keys.with_public_key(identity.clone(), key.clone());
            }
            if let Some(session) = &user.session {
                sessions = sessions.with_user(&user.name, session.clone());
            }
        }
        Ok(Self {
            passwords,
            keys,
            sessions,
            count: file.user.len(),
        })
    }
}

/// The path and the count only: hashes stay out of logs.
impl std::fmt::Debug for UsersFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsersFile")
            .field("path", &self.path)
            .field("users", &self.len())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Authenticator for UsersFile {
    async fn authenticate(
        &self,
        credentials: &Credentials,
        remote: Option<SocketAddr>,
    ) -> Result<Identity> {
        let users = self.users();
        let Credentials::Password { username, password } = credentials else {
            return users.keys.authenticate(credentials, remote).await;
        };
        let (identity, hash) = match users.passwords.get(username) {
            Some((identity, hash)) => (Some(identity.clone()), hash.clone()),
            None => (None, decoy_hash().to_owned()),
        };
        let password = kisara_core::Secret::new(password.clone());
        // Argon2 takes tens of milliseconds of CPU: off the async threads.
        let matches = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash).is_ok_and(|hash| {
                Argon2::default()
                    .verify_password(password.expose().as_bytes(), &hash)
                    .is_ok()
            })
        })
        .await
        .map_err(|e| Error::unavailable(format!("password check failed: {e}")))?;
        match identity {
            Some(identity) if matches => Ok(identity),
            _ => {
                tracing::info!(?remote, "password rejected");
                Err(rejected())
            }
        }
    }
}

#[async_trait]
impl ConfigProvider for UsersFile {
    async fn session_config(&self, request: &ConfigRequest) -> Result<SessionConfig> {
        let users = self.users();
        users.sessions.session_config(request).await
    }
}
