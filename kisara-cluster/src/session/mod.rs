//! The session engine: the one path into a container.
//!
//! One-shot execs, web terminals, the CLI and SSH all open a [`Session`]
//! here, and every session goes through the same steps, each on one of
//! kisara-core's traits so an embedder plugs in its own:
//!
//! 1. the container is found and the identity **authorised** on it
//!    ([`access`]: admins and platforms anywhere, players on their team's
//!    containers only);
//! 2. the [`ConfigProvider`] gives the session's config (shell, idle
//!    timeout, recording, environment), or refuses;
//! 3. `on_session_start` hooks may refuse it;
//! 4. the [`AuditSink`] gets the start; a one-shot command is judged by the
//!    [`CommandPolicy`] before it runs, and a denied one never runs;
//! 5. the [`RecordingStore`] records output, input and resizes;
//! 6. while it runs, a terminal's input goes through the
//!    [`TerminalPolicy`]'s gate, which holds each line's Enter until the
//!    line is judged and audited;
//! 7. it ends on exit, when the client leaves, after the idle timeout or
//!    the maximum lifetime, or when the node's link is lost; the end, with
//!    its exit code and reason, is audited, the recording finished and the
//!    `on_session_end` hooks called.
//!
//! An audit event or a recording that cannot be kept ends the session: no
//! access goes unaudited.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> kisara_core::Result<()> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use kisara_cluster::Server;
//! use kisara_cluster::session::{SessionEngine, SessionRequest, PLAYER_ROLE};
//! use kisara_core::builtin::PrefixPolicy;
//! use kisara_core::memory::{MemoryAuditSink, MemoryRecordingStore, MemoryRuntime, MemorySubnetAllocator};
//! use kisara_core::model::{ContainerSpec, ImageRef, LaunchRequest, NodeCapacity, NodeId};
//! use kisara_core::Identity;
//!
//! let image = ImageRef::parse("busybox:latest")?;
//! let runtime = MemoryRuntime::new();
//! runtime.add_image(&image, None);
//! let server = Server::builder(Arc::new(MemorySubnetAllocator::new("10.128.0.0/16".parse().unwrap(), 24)?)).build();
//! let capacity = NodeCapacity { max_containers: 10, bandwidth_in: 1 << 20, bandwidth_out: 1 << 20 };
//! server.connect_node(NodeId::new("n1")?, capacity, Arc::new(runtime)).await?;
//! let mut spec = ContainerSpec::new(image);
//! spec.owner = Some("red".into());
//! let launched = server.launch_container(LaunchRequest::new(spec), Duration::from_secs(5)).await?;
//!
//! let engine = SessionEngine::builder(server)
//!     .with_command_policy(Arc::new(PrefixPolicy::allow_by_default().deny(["rm"])))
//!     .with_audit(Arc::new(MemoryAuditSink::new()))
//!     .with_recordings(Arc::new(MemoryRecordingStore::new()))
//!     .build();
//! let alice = Identity::new("alice").with_role(PLAYER_ROLE).with_team("red");
//! let request = SessionRequest::exec(alice.clone(), launched.container.id.clone(), ["echo", "hi"]);
//! let result = engine.exec(request).await?;
//! assert_eq!((result.stdout.as_slice(), result.exit_code), (&b"hi\n"[..], 0));
//! let denied = engine.exec(SessionRequest::exec(alice, launched.container.id, ["rm", "-rf", "/"])).await;
//! assert!(denied.unwrap_err().to_string().contains("denied"));
//! # Ok(()) }
//! ```

pub mod access;
mod run;
pub mod ticket;

pub use access::{ADMIN_ROLE, Action, PLATFORM_ROLE, PLAYER_ROLE, authorize, authorize_session};
pub use ticket::{Ticket, TicketBook, TicketScope};

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::Server;
use kisara_core::model::{ContainerId, ContainerInfo, ExecSpec, NodeId, SessionId, TtySize};
use kisara_core::{
    AuditEvent, AuditEventKind, AuditLog, AuditSink, CommandContext, CommandPolicy, ConfigProvider,
    ConfigRequest, Error, ExecResult, Identity, RecordingId, RecordingRequest, RecordingStore,
    Result, SessionConfig, SessionKind, SessionTarget, TerminalPolicy,
};

/// The smallest and largest terminal side accepted, in rows or columns.
pub const TTY_SIDE: std::ops::RangeInclusive<u16> = 1..=1000;

/// The terminal size a session without one is recorded at.
const DEFAULT_SIZE: TtySize = TtySize { rows: 24, cols: 80 };

/// How many chunks wait for a client that reads slowly, per session; a
/// client that stops reading stalls only its own session, and the engine
/// holds at most this many chunks (of at most the link's chunk size) for it.
const OUTPUT_QUEUE: usize = 16;

/// How many input messages a session takes ahead.
const INPUT_QUEUE: usize = 64;

/// Limits every session gets unless its config says otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// End a session after this long without input or output, unless its
    /// config gives its own idle timeout.
    pub idle_timeout: Option<Duration>,
    /// End every session after this long, whatever it does.
    pub max_lifetime: Duration,
    /// The most output a one-shot exec collects, per stream, in bytes.
    pub max_exec_output: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            idle_timeout: Some(Duration::from_secs(30 * 60)),
            max_lifetime: Duration::from_secs(8 * 3600),
            max_exec_output: 16 << 20,
        }
    }
}

/// What a client asks for when it opens a session.
#[derive(Debug, Clone)]
pub struct SessionRequest {
    /// Who, as the authenticator said.
    pub identity: Identity,
    /// The container asked for; `None` lets the config provider choose
    /// (SSH without a target).
    pub container: Option<ContainerId>,
    /// How the client reaches it.
    pub kind: SessionKind,
    /// From where.
    pub remote: Option<SocketAddr>,
    /// The command of an exec; a terminal runs the config's shell when
    /// `None`.
    pub command: Option<Vec<String>>,
    /// A terminal of this size.
    pub tty: Option<TtySize>,
    /// Keep stdin open for the client.
    pub stdin: bool,
    /// Environment variables on top of the config's.
    pub env: BTreeMap<String, String>,
}

impl SessionRequest {
    /// A one-shot exec of `command` in `container` without stdin or TTY.
    pub fn exec<S: Into<String>>(
        identity: Identity,
        container: ContainerId,
        command: impl IntoIterator<Item = S>,
    ) -> Self {
        Self {
            identity,
            container: Some(container),
            kind: SessionKind::Exec,
            remote: None,
            command: Some(command.into_iter().map(Into::into).collect()),
            tty: None,
            stdin: false,
            env: BTreeMap::new(),
        }
    }

    /// An interactive terminal in `container` of `size`, running the
    /// config's shell.
    pub fn terminal(identity: Identity, container: ContainerId, size: TtySize) -> Self {
        Self {
            identity,
            container: Some(container),
            kind: SessionKind::Terminal,
            remote: None,
            command: None,
            tty: Some(size),
            stdin: true,
            env: BTreeMap::new(),
        }
    }
}

/// What a client sends into a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionInput {
    /// Bytes for stdin (keystrokes, in a terminal).
    Data(Bytes),
    /// The client's terminal changed size.
    Resize(TtySize),
    /// End of stdin.
    Eof,
}

/// What a session sends to its client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionOutput {
    /// Bytes of stdout, or of the terminal.
    Stdout(Bytes),
    /// Bytes of stderr (never with a TTY).
    Stderr(Bytes),
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// The process exited.
    Exit,
    /// The client went away.
    ClientClosed,
    /// Nothing came in or out for the idle timeout.
    IdleTimeout(Duration),
    /// The session reached its maximum lifetime.
    LifetimeReached(Duration),
    /// The link to the container's node was lost.
    NodeLinkLost,
    /// An audit event could not be kept.
    AuditFailed(String),
    /// The recording could not be kept.
    RecordingFailed(String),
    /// The exec failed on the node.
    Failed(String),
}

impl EndReason {
    /// A stable code for clients (`exit`, `idle_timeout`, ...).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Exit => "exit",
            Self::ClientClosed => "client_closed",
            Self::IdleTimeout(_) => "idle_timeout",
            Self::LifetimeReached(_) => "lifetime_reached",
            Self::NodeLinkLost => "node_link_lost",
            Self::AuditFailed(_) => "audit_failed",
            Self::RecordingFailed(_) => "recording_failed",
            Self::Failed(_) => "failed",
        }
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exit => f.write_str("exit"),
            Self::ClientClosed => f.write_str("client closed"),
            Self::IdleTimeout(after) => write!(
                f,
                "idle timeout ({}s without input or output)",
                after.as_secs()
            ),
            Self::LifetimeReached(after) => {
                write!(f, "session lifetime reached ({}s)", after.as_secs())
            }
            Self::NodeLinkLost => f.write_str("node link lost"),
            Self::AuditFailed(why) => write!(f, "audit failed: {why}"),
            Self::RecordingFailed(why) => write!(f, "recording failed: {why}"),
            Self::Failed(why) => write!(f, "exec failed: {why}"),
        }
    }
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEnd {
    /// The exit code, when the process exited.
    pub exit_code: Option<i64>,
    /// Why.
    pub reason: EndReason,
}

/// An open session: send into it, read from it, and learn how it ended.
///
/// Dropping [`Session::input`] ends the session as `client closed`;
/// [`Session::output`] ends when the session does, then [`Session::ended`]
/// tells how.
#[derive(Debug)]
pub struct Session {
    /// Its id, as audited.
    pub id: SessionId,
    /// The container it runs in.
    pub container: ContainerId,
    /// The node of the container.
    pub node: NodeId,
    /// Its recording, when recorded.
    pub recording: Option<RecordingId>,
    /// Input to the session.
    pub input: mpsc::Sender<SessionInput>,
    /// Output of the session, bounded: a client that stops reading stalls
    /// this session only.
    pub output: mpsc::Receiver<SessionOutput>,
    /// How it ended; sent once the output has ended.
    pub ended: oneshot::Receiver<SessionEnd>,
}

/// Called with a session about to start; an error refuses it, and its
/// message reaches the client.
pub type StartHook = Arc<dyn Fn(&SessionInfo) -> Result<()> + Send + Sync>;
/// Called with a session that ended and how.
pub type EndHook = Arc<dyn Fn(&SessionInfo, &SessionEnd) + Send + Sync>;

/// What hooks learn about a session.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// Its id.
    pub id: SessionId,
    /// Who.
    pub identity: Identity,
    /// How.
    pub kind: SessionKind,
    /// The container.
    pub container: ContainerId,
    /// The container's node.
    pub node: NodeId,
    /// From where.
    pub remote: Option<SocketAddr>,
}

/// Builds a [`SessionEngine`].
#[must_use]
pub struct SessionEngineBuilder {
    engine: Engine,
}

impl SessionEngineBuilder {
    /// Sessions get their config from `provider` (default: every session a
    /// recorded `/bin/sh` in the container asked for).
    pub fn with_config(mut self, provider: Arc<dyn ConfigProvider>) -> Self {
        self.engine.config = provider;
        self
    }

    /// One-shot commands are judged by `policy` (default: all allowed).
    pub fn with_command_policy(mut self, policy: Arc<dyn CommandPolicy>) -> Self {
        self.engine.commands = policy;
        self
    }

    /// Terminal input is gated and judged by `policy` (default: no gate,
    /// input goes through unjudged; only the start and end are audited).
    pub fn with_terminal_policy(mut self, policy: Arc<dyn TerminalPolicy>) -> Self {
        self.engine.terminals = Some(policy);
        self
    }

    /// Audit events go to `sink` (default: an in-memory sink, which is
    /// also the engine's audit log). Name the log that reads `sink` back
    /// with [`with_audit_log`](Self::with_audit_log); without one the API
    /// answers audit queries with 501.
    pub fn with_audit(mut self, sink: Arc<dyn AuditSink>) -> Self {
        self.engine.audit = sink;
        self.engine.audit_log = None;
        self
    }

    /// Audit queries and recording searches read `log`: the reader of the
    /// sink given to [`with_audit`](Self::with_audit).
    pub fn with_audit_log(mut self, log: Arc<dyn AuditLog>) -> Self {
        self.engine.audit_log = Some(log);
        self
    }

    /// Recordings go to `store` (default: an in-memory store).
    pub fn with_recordings(mut self, store: Arc<dyn RecordingStore>) -> Self {
        self.engine.recordings = store;
        self
    }

    /// Default limits.
    pub fn with_limits(mut self, limits: SessionLimits) -> Self {
        self.engine.limits = limits;
        self
    }

    /// Calls `hook` before each session starts; an error refuses it.
    pub fn on_session_start(
        mut self,
        hook: impl Fn(&SessionInfo) -> Result<()> + Send + Sync + 'static,
    ) -> Self {
        self.engine.on_start.push(Arc::new(hook));
        self
    }

    /// Calls `hook` after each session ended.
    pub fn on_session_end(
        mut self,
        hook: impl Fn(&SessionInfo, &SessionEnd) + Send + Sync + 'static,
    ) -> Self {
        self.engine.on_end.push(Arc::new(hook));
        self
    }

    /// The engine.
    pub fn build(self) -> SessionEngine {
        SessionEngine(Arc::new(self.engine))
    }
}

struct Engine {
    server: Server,
    config: Arc<dyn ConfigProvider>,
    commands: Arc<dyn CommandPolicy>,
    terminals: Option<Arc<dyn TerminalPolicy>>,
    audit: Arc<dyn AuditSink>,
    audit_log: Option<Arc<dyn AuditLog>>,
    recordings: Arc<dyn RecordingStore>,
    limits: SessionLimits,
    on_start: Vec<StartHook>,
    on_end: Vec<EndHook>,
}

/// The session engine; cheap to clone. See the [module docs](self).
#[derive(Clone)]
pub struct SessionEngine(Arc<Engine>);

impl fmt::Debug for SessionEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionEngine")
            .field("config", &self.0.config)
            .field("commands", &self.0.commands)
            .field("terminals", &self.0.terminals)
            .field("audit", &self.0.audit)
            .field("recordings", &self.0.recordings)
            .field("limits", &self.0.limits)
            .finish_non_exhaustive()
    }
}

/// Gives every session a recorded `/bin/sh` in the container it asked for.
#[derive(Debug)]
struct AskedContainer;

#[async_trait::async_trait]
impl ConfigProvider for AskedContainer {
    async fn session_config(&self, request: &ConfigRequest) -> Result<SessionConfig> {
        let container = request.requested_container.clone().ok_or_else(|| {
            Error::invalid(
                "container",
                "no container named: name the container to open the session in",
            )
        })?;
        Ok(SessionConfig::new(SessionTarget::Container { container }))
    }
}

/// Allows every command.
#[derive(Debug)]
struct AllowAll;

#[async_trait::async_trait]
impl CommandPolicy for AllowAll {
    async fn check(
        &self,
        _context: &CommandContext,
        command: &[String],
    ) -> Result<kisara_core::PolicyDecision> {
        if command.is_empty() {
            return Err(Error::invalid(
                "command",
                "the command is empty: name a program to run",
            ));
        }
        Ok(kisara_core::PolicyDecision::Allow)
    }
}

impl SessionEngine {
    /// An engine over `server` with the defaults each `with_` method names.
    pub fn builder(server: Server) -> SessionEngineBuilder {
        let memory = Arc::new(kisara_core::memory::MemoryAuditSink::new());
        SessionEngineBuilder {
            engine: Engine {
                server,
                config: Arc::new(AskedContainer),
                commands: Arc::new(AllowAll),
                terminals: None,
                audit: memory.clone(),
                audit_log: Some(memory),
                recordings: Arc::new(kisara_core::memory::MemoryRecordingStore::new()),
                limits: SessionLimits::default(),
                on_start: Vec::new(),
                on_end: Vec::new(),
            },
        }
    }

    /// The cluster it opens sessions in.
    pub fn server(&self) -> &Server {
        &self.0.server
    }

    /// The store its recordings go to.
    pub fn recordings(&self) -> &Arc<dyn RecordingStore> {
        &self.0.recordings
    }

    /// The log its audit events are read back from, when it has one.
    pub fn audit_log(&self) -> Option<&Arc<dyn AuditLog>> {
        self.0.audit_log.as_ref()
    }

    /// Opens a session; see the [module docs](self) for the steps. Errors:
    /// [`Error::PermissionDenied`] when the identity may not (naming why,
    /// a denied command's rule included), [`Error::NotFound`] for a missing
    /// container, [`Error::Invalid`] for a bad request.
    pub async fn open(&self, request: SessionRequest) -> Result<Session> {
        let id = SessionId::new(RecordingId::generate().as_str());
        let span = tracing::info_span!("session", session = %id, user = %request.identity.username, kind = ?request.kind);
        let _entered = span.enter();
        drop(_entered);
        run::open(self.0.clone(), id, request, span).await
    }

    /// Runs a one-shot command to its end through [`open`](Self::open):
    /// authorised, judged, audited and recorded like any session, its
    /// output collected (up to [`SessionLimits::max_exec_output`] per
    /// stream).
    pub async fn exec(&self, request: SessionRequest) -> Result<ExecResult> {
        let limit = self.0.limits.max_exec_output;
        let mut session = self.open(request).await?;
        let mut result = ExecResult::default();
        while let Some(chunk) = session.output.recv().await {
            let (buffer, bytes, stream) = match &chunk {
                SessionOutput::Stdout(bytes) => (&mut result.stdout, bytes, "stdout"),
                SessionOutput::Stderr(bytes) => (&mut result.stderr, bytes, "stderr"),
            };
            if buffer.len() + bytes.len() > limit {
                return Err(Error::invalid(
                    "command",
                    format!(
                        "the exec wrote more than {limit} bytes to {stream}; open an interactive session to stream it"
                    ),
                ));
            }
            buffer.extend_from_slice(bytes);
        }
        let end = session
            .ended
            .await
            .map_err(|_| Error::unavailable("the session ended without saying how"))?;
        match (end.reason, end.exit_code) {
            (EndReason::Exit, Some(code)) => {
                result.exit_code = code;
                Ok(result)
            }
            (reason, _) => Err(Error::unavailable(format!(
                "exec in container {} ended without an exit code: {reason}",
                session.container
            ))),
        }
    }
}

/// The context commands in `container` are judged in.
fn command_context(identity: &Identity, container: &ContainerInfo) -> CommandContext {
    CommandContext {
        identity: identity.clone(),
        container: container.id.clone(),
        owner: container.owner().map(str::to_owned),
        module: container.module().map(str::to_owned),
    }
}

/// Checks a terminal size a client gave.
pub fn check_size(size: TtySize) -> Result<TtySize> {
    if TTY_SIDE.contains(&size.rows) && TTY_SIDE.contains(&size.cols) {
        return Ok(size);
    }
    Err(Error::invalid(
        "terminal size",
        format!(
            "{}x{} (columns x rows): each must be within {}..={}",
            size.cols,
            size.rows,
            TTY_SIDE.start(),
            TTY_SIDE.end()
        ),
    ))
}

/// Builds one audit event of session `id`.
fn audit_event(
    id: &SessionId,
    identity: &Identity,
    container: &ContainerId,
    kind: AuditEventKind,
) -> AuditEvent {
    AuditEvent {
        time: kisara_core::model::Timestamp::now(),
        session: id.clone(),
        username: identity.username.clone(),
        container: Some(container.clone()),
        kind,
    }
}

/// The exec a session runs.
fn exec_spec(request: &SessionRequest, config: &SessionConfig, command: Vec<String>) -> ExecSpec {
    let mut env = config.env.clone();
    env.extend(request.env.clone());
    if request.tty.is_some() {
        env.entry("TERM".into())
            .or_insert_with(|| "xterm-256color".into());
    }
    ExecSpec {
        command,
        tty: request.tty.is_some(),
        stdin: request.stdin,
        size: request.tty,
        env,
        user: None,
        workdir: None,
    }
}

/// The recording a session starts.
fn recording_request(
    id: &SessionId,
    identity: &Identity,
    container: &ContainerId,
    spec: &ExecSpec,
) -> RecordingRequest {
    let mut env = BTreeMap::new();
    env.insert(
        "TERM".to_owned(),
        spec.env
            .get("TERM")
            .cloned()
            .unwrap_or_else(|| "xterm-256color".into()),
    );
    if let Some(shell) = spec.command.first() {
        env.insert("SHELL".to_owned(), shell.clone());
    }
    RecordingRequest {
        session: id.clone(),
        container: container.clone(),
        username: identity.username.clone(),
        size: spec.size.unwrap_or(DEFAULT_SIZE),
        title: Some(format!("{} in {}", identity.username, container)),
        env,
    }
}
