//! [`CastStore`]: recordings as asciicast v2 files under one directory.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use kisara_core::model::Timestamp;
use kisara_core::sync::{Mutex, lock};
use kisara_core::traits::recording::{already_finished, check_event_order, truncation_marker};
use kisara_core::{
    Error, EventData, Recording, RecordingCapabilities, RecordingEvent, RecordingFilter,
    RecordingId, RecordingInfo, RecordingRequest, RecordingStore, RecordingWriter,
};

use super::{CastReader, CastReaderOptions};
use crate::AuditError;
use kisara_core::asciicast::{Utf8Stream, header_line, push_event_line};

/// The most input bytes one event line carries: longer output is split into
/// several events of the same time, so that a line stays below 400 KiB even
/// when every byte needs a six-byte escape.
const MAX_EVENT_TEXT: usize = 64 * 1024;

/// Room kept below the cap for the truncation marker's line (its time, the
/// label naming a cap of up to 20 digits, the JSON around them).
const MARKER_LINE_ROOM: u64 = 160;

/// Written to the file once this much is buffered, between flushes.
const WRITE_BATCH: usize = 256 * 1024;

/// Options of a [`CastStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CastStoreOptions {
    /// The most bytes one `.cast` file may hold; reaching it ends the
    /// recording with a marker. At least 4096. Default 64 MiB.
    pub size_cap: u64,
    /// How long appended events may wait in memory before they are written
    /// to the file (where a reader sees them). At most 1 s, the default.
    pub flush_interval: Duration,
    /// Limits when reading recordings back.
    pub reader: CastReaderOptions,
}

impl Default for CastStoreOptions {
    fn default() -> Self {
        Self {
            size_cap: 64 << 20,
            flush_interval: Duration::from_secs(1),
            reader: CastReaderOptions::default(),
        }
    }
}

/// A [`RecordingStore`] of asciicast v2 files, playable by `asciinema` and
/// asciinema-player.
///
/// # Files
///
/// Each recording is two files in the store's directory, named only by its
/// generated id: `ID.cast`, the asciicast v2 recording, and `ID.json`, its
/// [`RecordingInfo`] (rewritten atomically when it starts, when the cap
/// truncates it, and when it ends). Listing reads the small `.json` files
/// and the `.cast` files' sizes, never the recordings themselves. Files
/// whose names are not `ID.json` are ignored.
///
/// # Text
///
/// asciicast stores text, so output and input are decoded as UTF-8 as
/// they stream: a character cut between two appends is completed by the
/// next one, and each invalid sequence becomes U+FFFD as
/// [`String::from_utf8_lossy`] replaces it. Valid UTF-8 comes back byte for
/// byte; an event of more than 64 KiB comes back as several consecutive
/// events of the same time.
///
/// # Writing
///
/// Events are encoded into a buffer that is written to the file when it
/// holds 256 KiB, and at least every [`CastStoreOptions::flush_interval`]
/// by a timer task (the writes reach the page cache, not the disk: a
/// machine crash can lose the last seconds, a process crash loses at most
/// the buffer, and a torn last line reads back as such). The timer stops
/// with the writer.
#[derive(Debug, Clone)]
pub struct CastStore {
    root: Arc<Path>,
    options: CastStoreOptions,
}

impl CastStore {
    /// A store in `root`, created if missing.
    pub fn open(root: impl Into<PathBuf>, options: CastStoreOptions) -> Result<Self, AuditError> {
        if options.size_cap < 4096 {
            return Err(AuditError::CastOptions {
                field: "size_cap",
                message: format!("{} bytes is below the least of 4096", options.size_cap),
            });
        }
        if options.flush_interval.is_zero() || options.flush_interval > Duration::from_secs(1) {
            return Err(AuditError::CastOptions {
                field: "flush_interval",
                message: format!("{:?} is not within (0, 1 s]", options.flush_interval),
            });
        }
        let root = root.into();
        fs::create_dir_all(&root).map_err(AuditError::io(&root))?;
        Ok(Self {
            root: root.into(),
            options,
        })
    }

    /// The directory holding the recordings.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The `.cast` file of `id`, for serving it as it is.
    pub fn cast_path(&self, id: &RecordingId) -> PathBuf {
        self.root.join(format!("{id}.cast"))
    }

    fn metadata_path(&self, id: &RecordingId) -> PathBuf {
        self.root.join(format!("{id}.json"))
    }

    /// Reads `id`'s metadata, with the `.cast` file's current size.
    fn read_info(&self, id: &RecordingId) -> Result<RecordingInfo, Error> {
        let path = self.metadata_path(id);
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::not_found("recording", id.as_str()));
            }
            Err(error) => return Err(AuditError::io(&path)(error).into()),
        };
        let mut info: RecordingInfo =
            serde_json::from_slice(&text).map_err(|e| AuditError::CastMetadata {
                path: path.clone(),
                message: e.to_string(),
            })?;
        if info.id != *id {
            return Err(AuditError::CastMetadata {
                path,
                message: format!("it describes recording {}", info.id),
            }
            .into());
        }
        let cast = self.cast_path(id);
        info.size_bytes = fs::metadata(&cast).map_err(AuditError::io(cast))?.len();
        Ok(info)
    }

    fn list_blocking(&self, filter: &RecordingFilter) -> Result<Vec<RecordingInfo>, Error> {
        let entries = fs::read_dir(&self.root).map_err(AuditError::io(&*self.root))?;
        let mut infos = Vec::new();
        for entry in entries {
            let entry = entry.map_err(AuditError::io(&*self.root))?;
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|name| name.strip_suffix(".json"))
                .and_then(|stem| RecordingId::parse(stem).ok())
            else {
                continue;
            };
            let info = self.read_info(&id)?;
            if filter.matches(&info) {
                infos.push(info);
            }
        }
        infos.sort_by(|a, b| a.started.cmp(&b.started).then_with(|| a.id.cmp(&b.id)));
        Ok(infos)
    }

    fn open_blocking(
        &self,
        id: &RecordingId,
    ) -> Result<(RecordingInfo, CastReader<BufReader<File>>), Error> {
        let info = self.read_info(id)?;
        let path = self.cast_path(id);
        let file = File::open(&path).map_err(AuditError::io(&path))?;
        let reader = CastReader::new(
            BufReader::with_capacity(256 * 1024, file),
            self.options.reader,
        )
        .map_err(|e| Error::invalid("asciicast", format!("{}: {e}", path.display())))?;
        Ok((info, reader))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(Self) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || work(store))
            .await
            .map_err(|e| Error::Backend {
                backend: "cast store",
                message: format!("file task failed: {e}"),
                source: None,
            })?
    }
}

/// Writes `info` to `path` through a temporary file and a rename, so a
/// reader sees the old or the new metadata, never half of one.
fn write_metadata(path: &Path, info: &RecordingInfo) -> Result<(), AuditError> {
    let temporary = path.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(info).map_err(|e| AuditError::CastMetadata {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    fs::write(&temporary, text).map_err(AuditError::io(&temporary))?;
    fs::rename(&temporary, path).map_err(AuditError::io(path))
}

#[async_trait]
impl RecordingStore for CastStore {
    fn capabilities(&self) -> RecordingCapabilities {
        RecordingCapabilities {
            raw_bytes: false,
            size_cap: Some(self.options.size_cap),
        }
    }

    async fn create(&self, request: RecordingRequest) -> Result<Box<dyn RecordingWriter>, Error> {
        let id = RecordingId::generate();
        let info = RecordingInfo::starting(id.clone(), request);
        let cast_path = self.cast_path(&id);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&cast_path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => {
                    Error::already_exists("recording", id.as_str())
                }
                _ => AuditError::io(&cast_path)(e).into(),
            })?;
        let buffer = header_line(&info);
        let mut state = WriterState {
            file,
            cast_path,
            metadata_path: self.metadata_path(&id),
            written: 0,
            buffer,
            text: Default::default(),
            size_cap: self.options.size_cap,
            last_time: Duration::ZERO,
            info,
        };
        state.write_buffer()?;
        write_metadata(&state.metadata_path, &state.info)?;
        tracing::debug!(recording = %id, session = %state.info.session, "recording started");
        let state = Arc::new(Mutex::new(state));
        let flusher = tokio::spawn(flush_every(
            Arc::downgrade(&state),
            self.options.flush_interval,
        ));
        Ok(Box::new(CastWriter { id, state, flusher }))
    }

    async fn export(&self, id: &RecordingId) -> Result<bytes::Bytes, Error> {
        let id = id.clone();
        self.blocking(move |store| {
            // The metadata first: an unknown id is NotFound by name.
            store.read_info(&id)?;
            let path = store.cast_path(&id);
            fs::read(&path)
                .map(bytes::Bytes::from)
                .map_err(|e| AuditError::io(&path)(e).into())
        })
        .await
    }

    async fn open(&self, id: &RecordingId) -> Result<Recording, Error> {
        let id = id.clone();
        let (info, reader) = self.blocking(move |store| store.open_blocking(&id)).await?;
        let (sender, receiver) = tokio::sync::mpsc::channel(256);
        let recording = info.id.clone();
        tokio::task::spawn_blocking(move || {
            let mut reader = reader;
            loop {
                let item = match reader.next_event() {
                    Ok(Some(event)) => Ok(event),
                    Ok(None) => break,
                    Err(error) => Err(Error::from(error)),
                };
                let failed = item.is_err();
                // A closed channel means the reader's consumer went away.
                if sender.blocking_send(item).is_err() || failed {
                    return;
                }
            }
            if let Some(torn) = reader.torn() {
                tracing::warn!(
                    %recording,
                    line = torn.line,
                    bytes = torn.bytes,
                    "recording ends in a torn line (a crash while writing); read up to the line before"
                );
            }
        });
        Ok(Recording {
            info,
            events: Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver)),
        })
    }

    async fn list(&self, filter: &RecordingFilter) -> Result<Vec<RecordingInfo>, Error> {
        let filter = filter.clone();
        self.blocking(move |store| store.list_blocking(&filter))
            .await
    }
}

/// Writes what a writer buffered at least every `interval`, until the
/// writer is gone.
async fn flush_every(state: Weak<Mutex<WriterState>>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(state) = state.upgrade() else { return };
        let mut state = lock(&state);
        if let Err(error) = state.write_buffer() {
            tracing::warn!(recording = %state.info.id, %error, "writing a recording failed");
        }
    }
}

/// The two byte streams a recording keeps as text.
#[derive(Debug, Clone, Copy)]
enum TextKind {
    Output = 0,
    Input = 1,
}

impl TextKind {
    fn code(self) -> &'static str {
        match self {
            Self::Output => "o",
            Self::Input => "i",
        }
    }
}

#[derive(Debug)]
struct WriterState {
    file: File,
    cast_path: PathBuf,
    metadata_path: PathBuf,
    /// Bytes in the file.
    written: u64,
    /// Encoded lines not yet in the file.
    buffer: Vec<u8>,
    /// The decoders of output and input, by [`TextKind`].
    text: [Utf8Stream; 2],
    size_cap: u64,
    last_time: Duration,
    info: RecordingInfo,
}

impl WriterState {
    fn write_buffer(&mut self) -> Result<(), AuditError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.file
            .write_all(&self.buffer)
            .map_err(AuditError::io(&self.cast_path))?;
        self.written += self.buffer.len() as u64;
        self.buffer.clear();
        Ok(())
    }

    /// Encodes one event line, or ends the recording with the marker when
    /// the line would not fit below the cap.
    fn push_line(&mut self, time: Duration, code: &str, text: &str) -> Result<(), AuditError> {
        if self.info.truncated {
            return Ok(());
        }
        let start = self.buffer.len();
        push_event_line(&mut self.buffer, time, code, text);
        let size = self.written + self.buffer.len() as u64;
        if size + MARKER_LINE_ROOM > self.size_cap {
            self.buffer.truncate(start);
            let marker = truncation_marker(self.size_cap);
            push_event_line(&mut self.buffer, time, "m", &marker);
            self.info.truncated = true;
            self.write_buffer()?;
            write_metadata(&self.metadata_path, &self.info)?;
            tracing::warn!(recording = %self.info.id, cap = self.size_cap, "{marker}");
            return Ok(());
        }
        if self.buffer.len() >= WRITE_BATCH {
            self.write_buffer()?;
        }
        Ok(())
    }

    /// Encodes `bytes` as text events of `kind`, split to bounded lines.
    fn push_text(
        &mut self,
        time: Duration,
        kind: TextKind,
        bytes: &[u8],
    ) -> Result<(), AuditError> {
        // The stream is taken out while it hands text to `self`.
        let mut stream = std::mem::take(&mut self.text[kind as usize]);
        let mut result = Ok(());
        stream.decode(bytes, |text| {
            if result.is_ok() {
                result = self.push_split(time, kind.code(), text);
            }
        });
        self.text[kind as usize] = stream;
        result
    }

    /// Ends both text streams: a character still incomplete is U+FFFD.
    fn finish_text(&mut self) -> Result<(), AuditError> {
        let time = self.last_time;
        for kind in [TextKind::Output, TextKind::Input] {
            let mut stream = std::mem::take(&mut self.text[kind as usize]);
            let mut result = Ok(());
            stream.finish(|text| result = self.push_line(time, kind.code(), text));
            result?;
        }
        Ok(())
    }

    fn push_split(&mut self, time: Duration, code: &str, mut text: &str) -> Result<(), AuditError> {
        while text.len() > MAX_EVENT_TEXT {
            let mut cut = MAX_EVENT_TEXT;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            let (head, tail) = text.split_at(cut);
            self.push_line(time, code, head)?;
            text = tail;
        }
        self.push_line(time, code, text)
    }
}

/// Appends to one `.cast` file; see [`CastStore`].
#[derive(Debug)]
struct CastWriter {
    id: RecordingId,
    state: Arc<Mutex<WriterState>>,
    flusher: tokio::task::JoinHandle<()>,
}

impl Drop for CastWriter {
    fn drop(&mut self) {
        self.flusher.abort();
        let mut state = lock(&self.state);
        if let Err(error) = state.write_buffer() {
            tracing::warn!(recording = %self.id, %error, "writing a dropped recording failed");
        }
    }
}

#[async_trait]
impl RecordingWriter for CastWriter {
    fn id(&self) -> &RecordingId {
        &self.id
    }

    // The file writes are page-cache copies of bounded batches; handing
    // each event to a blocking thread would cost more than the write.
    async fn append(&mut self, event: RecordingEvent) -> Result<(), Error> {
        let mut state = lock(&self.state);
        if state.info.ended.is_some() {
            return Err(already_finished(&self.id));
        }
        check_event_order(&self.id, state.last_time, &event)?;
        state.last_time = event.time;
        match &event.data {
            EventData::Output(bytes) => state.push_text(event.time, TextKind::Output, bytes)?,
            EventData::Input(bytes) => state.push_text(event.time, TextKind::Input, bytes)?,
            EventData::Resize(size) => {
                let size = format!("{}x{}", size.cols, size.rows);
                state.push_line(event.time, "r", &size)?;
            }
            EventData::Marker(label) => state.push_line(event.time, "m", label)?,
        }
        Ok(())
    }

    async fn finish(&mut self, reason: &str) -> Result<RecordingInfo, Error> {
        let mut state = lock(&self.state);
        if state.info.ended.is_some() {
            return Err(already_finished(&self.id));
        }
        state.finish_text()?;
        state.write_buffer()?;
        state.info.ended = Some(Timestamp::now());
        state.info.end_reason = Some(reason.to_owned());
        state.info.size_bytes = state.written;
        write_metadata(&state.metadata_path, &state.info)?;
        self.flusher.abort();
        tracing::debug!(recording = %self.id, reason, bytes = state.written, "recording finished");
        Ok(state.info.clone())
    }
}
