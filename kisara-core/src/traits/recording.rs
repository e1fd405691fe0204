//! [`RecordingStore`]: terminal sessions recorded as timed events (output,
//! input, resizes, markers) and played back by id.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::runtime::BoxStream;
use crate::model::{ContainerId, SessionId, Timestamp, TtySize};
use crate::{Error, Result};

/// A recording, by the id its store generated: 32 lowercase hex digits (128
/// random bits).
///
/// Only [`RecordingId::generate`] and [`RecordingId::parse`] make one, so an
/// id is never a path: `../x`, `a/b` or an empty string are
/// [`Error::Invalid`] before any store sees them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RecordingId(String);

impl RecordingId {
    /// How many hex digits an id has.
    pub const LEN: usize = 32;

    /// A fresh random id (from [`crate::random`]).
    pub fn generate() -> Self {
        let high = crate::random::random_u64();
        let low = crate::random::random_u64();
        Self(format!("{high:016x}{low:016x}"))
    }

    /// Validates an id given by a client.
    pub fn parse(id: &str) -> Result<Self> {
        let valid = id.len() == Self::LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !valid {
            return Err(Error::invalid(
                "recording id",
                format!(
                    "{id:?} is not {} lowercase hex digits; recordings are opened by the id \
                     their store generated, never by a file name",
                    Self::LEN
                ),
            ));
        }
        Ok(Self(id.to_owned()))
    }

    /// The id as a string (safe as a file name or URL segment).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RecordingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for RecordingId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl TryFrom<String> for RecordingId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::parse(&s)
    }
}

impl From<RecordingId> for String {
    fn from(id: RecordingId) -> Self {
        id.0
    }
}

/// What a new recording is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordingRequest {
    /// The session recorded.
    pub session: SessionId,
    /// The container the session runs in.
    pub container: ContainerId,
    /// Who is recorded.
    pub username: String,
    /// The terminal size at the start.
    pub size: TtySize,
    /// A title for players.
    pub title: Option<String>,
    /// Environment worth keeping for playback (`SHELL`, `TERM`).
    pub env: BTreeMap<String, String>,
}

/// What happened at one moment of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventData {
    /// Bytes the terminal showed.
    Output(Bytes),
    /// Bytes the user typed.
    Input(Bytes),
    /// The terminal was resized.
    Resize(TtySize),
    /// A labelled point, such as an audited command.
    Marker(String),
}

/// One event of a recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingEvent {
    /// Time since the recording started, kept to the microsecond.
    pub time: Duration,
    /// What happened.
    pub data: EventData,
}

/// A recording's metadata, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(examples(json!({"id": "5d1f0c9a3b7e4f2a8c6d0e1b9a7f3c5d", "session": "c0ffee0123456789", "container": "4f1c2a9b7e3d", "username": "alice", "size": {"rows": 24, "cols": 80}, "title": "alice in 4f1c2a9b7e3d", "env": {"SHELL": "/bin/sh", "TERM": "xterm-256color"}, "started": 1_767_787_200_000_u64, "ended": 1_767_787_260_000_u64, "end_reason": "exit", "size_bytes": 2048, "truncated": false}))))]
pub struct RecordingInfo {
    /// Its id.
    pub id: RecordingId,
    /// The session recorded.
    pub session: SessionId,
    /// The container.
    pub container: ContainerId,
    /// Who was recorded.
    pub username: String,
    /// The terminal size at the start.
    pub size: TtySize,
    /// The title.
    pub title: Option<String>,
    /// Environment kept for playback.
    pub env: BTreeMap<String, String>,
    /// When it started.
    pub started: Timestamp,
    /// When it was finished; `None` while recording (or after a crash).
    pub ended: Option<Timestamp>,
    /// Why it ended, as given to [`RecordingWriter::finish`].
    pub end_reason: Option<String>,
    /// Bytes the store keeps for it.
    pub size_bytes: u64,
    /// Whether the store's size cap cut it short.
    pub truncated: bool,
}

impl RecordingInfo {
    /// The metadata of a recording of `request` starting now under `id`:
    /// what every store's [`RecordingStore::create`] begins with.
    pub fn starting(id: RecordingId, request: RecordingRequest) -> Self {
        Self {
            id,
            session: request.session,
            container: request.container,
            username: request.username,
            size: request.size,
            title: request.title,
            env: request.env,
            started: Timestamp::now(),
            ended: None,
            end_reason: None,
            size_bytes: 0,
            truncated: false,
        }
    }
}

/// Which recordings to list; every field set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecordingFilter {
    /// Of this container.
    pub container: Option<ContainerId>,
    /// Of this user.
    pub username: Option<String>,
    /// Started at or after this time.
    pub since: Option<Timestamp>,
    /// Started before this time.
    pub until: Option<Timestamp>,
}

impl RecordingFilter {
    /// Whether `info` passes the filter.
    pub fn matches(&self, info: &RecordingInfo) -> bool {
        self.container.as_ref().is_none_or(|c| *c == info.container)
            && self.username.as_ref().is_none_or(|u| *u == info.username)
            && self.since.is_none_or(|since| info.started >= since)
            && self.until.is_none_or(|until| info.started < until)
    }
}

/// A recording opened for playback: its metadata and its events.
pub struct Recording {
    /// Its metadata, as [`RecordingStore::list`] gives it.
    pub info: RecordingInfo,
    /// Its events in order; ends after the last whole event kept.
    pub events: BoxStream<RecordingEvent>,
}

impl fmt::Debug for Recording {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recording")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// What a store does beyond what every store does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordingCapabilities {
    /// Output and input come back byte for byte, whatever the bytes. When
    /// false the store keeps text: valid UTF-8 comes back exactly (in
    /// events that concatenate to what was appended), and each invalid
    /// sequence becomes U+FFFD as [`String::from_utf8_lossy`] replaces it.
    pub raw_bytes: bool,
    /// The size cap per recording, in the unit of
    /// [`RecordingInfo::size_bytes`], if the store has one.
    pub size_cap: Option<u64>,
}

/// The marker a store appends when its size cap ends a recording.
pub fn truncation_marker(cap: u64) -> String {
    format!("recording truncated: size cap {cap} bytes reached")
}

/// Appends to one recording; from [`RecordingStore::create`].
///
/// # Contract
///
/// - Event times never go backwards: an event earlier than the previous one
///   is [`Error::Invalid`].
/// - When the size cap ([`RecordingCapabilities::size_cap`]) would be
///   passed, the store keeps what fits, appends the marker
///   [`truncation_marker`], sets [`RecordingInfo::truncated`] and keeps
///   nothing more: later appends return `Ok` (a session is never failed by
///   its recording) and `finish` still records the end.
/// - A store may split one event's bytes into several consecutive events of
///   the same kind and time; concatenated they are what was appended.
/// - Events appended are readable through [`RecordingStore::open`] within a
///   second, before the recording is finished.
/// - `finish` records the end time and reason and returns the final
///   metadata. Appending or finishing after `finish` is [`Error::Conflict`]
///   naming the recording: a second end would overwrite the first.
/// - Dropping a writer without `finish` leaves what was appended readable,
///   with `ended` unset, as after a crash.
#[async_trait]
pub trait RecordingWriter: Send + fmt::Debug {
    /// The recording's id.
    fn id(&self) -> &RecordingId;

    /// Appends one event.
    async fn append(&mut self, event: RecordingEvent) -> Result<()>;

    /// Ends the recording, giving why (`exit`, `client closed`).
    async fn finish(&mut self, reason: &str) -> Result<RecordingInfo>;
}

/// Keeps session recordings and plays them back by id.
///
/// # Contract
///
/// - `create` generates a fresh [`RecordingId`], unique in the store, and
///   records the start time; the recording is listed from then on.
/// - `open` of an id the store does not hold is [`Error::NotFound`] naming
///   it; ids are validated before they reach a store, so no id names
///   anything outside it.
/// - Events come back in the order appended, with their times and bytes
///   (see [`RecordingCapabilities::raw_bytes`] for what exact means).
/// - `list` returns every recording matching the filter, oldest first, and
///   reads metadata only, not whole recordings.
/// - `export` gives an asciicast v2 file holding the same events as `open`.
#[async_trait]
pub trait RecordingStore: Send + Sync + fmt::Debug {
    /// What this store can do.
    fn capabilities(&self) -> RecordingCapabilities;

    /// Starts a recording.
    async fn create(&self, request: RecordingRequest) -> Result<Box<dyn RecordingWriter>>;

    /// Opens a recording for playback.
    async fn open(&self, id: &RecordingId) -> Result<Recording>;

    /// Lists recordings matching `filter`, oldest first.
    async fn list(&self, filter: &RecordingFilter) -> Result<Vec<RecordingInfo>>;

    /// The recording as an asciicast v2 file, for download and players.
    /// By default encoded from [`open`](Self::open) with
    /// [`crate::asciicast::encode`]; a store that keeps `.cast` files gives
    /// its file as it is.
    async fn export(&self, id: &RecordingId) -> Result<Bytes> {
        Ok(Bytes::from(
            crate::asciicast::encode(self.open(id).await?).await?,
        ))
    }
}

/// Checks that `event` does not go back in time after `previous`, naming
/// both times and the recording.
pub fn check_event_order(
    id: &RecordingId,
    previous: Duration,
    event: &RecordingEvent,
) -> Result<()> {
    if event.time < previous {
        return Err(Error::invalid(
            "recording event",
            format!(
                "event at {:?} comes before the previous one at {previous:?} in recording {id}",
                event.time
            ),
        ));
    }
    Ok(())
}

/// The [`Error::Conflict`] of a write to a finished recording.
pub fn already_finished(id: &RecordingId) -> Error {
    Error::conflict(format!("recording {id} is already finished"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_hex_never_paths() {
        let id = RecordingId::generate();
        assert_eq!(RecordingId::parse(id.as_str()).unwrap(), id);
        assert_ne!(RecordingId::generate(), id);
        for bad in [
            "",
            "../x",
            "../../../../etc/passwd",
            "0123456789abcdef0123456789abcde/",
            "0123456789ABCDEF0123456789ABCDEF",
            "0123456789abcdef0123456789abcdef0",
        ] {
            let err = RecordingId::parse(bad).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::Invalid);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        assert!(serde_json::from_str::<RecordingId>("\"../x\"").is_err());
    }
}
