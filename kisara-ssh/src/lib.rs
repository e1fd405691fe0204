//! An SSH gateway into Kisara containers, on the session engine.

#![doc = include_str!("../README.md")]

mod channel;
mod connection;
mod error;
pub mod host_key;
mod throttle;

pub use error::SshError;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kisara_cluster::session::SessionEngine;
use kisara_core::Authenticator;
use russh::keys::PrivateKey;
use tokio::net::TcpListener;

use crate::connection::Connection;
use crate::throttle::FailureThrottle;

/// The environment variables a client may set (`SendEnv`) unless told
/// otherwise: the locale. A name ending in `*` allows every name it
/// starts.
pub const DEFAULT_ENV_ALLOW: &[&str] = &["LANG", "LC_*"];

/// Builds an [`SshGateway`]; see [`SshGateway::builder`].
#[must_use]
pub struct SshGatewayBuilder {
    engine: SessionEngine,
    authenticator: Arc<dyn Authenticator>,
    host_keys: Vec<PrivateKey>,
    host_key_dir: Option<PathBuf>,
    max_auth_attempts: usize,
    env_allow: Vec<String>,
    idle_timeout: Option<Duration>,
    login_grace: Duration,
    rejection_delay: Duration,
    throttle_failures: usize,
    throttle_window: Duration,
}

impl SshGatewayBuilder {
    /// Uses `key` as a host key (besides any from
    /// [`host_key_dir`](Self::host_key_dir)).
    pub fn host_key(mut self, key: PrivateKey) -> Self {
        self.host_keys.push(key);
        self
    }

    /// Reads the ed25519 host key from `dir`, generating it there on first
    /// start ([`host_key::load_or_generate`]).
    pub fn host_key_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.host_key_dir = Some(dir.into());
        self
    }

    /// At most `attempts` authentication attempts per connection (default
    /// 3), then the connection is closed.
    pub fn max_auth_attempts(mut self, attempts: usize) -> Self {
        self.max_auth_attempts = attempts;
        self
    }

    /// The environment variables clients may set, by name; `PREFIX*`
    /// allows every name starting `PREFIX` (default
    /// [`DEFAULT_ENV_ALLOW`]). Others are ignored, and logged.
    pub fn env_allow<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.env_allow = names.into_iter().map(Into::into).collect();
        self
    }

    /// Closes a logged-in connection after it had no channel open for
    /// `timeout` (default 30 minutes; `None`: never). Sessions themselves
    /// end on the engine's idle timeout.
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Closes a connection that has not logged in within `grace` of
    /// connecting (default 30 s): a stalled or silent client holds nothing
    /// for long.
    pub fn login_grace(mut self, grace: Duration) -> Self {
        self.login_grace = grace;
        self
    }

    /// Every refused login is answered after the same `delay` (default
    /// 1 s), whatever was wrong, so timing tells nothing.
    pub fn rejection_delay(mut self, delay: Duration) -> Self {
        self.rejection_delay = delay;
        self
    }

    /// After `failures` failed logins within `window` from one source
    /// address, or for one user name, further logins from it or for them
    /// are refused without asking the authenticator until the window has
    /// passed (default 10 in 5 minutes).
    pub fn throttle(mut self, failures: usize, window: Duration) -> Self {
        self.throttle_failures = failures;
        self.throttle_window = window;
        self
    }

    /// The gateway, its host keys loaded (or generated) and fingerprints
    /// logged.
    ///
    /// # Errors
    ///
    /// [`SshError::HostKey`] for an unusable host key,
    /// [`SshError::Config`] without any host key or with a zero limit.
    pub fn build(mut self) -> Result<SshGateway, SshError> {
        if let Some(dir) = &self.host_key_dir {
            self.host_keys.push(host_key::load_or_generate(dir)?);
        }
        if self.host_keys.is_empty() {
            return Err(SshError::Config {
                what: "host key",
                message: "no host key: give one or a directory to keep it in".into(),
            });
        }
        for (what, value) in [
            ("max auth attempts", self.max_auth_attempts),
            ("throttle failures", self.throttle_failures),
        ] {
            if value == 0 {
                return Err(SshError::Config {
                    what,
                    message: "must be at least 1".into(),
                });
            }
        }
        for key in &self.host_keys {
            tracing::info!(
                algorithm = %key.algorithm(),
                fingerprint = %host_key::fingerprint(key),
                "ssh host key"
            );
        }
        let config = russh::server::Config {
            server_id: russh::SshId::Standard(
                concat!("SSH-2.0-kisara_", env!("CARGO_PKG_VERSION")).into(),
            ),
            methods: russh::MethodSet::from(
                &[
                    russh::MethodKind::Password,
                    russh::MethodKind::PublicKey,
                    russh::MethodKind::KeyboardInteractive,
                ][..],
            ),
            auth_rejection_time: self.rejection_delay,
            // OpenSSH clients probe with "none" first to learn the methods:
            // that is no failed attempt and needs no delay.
            auth_rejection_time_initial: Some(Duration::ZERO),
            keys: self.host_keys,
            max_auth_attempts: self.max_auth_attempts,
            // Idle connections are the gateway's to close (see
            // `idle_timeout`); keepalives find dead clients.
            inactivity_timeout: None,
            keepalive_interval: Some(Duration::from_secs(15)),
            keepalive_max: 3,
            nodelay: true,
            ..russh::server::Config::default()
        };
        Ok(SshGateway(Arc::new(Gateway {
            engine: self.engine,
            authenticator: self.authenticator,
            config: Arc::new(config),
            env_allow: self.env_allow,
            idle_timeout: self.idle_timeout,
            login_grace: self.login_grace,
            throttle: FailureThrottle::new(self.throttle_failures, self.throttle_window),
        })))
    }
}

pub(crate) struct Gateway {
    pub(crate) engine: SessionEngine,
    pub(crate) authenticator: Arc<dyn Authenticator>,
    pub(crate) config: Arc<russh::server::Config>,
    pub(crate) env_allow: Vec<String>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) login_grace: Duration,
    pub(crate) throttle: FailureThrottle,
}

impl Gateway {
    /// Whether a client may set the environment variable `name`.
    pub(crate) fn env_allowed(&self, name: &str) -> bool {
        self.env_allow
            .iter()
            .any(|allowed| match allowed.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => allowed == name,
            })
    }
}

/// The SSH gateway: logins through an [`Authenticator`], every channel a
/// session of the [`SessionEngine`]. Cheap to clone.
#[derive(Clone)]
pub struct SshGateway(Arc<Gateway>);

impl std::fmt::Debug for SshGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshGateway")
            .field("authenticator", &self.0.authenticator)
            .field("env_allow", &self.0.env_allow)
            .field("idle_timeout", &self.0.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl SshGateway {
    /// A gateway opening sessions in `engine` for the users
    /// `authenticator` accepts; see the builder's methods for the
    /// defaults.
    pub fn builder(
        engine: SessionEngine,
        authenticator: Arc<dyn Authenticator>,
    ) -> SshGatewayBuilder {
        SshGatewayBuilder {
            engine,
            authenticator,
            host_keys: Vec::new(),
            host_key_dir: None,
            max_auth_attempts: 3,
            env_allow: DEFAULT_ENV_ALLOW.iter().map(|s| (*s).to_owned()).collect(),
            idle_timeout: Some(Duration::from_secs(30 * 60)),
            login_grace: Duration::from_secs(30),
            rejection_delay: Duration::from_secs(1),
            throttle_failures: 10,
            throttle_window: Duration::from_secs(5 * 60),
        }
    }

    /// Serves connections from `listener` until it fails; each connection
    /// runs on its own task, so one client never stalls another.
    ///
    /// # Errors
    ///
    /// [`SshError::Io`] when accepting fails.
    pub async fn serve(&self, listener: TcpListener) -> Result<(), SshError> {
        if let Ok(address) = listener.local_addr() {
            tracing::info!(%address, "ssh gateway listening");
        }
        loop {
            let (socket, remote) = match listener.accept().await {
                Ok(accepted) => accepted,
                // Out of descriptors and the like: wait rather than spin,
                // and keep serving.
                Err(error) if is_transient(&error) => {
                    tracing::warn!(%error, "ssh accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(error) => return Err(error.into()),
            };
            tokio::spawn(Connection::run(self.0.clone(), socket, remote));
        }
    }

    /// Serves connections on a listener bound to `address`.
    ///
    /// # Errors
    ///
    /// [`SshError::Io`] when it cannot bind or accept.
    pub async fn serve_on(&self, address: SocketAddr) -> Result<(), SshError> {
        self.serve(TcpListener::bind(address).await?).await
    }
}

fn is_transient(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::Interrupted
    ) || error
        .raw_os_error()
        .is_some_and(|code| code == 24 || code == 23)
}
