//! Conformance cases for [`RecordingStore`] and its [`RecordingWriter`].
//!
//! Every case starts from an empty store. A store declaring a size cap runs
//! the truncation case; the other cases stay well below 16 KiB per
//! recording, so a cap of 64 KiB or more leaves them untouched.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;

use super::{Fixture, Outcome, suite, unique_name};
use crate::model::{ContainerId, SessionId, Timestamp, TtySize};
use crate::traits::recording::truncation_marker;
use crate::{
    ErrorKind, EventData, RecordingEvent, RecordingFilter, RecordingId, RecordingInfo,
    RecordingRequest, RecordingStore, RecordingWriter,
};

/// An empty recording store.
#[derive(Debug, Clone)]
pub struct RecordingFixture {
    /// The store under test.
    pub store: Arc<dyn RecordingStore>,
}

impl Fixture for RecordingFixture {}

suite!(all, "RecordingStore", CASES: RecordingFixture:
    created_recordings_have_unique_ids_and_are_listed,
    unknown_and_malformed_ids_are_refused,
    events_come_back_in_order,
    events_are_readable_before_finish,
    bytes_beyond_utf8_follow_the_declared_rule,
    list_filters_by_container_user_and_time,
    finishing_twice_and_appending_after_finish_conflict,
    events_going_back_in_time_are_invalid,
    size_cap_ends_the_recording_with_a_marker,
    exports_are_asciicast_of_the_same_events,
);

fn request(container: &str, username: &str) -> RecordingRequest {
    RecordingRequest {
        session: SessionId::new(unique_name("session")),
        container: ContainerId::new(container),
        username: username.to_owned(),
        size: TtySize { rows: 24, cols: 80 },
        title: Some("conformance".to_owned()),
        env: BTreeMap::from([
            ("SHELL".to_owned(), "/bin/sh".to_owned()),
            ("TERM".to_owned(), "xterm-256color".to_owned()),
        ]),
    }
}

fn at(millis: u64, data: EventData) -> RecordingEvent {
    RecordingEvent {
        time: Duration::from_millis(millis),
        data,
    }
}

fn output(bytes: &[u8]) -> EventData {
    EventData::Output(Bytes::copy_from_slice(bytes))
}

/// Reads a recording's metadata and every event.
async fn read_all(
    store: &dyn RecordingStore,
    id: &RecordingId,
) -> (RecordingInfo, Vec<RecordingEvent>) {
    let recording = store.open(id).await.unwrap();
    let events: Vec<RecordingEvent> = recording.events.map(|event| event.unwrap()).collect().await;
    (recording.info, events)
}

/// Joins consecutive output (or input) events of the same time, since a
/// store may split one event's bytes.
fn joined(events: &[RecordingEvent]) -> Vec<RecordingEvent> {
    let mut out: Vec<RecordingEvent> = Vec::new();
    for event in events {
        if let Some(last) = out.last_mut()
            && last.time == event.time
        {
            match (&mut last.data, &event.data) {
                (EventData::Output(a), EventData::Output(b))
                | (EventData::Input(a), EventData::Input(b)) => {
                    *a = Bytes::from([a.as_ref(), b.as_ref()].concat());
                    continue;
                }
                _ => {}
            }
        }
        out.push(event.clone());
    }
    out
}

fn all_output(events: &[RecordingEvent]) -> Vec<u8> {
    events
        .iter()
        .filter_map(|event| match &event.data {
            EventData::Output(bytes) => Some(bytes.as_ref()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .concat()
}

/// A session's worth of every kind of event, UTF-8 throughout.
fn sample_events() -> Vec<RecordingEvent> {
    vec![
        at(0, output(b"$ ")),
        at(120, EventData::Input(Bytes::from_static(b"ls\r"))),
        at(121, EventData::Marker("command: ls".to_owned())),
        at(
            130,
            output("ls\r\n\u{1b}[1;34mbin\u{1b}[0m  Größe  日本\r\n".as_bytes()),
        ),
        at(
            130,
            EventData::Resize(TtySize {
                rows: 40,
                cols: 120,
            }),
        ),
        at(2_500, output(b"\"quoted\" \\ back\tslash\x07\r\n$ ")),
        at(
            3_600_000_123,
            EventData::Input(Bytes::from_static(b"\x1b[A\x04")),
        ),
    ]
}

async fn append_all(writer: &mut dyn RecordingWriter, events: &[RecordingEvent]) {
    for event in events {
        writer.append(event.clone()).await.unwrap();
    }
}

/// Fresh recordings get distinct ids, are listed at once with their
/// metadata, and show their end once finished.
pub async fn created_recordings_have_unique_ids_and_are_listed(fx: RecordingFixture) -> Outcome {
    let before = Timestamp::now();
    let mut writers = Vec::new();
    let mut requests = Vec::new();
    for n in 0..3 {
        let request = request(&format!("web-{n}"), "alice");
        writers.push(fx.store.create(request.clone()).await.unwrap());
        requests.push(request);
    }
    let ids: std::collections::BTreeSet<_> = writers.iter().map(|w| w.id().clone()).collect();
    assert_eq!(ids.len(), 3, "ids repeat: {ids:?}");

    let listed = fx.store.list(&RecordingFilter::default()).await.unwrap();
    assert_eq!(listed.len(), 3, "{listed:?}");
    for (writer, request) in writers.iter().zip(&requests) {
        let info = listed
            .iter()
            .find(|info| info.id == *writer.id())
            .unwrap_or_else(|| panic!("{} is not listed", writer.id()));
        assert_eq!(info.session, request.session);
        assert_eq!(info.container, request.container);
        assert_eq!(info.username, request.username);
        assert_eq!(info.size, request.size);
        assert_eq!(info.title, request.title);
        assert_eq!(info.env, request.env);
        assert!(info.started >= before, "{info:?}");
        assert_eq!(info.ended, None);
        assert!(!info.truncated);
    }

    let finished = writers[0].finish("exit").await.unwrap();
    assert!(
        finished
            .ended
            .is_some_and(|ended| ended >= finished.started)
    );
    assert_eq!(finished.end_reason.as_deref(), Some("exit"));
    let (info, events) = read_all(&*fx.store, writers[0].id()).await;
    assert_eq!(info.ended, finished.ended);
    assert_eq!(info.end_reason.as_deref(), Some("exit"));
    assert!(events.is_empty(), "{events:?}");
    Outcome::Passed
}

/// An id the store never made is `NotFound` naming it; text that is not an
/// id never becomes one.
pub async fn unknown_and_malformed_ids_are_refused(fx: RecordingFixture) -> Outcome {
    let unknown = RecordingId::generate();
    let err = fx.store.open(&unknown).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains(unknown.as_str()), "{err}");

    let writer = fx.store.create(request("web", "alice")).await.unwrap();
    for bad in [
        format!("../{}", writer.id()),
        format!("{}/../x", writer.id()),
        format!("{}.cast", writer.id()),
        writer.id().as_str().to_uppercase(),
        "..".to_owned(),
        String::new(),
    ] {
        let err = RecordingId::parse(&bad).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid, "{bad:?}: {err}");
    }
    Outcome::Passed
}

/// Every kind of event comes back in order, with its time and bytes.
pub async fn events_come_back_in_order(fx: RecordingFixture) -> Outcome {
    let mut writer = fx.store.create(request("web", "alice")).await.unwrap();
    let sent = sample_events();
    append_all(&mut *writer, &sent).await;
    writer.finish("exit").await.unwrap();
    let (info, events) = read_all(&*fx.store, writer.id()).await;
    assert_eq!(joined(&events), joined(&sent));
    assert!(info.size_bytes > 0, "{info:?}");
    Outcome::Passed
}

/// What was appended is readable within a second, before `finish`.
pub async fn events_are_readable_before_finish(fx: RecordingFixture) -> Outcome {
    let mut writer = fx.store.create(request("web", "alice")).await.unwrap();
    let sent = sample_events();
    append_all(&mut *writer, &sent).await;
    let appended = Instant::now();
    loop {
        let (info, events) = read_all(&*fx.store, writer.id()).await;
        if joined(&events) == joined(&sent) {
            assert_eq!(info.ended, None);
            break;
        }
        assert!(
            appended.elapsed() < Duration::from_millis(1_500),
            "after {:?} the open recording shows {events:?}",
            appended.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    writer.finish("exit").await.unwrap();
    Outcome::Passed
}

/// Invalid UTF-8 and a character split across events come back byte for
/// byte from a raw store, and as [`String::from_utf8_lossy`] of the whole
/// output from a text store.
pub async fn bytes_beyond_utf8_follow_the_declared_rule(fx: RecordingFixture) -> Outcome {
    let mut writer = fx.store.create(request("web", "alice")).await.unwrap();
    let euro = "€".as_bytes();
    let chunks: Vec<&[u8]> = vec![
        b"ok \xff\xfe bad ",
        &euro[..1],
        &euro[1..],
        b" \xe2\x82 cut, then \xc3",
    ];
    let sent: Vec<RecordingEvent> = chunks
        .iter()
        .enumerate()
        .map(|(n, chunk)| at(n as u64 * 10, output(chunk)))
        .collect();
    append_all(&mut *writer, &sent).await;
    writer.finish("exit").await.unwrap();
    let (_, events) = read_all(&*fx.store, writer.id()).await;
    if fx.store.capabilities().raw_bytes {
        assert_eq!(events, sent);
    } else {
        let whole = chunks.concat();
        assert_eq!(
            String::from_utf8(all_output(&events)).unwrap(),
            String::from_utf8_lossy(&whole)
        );
    }
    Outcome::Passed
}

/// `list` selects by container, user and start time, oldest first.
pub async fn list_filters_by_container_user_and_time(fx: RecordingFixture) -> Outcome {
    let mut ids = BTreeMap::new();
    let mut middle = None;
    for (n, (container, user)) in [("web", "alice"), ("web", "bob"), ("db", "alice")]
        .into_iter()
        .enumerate()
    {
        if n == 2 {
            // Timestamps count milliseconds: step clear of the last start.
            tokio::time::sleep(Duration::from_millis(5)).await;
            middle = Some(Timestamp::now());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let writer = fx.store.create(request(container, user)).await.unwrap();
        ids.insert((container, user), writer.id().clone());
    }
    let middle = middle.unwrap();
    let listed = |filter: RecordingFilter| {
        let store = fx.store.clone();
        async move {
            store
                .list(&filter)
                .await
                .unwrap()
                .into_iter()
                .map(|info| info.id)
                .collect::<Vec<_>>()
        }
    };
    let all = listed(RecordingFilter::default()).await;
    assert_eq!(all.len(), 3);
    assert_eq!(all[2], ids[&("db", "alice")], "oldest first: {all:?}");

    let web = listed(RecordingFilter {
        container: Some(ContainerId::new("web")),
        ..RecordingFilter::default()
    })
    .await;
    assert_eq!(web.len(), 2);
    assert!(!web.contains(&ids[&("db", "alice")]));

    let alice = listed(RecordingFilter {
        username: Some("alice".to_owned()),
        ..RecordingFilter::default()
    })
    .await;
    assert_eq!(alice.len(), 2);
    assert!(!alice.contains(&ids[&("web", "bob")]));

    let both = listed(RecordingFilter {
        container: Some(ContainerId::new("web")),
        username: Some("bob".to_owned()),
        ..RecordingFilter::default()
    })
    .await;
    assert_eq!(both, vec![ids[&("web", "bob")].clone()]);

    let late = listed(RecordingFilter {
        since: Some(middle),
        ..RecordingFilter::default()
    })
    .await;
    assert_eq!(late, vec![ids[&("db", "alice")].clone()]);
    let early = listed(RecordingFilter {
        until: Some(middle),
        ..RecordingFilter::default()
    })
    .await;
    assert_eq!(early.len(), 2);
    assert!(!early.contains(&ids[&("db", "alice")]));
    Outcome::Passed
}

/// A finished recording takes no more events and no second end.
pub async fn finishing_twice_and_appending_after_finish_conflict(fx: RecordingFixture) -> Outcome {
    let mut writer = fx.store.create(request("web", "alice")).await.unwrap();
    writer.append(at(1, output(b"hi"))).await.unwrap();
    let first = writer.finish("exit").await.unwrap();
    let err = writer.finish("again").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(err.to_string().contains(writer.id().as_str()), "{err}");
    let err = writer.append(at(2, output(b"late"))).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    let (info, events) = read_all(&*fx.store, writer.id()).await;
    assert_eq!(info.end_reason.as_deref(), Some("exit"));
    assert_eq!(info.ended, first.ended);
    assert_eq!(all_output(&events), b"hi");
    Outcome::Passed
}

/// An event earlier than the one before is refused, naming both times.
pub async fn events_going_back_in_time_are_invalid(fx: RecordingFixture) -> Outcome {
    let mut writer = fx.store.create(request("web", "alice")).await.unwrap();
    writer.append(at(500, output(b"a"))).await.unwrap();
    writer.append(at(500, output(b"b"))).await.unwrap();
    let err = writer.append(at(499, output(b"c"))).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    assert!(err.to_string().contains("499ms"), "{err}");
    writer.finish("exit").await.unwrap();
    let (_, events) = read_all(&*fx.store, writer.id()).await;
    assert_eq!(all_output(&events), b"ab");
    Outcome::Passed
}

/// Past the cap, the recording keeps what fit, ends with the truncation
/// marker, says it was truncated, and the writer keeps accepting events.
pub async fn size_cap_ends_the_recording_with_a_marker(fx: RecordingFixture) -> Outcome {
    let Some(cap) = fx.store.capabilities().size_cap else {
        return Outcome::NotApplicable("the store has no size cap");
    };
    let mut writer = fx.store.create(request("web", "alice")).await.unwrap();
    let chunk: Vec<u8> = b"0123456789abcdef".repeat(64);
    let chunks = (2 * cap / chunk.len() as u64 + 2).min(100_000);
    for n in 0..chunks {
        writer.append(at(n, output(&chunk))).await.unwrap();
    }
    writer
        .append(at(chunks, EventData::Marker("after the cap".to_owned())))
        .await
        .unwrap();
    let info = writer.finish("exit").await.unwrap();
    assert!(info.truncated, "{info:?}");
    assert!(
        info.size_bytes <= cap,
        "{} bytes kept, cap {cap}",
        info.size_bytes
    );
    let (listed, events) = read_all(&*fx.store, writer.id()).await;
    assert!(listed.truncated);
    assert_eq!(listed.end_reason.as_deref(), Some("exit"));
    let last = events.last().expect("the recording keeps its marker");
    assert_eq!(last.data, EventData::Marker(truncation_marker(cap)));
    let kept = all_output(&events);
    assert!(!kept.is_empty(), "nothing kept below the cap");
    assert!(kept.len() as u64 <= cap);
    assert_eq!(
        kept,
        chunk.repeat(kept.len() / chunk.len()),
        "whole events kept"
    );
    Outcome::Passed
}

/// `export` gives asciicast v2: a header with the start size, then one
/// `[seconds, code, text]` line per event (texts of a kind concatenating
/// to what was appended), in order; unknown ids are NotFound.
pub async fn exports_are_asciicast_of_the_same_events(fx: RecordingFixture) -> Outcome {
    let mut writer = fx.store.create(request("web-1", "alice")).await.unwrap();
    let id = writer.id().clone();
    let events = sample_events();
    append_all(&mut *writer, &events).await;
    writer.finish("exit").await.unwrap();
    let file = fx.store.export(&id).await.unwrap();
    let text = std::str::from_utf8(&file).expect("asciicast is UTF-8");
    let mut lines = text.lines();
    let header: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    assert_eq!(
        (header["width"].as_u64(), header["height"].as_u64()),
        (Some(80), Some(24))
    );
    let mut by_code: BTreeMap<String, String> = BTreeMap::new();
    let mut last = 0.0;
    for line in lines {
        let (time, code, data): (f64, String, String) = serde_json::from_str(line).unwrap();
        assert!(time >= last, "times go forward: {line}");
        last = time;
        by_code.entry(code).or_default().push_str(&data);
    }
    let text_of = |input: bool| {
        let bytes: Vec<u8> = events
            .iter()
            .filter_map(|e| match (&e.data, input) {
                (EventData::Output(b), false) | (EventData::Input(b), true) => Some(b.to_vec()),
                _ => None,
            })
            .flatten()
            .collect();
        String::from_utf8(bytes).unwrap()
    };
    assert_eq!(by_code["o"], text_of(false));
    assert_eq!(by_code["i"], text_of(true));
    assert_eq!(by_code["m"], "command: ls");
    assert_eq!(by_code["r"], "120x40");
    assert!(
        (last - 3_600_000.123).abs() < 0.001,
        "the last time is kept: {last}"
    );
    let unknown = fx.store.export(&RecordingId::generate()).await.unwrap_err();
    assert_eq!(unknown.kind(), ErrorKind::NotFound);
    Outcome::Passed
}
