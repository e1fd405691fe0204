//! Recording throughput: terminal output through kisara-audit's `CastStore`
//! writer against `write_all` of the same bytes to a file in the same
//! directory, measured side by side in one run and reported as a ratio
//! (goal ≥ 0.9).
//!
//! Full run (1 GiB per side, 3 interleaved repetitions, about a minute on
//! 2 cores): `cargo bench -p kisara-benches --bench cast`. CI smoke (8 MiB,
//! one repetition, exits 1 below a loose floor of 0.5):
//! `KISARA_BENCH_SMOKE=1 cargo bench -p kisara-benches --bench cast`.
//! `KISARA_BENCH_MIB` and `KISARA_BENCH_REPS` override the size and the
//! repetitions; `KISARA_BENCH_DIR` the directory written to (default: the
//! system's temporary directory).
//!
//! The output is fed in 32 KiB chunks cut from a mix of shell text: ASCII
//! lines with colour escapes, tabs, quotes and backslashes (which asciicast
//! must escape) and multi-byte UTF-8 (which chunk boundaries split). Both
//! sides write to the page cache without `fsync`; the recorder's figure
//! includes decoding, JSON escaping, the event framing and `finish`.

// A benchmark harness reports on its terminal.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kisara_audit::{CastStore, CastStoreOptions};
use kisara_benches::{Samples, Steal, Table, env_count, met, smoke};
use kisara_core::model::{ContainerId, SessionId, TtySize};
use kisara_core::{EventData, RecordingEvent, RecordingRequest, RecordingStore};

const CHUNK: usize = 32 * 1024;
const GOAL: f64 = 0.9;
const SMOKE_FLOOR: f64 = 0.5;

/// 1 MiB of mixed terminal output to cut chunks from.
fn sample_output() -> Vec<u8> {
    let lines = [
        "drwxr-xr-x  2 root root  4096 Dec  7 10:28 \u{1b}[01;34mbin\u{1b}[0m\r\n",
        "-rw-r--r--  1 root root   220 Dec  7 10:28 .bashrc\r\n",
        "echo \"hello, world\" | sed 's/\\\\/\\//g'\t# quoted \\ backslash\r\n",
        "Größe: 12 KiB — 日本語のテキスト — 😀 emoji\r\n",
        "\u{1b}[32m✓\u{1b}[0m test cast::read::tests::v2_reads_every_code ... ok\r\n",
        "plain ASCII text line that needs no escaping at all, as most output is\r\n",
    ];
    let mut out = Vec::with_capacity(1 << 20);
    let mut n = 0;
    while out.len() < 1 << 20 {
        out.extend_from_slice(lines[n % lines.len()].as_bytes());
        n += 7;
    }
    out.truncate(1 << 20);
    out
}

/// How many distinct chunks both sides cycle through.
const DISTINCT: usize = 64;

/// 32 KiB chunks from rotating offsets of the sample, so chunk boundaries
/// fall inside characters and escapes. Ready before the clock starts, as
/// they would be when they arrive from an exec stream.
fn distinct_chunks() -> Vec<Bytes> {
    let sample = sample_output();
    (0..DISTINCT)
        .map(|n| {
            let start = (n * 4099) % (sample.len() - CHUNK);
            Bytes::copy_from_slice(&sample[start..start + CHUNK])
        })
        .collect()
}

fn write_raw(dir: &Path, sample: &[Bytes], chunks: usize) -> Duration {
    let path = dir.join("raw.out");
    let started = Instant::now();
    let mut file = File::create(&path).unwrap();
    for n in 0..chunks {
        file.write_all(&sample[n % DISTINCT]).unwrap();
    }
    file.flush().unwrap();
    drop(file);
    let elapsed = started.elapsed();
    std::fs::remove_file(path).unwrap();
    elapsed
}

async fn write_cast(dir: &Path, sample: &[Bytes], chunks: usize) -> (Duration, u64) {
    let store_dir = dir.join("cast");
    let options = CastStoreOptions {
        size_cap: u64::MAX,
        ..CastStoreOptions::default()
    };
    let store = CastStore::open(&store_dir, options).unwrap();
    let request = RecordingRequest {
        session: SessionId::new("bench"),
        container: ContainerId::new("bench"),
        username: "bench".to_owned(),
        size: TtySize { rows: 24, cols: 80 },
        title: None,
        env: BTreeMap::new(),
    };
    let started = Instant::now();
    let mut writer = store.create(request).await.unwrap();
    for n in 0..chunks {
        let event = RecordingEvent {
            time: Duration::from_micros(n as u64 * 100),
            data: EventData::Output(sample[n % DISTINCT].clone()),
        };
        writer.append(event).await.unwrap();
    }
    let info = writer.finish("exit").await.unwrap();
    let elapsed = started.elapsed();
    std::fs::remove_dir_all(store_dir).unwrap();
    (elapsed, info.size_bytes)
}

/// (chunks per side, repetitions).
fn settings() -> (usize, usize) {
    let mib = env_count("KISARA_BENCH_MIB", if smoke() { 8 } else { 1024 });
    let reps = env_count("KISARA_BENCH_REPS", if smoke() { 1 } else { 3 });
    (mib * (1 << 20) / CHUNK, reps.max(1))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let (chunks, reps) = settings();
    let bytes = chunks * CHUNK;
    let base = std::env::var_os("KISARA_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = tempfile::tempdir_in(base).unwrap();
    let sample = distinct_chunks();
    println!(
        "cast: {} MiB of output in {} KiB chunks per side, {reps} repetition(s), in {}",
        bytes >> 20,
        CHUNK >> 10,
        dir.path().display()
    );
    let steal = Steal::start();
    let mib = |d: Duration| bytes as f64 / (1 << 20) as f64 / d.as_secs_f64();
    let (mut raw, mut cast, mut ratios) =
        (Samples::default(), Samples::default(), Samples::default());
    let mut cast_bytes = 0;
    for rep in 0..reps {
        // Alternate which side goes first, so neither always meets the
        // other's dirty pages being written back.
        let (raw_time, (cast_time, size)) = if rep % 2 == 0 {
            let raw_time = write_raw(dir.path(), &sample, chunks);
            (raw_time, write_cast(dir.path(), &sample, chunks).await)
        } else {
            let cast_result = write_cast(dir.path(), &sample, chunks).await;
            (write_raw(dir.path(), &sample, chunks), cast_result)
        };
        cast_bytes = size;
        raw.push_value(mib(raw_time));
        cast.push_value(mib(cast_time));
        ratios.push_value(raw_time.as_secs_f64() / cast_time.as_secs_f64());
        println!(
            "  rep {rep}: write_all {:.0} MiB/s, CastStore {:.0} MiB/s",
            mib(raw_time),
            mib(cast_time)
        );
    }
    let ratio = ratios.median();
    let mut table = Table::new(&["measure", "Kisara", "reference", "ratio", "goal", "met?"]);
    table.row(vec![
        "output recorded, MiB/s (CastStore ÷ write_all)".to_owned(),
        format!("{cast:.0}"),
        format!("{raw:.0}"),
        format!("{ratio:.2}"),
        format!("≥ {GOAL}"),
        met(Some(ratio >= GOAL)),
    ]);
    table.row(vec![
        "file size ÷ output bytes (escapes, framing)".to_owned(),
        format!("{:.2}", cast_bytes as f64 / bytes as f64),
        "1.00".to_owned(),
        "–".to_owned(),
        "–".to_owned(),
        met(None),
    ]);
    table.row(vec![
        "host steal, %".to_owned(),
        format!("{:.1}", steal.percent()),
        "–".to_owned(),
        "–".to_owned(),
        "–".to_owned(),
        met(None),
    ]);
    println!("\n## Summary\n\n{table}");
    if smoke() && ratio < SMOKE_FLOOR {
        eprintln!("cast: ratio {ratio:.2} is below the smoke floor {SMOKE_FLOOR}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
