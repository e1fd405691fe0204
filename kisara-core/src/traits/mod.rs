//! The backend traits. Each is object safe, used as `Arc<dyn Trait>`, and
//! states its guarantees in a `# Contract` section that the conformance
//! suites in `testing` check.

pub mod audit;
pub mod auth;
pub mod gate;
pub mod placement;
pub mod recording;
pub mod runtime;
pub mod subnet;
pub mod tunnel;

pub use audit::{
    AuditEvent, AuditEventKind, AuditLog, AuditPage, AuditQuery, AuditSink, CommandContext,
    CommandPolicy, PolicyDecision, QueryOrder, SessionKind, StoredEvent,
};
pub use auth::{
    Authenticator, ConfigProvider, ConfigRequest, Credentials, Identity, SessionConfig,
    SessionTarget, TEAM_KEY, roles,
};
pub use gate::{CompletedLine, GateAction, InputGate, TerminalPolicy, UncertainMode};
pub use placement::Placement;
pub use recording::{
    EventData, Recording, RecordingCapabilities, RecordingEvent, RecordingFilter, RecordingId,
    RecordingInfo, RecordingRequest, RecordingStore, RecordingWriter,
};
pub use runtime::{
    BoxStream, ByteStream, ContainerRuntime, EventStream, ExecResult, ExecSession, ProgressStream,
    RuntimeCapabilities, bytes_stream, collect_bytes, drain_progress, exec_to_end,
};
pub use subnet::{SubnetAllocator, SubnetUsage};
pub use tunnel::Tunnel;
