//! Helpers shared by the sink tests: events, a failing sink, a webhook
//! receiver on loopback.
#![allow(dead_code, unreachable_pub)] // each test binary uses a part

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::Json;
use axum::extract::State;
use axum::routing::post;
use kisara_audit::StoredEvent;
use kisara_core::model::SessionId;
use kisara_core::{AuditEvent, AuditSink, Error, Result};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A command event of `session` whose command is `echo {n}` plus `padding`
/// bytes, built from its serde form so it keeps compiling as the event
/// grows fields with defaults.
pub fn command(session: &str, n: usize, padding: usize) -> AuditEvent {
    serde_json::from_value(serde_json::json!({
        "time": 1_765_000_000_000u64 + n as u64,
        "session": session,
        "username": "auditor",
        "container": "web-1",
        "type": "command",
        "command": ["echo", n.to_string(), "x".repeat(padding)],
        "decision": {"decision": if n.is_multiple_of(3) { "deny" } else { "allow" }, "reason": "rule 1"},
    }))
    .unwrap()
}

/// The command number `n` that [`command`] put into an event.
pub fn number(event: &AuditEvent) -> usize {
    let json = serde_json::to_value(event).unwrap();
    json["command"][1].as_str().unwrap().parse().unwrap()
}

/// The events of `session` among `events`, in order.
pub fn of_session(events: &[StoredEvent], session: &SessionId) -> Vec<AuditEvent> {
    events
        .iter()
        .filter(|e| &e.event.session == session)
        .map(|e| e.event.clone())
        .collect()
}

/// A sink that refuses everything.
#[derive(Debug)]
pub struct FailingSink;

#[async_trait]
impl AuditSink for FailingSink {
    async fn record(&self, _event: &AuditEvent) -> Result<()> {
        Err(Error::unavailable("the failing test sink refuses events"))
    }
}

/// A webhook receiver on 127.0.0.1 keeping every event it was sent.
pub struct Receiver {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<StoredEvent>>>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

impl Receiver {
    /// Listens on `addr` (port 0 for any), appending to `received`.
    pub async fn start(addr: SocketAddr, received: Arc<Mutex<Vec<StoredEvent>>>) -> Self {
        async fn take(
            State(received): State<Arc<Mutex<Vec<StoredEvent>>>>,
            Json(batch): Json<Vec<StoredEvent>>,
        ) {
            received.lock().unwrap().extend(batch);
        }
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/audit", post(take))
            .with_state(received.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self {
            addr,
            received,
            stop: Some(stop),
            server: Some(server),
        }
    }

    /// The URL to configure.
    pub fn url(&self) -> String {
        format!("http://{}/audit", self.addr)
    }

    /// Stops listening; returns once the port is closed.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap();
        }
    }

    /// Every event received, repeats dropped by id (delivery is at least
    /// once), in arrival order.
    pub fn deduped(&self) -> Vec<StoredEvent> {
        let mut seen = std::collections::HashSet::new();
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|e| seen.insert(e.id))
            .cloned()
            .collect()
    }
}
