//! One session channel: its requests (`pty-req`, `env`, `shell`, `exec`,
//! `window-change`) become one session of the engine, whose output and
//! exit status go back to the client.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use kisara_cluster::ContainerQuery;
use kisara_cluster::session::{
    ADMIN_ROLE, EndReason, PLATFORM_ROLE, SessionInput, SessionOutput, SessionRequest, check_size,
};
use kisara_core::model::{ContainerId, ContainerState, TtySize};
use kisara_core::{Error, ErrorKind, Identity, SessionKind};
use russh::server::Msg;
use russh::{Channel, ChannelMsg};

use crate::Gateway;

/// The subsystems served; others are refused.
pub(crate) const SUBSYSTEMS: &[&str] = &[];

/// The stream number of stderr in SSH extended data.
const STDERR: u32 = 1;

/// Exit status of a session the engine refused for permission (a denied
/// command, another team's container): "cannot execute", as shells say.
const EXIT_DENIED: u32 = 126;
/// Exit status of a session whose container was not found.
const EXIT_NOT_FOUND: u32 = 127;
/// Exit status of a session refused for any other reason.
const EXIT_REFUSED: u32 = 1;

/// Who logged in on a connection and what they asked for.
#[derive(Debug)]
pub(crate) struct Login {
    /// As the authenticator said.
    pub(crate) identity: Identity,
    /// The container named in the login name (`alice+web`).
    pub(crate) container: Option<String>,
    /// From where.
    pub(crate) remote: SocketAddr,
}

/// A terminal size from a client's columns and rows.
pub(crate) fn tty_size(cols: u32, rows: u32) -> kisara_core::Result<TtySize> {
    let side = |n: u32| u16::try_from(n).unwrap_or(u16::MAX);
    check_size(TtySize {
        rows: side(rows),
        cols: side(cols),
    })
}

/// What the client asked for before starting the session.
#[derive(Debug, Default)]
struct Setup {
    tty: Option<TtySize>,
    term: Option<String>,
    env: BTreeMap<String, String>,
}

/// Serves one session channel to its end.
pub(crate) async fn serve(gateway: Arc<Gateway>, login: Arc<Login>, mut channel: Channel<Msg>) {
    let mut setup = Setup::default();
    while let Some(message) = channel.wait().await {
        let command = match message {
            ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                ..
            } => {
                if let Ok(size) = tty_size(col_width, row_height) {
                    setup.tty = Some(size);
                    setup.term = Some(term);
                }
                continue;
            }
            ChannelMsg::WindowChange {
                col_width,
                row_height,
                ..
            } => {
                if let (Ok(size), Some(_)) = (tty_size(col_width, row_height), setup.tty) {
                    setup.tty = Some(size);
                }
                continue;
            }
            ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            } => {
                if gateway.env_allowed(&variable_name) {
                    setup.env.insert(variable_name, variable_value);
                } else {
                    tracing::debug!(name = %variable_name, "environment variable not allowed; ignored");
                }
                continue;
            }
            ChannelMsg::RequestShell { .. } => None,
            ChannelMsg::Exec { command, .. } => {
                Some(String::from_utf8_lossy(&command).into_owned())
            }
            ChannelMsg::Eof | ChannelMsg::Close => return,
            _ => continue,
        };
        run_session(&gateway, &login, setup, command, channel).await;
        return;
    }
}

/// Opens the session and pumps it until it ends.
async fn run_session(
    gateway: &Gateway,
    login: &Login,
    setup: Setup,
    command: Option<String>,
    mut channel: Channel<Msg>,
) {
    let opened = async {
        let container = target(gateway, login).await?;
        let mut env = setup.env;
        if let Some(term) = setup.term {
            env.insert("TERM".to_owned(), term);
        }
        let request = SessionRequest {
            identity: login.identity.clone(),
            container,
            // An exec is judged whole by the command policy and its stdin
            // is data, not typed lines for the terminal gate.
            kind: if command.is_some() {
                SessionKind::Exec
            } else {
                SessionKind::Ssh
            },
            remote: Some(login.remote),
            // As sshd does: the command line goes to the shell, which is
            // what command policies that read `sh -c` scripts judge.
            command: command.map(|line| vec!["/bin/sh".to_owned(), "-c".to_owned(), line]),
            tty: setup.tty,
            stdin: true,
            env,
        };
        gateway.engine.open(request).await
    }
    .await;
    let mut session = match opened {
        Ok(session) => session,
        Err(error) => {
            let status = match error.kind() {
                ErrorKind::PermissionDenied => EXIT_DENIED,
                ErrorKind::NotFound => EXIT_NOT_FOUND,
                _ => EXIT_REFUSED,
            };
            let _ = channel
                .extended_data(STDERR, format!("kisara: {error}\r\n").as_bytes())
                .await;
            finish(&channel, Some(status)).await;
            return;
        }
    };
    let mut input = Some(session.input);
    loop {
        tokio::select! {
            message = channel.wait() => match message {
                Some(ChannelMsg::Data { data }) => {
                    if let Some(sender) = &input
                        && sender.send(SessionInput::Data(data)).await.is_err()
                    {
                        input = None;
                    }
                }
                Some(ChannelMsg::WindowChange { col_width, row_height, .. }) => {
                    if let (Some(sender), Ok(size)) = (&input, tty_size(col_width, row_height)) {
                        let _ = sender.send(SessionInput::Resize(size)).await;
                    }
                }
                Some(ChannelMsg::Eof) => {
                    if let Some(sender) = input.take() {
                        let _ = sender.send(SessionInput::Eof).await;
                        // Keep the session: its output still goes out.
                        keep_open(sender);
                    }
                }
                // The client closed the channel or the connection: dropping
                // the input ends the session as "client closed".
                Some(ChannelMsg::Close) | None => return,
                Some(_) => {}
            },
            output = session.output.recv() => match output {
                Some(SessionOutput::Stdout(bytes)) => {
                    if write(&channel, None, &bytes).await.is_err() {
                        return;
                    }
                }
                Some(SessionOutput::Stderr(bytes)) => {
                    if write(&channel, Some(STDERR), &bytes).await.is_err() {
                        return;
                    }
                }
                None => break,
            },
        }
    }
    let status = match session.ended.await {
        Ok(end) => match (end.reason, end.exit_code) {
            (EndReason::Exit, Some(code)) => Some(u32::try_from(code).unwrap_or(255)),
            (reason, _) => {
                let _ = channel
                    .extended_data(
                        STDERR,
                        format!("\r\nkisara: session ended: {reason}\r\n").as_bytes(),
                    )
                    .await;
                None
            }
        },
        Err(_) => None,
    };
    finish(&channel, status).await;
}

/// An input sender whose end of stdin was sent: held by a task until the
/// session ends, since dropping it would end the session as "client
/// closed" before its output is out.
fn keep_open(sender: tokio::sync::mpsc::Sender<SessionInput>) {
    tokio::spawn(async move { sender.closed().await });
}

async fn write(
    channel: &Channel<Msg>,
    stream: Option<u32>,
    bytes: &Bytes,
) -> Result<(), russh::Error> {
    match stream {
        Some(ext) => channel.extended_data(ext, &bytes[..]).await,
        None => channel.data(&bytes[..]).await,
    }
}

/// Sends the exit status (when there is one), EOF and closes.
async fn finish(channel: &Channel<Msg>, status: Option<u32>) {
    if let Some(status) = status {
        let _ = channel.exit_status(status).await;
    }
    let _ = channel.eof().await;
    let _ = channel.close().await;
}

/// The container a login goes to: the one named in the login name (by
/// name or id), else the only running container of the user's team; with
/// none, the engine's config provider chooses.
async fn target(gateway: &Gateway, login: &Login) -> kisara_core::Result<Option<ContainerId>> {
    let identity = &login.identity;
    let team = identity.team().unwrap_or(&identity.username).to_owned();
    let anywhere = identity.has_role(ADMIN_ROLE) || identity.has_role(PLATFORM_ROLE);
    let query = ContainerQuery {
        owner: (login.container.is_none() || !anywhere).then(|| team.clone()),
        ..ContainerQuery::default()
    };
    let containers = gateway.engine.server().list(&query).await?;
    match &login.container {
        Some(asked) => containers
            .into_iter()
            .find(|(_, c)| c.name == *asked || c.id.as_str() == asked)
            .map(|(_, c)| Some(c.id))
            .ok_or_else(|| Error::not_found("container", asked.clone())),
        None => {
            let running: Vec<_> = containers
                .into_iter()
                .filter(|(_, c)| c.state == ContainerState::Running)
                .map(|(_, c)| c)
                .collect();
            match running.as_slice() {
                [] => Ok(None),
                [only] => Ok(Some(only.id.clone())),
                several => {
                    let names: Vec<&str> = several.iter().map(|c| c.name.as_str()).collect();
                    Err(Error::invalid(
                        "container",
                        format!(
                            "team {team:?} runs {} containers ({}): log in as {}{}NAME to pick one",
                            names.len(),
                            names.join(", "),
                            identity.username,
                            crate::connection::CONTAINER_SEPARATOR
                        ),
                    ))
                }
            }
        }
    }
}
