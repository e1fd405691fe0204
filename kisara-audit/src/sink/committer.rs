//! The writer thread shared by the file-backed sinks: it owns the store,
//! groups requests according to the [`Durability`] and acknowledges each
//! event once its group is committed.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;

use kisara_core::sync::lock;
use kisara_core::{AuditEvent, Error, Result};
use tokio::sync::oneshot;

use super::Durability;

/// The most events one group holds, so a flood cannot grow a group (and
/// the latency of its first event) without bound.
const MAX_GROUP: usize = 4096;

/// A store the writer thread commits groups of events to.
pub(super) trait GroupStore: Send + 'static {
    /// The backend name used in errors.
    const BACKEND: &'static str;

    /// An event made ready for the store (encoded) by the recording task,
    /// so that this work overlaps the writer's syncs instead of adding to
    /// them.
    type Prepared: Send + 'static;

    /// Encodes `event` for [`GroupStore::commit`].
    fn prepare(event: &AuditEvent) -> Result<Self::Prepared>;

    /// Writes `events` in order, synced to disk when `sync`, and returns
    /// the id given to the first (the others follow it by one each).
    fn commit(&mut self, events: &[&Self::Prepared], sync: bool) -> Result<u64>;

    /// Where the store keeps its events, for messages.
    fn location(&self) -> String;
}

struct Request<P> {
    event: P,
    ack: oneshot::Sender<Result<u64>>,
}

/// The handle of a writer thread.
pub(super) struct Committer<S: GroupStore> {
    location: String,
    sender: RwLock<Option<mpsc::Sender<Request<S::Prepared>>>>,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl<S: GroupStore> Committer<S> {
    /// Starts the writer thread owning `store`.
    pub(super) fn start(store: S, durability: Durability) -> Result<Self> {
        let location = store.location();
        let (sender, receiver) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("audit-{}", S::BACKEND))
            .spawn(move || run(store, &receiver, durability))
            .map_err(|e| super::storage_error(S::BACKEND, "starting the writer thread", e))?;
        Ok(Self {
            location,
            sender: RwLock::new(Some(sender)),
            thread: std::sync::Mutex::new(Some(thread)),
        })
    }

    /// Hands `event` to the writer and waits until its group is committed;
    /// returns the event's id.
    pub(super) async fn record(&self, event: &AuditEvent) -> Result<u64> {
        let prepared = S::prepare(event)?;
        let (ack, acked) = oneshot::channel();
        let sent = self
            .sender
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|sender| {
                sender
                    .send(Request {
                        event: prepared,
                        ack,
                    })
                    .is_ok()
            });
        if !sent {
            return Err(self.closed());
        }
        acked.await.map_err(|_| self.closed())?
    }

    /// Stops taking events, lets the writer commit what it holds and waits
    /// for it to finish. Idempotent.
    pub(super) async fn shutdown(&self) {
        drop(
            self.sender
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let thread = lock(&self.thread).take();
        if let Some(thread) = thread {
            // Joining blocks until the last group is synced.
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

    fn closed(&self) -> Error {
        Error::unavailable(format!(
            "audit {} sink {} is shut down",
            S::BACKEND,
            self.location
        ))
    }
}

impl<S: GroupStore> Drop for Committer<S> {
    fn drop(&mut self) {
        // Closing the channel ends the thread once it committed what it
        // holds; nobody waits for it here.
        drop(
            self.sender
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }
}

fn run<S: GroupStore>(
    mut store: S,
    receiver: &mpsc::Receiver<Request<S::Prepared>>,
    durability: Durability,
) {
    // Once a commit failed the store's state on disk is unknown (a partly
    // written group, pages the kernel dropped after a failed fsync): every
    // later event is refused rather than acknowledged as durable.
    let mut failure: Option<String> = None;
    while let Ok(first) = receiver.recv() {
        let mut group = vec![first];
        match durability {
            Durability::Fsync => {}
            Durability::None => drain(receiver, &mut group),
            Durability::GroupCommit { every } => {
                let deadline = Instant::now() + every;
                loop {
                    drain(receiver, &mut group);
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() || group.len() >= MAX_GROUP {
                        break;
                    }
                    match receiver.recv_timeout(left) {
                        Ok(request) => group.push(request),
                        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                    }
                }
            }
        }
        if let Some(reason) = &failure {
            for request in group {
                let _ = request.ack.send(Err(refused(S::BACKEND, reason)));
            }
            continue;
        }
        let events: Vec<&S::Prepared> = group.iter().map(|request| &request.event).collect();
        let committed = store.commit(&events, durability.syncs());
        drop(events);
        match committed {
            Ok(first_id) => {
                for (request, id) in group.into_iter().zip(first_id..) {
                    let _ = request.ack.send(Ok(id));
                }
            }
            Err(e) => {
                tracing::error!(store = %store.location(), error = %e, "audit store failed; refusing further events");
                let reason = e.to_string();
                let mut group = group.into_iter();
                if let Some(request) = group.next() {
                    let _ = request.ack.send(Err(e));
                }
                for request in group {
                    let _ = request.ack.send(Err(Error::Backend {
                        backend: S::BACKEND,
                        message: reason.clone(),
                        source: None,
                    }));
                }
                failure = Some(reason);
            }
        }
    }
}

fn drain<P>(receiver: &mpsc::Receiver<Request<P>>, group: &mut Vec<Request<P>>) {
    while group.len() < MAX_GROUP {
        match receiver.try_recv() {
            Ok(request) => group.push(request),
            Err(_) => break,
        }
    }
}

fn refused(backend: &'static str, reason: &str) -> Error {
    Error::Backend {
        backend,
        message: format!("refusing events after an earlier failure ({reason}); reopen the sink"),
        source: None,
    }
}
