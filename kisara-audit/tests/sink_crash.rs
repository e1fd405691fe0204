//! A writer killed with SIGKILL mid-stream loses no acknowledged event.
//!
//! The test re-executes its own binary with `KISARA_AUDIT_CRASH_CHILD` set,
//! running only [`crash_child`]: it records events from several tasks and
//! prints each id once `record` returned. The parent kills it after a few
//! hundred acknowledgements and reopens the store.

mod sink_support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use kisara_audit::sink::{AuditQuery, QueryOrder};
use kisara_audit::{Durability, JsonlConfig, JsonlReader, JsonlSink, SqliteConfig, SqliteSink};

const CHILD_ENV: &str = "KISARA_AUDIT_CRASH_CHILD";
const GROUP: Durability = Durability::GroupCommit {
    every: Duration::from_millis(1),
};

/// The child's side, started by the tests below (so it is not a test of
/// its own: ignored, and a no-op without the parent's variable).
#[test]
#[ignore = "the child process of the SIGKILL tests, which run it themselves"]
fn crash_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (kind, path) = spec.split_once(':').expect("kind:path");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let sink: Arc<dyn Fn(usize) -> futures::future::BoxFuture<'static, u64> + Send + Sync> =
            match kind {
                "jsonl" => {
                    let mut config = JsonlConfig::new(path);
                    config.durability = GROUP;
                    config.max_file_bytes = 16 << 10;
                    let sink = Arc::new(JsonlSink::open(config).await.unwrap());
                    Arc::new(move |n| {
                        let sink = sink.clone();
                        Box::pin(async move {
                            sink.record_with_id(&sink_support::command("crash", n, 200))
                                .await
                                .unwrap()
                        })
                    })
                }
                _ => {
                    let mut config = SqliteConfig::new(path);
                    config.durability = GROUP;
                    let sink = Arc::new(SqliteSink::open(config).await.unwrap());
                    Arc::new(move |n| {
                        let sink = sink.clone();
                        Box::pin(async move {
                            sink.record_with_id(&sink_support::command("crash", n, 200))
                                .await
                                .unwrap()
                        })
                    })
                }
            };
        let writers: Vec<_> = (0..8)
            .map(|task| {
                let sink = sink.clone();
                tokio::spawn(async move {
                    for n in (task..).step_by(8) {
                        let id = sink(n).await;
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "acked {id}").unwrap();
                        out.flush().unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
    });
}

/// Runs the child on `kind:path`, SIGKILLs it after `acks` acknowledgements
/// and returns every id it acknowledged.
fn kill_child_midstream(kind: &str, path: &Path, acks: usize) -> BTreeSet<u64> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "crash_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, format!("{kind}:{}", path.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = BTreeSet::new();
    for line in lines.by_ref() {
        if let Some(id) = line.unwrap().strip_prefix("acked ") {
            acked.insert(id.parse::<u64>().unwrap());
            if acked.len() >= acks {
                break;
            }
        }
    }
    assert!(
        acked.len() >= acks,
        "the child ended after {} acks",
        acked.len()
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // What it printed before dying is acknowledged too.
    for line in lines {
        let Ok(line) = line else { break };
        if let Some(id) = line.strip_prefix("acked ") {
            acked.insert(id.parse().unwrap());
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonl_keeps_every_acknowledged_event_across_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let acked = kill_child_midstream("jsonl", dir.path(), 400);

    let reader = JsonlReader::new(dir.path(), "audit").unwrap();
    let report = reader.read_all().unwrap();
    let stored: BTreeSet<u64> = report.events.iter().map(|e| e.id).collect();
    let lost: Vec<_> = acked.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    assert_eq!(stored.len(), report.events.len(), "ids are unique");
    assert!(
        reader.files().unwrap().len() > 1,
        "the run crossed a rotation"
    );
    // At most the line being written when the kill came is torn, and it is
    // reported, not fatal.
    assert!(report.problems.len() <= 1, "{:?}", report.problems);
    if let Some(problem) = report.problems.first() {
        assert!(problem.message.contains("torn"), "{problem}");
        assert_eq!(&problem.file, reader.files().unwrap().last().unwrap());
    }

    // Reopened, the sink continues after the highest id, in a new file
    // when the old one ends torn.
    let sink = JsonlSink::open(JsonlConfig::new(dir.path())).await.unwrap();
    let id = sink
        .record_with_id(&sink_support::command("after", 0, 0))
        .await
        .unwrap();
    assert_eq!(id, stored.last().unwrap() + 1);
    sink.shutdown().await;
    let again = reader.read_all().unwrap();
    assert_eq!(again.events.len(), report.events.len() + 1);
    assert_eq!(again.problems, report.problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keeps_every_acknowledged_event_across_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let acked = kill_child_midstream("sqlite", &path, 400);

    let sink = SqliteSink::open(SqliteConfig::new(&path)).await.unwrap();
    let mut stored = BTreeSet::new();
    let mut query = AuditQuery {
        order: QueryOrder::OldestFirst,
        limit: 97,
        ..AuditQuery::default()
    };
    loop {
        let page = sink.query(&query).await.unwrap();
        stored.extend(page.events.iter().map(|e| e.id));
        match page.next {
            Some(next) => query.cursor = Some(next),
            None => break,
        }
    }
    let lost: Vec<_> = acked.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    let id = sink
        .record_with_id(&sink_support::command("after", 0, 0))
        .await
        .unwrap();
    assert!(id > *stored.last().unwrap());
    sink.shutdown().await;
}
