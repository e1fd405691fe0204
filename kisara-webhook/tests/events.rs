//! Event webhooks against a real local receiver: order per key through
//! failures, signatures, and a bounded queue when the receiver is gone.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use kisara_core::Secret;
use kisara_webhook::sign::SIGNATURE_HEADER;
use kisara_webhook::{ClientOptions, EventOptions, EventSender, Signer, WebhookClient};
use serde_json::{Value, json};

/// What the receiver saw, and how many requests it still fails with 503.
#[derive(Clone, Default)]
struct Receiver {
    seen: Arc<Mutex<Vec<Value>>>,
    fail_next: Arc<AtomicUsize>,
    signer: Option<Signer>,
}

async fn receive(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    if receiver
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    if let Some(signer) = &receiver.signer {
        let header = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
        if signer.verify(header, &body).is_err() {
            return StatusCode::UNAUTHORIZED;
        }
    }
    receiver
        .seen
        .lock()
        .unwrap()
        .push(serde_json::from_slice(&body).unwrap());
    StatusCode::OK
}

async fn serve(receiver: Receiver) -> SocketAddr {
    let app = axum::Router::new()
        .route("/events", post(receive))
        .with_state(receiver);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn options() -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_millis(500),
        deadline: Duration::from_secs(1),
        backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        ..ClientOptions::default()
    }
}

fn quick() -> EventOptions {
    EventOptions {
        queue: 1000,
        attempts: 20,
        backoff: Duration::from_millis(20),
    }
}

async fn wait_for(sender: &EventSender) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while sender.queued() > 0 {
        assert!(
            Instant::now() < deadline,
            "{} events never delivered",
            sender.queued()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_one_key_arrive_in_order_through_failures_and_signed() {
    let signer = Signer::new(
        Secret::new("event signing secret 0123"),
        Duration::from_secs(60),
    )
    .unwrap();
    let receiver = Receiver {
        signer: Some(signer.clone()),
        ..Receiver::default()
    };
    receiver.fail_next.store(7, Ordering::SeqCst);
    let addr = serve(receiver.clone()).await;
    let client =
        WebhookClient::signed(&format!("http://{addr}/events"), options(), signer).unwrap();
    let sender = EventSender::new(client, quick());
    for n in 0..40 {
        for container in ["c1", "c2", "c3"] {
            assert!(sender.send(Some(container), &json!({"container": container, "n": n})));
        }
    }
    assert!(sender.send(None, &json!({"node": "n1", "n": 0})));
    wait_for(&sender).await;
    let seen = receiver.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 121, "every event exactly once");
    for container in ["c1", "c2", "c3"] {
        let order: Vec<u64> = seen
            .iter()
            .filter(|e| e["container"] == container)
            .map(|e| e["n"].as_u64().unwrap())
            .collect();
        assert_eq!(order, (0..40).collect::<Vec<_>>(), "{container}");
    }
}

#[tokio::test]
async fn a_full_queue_drops_new_events_and_says_so() {
    // Nothing listens on the port: every delivery fails.
    let gone = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let options = ClientOptions {
        timeout: Duration::from_millis(50),
        deadline: Duration::from_millis(100),
        ..options()
    };
    let client = WebhookClient::new(&format!("http://{gone}/events"), options).unwrap();
    let sender = EventSender::new(
        client,
        EventOptions {
            queue: 5,
            attempts: 1,
            backoff: Duration::from_millis(1),
        },
    );
    let queued: Vec<bool> = (0..8)
        .map(|n| sender.send(Some("c1"), &json!({ "n": n })))
        .collect();
    assert_eq!(queued, [true, true, true, true, true, false, false, false]);
    // Undeliverable events are dropped after their attempts: the queue
    // drains and takes events again.
    wait_for(&sender).await;
    assert!(sender.send(Some("c1"), &json!({"n": 8})));
}
