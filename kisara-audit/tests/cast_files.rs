//! `CastStore`'s files under damage and bad input: cut at random offsets,
//! capped, corrupted, and ids that try to leave the store's directory; and
//! random recordings written and read back.

use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use kisara_audit::{AuditError, CastReader, CastReaderOptions, CastStore, CastStoreOptions};
use kisara_core::model::{ContainerId, SessionId, TtySize};
use kisara_core::testing::random_u64;
use kisara_core::{
    ErrorKind, EventData, RecordingEvent, RecordingFilter, RecordingId, RecordingRequest,
    RecordingStore,
};
use proptest::prelude::*;

fn request() -> RecordingRequest {
    RecordingRequest {
        session: SessionId::new("files-session"),
        container: ContainerId::new("web"),
        username: "alice".to_owned(),
        size: TtySize { rows: 24, cols: 80 },
        title: None,
        env: BTreeMap::from([("TERM".to_owned(), "xterm".to_owned())]),
    }
}

fn event(millis: u64, data: EventData) -> RecordingEvent {
    RecordingEvent {
        time: Duration::from_millis(millis),
        data,
    }
}

fn output(text: &[u8]) -> EventData {
    EventData::Output(Bytes::copy_from_slice(text))
}

fn options() -> CastStoreOptions {
    CastStoreOptions::default()
}

/// Writes `events` as one finished recording; returns the store and its id.
async fn recorded(
    dir: &std::path::Path,
    options: CastStoreOptions,
    events: &[RecordingEvent],
) -> (CastStore, RecordingId) {
    let store = CastStore::open(dir, options).unwrap();
    let mut writer = store.create(request()).await.unwrap();
    for event in events {
        writer.append(event.clone()).await.unwrap();
    }
    writer.finish("exit").await.unwrap();
    (store, writer.id().clone())
}

async fn read_back(
    store: &CastStore,
    id: &RecordingId,
) -> Vec<kisara_core::Result<RecordingEvent>> {
    store.open(id).await.unwrap().events.collect().await
}

fn read_bytes(bytes: &[u8]) -> Result<(Vec<RecordingEvent>, bool), AuditError> {
    let mut reader = CastReader::new(bytes, CastReaderOptions::default())?;
    let events = reader.by_ref().collect::<Result<Vec<_>, _>>()?;
    Ok((events, reader.torn().is_some()))
}

#[tokio::test]
async fn a_file_cut_anywhere_reads_up_to_its_last_whole_event() {
    let dir = tempfile::tempdir().unwrap();
    let events: Vec<RecordingEvent> = (0..40)
        .map(|n| match n % 4 {
            0 => event(n * 10, output(format!("line {n} ünïcödé\r\n").as_bytes())),
            1 => event(n * 10, EventData::Input(Bytes::from_static(b"ls\r"))),
            2 => event(
                n * 10,
                EventData::Resize(TtySize {
                    rows: 30,
                    cols: 100 + n as u16,
                }),
            ),
            _ => event(n * 10, EventData::Marker(format!("command {n}"))),
        })
        .collect();
    let (store, id) = recorded(dir.path(), options(), &events).await;
    let file = fs::read(store.cast_path(&id)).unwrap();
    let header_end = file.iter().position(|&b| b == b'\n').unwrap();
    // Where each event's line ends, newline excluded.
    let line_ends: Vec<usize> = file
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(at, _)| at)
        .skip(1)
        .collect();
    assert_eq!(line_ends.len(), events.len());

    let mut cuts: Vec<usize> = (0..300)
        .map(|_| random_u64() as usize % (file.len() + 1))
        .collect();
    cuts.extend([0, header_end, header_end + 1, file.len() - 1, file.len()]);
    for cut in cuts {
        let result = read_bytes(&file[..cut]);
        if cut < header_end {
            let err = result.unwrap_err();
            assert!(
                matches!(err, AuditError::CastHeader { .. }),
                "cut {cut}: {err}"
            );
            continue;
        }
        let (read, torn) = result.unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let whole = line_ends.iter().filter(|&&end| end <= cut).count();
        assert_eq!(read, events[..whole], "cut at {cut}");
        let inside_a_line =
            cut > header_end + 1 && !line_ends.contains(&cut) && !line_ends.contains(&(cut - 1));
        assert_eq!(torn, inside_a_line, "cut at {cut}");
    }
}

#[tokio::test]
async fn the_size_cap_ends_the_file_with_a_marker_below_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let cap = 8192;
    let store = CastStore::open(
        dir.path(),
        CastStoreOptions {
            size_cap: cap,
            ..options()
        },
    )
    .unwrap();
    let mut writer = store.create(request()).await.unwrap();
    for n in 0..100 {
        writer.append(event(n, output(&[b'x'; 500]))).await.unwrap();
    }
    writer.finish("exit").await.unwrap();
    let file = fs::read_to_string(store.cast_path(writer.id())).unwrap();
    assert!(file.len() as u64 <= cap, "{} bytes", file.len());
    let last: (f64, String, String) = serde_json::from_str(file.lines().last().unwrap()).unwrap();
    assert_eq!(last.1, "m");
    assert_eq!(
        last.2,
        format!("recording truncated: size cap {cap} bytes reached")
    );
    let listed = store.list(&RecordingFilter::default()).await.unwrap();
    assert!(listed[0].truncated);
    assert_eq!(listed[0].size_bytes, file.len() as u64);
}

#[tokio::test]
async fn non_utf8_output_still_makes_valid_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let events = [
        event(1, output(b"bin\xff\xfe\x00ary \xc3")),
        event(2, output(b"\xa9 \xed\xa0\x80 surrogate")),
    ];
    let (store, id) = recorded(dir.path(), options(), &events).await;
    let file = fs::read(store.cast_path(&id)).unwrap();
    let text = std::str::from_utf8(&file).expect("the file is UTF-8");
    for line in text.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{line}: {e}"));
    }
    let mut shown = Vec::new();
    for event in read_back(&store, &id).await {
        if let EventData::Output(bytes) = event.unwrap().data {
            shown.extend_from_slice(&bytes);
        }
    }
    assert_eq!(
        String::from_utf8(shown).unwrap(),
        "bin\u{fffd}\u{fffd}\0ary é \u{fffd}\u{fffd}\u{fffd} surrogate"
    );
}

#[tokio::test]
async fn a_bad_line_in_the_middle_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let events: Vec<_> = (0..4).map(|n| event(n, output(b"ok\r\n"))).collect();
    let (store, id) = recorded(dir.path(), options(), &events).await;
    let path = store.cast_path(&id);
    let text = fs::read_to_string(&path).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines[3] = "[0.002, \"o\", \"unterminated]";
    fs::write(&path, lines.join("\n") + "\n").unwrap();
    let read = read_back(&store, &id).await;
    assert_eq!(read.len(), 3, "two events, then the error");
    let err = read[2].as_ref().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    assert!(err.to_string().contains("line 4"), "{err}");
}

#[tokio::test]
async fn a_line_beyond_the_limit_is_an_error_not_a_huge_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = options();
    options.reader.max_line_bytes = 4096;
    let (store, id) = recorded(dir.path(), options, &[event(1, output(b"ok"))]).await;
    let path = store.cast_path(&id);
    let mut file = fs::read(&path).unwrap();
    file.extend_from_slice(format!("[0.5, \"o\", \"{}\"]\n", "y".repeat(1 << 20)).as_bytes());
    fs::write(&path, file).unwrap();
    let read = read_back(&store, &id).await;
    assert_eq!(read.len(), 2);
    let err = read[1].as_ref().unwrap_err().to_string();
    assert!(err.contains("line 3") && err.contains("4096"), "{err}");
}

#[tokio::test]
async fn nothing_outside_the_root_is_served() {
    let parent = tempfile::tempdir().unwrap();
    let outside = parent.path().join("outside");
    let root = parent.path().join("store");
    // A whole recording outside the root, under an id of its own.
    let (elsewhere, id) = recorded(&outside, options(), &[event(1, output(b"secret"))]).await;
    assert_eq!(read_back(&elsewhere, &id).await.len(), 1);
    let store = CastStore::open(&root, options()).unwrap();
    let err = store.open(&id).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    for bad in [
        format!("../outside/{id}"),
        format!("..%2Foutside%2F{id}"),
        "/etc/passwd".to_owned(),
    ] {
        let err = RecordingId::parse(&bad).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid);
        assert!(err.to_string().contains(&bad), "{err}");
    }
    // Files that are not the store's own do not show in the list.
    fs::write(root.join("notes.json"), "{}").unwrap();
    fs::write(
        root.join(format!("{}.json", id.as_str().to_uppercase())),
        "{}",
    )
    .unwrap();
    fs::create_dir(root.join("sub")).unwrap();
    assert!(
        store
            .list(&RecordingFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
    // Damaged metadata is an error naming the file, not a silent gap.
    let damaged = RecordingId::generate();
    fs::write(root.join(format!("{damaged}.json")), "{\"id\": 1").unwrap();
    let err = store
        .list(&RecordingFilter::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("{damaged}.json")), "{err}");
}

#[test]
fn store_options_out_of_range_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = CastStore::open(
        dir.path(),
        CastStoreOptions {
            size_cap: 10,
            ..options()
        },
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("size_cap") && err.to_string().contains("10 bytes"),
        "{err}"
    );
    let slow = CastStoreOptions {
        flush_interval: Duration::from_secs(5),
        ..options()
    };
    let err = CastStore::open(dir.path(), slow).unwrap_err();
    assert!(err.to_string().contains("flush_interval"), "{err}");
}

/// A random session: output text cut at arbitrary byte offsets (so
/// characters split between events), with input, resizes and markers
/// between, at non-decreasing times.
fn session() -> impl Strategy<Value = (String, Vec<usize>, Vec<(u64, EventData)>)> {
    let others = prop_oneof![
        "[a-z \\r\\x1b\\[A]{1,8}".prop_map(|s| EventData::Input(Bytes::from(s))),
        (1u16..500, 1u16..500).prop_map(|(rows, cols)| EventData::Resize(TtySize { rows, cols })),
        "\\PC{0,20}".prop_map(EventData::Marker),
    ];
    (
        "(\\PC|[\\r\\n\\t\\x1b\\x00\"\\\\]){0,200}",
        proptest::collection::vec(0usize..1000, 0..12),
        proptest::collection::vec((0u64..5000, others), 0..6),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn random_sessions_round_trip((text, cuts, others) in session()) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let bytes = text.as_bytes();
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.push(bytes.len());
        cuts.sort_unstable();
        let mut events = Vec::new();
        let mut start = 0;
        let mut time = 0;
        let mut others = others.into_iter();
        for cut in cuts {
            time += 3;
            events.push(event(time, output(&bytes[start..cut])));
            start = cut;
            if let Some((step, data)) = others.next() {
                time += step;
                events.push(event(time, data));
            }
        }
        let read: Vec<RecordingEvent> = runtime.block_on(async {
            let (store, id) = recorded(dir.path(), options(), &events).await;
            read_back(&store, &id).await.into_iter().map(Result::unwrap).collect()
        });
        let (shown, rest): (Vec<_>, Vec<_>) =
            read.into_iter().partition(|e| matches!(e.data, EventData::Output(_)));
        let shown: Vec<u8> = shown
            .into_iter()
            .flat_map(|e| match e.data { EventData::Output(b) => b.to_vec(), _ => Vec::new() })
            .collect();
        prop_assert_eq!(String::from_utf8(shown).unwrap(), text);
        let sent_rest: Vec<_> = events
            .into_iter()
            .filter(|e| !matches!(e.data, EventData::Output(_)))
            .collect();
        prop_assert_eq!(rest, sent_rest);
    }
}
