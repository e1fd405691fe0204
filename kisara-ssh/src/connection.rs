//! One client connection: its logins and its channels.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use kisara_core::{Credentials, ErrorKind};
use russh::keys::{Certificate, PublicKey};
use russh::server::{Auth, Msg, Response, Session};
use russh::{Channel, ChannelId};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::channel::{self, Login};
use crate::{Gateway, SshError};

/// Separates the user name from the container in a login name:
/// `alice+web` is user `alice` asking for container `web`.
pub(crate) const CONTAINER_SEPARATOR: char = '+';

/// Where a connection is: not yet logged in, or how many channels it has
/// open; the watcher closes it after the login grace or idle timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    LoggingIn,
    Open { channels: usize },
}

/// The russh handler of one connection.
pub(crate) struct Connection {
    gateway: Arc<Gateway>,
    remote: SocketAddr,
    login: Option<Arc<Login>>,
    phase: watch::Sender<Phase>,
}

impl Connection {
    /// Runs the connection to its end: the handshake and login within the
    /// login grace, then until the client leaves or stays idle.
    pub(crate) async fn run(gateway: Arc<Gateway>, socket: TcpStream, remote: SocketAddr) {
        let (phase, watched) = watch::channel(Phase::LoggingIn);
        let handler = Self {
            gateway: gateway.clone(),
            remote,
            login: None,
            phase,
        };
        let config = gateway.config.clone();
        let started = tokio::time::timeout(
            gateway.login_grace,
            russh::server::run_stream(config, socket, handler),
        )
        .await;
        let session = match started {
            Ok(Ok(session)) => session,
            Ok(Err(error)) => {
                tracing::info!(%remote, %error, "ssh handshake failed");
                return;
            }
            Err(_) => {
                tracing::info!(%remote, "ssh client sent no version within the login grace");
                return;
            }
        };
        let watcher = tokio::spawn(close_when_idle(
            session.handle(),
            watched,
            gateway.login_grace,
            gateway.idle_timeout,
        ));
        match session.await {
            Ok(()) => tracing::debug!(%remote, "ssh connection closed"),
            Err(error) => tracing::info!(%remote, %error, "ssh connection ended"),
        }
        watcher.abort();
    }

    /// Asks the authenticator, unless the user or source is throttled; any
    /// failure is the same plain rejection (russh delays each alike).
    async fn authenticate(&mut self, login_name: &str, credentials: Credentials) -> Auth {
        let source = Some(self.remote.ip());
        let (user, container) = split_login(login_name);
        if self.gateway.throttle.blocked(source, user) {
            tracing::warn!(remote = %self.remote, user, "ssh login throttled");
            return Auth::reject();
        }
        match self
            .gateway
            .authenticator
            .authenticate(&credentials, Some(self.remote))
            .await
        {
            Ok(identity) => {
                tracing::info!(remote = %self.remote, user = %identity.username, "ssh login");
                self.login = Some(Arc::new(Login {
                    identity,
                    container: container.map(str::to_owned),
                    remote: self.remote,
                }));
                self.phase.send_replace(Phase::Open { channels: 0 });
                Auth::Accept
            }
            Err(error) => {
                // A backend that cannot decide is logged as such, but the
                // client hears the same as for a wrong password.
                if error.kind() == ErrorKind::Unauthenticated {
                    tracing::info!(remote = %self.remote, user, "ssh login refused");
                } else {
                    tracing::warn!(remote = %self.remote, user, %error, "ssh login could not be checked");
                }
                self.gateway.throttle.failed(source, user);
                Auth::reject()
            }
        }
    }
}

/// `alice+web` → (`alice`, `Some("web")`); `alice` → (`alice`, `None`).
pub(crate) fn split_login(login_name: &str) -> (&str, Option<&str>) {
    match login_name.split_once(CONTAINER_SEPARATOR) {
        Some((user, container)) if !container.is_empty() => (user, Some(container)),
        Some((user, _)) => (user, None),
        None => (login_name, None),
    }
}

/// The prompt of keyboard-interactive logins.
const PASSWORD_PROMPT: &str = "Password: ";

impl russh::server::Handler for Connection {
    type Error = SshError;

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        let credentials = Credentials::Password {
            username: split_login(user).0.to_owned(),
            password: password.to_owned(),
        };
        Ok(self.authenticate(user, credentials).await)
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        public_key: &PublicKey,
    ) -> Result<Auth, Self::Error> {
        // Called once russh verified the client's signature: the key is
        // the client's, the authenticator judges whether it is allowed.
        let Ok(encoded) = public_key.to_openssh() else {
            return Ok(Auth::reject());
        };
        let credentials = Credentials::PublicKey {
            username: split_login(user).0.to_owned(),
            public_key: encoded,
        };
        Ok(self.authenticate(user, credentials).await)
    }

    async fn auth_openssh_certificate(
        &mut self,
        _user: &str,
        _certificate: &Certificate,
    ) -> Result<Auth, Self::Error> {
        // No certificate authority is configured: a certificate is refused
        // like any unknown key.
        Ok(Auth::reject())
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        response: Option<Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        let Some(mut response) = response else {
            return Ok(Auth::Partial {
                name: Cow::Borrowed(""),
                instructions: Cow::Borrowed(""),
                prompts: Cow::Owned(vec![(Cow::Borrowed(PASSWORD_PROMPT), false)]),
            });
        };
        let password = response
            .next()
            .map(|answer| String::from_utf8_lossy(&answer).into_owned())
            .unwrap_or_default();
        let credentials = Credentials::Password {
            username: split_login(user).0.to_owned(),
            password,
        };
        Ok(self.authenticate(user, credentials).await)
    }

    // Replies to channel requests go out here, in the order the client sent
    // them (russh remembers only whether the latest wants a reply); the
    // channel's task does the work from the same requests.

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        col_width: u32,
        row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match channel::tty_size(col_width, row_height) {
            Ok(_) => session.channel_success(channel)?,
            Err(_) => session.channel_failure(channel)?,
        }
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        variable_name: &str,
        _variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.gateway.env_allowed(variable_name) {
            session.channel_success(channel)?;
        } else {
            session.channel_failure(channel)?;
        }
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Refusals (a container of another team, a denied shell) reach
        // the client as a message on stderr and an exit status.
        session.channel_success(channel)?;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if channel::SUBSYSTEMS.contains(&name) {
            session.channel_success(channel)?;
        } else {
            session.channel_failure(channel)?;
        }
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(login) = self.login.clone() else {
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        reply.accept().await;
        self.phase.send_modify(|phase| {
            if let Phase::Open { channels } = phase {
                *channels += 1;
            }
        });
        let phase = self.phase.clone();
        let gateway = self.gateway.clone();
        tokio::spawn(async move {
            channel::serve(gateway, login, channel).await;
            phase.send_modify(|phase| {
                if let Phase::Open { channels } = phase {
                    *channels = channels.saturating_sub(1);
                }
            });
        });
        Ok(())
    }
}

/// Disconnects a client that has not logged in within `grace`, or that
/// had no channel open for `idle`.
async fn close_when_idle(
    handle: russh::server::Handle,
    mut phase: watch::Receiver<Phase>,
    grace: std::time::Duration,
    idle: Option<std::time::Duration>,
) {
    loop {
        let current = *phase.borrow_and_update();
        let (limit, why) = match current {
            Phase::LoggingIn => (Some(grace), "no login within the login grace"),
            Phase::Open { channels: 0 } => (idle, "idle: no session open"),
            Phase::Open { .. } => (None, ""),
        };
        let Some(limit) = limit else {
            if phase.changed().await.is_err() {
                return;
            }
            continue;
        };
        tokio::select! {
            () = tokio::time::sleep(limit) => {
                tracing::info!(reason = why, "closing ssh connection");
                let _ = handle
                    .disconnect(russh::Disconnect::ByApplication, why.to_owned(), String::new())
                    .await;
                return;
            }
            changed = phase.changed() => if changed.is_err() { return },
        }
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("remote", &self.remote)
            .field("user", &self.login.as_ref().map(|l| &l.identity.username))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::split_login;

    #[test]
    fn a_login_name_may_name_the_container() {
        assert_eq!(split_login("alice+web"), ("alice", Some("web")));
        assert_eq!(split_login("alice"), ("alice", None));
        assert_eq!(split_login("alice+"), ("alice", None));
    }
}
