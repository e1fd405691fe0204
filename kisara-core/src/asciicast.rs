//! Writing asciicast v2, the format of Kisara's recordings: the header, the
//! event lines, and the text of bytes (UTF-8 decoded across chunk
//! boundaries, JSON escaping fast enough to keep up with a terminal's
//! output). Stores write with these, and [`encode`] turns any recording
//! into a `.cast` file.

use std::io::Write;
use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;

use crate::{EventData, Recording, RecordingInfo, Result};

/// The header line of a recording, `\n` included.
pub fn header_line(info: &RecordingInfo) -> Vec<u8> {
    #[derive(Serialize)]
    struct Header<'a> {
        version: u8,
        width: u16,
        height: u16,
        timestamp: u64,
        env: &'a std::collections::BTreeMap<String, String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        title: Option<&'a str>,
    }
    let mut line = serde_json::to_vec(&Header {
        version: 2,
        width: info.size.cols,
        height: info.size.rows,
        timestamp: info.started.unix_secs(),
        env: &info.env,
        title: info.title.as_deref(),
    })
    .expect("a header of strings and numbers serializes");
    line.push(b'\n');
    line
}

/// Appends `[time, "code", "text"]\n`, the time in seconds to the
/// microsecond.
pub fn push_event_line(out: &mut Vec<u8>, time: Duration, code: &str, text: &str) {
    let micros = time.as_micros();
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "[{}.{:06}, \"{code}\", ",
        micros / 1_000_000,
        micros % 1_000_000
    );
    push_json_string(out, text);
    out.extend_from_slice(b"]\n");
}

/// A whole recording as a `.cast` file: output `o`, input `i`, resizes `r`,
/// markers `m`; bytes decoded as one stream per kind, so a character split
/// across events survives.
///
/// # Errors
///
/// The first error the recording's event stream gives.
pub async fn encode(recording: Recording) -> Result<Vec<u8>> {
    let Recording { info, mut events } = recording;
    let mut out = header_line(&info);
    let (mut output, mut input) = (Utf8Stream::default(), Utf8Stream::default());
    let mut last = Duration::ZERO;
    while let Some(event) = events.next().await {
        let event = event?;
        last = event.time;
        match &event.data {
            EventData::Output(bytes) => {
                output.decode(bytes, |text| push_event_line(&mut out, last, "o", text));
            }
            EventData::Input(bytes) => {
                input.decode(bytes, |text| push_event_line(&mut out, last, "i", text));
            }
            EventData::Resize(size) => {
                push_event_line(&mut out, last, "r", &format!("{}x{}", size.cols, size.rows));
            }
            EventData::Marker(label) => push_event_line(&mut out, last, "m", label),
        }
    }
    output.finish(|text| push_event_line(&mut out, last, "o", text));
    input.finish(|text| push_event_line(&mut out, last, "i", text));
    Ok(out)
}

/// Decodes a byte stream arriving in chunks into UTF-8 text.
///
/// A sequence cut by a chunk boundary is held until the next chunk
/// completes it. Each invalid sequence becomes U+FFFD exactly as
/// [`String::from_utf8_lossy`] replaces it (one per maximal invalid
/// subpart), so the text of a whole stream does not depend on where it was
/// cut.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    /// The start of a sequence the last chunk ended inside (at most 3 bytes).
    held: Vec<u8>,
}

impl Utf8Stream {
    /// Decodes `chunk`, handing each run of text to `emit` in order.
    pub fn decode(&mut self, chunk: &[u8], mut emit: impl FnMut(&str)) {
        if self.held.is_empty() {
            let rest = decode_complete(chunk, &mut emit);
            self.held.extend_from_slice(rest);
        } else {
            // Complete the held sequence with as few bytes as it needs: the
            // rest of the chunk is then decoded in place, without copying.
            let take = chunk.len().min(4 - self.held.len());
            let mut joined = std::mem::take(&mut self.held);
            joined.extend_from_slice(&chunk[..take]);
            let rest = decode_complete(&joined, &mut emit);
            // What is still unfinished ends within the bytes taken from
            // `chunk`: decoding resumes at its start in `chunk`.
            let consumed = joined.len() - rest.len();
            let held_before = joined.len() - take;
            if consumed <= held_before && take == chunk.len() {
                self.held = rest.to_vec();
                return;
            }
            let resume = consumed.saturating_sub(held_before);
            let rest = decode_complete(&chunk[resume..], &mut emit);
            self.held.extend_from_slice(rest);
        }
    }

    /// Ends the stream: a sequence still held is invalid, U+FFFD.
    pub fn finish(&mut self, mut emit: impl FnMut(&str)) {
        if !self.held.is_empty() {
            self.held.clear();
            emit(char::REPLACEMENT_CHARACTER.encode_utf8(&mut [0; 4]));
        }
    }
}

/// Emits the text of `bytes`, replacing invalid sequences; returns the
/// incomplete sequence it ends with (empty when none).
fn decode_complete<'a>(mut bytes: &'a [u8], emit: &mut impl FnMut(&str)) -> &'a [u8] {
    loop {
        match std::str::from_utf8(bytes) {
            Ok(text) => {
                if !text.is_empty() {
                    emit(text);
                }
                return &[];
            }
            Err(error) => {
                let (valid, after) = bytes.split_at(error.valid_up_to());
                if !valid.is_empty() {
                    // Checked valid by `from_utf8` just above.
                    emit(std::str::from_utf8(valid).unwrap_or_default());
                }
                match error.error_len() {
                    None => return after,
                    Some(len) => {
                        emit("\u{fffd}");
                        bytes = &after[len..];
                    }
                }
            }
        }
    }
}

/// Appends `text` to `out` as a JSON string literal, quotes included.
///
/// Runs of plain characters are copied whole; only `"`, `\` and control
/// characters are escaped (U+007F and non-ASCII stay as they are, which
/// JSON allows).
pub fn push_json_string(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    let mut at = 0;
    while at < bytes.len() {
        // Skip eight plain bytes at a time: a word-wide test for a byte
        // below 0x20, a '"' or a '\'.
        while at + 8 <= bytes.len() {
            let word = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default());
            if needs_escape(word) {
                break;
            }
            at += 8;
        }
        let Some(&byte) = bytes.get(at) else { break };
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => &[],
            _ => {
                at += 1;
                continue;
            }
        };
        out.extend_from_slice(&bytes[start..at]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0xf)],
            ]);
        } else {
            out.extend_from_slice(escape);
        }
        at += 1;
        start = at;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Whether any byte of `word` is below 0x20, `"` or `\`.
fn needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // A byte's high bit is set in `zero_byte(x)` when that byte of x is 0
    // (exact in the lowest such byte, which is all a yes/no needs).
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let below_0x20 = word.wrapping_sub(ONES * 0x20) & !word & HIGHS;
    below_0x20 != 0
        || zero_byte(word ^ (ONES * u64::from(b'"'))) != 0
        || zero_byte(word ^ (ONES * u64::from(b'\\'))) != 0
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn decode_in_chunks(bytes: &[u8], cuts: &[usize]) -> String {
        let mut stream = Utf8Stream::default();
        let mut text = String::new();
        let mut start = 0;
        for &cut in cuts {
            let cut = cut.clamp(start, bytes.len());
            stream.decode(&bytes[start..cut], |t| text.push_str(t));
            start = cut;
        }
        stream.decode(&bytes[start..], |t| text.push_str(t));
        stream.finish(|t| text.push_str(t));
        text
    }

    #[test]
    fn sequences_cut_by_chunks_are_joined() {
        let euro = "a€b".as_bytes();
        for cut in 0..=euro.len() {
            assert_eq!(decode_in_chunks(euro, &[cut]), "a€b", "cut at {cut}");
        }
        assert_eq!(decode_in_chunks("😀".as_bytes(), &[1, 2, 3]), "😀");
        assert_eq!(decode_in_chunks(b"\xe2\x82", &[1]), "\u{fffd}");
        assert_eq!(decode_in_chunks(b"x\xc3\xff", &[2]), "x\u{fffd}\u{fffd}");
    }

    #[test]
    fn escapes_match_serde_json() {
        let text = "plain \"q\" \\ \n\r\t\x08\x0c\x00\x1b[0m\x7f é 日本 😀";
        let mut out = Vec::new();
        push_json_string(&mut out, text);
        let back: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, text);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_cuts_decode_as_from_utf8_lossy(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
            cuts in proptest::collection::vec(0usize..64, 0..6),
        ) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            prop_assert_eq!(decode_in_chunks(&bytes, &cuts), String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn any_text_escapes_to_json_that_reads_back(text in any::<String>()) {
            let mut out = Vec::new();
            push_json_string(&mut out, &text);
            let back: String = serde_json::from_slice(&out).unwrap();
            prop_assert_eq!(back, text);
        }
    }
}
