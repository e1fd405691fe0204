//! The webhook sink against a receiver that goes down and comes back.

mod sink_support;

use std::sync::Arc;
use std::time::Duration;

use kisara_audit::{Durability, WebhookConfig, WebhookSink};
use kisara_core::AuditSink;
use sink_support::{Receiver, command, number};

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_recorded_while_the_receiver_is_down_arrive_in_order_once_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let received = Arc::default();
    let mut receiver = Receiver::start("127.0.0.1:0".parse().unwrap(), received).await;
    let addr = receiver.addr;
    let mut config = WebhookConfig::new(receiver.url(), dir.path().join("outbox.db"));
    config.durability = Durability::GroupCommit {
        every: Duration::from_millis(1),
    };
    config.batch_max = 7;
    config.backoff_initial = Duration::from_millis(10);
    config.backoff_max = Duration::from_millis(100);
    let sink = WebhookSink::open(config.clone()).await.unwrap();

    for n in 0..20 {
        sink.record(&command("hook", n, 0)).await.unwrap();
    }
    wait_for("the first 20", async || receiver.deduped().len() == 20).await;

    receiver.stop().await;
    for n in 20..50 {
        sink.record(&command("hook", n, 0)).await.unwrap();
    }
    wait_for("failed attempts", async || sink.failed_attempts() >= 2).await;
    assert_eq!(sink.undelivered().await.unwrap(), 30, "kept while down");

    // The process restarts too: the outbox carries the events over.
    sink.shutdown(Duration::ZERO).await;
    drop(sink);
    let receiver = Receiver::start(addr, receiver.received.clone()).await;
    let sink = WebhookSink::open(config).await.unwrap();
    wait_for("the outbox to drain", async || {
        sink.undelivered().await.unwrap() == 0
    })
    .await;

    let arrived = receiver.deduped();
    let numbers: Vec<usize> = arrived.iter().map(|e| number(&e.event)).collect();
    assert_eq!(
        numbers,
        (0..50).collect::<Vec<_>>(),
        "all, in order, once each"
    );
    let ids: Vec<u64> = arrived.iter().map(|e| e.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids ascend: {ids:?}");
    sink.shutdown(Duration::from_secs(1)).await;
    let err = sink.record(&command("hook", 99, 0)).await.unwrap_err();
    assert!(err.to_string().contains("shut down"), "{err}");
}

#[tokio::test]
async fn bad_webhook_urls_are_refused_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    for url in ["not a url", "ftp://127.0.0.1/x", "/relative"] {
        let err = WebhookSink::open(WebhookConfig::new(url, dir.path().join("o.db")))
            .await
            .unwrap_err();
        assert!(err.to_string().contains(&format!("{url:?}")), "{err}");
    }
}
