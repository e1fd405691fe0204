//! Sessions over WebSocket: terminal tickets, the terminal socket and the
//! interactive exec socket, all opened through the session engine.
//!
//! # Frames
//!
//! **Binary frames** carry bytes, their first byte naming the stream:
//! `0` stdin (client → server), `1` stdout and `2` stderr (server →
//! client; with a TTY everything is stdout). A binary frame of at most
//! [`MAX_CLIENT_FRAME`] bytes.
//!
//! **Text frames** carry one JSON object with a `type`:
//!
//! | direction | frame | meaning |
//! |---|---|---|
//! | client → server | `{"type":"resize","cols":100,"rows":40}` | the terminal's new size (1..=1000 each) |
//! | client → server | `{"type":"eof"}` | end of stdin |
//! | server → client | `{"type":"started","session":"…","container":"…","node":"…","recording":"…"}` | the session runs (`recording` is `null` when not recorded) |
//! | server → client | `{"type":"error","code":"invalid","message":"…"}` | a frame was refused; the session goes on |
//! | server → client | `{"type":"ended","exit_code":0,"reason":"exit","message":"exit"}` | the session ended (`exit_code` `null` when no process exit was seen) |
//!
//! After `ended` the server closes the socket with a code telling why
//! ([`close_code`]): 1000 exit, 1001 client closed, 4001 idle timeout,
//! 4002 lifetime reached, 4003 node link lost, 4004 audit or recording
//! failed, 4005 exec failed. A frame larger than allowed closes with 1009.
//! The server pings every [`PING_EVERY`] so that idle reverse proxies keep
//! the connection; browsers answer pings by themselves.
//!
//! # Routes
//!
//! - `POST /v1/containers/{id}/terminal` gives a single-use ticket for a
//!   terminal on the container (an admin or platform may name the user it
//!   is for; anyone else gets one for themselves).
//! - `GET /v1/containers/{id}/terminal/ws?ticket=…&cols=…&rows=…` opens the
//!   terminal with the ticket (browsers), or with the bearer token.
//! - `GET /v1/containers/{id}/exec/ws?command=…&command=…&tty=true&cols=…&rows=…`
//!   runs a command interactively (the CLI's `exec -it`), bearer token only.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use utoipa::ToSchema;

use super::params::{self, ValidPath};
use super::upgrade::{ServerSocket, upgrade};
use super::{ApiError, ApiResult, ApiState, Caller, ErrorBody, decode_json, query, tag};
use crate::session::{
    Action, EndReason, Session, SessionEnd, SessionInput, SessionOutput, SessionRequest,
    TicketScope, authorize, authorize_session, check_size,
};
use kisara_core::model::TtySize;
use kisara_core::{Error, Identity};

/// The largest frame a client may send, in bytes: keystrokes and pastes,
/// not file transfers.
pub const MAX_CLIENT_FRAME: usize = 64 << 10;

/// How often the server pings an open session socket.
pub const PING_EVERY: Duration = Duration::from_secs(20);

/// The stream byte of stdin frames.
const STDIN: u8 = 0;
/// The stream byte of stdout frames.
const STDOUT: u8 = 1;
/// The stream byte of stderr frames.
const STDERR: u8 = 2;

/// The optional body of `POST /v1/containers/{id}/terminal`: without one,
/// the ticket is for the caller.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({"user": {"username": "alice", "team": "team-7", "roles": ["player"]}})))]
pub(super) struct TicketRequest {
    /// The user the ticket is for, named by an admin or a platform.
    #[serde(default)]
    user: Option<TicketUser>,
}

/// A user a platform vouches for.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct TicketUser {
    /// The user's name, as audited and recorded.
    #[schema(min_length = 1)]
    username: String,
    /// The user's team: a player reaches the containers whose owner is it.
    #[serde(default)]
    team: Option<String>,
    /// The user's roles; `["player"]` when absent.
    #[serde(default = "player_roles")]
    roles: Vec<String>,
}

fn player_roles() -> Vec<String> {
    vec![crate::session::PLAYER_ROLE.to_owned()]
}

/// A terminal ticket as the API gives it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(examples(json!({
    "ticket": "9f2c6a1e0b7d4c3a8e5f1d2b6c9a0e7f3b1d5c8a2e4f6b0d",
    "expires_in_secs": 60,
    "websocket": "/v1/containers/4f1c2a9b7e3d/terminal/ws?ticket=9f2c6a1e0b7d4c3a8e5f1d2b6c9a0e7f3b1d5c8a2e4f6b0d",
    "page": "/terminal/?container=4f1c2a9b7e3d&ticket=9f2c6a1e0b7d4c3a8e5f1d2b6c9a0e7f3b1d5c8a2e4f6b0d"
})))]
struct TicketResponse {
    /// The single-use secret.
    ticket: String,
    /// How long it is valid, in seconds.
    expires_in_secs: u64,
    /// The socket to open with it, relative to the API's base.
    websocket: String,
    /// The web terminal page that opens it.
    page: String,
}

/// Gives a single-use, short-lived ticket for a terminal on the container,
/// for a browser to open the terminal page or socket with. An admin or a
/// platform may name the user it vouches for; anyone else gets a ticket for
/// themselves. The user must be allowed a session in the container now.
#[utoipa::path(
    post,
    path = "/v1/containers/{id}/terminal",
    operation_id = "issueTerminalTicket",
    tag = tag::SESSIONS,
    security(("bearer" = [])),
    params(params::ContainerPath),
    request_body(content = TicketRequest, description = "The user the ticket is for. The body may be left out (no `Content-Type`, empty): the ticket is then for the caller"),
    responses(
        (status = 201, description = "The ticket, with the socket and the page that take it", body = TicketResponse),
        (status = 403, description = "The caller may not name a user, or the user may not open sessions in this container", body = ErrorBody),
        (status = 404, description = "No such container", body = ErrorBody),
        (status = 503, description = "Its node is offline, or too many tickets are outstanding", body = ErrorBody),
        (status = 500, description = "The engine failed", body = ErrorBody),
    )
)]
pub(super) async fn issue_ticket(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    _query: params::NoQuery,
    ValidPath(container): ValidPath<params::ContainerPath>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    // The body is optional: none asks for a ticket for the caller.
    let request: TicketRequest = if body.is_empty() {
        TicketRequest::default()
    } else {
        decode_json(&body)?
    };
    let identity = match request.user {
        Some(user) => {
            authorize(&caller, Action::Manage)?;
            if user.username.trim().is_empty() {
                return Err(Error::invalid("user.username", "the user name is empty").into());
            }
            let mut identity = Identity::new(user.username);
            identity.roles = user.roles;
            if let Some(team) = user.team {
                identity = identity.with_team(team);
            }
            identity
        }
        None => caller,
    };
    // Refused now rather than when the browser comes.
    let (_, info) = state.sessions.server().inspect(&container).await?;
    authorize_session(&identity, &info)?;
    tracing::info!(user = %identity.username, %container, "terminal ticket issued");
    let ticket = state
        .tickets
        .issue(identity, TicketScope::Terminal(info.id.clone()))?;
    let id = info.id.as_str();
    Ok((
        StatusCode::CREATED,
        axum::Json(TicketResponse {
            websocket: format!("/v1/containers/{id}/terminal/ws?ticket={}", ticket.secret),
            page: format!("/terminal/?container={id}&ticket={}", ticket.secret),
            expires_in_secs: ticket.ttl.as_secs(),
            ticket: ticket.secret,
        }),
    ))
}

fn size_of(cols: Option<u16>, rows: Option<u16>) -> ApiResult<TtySize> {
    let size = TtySize {
        cols: cols.unwrap_or(80),
        rows: rows.unwrap_or(24),
    };
    Ok(check_size(size)?)
}

/// Opens a terminal in the container: a WebSocket (see the frame protocol
/// in the crate's README) running the session's shell, with the ticket
/// (browsers) or the bearer token. Every line typed is judged by the
/// terminal policy and audited; the session is recorded.
#[utoipa::path(
    get,
    path = "/v1/containers/{id}/terminal/ws",
    operation_id = "openTerminal",
    tag = tag::SESSIONS,
    security((), ("bearer" = [])),
    params(params::ContainerPath, params::TerminalParams),
    responses(
        (status = 101, description = "Switched to the WebSocket; the session runs"),
        (status = 400, description = "Not a WebSocket upgrade, or a bad size", body = ErrorBody),
        (status = 401, description = "No token and no ticket, or one refused (unknown, used, expired or for another container)", body = ErrorBody),
        (status = 403, description = "The user may not open sessions in this container, or a session hook refused", body = ErrorBody),
        (status = 404, description = "No such container", body = ErrorBody),
        (status = 409, description = "The container is not running", body = ErrorBody),
        (status = 503, description = "Its node is offline", body = ErrorBody),
        (status = 500, description = "The engine failed", body = ErrorBody),
    )
)]
pub(super) async fn terminal_socket(
    State(state): State<ApiState>,
    ValidPath(container): ValidPath<params::ContainerPath>,
    mut request: Request,
) -> Response {
    let (uri, headers, remote) = (
        request.uri().clone(),
        request.headers().clone(),
        remote_of(&request),
    );
    let opened = async {
        let params: params::TerminalParams = query(&uri)?;
        let size = size_of(params.cols, params.rows)?;
        let identity = match &params.ticket {
            Some(ticket) => state
                .tickets
                .redeem(ticket, &TicketScope::Terminal(container.clone()))?,
            None => Caller::authenticate(&state, &headers, remote).await?.0,
        };
        let mut session_request = SessionRequest::terminal(identity, container, size);
        session_request.remote = remote;
        ApiResult::Ok(state.sessions.open(session_request).await?)
    }
    .await;
    socket_for(opened, &mut request)
}

/// Runs a command in the container interactively over a WebSocket (the
/// CLI's `exec -it`): stdin up, stdout and stderr down, the exit code in
/// the `ended` frame. A one-shot command is judged by the command policy
/// before it runs; a denied one never runs.
#[utoipa::path(
    get,
    path = "/v1/containers/{id}/exec/ws",
    operation_id = "openExecSocket",
    tag = tag::SESSIONS,
    security(("bearer" = [])),
    params(params::ContainerPath, params::ExecSocketParams),
    responses(
        (status = 101, description = "Switched to the WebSocket; the command runs"),
        (status = 400, description = "Not a WebSocket upgrade, no command, or a bad size", body = ErrorBody),
        (status = 403, description = "The caller may not open sessions in this container, or the command policy denies the command", body = ErrorBody),
        (status = 404, description = "No such container", body = ErrorBody),
        (status = 409, description = "The container is not running", body = ErrorBody),
        (status = 503, description = "Its node is offline", body = ErrorBody),
        (status = 500, description = "The engine failed", body = ErrorBody),
    )
)]
pub(super) async fn exec_socket(
    State(state): State<ApiState>,
    ValidPath(container): ValidPath<params::ContainerPath>,
    mut request: Request,
) -> Response {
    let (uri, headers, remote) = (
        request.uri().clone(),
        request.headers().clone(),
        remote_of(&request),
    );
    let opened = async {
        let Caller(identity) = Caller::authenticate(&state, &headers, remote).await?;
        let params = params::ExecSocketParams::decode(&uri)?;
        let size = size_of(params.cols, params.rows)?;
        let mut session_request = SessionRequest::exec(identity, container, params.command);
        session_request.stdin = true;
        session_request.tty = params.tty.unwrap_or(false).then_some(size);
        session_request.remote = remote;
        ApiResult::Ok(state.sessions.open(session_request).await?)
    }
    .await;
    socket_for(opened, &mut request)
}

fn remote_of(request: &Request) -> Option<std::net::SocketAddr> {
    request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0)
}

/// Upgrades to the session's socket, or answers why it did not open.
fn socket_for(opened: ApiResult<Session>, request: &mut Request) -> Response {
    let session = match opened {
        Ok(session) => session,
        Err(error) => return error.into_response(),
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_CLIENT_FRAME))
        .max_frame_size(Some(MAX_CLIENT_FRAME));
    // A refused upgrade drops the session, which ends it as `client closed`.
    upgrade(request, config, "session socket", |socket| {
        serve(socket, session)
    })
    .unwrap_or_else(|error| ApiError::from(error).into_response())
}

/// A text frame from the client.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientFrame {
    Resize { cols: u16, rows: u16 },
    Eof,
}

/// A text frame to the client.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ServerFrame {
    Started {
        session: String,
        container: String,
        node: String,
        recording: Option<String>,
    },
    Error {
        code: &'static str,
        message: String,
    },
    Ended {
        exit_code: Option<i64>,
        reason: &'static str,
        message: String,
    },
}

impl ServerFrame {
    fn message(&self) -> Message {
        Message::text(serde_json::to_string(self).expect("frames serialize"))
    }

    fn refused(error: &Error) -> Self {
        Self::Error {
            code: error.kind().code(),
            message: error.to_string(),
        }
    }
}

/// What the reading half asks the writing half to send.
enum Notice {
    /// A frame, in order with the output.
    Frame(ServerFrame),
    /// Close the socket with this code and reason; the session ends.
    Close(u16, String),
}

/// The close code of a session that ended for `reason`.
pub fn close_code(reason: &EndReason) -> u16 {
    match reason {
        EndReason::Exit => 1000,
        EndReason::ClientClosed => 1001,
        EndReason::IdleTimeout(_) => 4001,
        EndReason::LifetimeReached(_) => 4002,
        EndReason::NodeLinkLost => 4003,
        EndReason::AuditFailed(_) | EndReason::RecordingFailed(_) => 4004,
        EndReason::Failed(_) => 4005,
    }
}

/// Pumps one session over its socket until either ends.
async fn serve(socket: ServerSocket, session: Session) {
    let Session {
        id,
        container,
        node,
        recording,
        input,
        output,
        ended,
    } = session;
    let (mut sink, stream) = socket.split();
    let started = ServerFrame::Started {
        session: id.to_string(),
        container: container.to_string(),
        node: node.to_string(),
        recording: recording.map(|r| r.to_string()),
    };
    if sink.send(started.message()).await.is_err() {
        return;
    }
    // Refusals found while reading go out with the output, in order.
    let (notices, notices_rx) = mpsc::channel(8);
    let up = std::pin::pin!(upstream(stream, input, notices));
    let down = std::pin::pin!(downstream(sink, output, notices_rx, ended));
    match futures::future::select(up, down).await {
        futures::future::Either::Left(((), down)) => down.await,
        futures::future::Either::Right(((), _up)) => {}
    }
}

/// Client → session: stdin bytes, resizes, end of stdin. Ends when the
/// client closes or breaks the socket, which ends the session.
async fn upstream(
    mut stream: futures::stream::SplitStream<ServerSocket>,
    input: mpsc::Sender<SessionInput>,
    notices: mpsc::Sender<Notice>,
) {
    while let Some(message) = stream.next().await {
        let frame = match message {
            Ok(Message::Binary(data)) => binary_input(&data),
            Ok(Message::Text(text)) => text_input(text.as_str()),
            Ok(Message::Close(_)) => return,
            Ok(_) => continue,
            Err(tokio_tungstenite::tungstenite::Error::Capacity(error)) => {
                tracing::debug!(%error, "frame too big");
                let _ = notices
                    .send(Notice::Close(
                        1009,
                        format!("frames are at most {MAX_CLIENT_FRAME} bytes"),
                    ))
                    .await;
                return;
            }
            Err(error) => {
                tracing::debug!(%error, "session socket read failed");
                return;
            }
        };
        match frame {
            Ok(frame) => {
                if input.send(frame).await.is_err() {
                    return;
                }
            }
            Err(error) => {
                tracing::debug!(%error, "frame refused");
                if notices
                    .send(Notice::Frame(ServerFrame::refused(&error)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

fn binary_input(data: &Bytes) -> kisara_core::Result<SessionInput> {
    match data.first() {
        Some(&STDIN) => Ok(SessionInput::Data(data.slice(1..))),
        Some(other) => Err(Error::invalid(
            "frame",
            format!(
                "a binary frame from the client must start with stream byte 0 (stdin), not {other}"
            ),
        )),
        None => Err(Error::invalid(
            "frame",
            "an empty binary frame: the first byte names the stream",
        )),
    }
}

fn text_input(text: &str) -> kisara_core::Result<SessionInput> {
    let frame: ClientFrame = serde_json::from_str(text).map_err(|error| {
        Error::invalid(
            "frame",
            format!(
                "{error} in text frame {:?}: expected {{\"type\":\"resize\",\"cols\":N,\"rows\":N}} or {{\"type\":\"eof\"}}",
                kisara_core::excerpt(text)
            ),
        )
    })?;
    match frame {
        ClientFrame::Resize { cols, rows } => {
            Ok(SessionInput::Resize(check_size(TtySize { rows, cols })?))
        }
        ClientFrame::Eof => Ok(SessionInput::Eof),
    }
}

/// Session → client: output, refusals, pings, then the end and the close.
async fn downstream(
    mut sink: futures::stream::SplitSink<ServerSocket, Message>,
    mut output: mpsc::Receiver<SessionOutput>,
    mut notices: mpsc::Receiver<Notice>,
    ended: tokio::sync::oneshot::Receiver<SessionEnd>,
) {
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        let message = tokio::select! {
            chunk = output.recv() => match chunk {
                Some(SessionOutput::Stdout(bytes)) => framed(STDOUT, &bytes),
                Some(SessionOutput::Stderr(bytes)) => framed(STDERR, &bytes),
                None => break,
            },
            Some(notice) = notices.recv() => match notice {
                Notice::Frame(frame) => frame.message(),
                Notice::Close(code, reason) => {
                    let close = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
                    let _ = sink.send(Message::Close(Some(close))).await;
                    return;
                }
            },
            _ = ping.tick() => Message::Ping(Bytes::new()),
        };
        if sink.send(message).await.is_err() {
            return;
        }
    }
    let end = ended.await.unwrap_or(SessionEnd {
        exit_code: None,
        reason: EndReason::Failed("the session ended without saying how".into()),
    });
    let frame = ServerFrame::Ended {
        exit_code: end.exit_code,
        reason: end.reason.code(),
        message: end.reason.to_string(),
    };
    let _ = sink.send(frame.message()).await;
    let close = CloseFrame {
        code: CloseCode::from(close_code(&end.reason)),
        reason: end.reason.code().into(),
    };
    let _ = sink.send(Message::Close(Some(close))).await;
    let _ = sink.close().await;
}

fn framed(stream: u8, bytes: &[u8]) -> Message {
    let mut frame = Vec::with_capacity(bytes.len() + 1);
    frame.push(stream);
    frame.extend_from_slice(bytes);
    Message::Binary(frame.into())
}
