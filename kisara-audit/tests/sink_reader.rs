//! Reading the stores back: bad lines, rotation, following, queries, and
//! the `sqlite3` shell on a written database.

mod sink_support;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use kisara_audit::sink::{AuditQuery, Follow, OwnerLookup, QueryOrder};
use kisara_audit::{Durability, JsonlConfig, JsonlReader, JsonlSink, SqliteConfig, SqliteSink};
use kisara_core::AuditSink;
use kisara_core::model::{SessionId, Timestamp};
use sink_support::{command, number};

fn quick(dir: &std::path::Path) -> JsonlConfig {
    let mut config = JsonlConfig::new(dir);
    config.durability = Durability::None;
    config
}

#[tokio::test]
async fn bad_and_huge_lines_are_reported_with_file_and_line_and_reading_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let sink = JsonlSink::open(quick(dir.path())).await.unwrap();
    for n in 0..4 {
        sink.record(&command("s", n, 0)).await.unwrap();
    }
    sink.shutdown().await;
    let reader = JsonlReader::new(dir.path(), "audit")
        .unwrap()
        .with_max_line_bytes(1024);
    let file = reader.files().unwrap().remove(0);
    let text = std::fs::read_to_string(&file).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines.insert(2, "{\"id\": 3, \"truncated".to_owned());
    lines.insert(3, format!("\"{}\"", "x".repeat(5000)));
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();

    let report = reader.read_all().unwrap();
    let numbers: Vec<usize> = report.events.iter().map(|e| number(&e.event)).collect();
    assert_eq!(numbers, [0, 1, 2, 3]);
    let problems: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
    assert_eq!(problems.len(), 2, "{problems:?}");
    let name = file.display().to_string();
    assert!(
        problems[0].starts_with(&format!("{name}:3: not an audit event")),
        "{problems:?}"
    );
    assert_eq!(
        problems[1],
        format!("{name}:4: line longer than 1024 bytes, skipped")
    );
}

#[tokio::test]
async fn following_crosses_rotations_from_the_start_and_from_now() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = quick(dir.path());
    config.max_file_bytes = 700;
    let sink = JsonlSink::open(config).await.unwrap();
    let reader = JsonlReader::new(dir.path(), "audit").unwrap();
    for n in 0..5 {
        sink.record(&command("s", n, 0)).await.unwrap();
    }
    let mut from_start = Box::pin(reader.follow(Follow::FromStart, Duration::from_millis(5)));
    let mut from_now = Box::pin(reader.follow(Follow::FromNow, Duration::from_millis(5)));
    // Let the second follower find its place before more is written.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for n in 5..30 {
        sink.record(&command("s", n, 0)).await.unwrap();
    }
    assert_eq!(take(&mut from_start, 30).await, (0..30).collect::<Vec<_>>());
    assert_eq!(take(&mut from_now, 25).await, (5..30).collect::<Vec<_>>());
    assert!(reader.files().unwrap().len() >= 4, "rotated by size");
}

/// The command numbers of the next `count` events of `stream`.
async fn take<S>(stream: &mut S, count: usize) -> Vec<usize>
where
    S: futures::Stream<Item = Result<kisara_audit::StoredEvent, kisara_audit::sink::LineProblem>>
        + Unpin,
{
    let mut numbers = Vec::new();
    while numbers.len() < count {
        let next = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("the follower stalled")
            .expect("the follower ended");
        numbers.push(number(&next.unwrap().event));
    }
    numbers
}

static NOW_MS: AtomicU64 = AtomicU64::new(0);

fn test_clock() -> Timestamp {
    Timestamp::from_unix_millis(NOW_MS.load(Ordering::SeqCst))
}

#[tokio::test]
async fn files_rotate_by_day_named_after_the_writers_clock() {
    // 2026-12-07 23:59:59 UTC.
    NOW_MS.store(1_796_687_999_000, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let mut config = quick(dir.path());
    config.clock = test_clock;
    let sink = JsonlSink::open(config).await.unwrap();
    sink.record(&command("s", 0, 0)).await.unwrap();
    NOW_MS.fetch_add(2_000, Ordering::SeqCst);
    sink.record(&command("s", 1, 0)).await.unwrap();
    sink.shutdown().await;
    let reader = JsonlReader::new(dir.path(), "audit").unwrap();
    let names: Vec<String> = reader
        .files()
        .unwrap()
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        names,
        [
            "audit-2026-12-07-000000.jsonl",
            "audit-2026-12-08-000000.jsonl"
        ]
    );
    assert_eq!(reader.read_all().unwrap().events.len(), 2);
}

async fn filled_database(dir: &std::path::Path) -> SqliteSink {
    let owner_of: OwnerLookup = Arc::new(|container| Some(format!("owner-of-{container}")));
    let mut config = SqliteConfig::new(dir.join("audit.db"));
    config.durability = Durability::None;
    config.owner_of = Some(owner_of);
    let sink = SqliteSink::open(config).await.unwrap();
    for n in 0..30 {
        let session = if n % 2 == 0 { "even" } else { "odd" };
        sink.record(&command(session, n, 0)).await.unwrap();
    }
    sink
}

#[tokio::test]
async fn sqlite_queries_filter_and_page_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let sink = filled_database(dir.path()).await;
    let numbers = |page: &kisara_audit::sink::AuditPage| -> Vec<usize> {
        page.events.iter().map(|e| number(&e.event)).collect()
    };

    let mut query = AuditQuery {
        session: Some(SessionId::new("even")),
        limit: 4,
        ..AuditQuery::default()
    };
    let first = sink.query(&query).await.unwrap();
    assert_eq!(numbers(&first), [28, 26, 24, 22], "newest first");
    query.cursor = first.next;
    assert_eq!(
        numbers(&sink.query(&query).await.unwrap()),
        [20, 18, 16, 14]
    );

    let denied = AuditQuery {
        decision: Some("deny".into()),
        kind: Some("command".into()),
        owner: Some("owner-of-web-1".into()),
        username: Some("auditor".into()),
        container: Some("web-1".into()),
        order: QueryOrder::OldestFirst,
        ..AuditQuery::default()
    };
    let page = sink.query(&denied).await.unwrap();
    assert_eq!(numbers(&page), (0..30).step_by(3).collect::<Vec<_>>());
    assert_eq!(page.next, None, "not a full page");
    assert_eq!(sink.count(&denied).await.unwrap(), 10);

    let window = AuditQuery {
        since: Some(Timestamp::from_unix_millis(1_765_000_000_010)),
        until: Some(Timestamp::from_unix_millis(1_765_000_000_013)),
        order: QueryOrder::OldestFirst,
        ..AuditQuery::default()
    };
    assert_eq!(numbers(&sink.query(&window).await.unwrap()), [10, 11, 12]);
    let nobody = AuditQuery {
        owner: Some("someone-else".into()),
        ..AuditQuery::default()
    };
    assert!(sink.query(&nobody).await.unwrap().events.is_empty());

    for (bad, named) in [
        (
            AuditQuery {
                limit: 0,
                ..AuditQuery::default()
            },
            "0",
        ),
        (
            AuditQuery {
                decision: Some("maybe".into()),
                ..AuditQuery::default()
            },
            "\"maybe\"",
        ),
        (
            AuditQuery {
                kind: Some("Drop table".into()),
                ..AuditQuery::default()
            },
            "\"Drop table\"",
        ),
        (
            AuditQuery {
                since: Some(Timestamp::from_unix_millis(2)),
                until: Some(Timestamp::from_unix_millis(1)),
                ..AuditQuery::default()
            },
            "since 2 ms",
        ),
    ] {
        let err = sink.query(&bad).await.unwrap_err();
        assert_eq!(err.kind(), kisara_core::ErrorKind::Invalid);
        assert!(err.to_string().contains(named), "{err}");
    }
    sink.shutdown().await;
}

#[tokio::test]
async fn the_sqlite3_shell_reads_a_written_database() {
    let dir = tempfile::tempdir().unwrap();
    let sink = filled_database(dir.path()).await;
    sink.shutdown().await;
    let path = dir.path().join("audit.db");
    let output = Command::new("sqlite3")
        .arg("-readonly")
        .arg(&path)
        .arg(
            "PRAGMA integrity_check; PRAGMA user_version; PRAGMA journal_mode; \
             SELECT count(*) FROM events WHERE decision = 'deny'; \
             SELECT id, session, owner, kind, json_extract(event, '$.command[1]') \
             FROM events ORDER BY id DESC LIMIT 1;",
        )
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "this test runs the `sqlite3` shell ({e}); install it with \
                 `apt-get install sqlite3` (scripts/ensure-docker does as root)"
            )
        });
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["ok", "1", "wal", "10", "30|odd|owner-of-web-1|command|29"]
    );
}
