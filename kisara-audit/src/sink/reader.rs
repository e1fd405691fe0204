//! [`JsonlReader`]: reads and follows the files of a [`JsonlSink`](super::JsonlSink).

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::Stream;
use kisara_core::Result;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::jsonl::{list_files, validate_prefix};
use super::{StoredEvent, storage_error};

const BACKEND: &str = "audit-jsonl";

/// A line that could not be read, and where it is. Reading goes on after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineProblem {
    /// The file.
    pub file: PathBuf,
    /// The 1-based line number; 0 when the whole file could not be read.
    pub line: u64,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for LineProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

/// Everything readable in the files, and what was not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadReport {
    /// The events, in file order (ascending ids).
    pub events: Vec<StoredEvent>,
    /// Lines that could not be read.
    pub problems: Vec<LineProblem>,
}

/// Where [`JsonlReader::follow`] begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    /// With the oldest file.
    FromStart,
    /// After the last complete line of the newest file.
    FromNow,
}

/// Reads the JSON lines files of one prefix in one directory, in order,
/// across rotation.
///
/// A line that is not an event (malformed, longer than the bound, or torn
/// at the end of a file by a crash) is reported as a [`LineProblem`] naming
/// the file and line, and reading continues with the next line.
#[derive(Debug, Clone)]
pub struct JsonlReader {
    dir: PathBuf,
    prefix: String,
    max_line_bytes: usize,
}

impl JsonlReader {
    /// A reader of `{dir}/{prefix}-….jsonl`, lines bounded to 1 MiB.
    pub fn new(dir: impl Into<PathBuf>, prefix: impl Into<String>) -> Result<Self> {
        let prefix = prefix.into();
        validate_prefix(&prefix)?;
        Ok(Self {
            dir: dir.into(),
            prefix,
            max_line_bytes: 1 << 20,
        })
    }

    /// Lines longer than `bytes` are skipped and reported instead of read
    /// into memory.
    pub fn with_max_line_bytes(mut self, bytes: usize) -> Self {
        self.max_line_bytes = bytes;
        self
    }

    /// The audit files, oldest first.
    pub fn files(&self) -> Result<Vec<PathBuf>> {
        Ok(self.listed()?.into_iter().map(|(_, path)| path).collect())
    }

    fn listed(&self) -> Result<Vec<(super::jsonl::FileKey, PathBuf)>> {
        list_files(&self.dir, &self.prefix)
            .map_err(|e| storage_error(BACKEND, format!("listing {}", self.dir.display()), e))
    }

    /// Reads every file now. Blocking: call it from `spawn_blocking` in
    /// async code.
    pub fn read_all(&self) -> Result<ReadReport> {
        let mut report = ReadReport::default();
        for path in self.files()? {
            let mut emit = |item: Result<StoredEvent, LineProblem>| match item {
                Ok(event) => report.events.push(event),
                Err(problem) => report.problems.push(problem),
            };
            if let Err(e) = scan(
                &path,
                Position::default(),
                self.max_line_bytes,
                true,
                &mut emit,
            ) {
                emit(Err(file_problem(&path, &e)));
            }
        }
        Ok(report)
    }

    /// The events as they are written, `tail -f` style across rotation,
    /// checking for new lines every `poll`. A torn last line is reported
    /// once a newer file shows the writer moved on. The stream ends when
    /// dropped.
    pub fn follow(
        &self,
        from: Follow,
        poll: Duration,
    ) -> impl Stream<Item = Result<StoredEvent, LineProblem>> + Send + 'static {
        let (sender, receiver) = mpsc::channel(1024);
        let reader = self.clone();
        let spawned = std::thread::Builder::new()
            .name("audit-follow".to_owned())
            .spawn({
                let sender = sender.clone();
                move || reader.follow_loop(from, poll, &sender)
            });
        if let Err(e) = spawned {
            let _ = sender.try_send(Err(file_problem(&self.dir, &e)));
        }
        ReceiverStream::new(receiver)
    }

    fn follow_loop(
        &self,
        from: Follow,
        poll: Duration,
        sender: &mpsc::Sender<Result<StoredEvent, LineProblem>>,
    ) {
        let mut current: Option<(super::jsonl::FileKey, PathBuf, Position)> = None;
        let mut reported_listing = false;
        let mut first = true;
        while !sender.is_closed() {
            let files = match self.listed() {
                Ok(files) => files,
                Err(e) => {
                    if !reported_listing {
                        reported_listing = true;
                        let problem = LineProblem {
                            file: self.dir.clone(),
                            line: 0,
                            message: e.to_string(),
                        };
                        if sender.blocking_send(Err(problem)).is_err() {
                            return;
                        }
                    }
                    std::thread::sleep(poll);
                    continue;
                }
            };
            reported_listing = false;
            if first
                && from == Follow::FromNow
                && let Some((key, path)) = files.last()
            {
                // Skip to the end of the last complete line.
                let end = scan(
                    path,
                    Position::default(),
                    self.max_line_bytes,
                    false,
                    &mut |_| {},
                )
                .unwrap_or_default();
                current = Some((*key, path.clone(), end));
            }
            first = false;
            if current.is_none() {
                current = files
                    .first()
                    .map(|(key, path)| (*key, path.clone(), Position::default()));
            }
            let Some((key, path, position)) = current.take() else {
                std::thread::sleep(poll);
                continue;
            };
            let newer = files.iter().find(|(k, _)| *k > key).cloned();
            let mut closed = false;
            let mut emit = |item| closed |= sender.blocking_send(item).is_err();
            let position = match scan(
                &path,
                position,
                self.max_line_bytes,
                newer.is_some(),
                &mut emit,
            ) {
                Ok(position) => position,
                Err(e) => {
                    emit(Err(file_problem(&path, &e)));
                    position
                }
            };
            if closed {
                return;
            }
            match newer {
                Some((key, path)) => current = Some((key, path, Position::default())),
                None => {
                    current = Some((key, path, position));
                    std::thread::sleep(poll);
                }
            }
        }
    }
}

/// A place in a file: the byte offset of a line start and the number of
/// lines before it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Position {
    offset: u64,
    line: u64,
}

fn file_problem(path: &Path, error: &std::io::Error) -> LineProblem {
    LineProblem {
        file: path.to_owned(),
        line: 0,
        message: format!("cannot read the file: {error}"),
    }
}

/// Reads the complete lines of `path` from `from`, handing each to `emit`,
/// and returns where the next line begins. A partial last line is reported
/// as torn when `tail_is_final`, and otherwise left for a later call.
fn scan(
    path: &Path,
    from: Position,
    max_line_bytes: usize,
    tail_is_final: bool,
    emit: &mut dyn FnMut(Result<StoredEvent, LineProblem>),
) -> std::io::Result<Position> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(from.offset))?;
    let mut reader = BufReader::with_capacity(64 << 10, file);
    let mut line = Vec::new();
    let mut too_long = false;
    let mut offset = from.offset;
    let mut at = from;
    let problem = |line: u64, message: String| LineProblem {
        file: path.to_owned(),
        line,
        message,
    };
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            break;
        }
        let (taken, complete) = match chunk.iter().position(|&b| b == b'\n') {
            Some(end) => (end, true),
            None => (chunk.len(), false),
        };
        if !too_long {
            if line.len() + taken > max_line_bytes {
                too_long = true;
                line.clear();
            } else {
                line.extend_from_slice(&chunk[..taken]);
            }
        }
        let consumed = taken + usize::from(complete);
        reader.consume(consumed);
        offset += consumed as u64;
        if complete {
            let number = at.line + 1;
            if too_long {
                emit(Err(problem(
                    number,
                    format!("line longer than {max_line_bytes} bytes, skipped"),
                )));
            } else if !line.iter().all(u8::is_ascii_whitespace) {
                emit(
                    serde_json::from_slice(&line)
                        .map_err(|e| problem(number, format!("not an audit event: {e}"))),
                );
            }
            line.clear();
            too_long = false;
            at = Position {
                offset,
                line: number,
            };
        }
    }
    if offset > at.offset && tail_is_final {
        emit(Err(problem(
            at.line + 1,
            format!(
                "torn last line ({} bytes without a newline), left by an interrupted write",
                offset - at.offset
            ),
        )));
        at = Position {
            offset,
            line: at.line + 1,
        };
    }
    Ok(at)
}
