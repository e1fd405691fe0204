//! Core's `AuditSink` conformance suite for every sink of this crate.

mod sink_support;

use std::sync::Arc;
use std::time::Duration;

use kisara_audit::sink::{AuditQuery, QueryOrder};
use kisara_audit::{
    Durability, JsonlConfig, JsonlReader, JsonlSink, SqliteConfig, SqliteSink, Tee, TeePolicy,
    WebhookConfig, WebhookSink,
};
use kisara_core::AuditSink;
use kisara_core::testing::access::{AuditFixture, AuditReader, audit_sink};
use sink_support::{FailingSink, Receiver, command, of_session};

const MODES: [Durability; 3] = [
    Durability::Fsync,
    Durability::GroupCommit {
        every: Duration::from_millis(2),
    },
    Durability::None,
];

/// A JSONL sink in a fresh directory and a reader that insists every line
/// is readable.
async fn jsonl_fixture(durability: Durability) -> (Arc<JsonlSink>, AuditReader) {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = JsonlConfig::new(dir.path());
    config.durability = durability;
    // Small files, so the suite also crosses rotations.
    config.max_file_bytes = 4096;
    let sink = Arc::new(JsonlSink::open(config).await.unwrap());
    let read: AuditReader = Arc::new(move |session| {
        let dir = dir.clone();
        Box::pin(async move {
            let report = tokio::task::spawn_blocking(move || {
                JsonlReader::new(dir.path(), "audit")
                    .unwrap()
                    .read_all()
                    .unwrap()
            })
            .await
            .unwrap();
            assert!(report.problems.is_empty(), "{:?}", report.problems);
            of_session(&report.events, &session)
        })
    });
    (sink, read)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonl_sink_passes_the_audit_suite_in_every_durability_mode() {
    for durability in MODES {
        audit_sink(|| async move {
            let (sink, read) = jsonl_fixture(durability).await;
            AuditFixture { sink, read }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sink_passes_the_audit_suite_in_every_durability_mode() {
    for durability in MODES {
        audit_sink(|| async move {
            let dir = Arc::new(tempfile::tempdir().unwrap());
            let mut config = SqliteConfig::new(dir.path().join("audit.db"));
            config.durability = durability;
            let sink = Arc::new(SqliteSink::open(config).await.unwrap());
            let queried = sink.clone();
            let read: AuditReader = Arc::new(move |session| {
                let sink = queried.clone();
                let _dir = dir.clone();
                Box::pin(async move {
                    let page = sink
                        .query(&AuditQuery {
                            session: Some(session),
                            order: QueryOrder::OldestFirst,
                            limit: AuditQuery::MAX_LIMIT,
                            ..AuditQuery::default()
                        })
                        .await
                        .unwrap();
                    page.events.into_iter().map(|e| e.event).collect()
                })
            });
            AuditFixture { sink, read }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_sink_passes_the_audit_suite() {
    audit_sink(|| async {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let receiver =
            Arc::new(Receiver::start("127.0.0.1:0".parse().unwrap(), Arc::default()).await);
        let mut config = WebhookConfig::new(receiver.url(), dir.path().join("outbox.db"));
        config.durability = Durability::GroupCommit {
            every: Duration::from_millis(1),
        };
        let sink = Arc::new(WebhookSink::open(config).await.unwrap());
        let delivering = sink.clone();
        let read: AuditReader = Arc::new(move |session| {
            let sink = delivering.clone();
            let receiver = receiver.clone();
            let _dir = dir.clone();
            Box::pin(async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
                while sink.undelivered().await.unwrap() > 0 {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "the outbox did not drain"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                of_session(&receiver.deduped(), &session)
            })
        });
        AuditFixture { sink, read }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tee_passes_the_audit_suite_despite_a_failing_best_effort_sink() {
    audit_sink(|| async {
        let (jsonl, read) = jsonl_fixture(Durability::None).await;
        let tee = Tee::new()
            .with(jsonl, TeePolicy::Required)
            .with(Arc::new(FailingSink), TeePolicy::BestEffort);
        AuditFixture {
            sink: Arc::new(tee),
            read,
        }
    })
    .await;
}

#[tokio::test]
async fn tee_fails_when_a_required_sink_fails_and_counts_best_effort_failures() {
    let memory = Arc::new(kisara_core::memory::MemoryAuditSink::new());
    let tee = Tee::new()
        .with(memory.clone(), TeePolicy::Required)
        .with(Arc::new(FailingSink), TeePolicy::BestEffort);
    tee.record(&command("s", 1, 0)).await.unwrap();
    tee.record(&command("s", 2, 0)).await.unwrap();
    assert_eq!(tee.best_effort_failures(), vec![0, 2]);
    assert_eq!(memory.events().len(), 2);

    let strict = Tee::new()
        .with(memory.clone(), TeePolicy::Required)
        .with(Arc::new(FailingSink), TeePolicy::Required);
    let err = strict.record(&command("s", 3, 0)).await.unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("required sink #1 FailingSink") && message.contains("refuses"),
        "{message}"
    );
    // The other sink still kept it: a tee does not undo.
    assert_eq!(memory.events().len(), 3);

    let err = Tee::new().record(&command("s", 4, 0)).await.unwrap_err();
    assert!(err.to_string().contains("no sinks"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sink_passes_the_audit_log_suite() {
    // One directory for every case's database, removed when the test ends.
    let root = Arc::new(tempfile::tempdir().unwrap());
    let cases = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    kisara_core::testing::access::audit_log(|| {
        let (root, cases) = (root.clone(), cases.clone());
        async move {
            let n = cases.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut config = SqliteConfig::new(root.path().join(format!("audit-{n}.db")));
            config.durability = Durability::None;
            let sink = Arc::new(SqliteSink::open(config).await.unwrap());
            kisara_core::testing::access::AuditLogFixture {
                sink: sink.clone(),
                log: sink,
            }
        }
    })
    .await;
}
