//! [`CastReader`]: asciicast v2 (and v1, for import) into recording events.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, Read};
use std::time::Duration;

use bytes::Bytes;
use kisara_core::model::TtySize;
use kisara_core::{EventData, RecordingEvent};
use serde::Deserialize;

use crate::AuditError;

/// Limits of a [`CastReader`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CastReaderOptions {
    /// The longest line accepted, newline excluded; a longer one is
    /// [`AuditError::CastLineTooLong`]. Also bounds a v1 recording, which is one
    /// JSON document. [`super::CastStore`] never writes lines above 400 KiB.
    pub max_line_bytes: usize,
}

impl Default for CastReaderOptions {
    fn default() -> Self {
        Self {
            max_line_bytes: 1 << 20,
        }
    }
}

/// The header of a recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CastHeader {
    /// The format's version, 1 or 2.
    pub version: u8,
    /// The terminal size at the start.
    pub size: TtySize,
    /// When the recording started, in seconds since the epoch.
    pub timestamp: Option<u64>,
    /// The title.
    pub title: Option<String>,
    /// The environment kept (`SHELL`, `TERM`).
    pub env: BTreeMap<String, String>,
}

/// A last line cut off mid-way, as a crash while writing leaves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TornLine {
    /// The line's number, from 1.
    pub line: u64,
    /// How many bytes of it there are.
    pub bytes: usize,
}

#[derive(Deserialize)]
struct RawHeader {
    version: u8,
    width: u16,
    height: u16,
    #[serde(default)]
    timestamp: Option<f64>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    env: Option<BTreeMap<String, Option<String>>>,
    /// Only in v1: the frames, as (delay since the last one, text).
    #[serde(default)]
    stdout: Option<Vec<(f64, String)>>,
}

/// Reads an asciicast recording event by event.
///
/// - **v2** (a header line, then one `[time, code, data]` line per event) is
///   streamed: memory stays bounded by
///   [`CastReaderOptions::max_line_bytes`], whatever the recording's length.
/// - **v1** (one JSON object whose `stdout` lists `[delay, text]` frames) is
///   read whole, up to the same limit, and gives output events at the sum
///   of the delays.
///
/// Robustness rules:
/// - A last line without its newline that does not parse is a torn write
///   (a crash): reading ends at the event before it, and [`Self::torn`]
///   reports it.
/// - Any other bad line is fatal, [`AuditError::CastLine`] naming its number:
///   a recording is evidence, and skipping a line would hide a damaged or
///   edited one. Blank lines are skipped.
/// - Event codes are `o`, `i`, `r` (data `COLSxROWS`) and `m`; times are
///   finite, non-negative seconds, kept to the microsecond.
#[derive(Debug)]
pub struct CastReader<R> {
    source: R,
    options: CastReaderOptions,
    header: CastHeader,
    /// The frames of a v1 recording, already converted.
    v1_events: Option<VecDeque<RecordingEvent>>,
    line: Vec<u8>,
    line_number: u64,
    torn: Option<TornLine>,
    done: bool,
}

enum Line {
    /// A whole line, newline stripped.
    Whole,
    /// The last line, without a newline.
    Unterminated,
    /// Nothing more.
    End,
}

impl<R: BufRead> CastReader<R> {
    /// Reads the header (for v1, the whole recording).
    pub fn new(source: R, options: CastReaderOptions) -> Result<Self, AuditError> {
        let mut reader = Self {
            source,
            options,
            header: CastHeader {
                version: 2,
                size: TtySize { rows: 0, cols: 0 },
                timestamp: None,
                title: None,
                env: BTreeMap::new(),
            },
            v1_events: None,
            line: Vec::new(),
            line_number: 0,
            torn: None,
            done: false,
        };
        let first = match reader.next_line() {
            Ok(Line::End) => {
                return Err(AuditError::CastHeader {
                    message: "the file is empty".to_owned(),
                });
            }
            Ok(_) => std::mem::take(&mut reader.line),
            Err(error) => return Err(error),
        };
        let raw = match serde_json::from_slice::<RawHeader>(&first) {
            Ok(raw) => raw,
            Err(line_error) => {
                // Perhaps v1 pretty-printed over many lines: read it whole.
                let mut whole = first;
                whole.push(b'\n');
                let limit = reader.options.max_line_bytes;
                (&mut reader.source)
                    .take((limit - whole.len().min(limit) + 1) as u64)
                    .read_to_end(&mut whole)
                    .map_err(|e| AuditError::CastHeader {
                        message: e.to_string(),
                    })?;
                if whole.len() > limit {
                    return Err(AuditError::CastLineTooLong {
                        line: 1,
                        max: limit,
                    });
                }
                match serde_json::from_slice::<RawHeader>(&whole) {
                    Ok(raw) if raw.version == 1 => raw,
                    _ => {
                        return Err(AuditError::CastHeader {
                            message: format!("line 1: {line_error}"),
                        });
                    }
                }
            }
        };
        reader.header = CastHeader {
            version: raw.version,
            size: TtySize {
                rows: raw.height,
                cols: raw.width,
            },
            timestamp: raw
                .timestamp
                .filter(|t| t.is_finite() && *t >= 0.0)
                .map(|t| t as u64),
            title: raw.title,
            env: raw
                .env
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(key, value)| Some((key, value?)))
                .collect(),
        };
        match (raw.version, raw.stdout) {
            (2, None) => {}
            (1, Some(frames)) => {
                let mut time = Duration::ZERO;
                let mut events = VecDeque::with_capacity(frames.len());
                for (n, (delay, text)) in frames.into_iter().enumerate() {
                    time += seconds(delay).map_err(|message| AuditError::CastHeader {
                        message: format!("v1 frame {n}: {message}"),
                    })?;
                    events.push_back(RecordingEvent {
                        time,
                        data: EventData::Output(Bytes::from(text)),
                    });
                }
                reader.v1_events = Some(events);
            }
            (1, None) => {
                return Err(AuditError::CastHeader {
                    message: "a version 1 recording without \"stdout\" frames".to_owned(),
                });
            }
            (version, _) => {
                return Err(AuditError::CastHeader {
                    message: format!("version {version} (only 1 and 2 are read)"),
                });
            }
        }
        Ok(reader)
    }

    /// The header.
    pub fn header(&self) -> &CastHeader {
        &self.header
    }

    /// The torn last line, once reading reached it.
    pub fn torn(&self) -> Option<TornLine> {
        self.torn
    }

    /// The next event, or `None` after the last whole one.
    pub fn next_event(&mut self) -> Result<Option<RecordingEvent>, AuditError> {
        if let Some(events) = &mut self.v1_events {
            return Ok(events.pop_front());
        }
        while !self.done {
            let terminated = match self.next_line() {
                Ok(Line::Whole) => true,
                Ok(Line::Unterminated) => false,
                Ok(Line::End) => {
                    self.done = true;
                    break;
                }
                Err(error) => {
                    self.done = true;
                    return Err(error);
                }
            };
            if self.line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match parse_event(&self.line) {
                Ok(event) => return Ok(Some(event)),
                Err(_) if !terminated => {
                    self.torn = Some(TornLine {
                        line: self.line_number,
                        bytes: self.line.len(),
                    });
                    self.done = true;
                }
                Err(message) => {
                    self.done = true;
                    return Err(AuditError::CastLine {
                        line: self.line_number,
                        message,
                    });
                }
            }
        }
        Ok(None)
    }

    /// Reads the next line into `self.line`, bounded by the limit.
    fn next_line(&mut self) -> Result<Line, AuditError> {
        self.line.clear();
        let max = self.options.max_line_bytes;
        let number = self.line_number + 1;
        loop {
            let available = match self.source.fill_buf() {
                Ok(available) => available,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    return Err(AuditError::CastLine {
                        line: number,
                        message: format!("read failed: {error}"),
                    });
                }
            };
            if available.is_empty() {
                if self.line.is_empty() {
                    return Ok(Line::End);
                }
                self.line_number = number;
                return Ok(Line::Unterminated);
            }
            let newline = available.iter().position(|&b| b == b'\n');
            let take = newline.unwrap_or(available.len());
            if self.line.len() + take > max {
                return Err(AuditError::CastLineTooLong { line: number, max });
            }
            self.line.extend_from_slice(&available[..take]);
            self.source.consume(take + usize::from(newline.is_some()));
            if newline.is_some() {
                self.line_number = number;
                return Ok(Line::Whole);
            }
        }
    }
}

impl<R: BufRead> Iterator for CastReader<R> {
    type Item = Result<RecordingEvent, AuditError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_event().transpose()
    }
}

/// Seconds as a duration, to the microsecond.
fn seconds(value: f64) -> Result<Duration, String> {
    // About 31,700 years: beyond that a time is a corrupt value.
    const MAX_SECONDS: f64 = 1e12;
    if !value.is_finite() || !(0.0..MAX_SECONDS).contains(&value) {
        return Err(format!("time {value} is not a number of seconds from 0"));
    }
    Ok(Duration::from_micros((value * 1e6).round() as u64))
}

fn parse_event(line: &[u8]) -> Result<RecordingEvent, String> {
    let (time, code, data): (f64, String, String) =
        serde_json::from_slice(line).map_err(|e| format!("not a [time, code, data] event: {e}"))?;
    let time = seconds(time)?;
    let data = match code.as_str() {
        "o" => EventData::Output(Bytes::from(data)),
        "i" => EventData::Input(Bytes::from(data)),
        "m" => EventData::Marker(data),
        "r" => EventData::Resize(parse_size(&data).ok_or_else(|| {
            format!("resize {data:?} is not COLSxROWS (two numbers up to 65535)")
        })?),
        other => {
            return Err(format!(
                "unknown event code {other:?} (o, i, r and m are read)"
            ));
        }
    };
    Ok(RecordingEvent { time, data })
}

fn parse_size(text: &str) -> Option<TtySize> {
    let (cols, rows) = text.split_once('x')?;
    Some(TtySize {
        cols: cols.parse().ok()?,
        rows: rows.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn read(
        text: &[u8],
    ) -> Result<(CastHeader, Vec<RecordingEvent>, Option<TornLine>), AuditError> {
        let mut reader = CastReader::new(text, CastReaderOptions::default())?;
        let events = reader.by_ref().collect::<Result<Vec<_>, _>>()?;
        Ok((reader.header().clone(), events, reader.torn()))
    }

    const HEADER: &str = r#"{"version": 2, "width": 80, "height": 24, "timestamp": 1700000000, "env": {"SHELL": "/bin/sh", "TERM": null}}"#;

    #[test]
    fn v2_reads_every_code() {
        let text = format!(
            "{HEADER}\n[0.5, \"o\", \"hi\\r\\n\"]\n\n[1.25, \"i\", \"x\"]\n[1.25, \"r\", \"100x30\"]\n[2, \"m\", \"command: ls\"]\n"
        );
        let (header, events, torn) = read(text.as_bytes()).unwrap();
        assert_eq!(header.size, TtySize { rows: 24, cols: 80 });
        assert_eq!(header.timestamp, Some(1_700_000_000));
        assert_eq!(header.env.get("SHELL").map(String::as_str), Some("/bin/sh"));
        assert_eq!(torn, None);
        assert_eq!(
            events
                .iter()
                .map(|e| e.time.as_micros())
                .collect::<Vec<_>>(),
            [500_000, 1_250_000, 1_250_000, 2_000_000]
        );
        assert_eq!(
            events[2].data,
            EventData::Resize(TtySize {
                rows: 30,
                cols: 100
            })
        );
    }

    #[test]
    fn v1_frames_add_up() {
        let text = r#"{
  "version": 1, "width": 80, "height": 24, "duration": 1.5,
  "command": "/bin/sh", "title": "old", "env": {"TERM": "xterm"},
  "stdout": [[0.5, "a"], [1.0, "b"]]
}"#;
        let (header, events, _) = read(text.as_bytes()).unwrap();
        assert_eq!(header.version, 1);
        assert_eq!(header.title.as_deref(), Some("old"));
        assert_eq!(events[1].time, Duration::from_millis(1500));
        assert_eq!(events[1].data, EventData::Output(Bytes::from_static(b"b")));
    }

    #[test]
    fn bad_lines_name_their_number() {
        let text =
            format!("{HEADER}\n[0.5, \"o\", \"ok\"]\n[0.6, \"o\", nope]\n[0.7, \"o\", \"x\"]\n");
        let err = read(text.as_bytes()).unwrap_err();
        assert!(matches!(err, AuditError::CastLine { line: 3, .. }), "{err}");
        assert!(err.to_string().starts_with("line 3: "), "{err}");
        for (event, needle) in [
            ("[-1, \"o\", \"x\"]", "time -1"),
            ("[1, \"x\", \"x\"]", "unknown event code \"x\""),
            ("[1, \"r\", \"80by24\"]", "resize \"80by24\""),
        ] {
            let text = format!("{HEADER}\n{event}\n");
            let err = read(text.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(needle) && err.contains("line 2"), "{err}");
        }
        let err = read(br#"{"version": 3, "term": {"cols": 80, "rows": 24}}"#).unwrap_err();
        assert!(matches!(err, AuditError::CastHeader { .. }), "{err}");
        let err = read(b"").unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
    }

    #[test]
    fn a_torn_last_line_is_reported_not_fatal() {
        let text = format!("{HEADER}\n[0.5, \"o\", \"ok\"]\n[0.6, \"o\", \"cut off");
        let (_, events, torn) = read(text.as_bytes()).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(torn, Some(TornLine { line: 3, bytes: 19 }));
        // A whole last event without its newline still counts.
        let text = format!("{HEADER}\n[0.5, \"o\", \"ok\"]");
        let (_, events, torn) = read(text.as_bytes()).unwrap();
        assert_eq!((events.len(), torn), (1, None));
    }

    #[test]
    fn huge_lines_stop_at_the_limit() {
        let text = format!("{HEADER}\n[0.5, \"o\", \"{}\"]\n", "x".repeat(5000));
        let options = CastReaderOptions {
            max_line_bytes: 4096,
        };
        let mut reader = CastReader::new(text.as_bytes(), options).unwrap();
        let err = reader.next_event().unwrap_err();
        assert!(
            matches!(err, AuditError::CastLineTooLong { line: 2, max: 4096 }),
            "{err}"
        );
        assert!(
            reader.next_event().unwrap().is_none(),
            "fused after an error"
        );
        let err = CastReader::new("x".repeat(5000).as_bytes(), options).unwrap_err();
        assert!(
            matches!(err, AuditError::CastLineTooLong { line: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn non_utf8_in_a_file_is_a_bad_line() {
        let mut text = format!("{HEADER}\n[0.5, \"o\", \"").into_bytes();
        text.extend_from_slice(b"\xff\xfe\"]\n");
        let err = read(&text).unwrap_err();
        assert!(matches!(err, AuditError::CastLine { line: 2, .. }), "{err}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let options = CastReaderOptions { max_line_bytes: 256 };
            if let Ok(reader) = CastReader::new(bytes.as_slice(), options) {
                for _ in reader {}
            }
        }

        #[test]
        fn arbitrary_lines_after_a_header_never_panic(
            lines in proptest::collection::vec("[\\[\\]0-9.,\" oirmx\\\\-]{0,40}", 0..8),
        ) {
            let text = format!("{HEADER}\n{}", lines.join("\n"));
            let reader = CastReader::new(text.as_bytes(), CastReaderOptions::default()).unwrap();
            for _ in reader {}
        }
    }
}
