//! A disk that fills up: writing fails naming the file, nothing already
//! acknowledged is lost, and nothing later is acknowledged.
//!
//! Mounts a 256 KiB tmpfs, so it needs root (or CAP_SYS_ADMIN).

mod sink_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use kisara_audit::sink::{AuditQuery, QueryOrder};
use kisara_audit::{Durability, JsonlConfig, JsonlReader, JsonlSink, SqliteConfig, SqliteSink};
use kisara_core::AuditSink;

/// A small tmpfs mounted on a fresh temporary directory, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
            .arg(dir.path())
            .status();
        match status {
            Ok(status) if status.success() => Self { dir },
            other => panic!(
                "this test mounts a 256 KiB tmpfs and needs root (or CAP_SYS_ADMIN) \
                 and `mount`: `mount -t tmpfs` on {} gave {other:?}; run the tests as root",
                dir.path().display()
            ),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let status = Command::new("umount").arg(self.dir.path()).status();
        if !status.is_ok_and(|s| s.success()) {
            // Leaving a mount behind is worth failing loudly over.
            panic!("umount {} failed", self.dir.path().display());
        }
    }
}

/// Records 2 KiB events until one fails, insisting at least `at_least` fit
/// first; returns how many were acked and the error.
async fn fill(sink: &dyn AuditSink, at_least: usize) -> (usize, kisara_core::Error) {
    for n in 0..10_000 {
        if let Err(e) = sink.record(&sink_support::command("full", n, 2048)).await {
            assert!(
                n >= at_least,
                "only {n} events fit before the disk was full: {e}"
            );
            return (n, e);
        }
    }
    panic!("10000 events of 2 KiB fit into 256 KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_jsonl_writes_naming_the_file_and_keeps_what_was_acked() {
    let disk = SmallDisk::mount();
    let mut config = JsonlConfig::new(disk.path());
    config.durability = Durability::Fsync;
    config.max_file_bytes = 64 << 10;
    let sink = JsonlSink::open(config).await.unwrap();
    let (acked, err) = fill(&sink, 50).await;
    let message = err.to_string();
    let files = JsonlReader::new(disk.path(), "audit")
        .unwrap()
        .files()
        .unwrap();
    let last: &PathBuf = files.last().unwrap();
    assert!(
        message.contains(&last.display().to_string()) && message.contains("No space left"),
        "{message}"
    );
    let refused = sink
        .record(&sink_support::command("full", 0, 0))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("refusing events"), "{refused}");
    sink.shutdown().await;

    let report = JsonlReader::new(disk.path(), "audit")
        .unwrap()
        .read_all()
        .unwrap();
    let numbers: Vec<usize> = report
        .events
        .iter()
        .map(|e| sink_support::number(&e.event))
        .collect();
    assert_eq!(
        numbers,
        (0..acked).collect::<Vec<_>>(),
        "acked events survive"
    );
    assert!(report.problems.len() <= 1, "{:?}", report.problems);
    drop(sink);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_sqlite_commits_naming_the_file_and_keeps_what_was_acked() {
    let disk = SmallDisk::mount();
    let path = disk.path().join("audit.db");
    let mut config = SqliteConfig::new(&path);
    config.durability = Durability::Fsync;
    let sink = SqliteSink::open(config).await.unwrap();
    // Each commit appends its pages (the row's and six indexes') to the
    // write-ahead log, so only a few fit into 256 KiB.
    let (acked, err) = fill(&sink, 2).await;
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(
        sink.record(&sink_support::command("full", 0, 0))
            .await
            .is_err()
    );
    let page = sink
        .query(&AuditQuery {
            order: QueryOrder::OldestFirst,
            limit: AuditQuery::MAX_LIMIT,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    let numbers: Vec<usize> = page
        .events
        .iter()
        .map(|e| sink_support::number(&e.event))
        .collect();
    assert_eq!(
        numbers,
        (0..acked).collect::<Vec<_>>(),
        "acked events survive"
    );
    sink.shutdown().await;
    drop(sink);
}
