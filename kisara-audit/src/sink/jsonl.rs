//! [`JsonlSink`]: one JSON object per line, in files rotated by size and by
//! day.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use kisara_core::model::Timestamp;
use kisara_core::{AuditEvent, AuditSink, Error, Result};

use super::committer::{Committer, GroupStore};
use super::{Durability, StoredEvent, storage_error};

const BACKEND: &str = "audit-jsonl";

/// The clock that decides which day's file an event goes to (the writer's
/// clock, never the event's own time, which callers fill in).
pub type Clock = fn() -> Timestamp;

/// Where and how a [`JsonlSink`] writes.
#[derive(Debug, Clone)]
pub struct JsonlConfig {
    /// The directory of the files; created when missing.
    pub dir: PathBuf,
    /// The first part of every file name: `{prefix}-{YYYY-MM-DD}-{index}.jsonl`.
    /// Letters, digits, `_` and `-` only.
    pub prefix: String,
    /// A file that would grow past this many bytes is closed and the next
    /// index begins (a single larger line still gets a file of its own).
    pub max_file_bytes: u64,
    /// When `record` returns.
    pub durability: Durability,
    /// The clock for day rotation ([`Timestamp::now`] but in tests).
    pub clock: Clock,
}

impl JsonlConfig {
    /// Files `audit-….jsonl` in `dir`, 64 MiB each, each event synced.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            prefix: "audit".to_owned(),
            max_file_bytes: 64 << 20,
            durability: Durability::Fsync,
            clock: Timestamp::now,
        }
    }
}

/// An [`AuditSink`] writing JSON lines (each event's serde form plus its
/// `id`) to files named `{prefix}-{YYYY-MM-DD}-{index:06}.jsonl`, rotated
/// when a file would pass `max_file_bytes` and when the writer's UTC day
/// changes.
///
/// # Contract
///
/// - `record` returns `Ok` only after the event's line was written (and
///   synced, unless [`Durability::None`]); ids ascend in file order.
/// - A failed write or sync (a full disk, an I/O error) is an error naming
///   the file; from then on every `record` is refused, because what reached
///   the disk is unknown. Reopening continues after the last complete line.
/// - A torn last line (a crash mid-write) is left as it is and reported by
///   [`JsonlReader`](super::JsonlReader); reopening starts a new file rather
///   than appending behind it.
/// - [`JsonlSink::shutdown`] stops taking events, commits the ones already
///   handed over and returns when they are synced; later `record`s are
///   `Unavailable`. Dropping the sink without it still commits what was
///   handed over, without waiting.
pub struct JsonlSink {
    dir: PathBuf,
    committer: Committer<JsonlStore>,
}

impl fmt::Debug for JsonlSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonlSink")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl JsonlSink {
    /// Opens the directory, continuing the newest file of `prefix` (or
    /// starting a new one) and the id sequence after its last event.
    pub async fn open(config: JsonlConfig) -> Result<Self> {
        let dir = config.dir.clone();
        let durability = config.durability;
        let store = tokio::task::spawn_blocking(move || JsonlStore::open(config))
            .await
            .map_err(|e| storage_error(BACKEND, "opening the audit directory", e))??;
        Ok(Self {
            dir,
            committer: Committer::start(store, durability)?,
        })
    }

    /// Records `event` and returns its id.
    pub async fn record_with_id(&self, event: &AuditEvent) -> Result<u64> {
        self.committer.record(event).await
    }

    /// Commits what was handed over, syncs it and stops; see the contract.
    pub async fn shutdown(&self) {
        self.committer.shutdown().await;
    }
}

#[async_trait]
impl AuditSink for JsonlSink {
    async fn record(&self, event: &AuditEvent) -> Result<()> {
        self.committer.record(event).await.map(drop)
    }
}

/// One audit file's place in the sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct FileKey {
    /// Days since the epoch (UTC).
    pub(super) day: i64,
    pub(super) index: u32,
}

impl FileKey {
    pub(super) fn file_name(self, prefix: &str) -> String {
        let (year, month, day) = civil_from_days(self.day);
        format!(
            "{prefix}-{year:04}-{month:02}-{day:02}-{:06}.jsonl",
            self.index
        )
    }

    /// The key of a file named by [`FileKey::file_name`] for `prefix`.
    pub(super) fn parse(name: &str, prefix: &str) -> Option<Self> {
        let rest = name.strip_prefix(prefix)?.strip_prefix('-')?;
        let rest = rest.strip_suffix(".jsonl")?;
        let (date, index) = rest.split_at_checked(10)?;
        let index = index.strip_prefix('-')?;
        if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let mut parts = date.split('-');
        let year: i64 = parts.next()?.parse().ok()?;
        let month: u32 = parts.next()?.parse().ok()?;
        let day: u32 = parts.next()?.parse().ok()?;
        let days = days_from_civil(year, month, day);
        // Reject dates that do not round-trip (2026-02-31).
        (civil_from_days(days) == (year, month, day)).then_some(Self {
            day: days,
            index: index.parse().ok()?,
        })
    }
}

/// The audit files of `prefix` in `dir`, oldest first.
pub(super) fn list_files(dir: &Path, prefix: &str) -> std::io::Result<Vec<(FileKey, PathBuf)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(key) = entry
            .file_name()
            .to_str()
            .and_then(|n| FileKey::parse(n, prefix))
        {
            files.push((key, entry.path()));
        }
    }
    files.sort();
    Ok(files)
}

pub(super) fn validate_prefix(prefix: &str) -> Result<()> {
    let ok = !prefix.is_empty()
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "audit file prefix",
            format!("{prefix:?} must be non-empty letters, digits, `_` or `-`"),
        ))
    }
}

fn day_of(time: Timestamp) -> i64 {
    i64::try_from(time.unix_secs() / 86_400).unwrap_or(i64::MAX)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The inverse of [`civil_from_days`].
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let month = i64::from(month);
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The writer thread's state: the open file and the next id.
struct JsonlStore {
    config: JsonlConfig,
    key: FileKey,
    path: PathBuf,
    file: File,
    size: u64,
    next_id: u64,
    line: Vec<u8>,
}

impl JsonlStore {
    fn open(config: JsonlConfig) -> Result<Self> {
        validate_prefix(&config.prefix)?;
        let dir = &config.dir;
        std::fs::create_dir_all(dir)
            .map_err(|e| storage_error(BACKEND, format!("creating {}", dir.display()), e))?;
        let files = list_files(dir, &config.prefix)
            .map_err(|e| storage_error(BACKEND, format!("listing {}", dir.display()), e))?;
        let mut next_id = 1;
        for (_, path) in files.iter().rev() {
            if let Some(id) = last_id(path)? {
                next_id = id + 1;
                break;
            }
        }
        let today = day_of((config.clock)());
        let mut store_key = FileKey {
            day: today,
            index: 0,
        };
        if let Some(&(key, ref path)) = files.last() {
            let (size, clean_end) = tail_state(path)?;
            if key.day == today && clean_end && size < config.max_file_bytes {
                store_key = key;
            } else if key.day >= today {
                // Today's file (or one dated later by a clock that went
                // back) is full or torn: continue after it.
                store_key = FileKey {
                    day: key.day,
                    index: key.index + 1,
                };
            }
        }
        let (path, file, size) = open_file(&config, store_key, true)?;
        Ok(Self {
            config,
            key: store_key,
            path,
            file,
            size,
            next_id,
            line: Vec::new(),
        })
    }

    fn write_out(&mut self, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all(bytes)
            .map_err(|e| storage_error(BACKEND, format!("writing {}", self.path.display()), e))
    }

    fn sync(&mut self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| storage_error(BACKEND, format!("syncing {}", self.path.display()), e))
    }

    /// Closes the current file (synced when `sync`) and opens `key`'s.
    fn rotate(&mut self, key: FileKey, sync: bool) -> Result<()> {
        if sync {
            self.sync()?;
        }
        let (path, file, size) = open_file(&self.config, key, sync)?;
        tracing::debug!(from = %self.path.display(), to = %path.display(), "rotating the audit file");
        self.key = key;
        self.path = path;
        self.file = file;
        self.size = size;
        Ok(())
    }
}

impl GroupStore for JsonlStore {
    const BACKEND: &'static str = BACKEND;

    /// The event's JSON object; the writer puts its id in front.
    type Prepared = Vec<u8>;

    fn prepare(event: &AuditEvent) -> Result<Vec<u8>> {
        serde_json::to_vec(event).map_err(|e| storage_error(BACKEND, "encoding an audit event", e))
    }

    fn commit(&mut self, events: &[&Vec<u8>], sync: bool) -> Result<u64> {
        let first_id = self.next_id;
        let mut pending = Vec::new();
        for (event, id) in events.iter().zip(first_id..) {
            // `{"id":N,` then the event's own fields: the StoredEvent form.
            self.line.clear();
            self.line
                .extend_from_slice(format!("{{\"id\":{id},").as_bytes());
            self.line
                .extend_from_slice(event.get(1..).unwrap_or_default());
            self.line.push(b'\n');
            let today = day_of((self.config.clock)());
            let full = self.size > 0
                && self.size + pending.len() as u64 + self.line.len() as u64
                    > self.config.max_file_bytes;
            if today > self.key.day || full {
                let next = if today > self.key.day {
                    FileKey {
                        day: today,
                        index: 0,
                    }
                } else {
                    FileKey {
                        day: self.key.day,
                        index: self.key.index + 1,
                    }
                };
                self.write_out(&pending)?;
                self.size += pending.len() as u64;
                pending.clear();
                self.rotate(next, sync)?;
            }
            pending.extend_from_slice(&self.line);
        }
        self.write_out(&pending)?;
        self.size += pending.len() as u64;
        if sync {
            self.sync()?;
        }
        self.next_id = first_id + events.len() as u64;
        Ok(first_id)
    }

    fn location(&self) -> String {
        self.config.dir.display().to_string()
    }
}

/// Opens (creating) `key`'s file for appending; a new file's directory entry
/// is synced too when `sync`, or a crash could lose the whole file.
fn open_file(config: &JsonlConfig, key: FileKey, sync: bool) -> Result<(PathBuf, File, u64)> {
    let path = config.dir.join(key.file_name(&config.prefix));
    let existed = path.exists();
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| storage_error(BACKEND, format!("opening {}", path.display()), e))?;
    let size = file
        .metadata()
        .map_err(|e| storage_error(BACKEND, format!("reading {}", path.display()), e))?
        .len();
    if sync && !existed {
        File::open(&config.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| storage_error(BACKEND, format!("syncing {}", config.dir.display()), e))?;
    }
    Ok((path, file, size))
}

/// The file's size and whether it ends with a complete line (or is empty).
fn tail_state(path: &Path) -> Result<(u64, bool)> {
    let read = || -> std::io::Result<(u64, bool)> {
        let mut file = File::open(path)?;
        let size = file.metadata()?.len();
        if size == 0 {
            return Ok((0, true));
        }
        file.seek(SeekFrom::End(-1))?;
        let mut last = [0u8];
        file.read_exact(&mut last)?;
        Ok((size, last[0] == b'\n'))
    };
    read().map_err(|e| storage_error(BACKEND, format!("reading {}", path.display()), e))
}

/// The id of the file's last readable line, if any.
fn last_id(path: &Path) -> Result<Option<u64>> {
    let bytes = std::fs::read(path)
        .map_err(|e| storage_error(BACKEND, format!("reading {}", path.display()), e))?;
    Ok(bytes
        .split(|&b| b == b'\n')
        .rev()
        .find_map(|line| serde_json::from_slice::<StoredEvent>(line).ok())
        .map(|stored| stored.id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip_through_dates() {
        for (days, name) in [
            (0, "audit-1970-01-01-000000.jsonl"),
            (20_794, "audit-2026-12-07-000003.jsonl"),
            (11_016, "audit-2000-02-29-000003.jsonl"),
        ] {
            let index = if days == 0 { 0 } else { 3 };
            let key = FileKey { day: days, index };
            assert_eq!(key.file_name("audit"), name);
            assert_eq!(FileKey::parse(name, "audit"), Some(key));
        }
        assert_eq!(
            FileKey::parse("audit-2026-02-31-000000.jsonl", "audit"),
            None
        );
        assert_eq!(
            FileKey::parse("audit-x-2026-12-07-000000.jsonl", "audit"),
            None
        );
        assert_eq!(FileKey::parse("audit-2026-12-07-.jsonl", "audit"), None);
    }

    #[test]
    fn prefixes_are_checked() {
        assert!(validate_prefix("audit_1-a").is_ok());
        for bad in ["", "../x", "a b", "a/b"] {
            let err = validate_prefix(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }
}
