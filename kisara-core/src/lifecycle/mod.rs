//! Run a long-lived [`Service`] with states, hooks and a graceful stop with a
//! deadline, in the style of ContainerSSH's `service.Lifecycle`.
//!
//! A [`Lifecycle`] wraps one service. Register hooks on it, then either
//! [`run`](Lifecycle::run) it on the current task or [`spawn`](Lifecycle::spawn)
//! it; both consume the lifecycle, so a hook can never be added once it runs.
//! A cloneable [`LifecycleHandle`] (from [`Lifecycle::handle`] or
//! [`Lifecycle::spawn`]) reads the [`State`], asks for a stop and waits for the
//! end, from any number of tasks. A [`Pool`] runs several services as one and
//! is a [`Service`] itself, so pools nest.
//!
//! # States
//!
//! | from | to | when | hooks, in registration order |
//! |---|---|---|---|
//! | — | `Starting` | `run` begins (the initial state) | `on_starting` |
//! | `Starting` | `Running` | the service calls [`ServiceContext::running`] | `on_state_change`, `on_running` |
//! | `Starting`, `Running` | `Stopping` | a stop is requested | `on_state_change`, `on_stopping` |
//! | `Starting`, `Running`, `Stopping` | `Stopped` | the service returns `Ok` | `on_state_change`, `on_stopped` |
//! | `Starting`, `Running`, `Stopping` | `Crashed` | the service returns `Err`, panics, ignores the stop deadline, or `run` is dropped | `on_state_change`, `on_crashed` |
//!
//! A service that returns `Ok` without being asked to stop has finished: it
//! goes straight to `Stopped` (from `Running`, or from `Starting` if it never
//! reported ready) and `on_stopping` does not fire. `Stopped` and `Crashed`
//! are final. Each state is entered at most once, so each hook fires at most
//! once per run.
//!
//! # Example
//!
//! ```
//! use std::{sync::Arc, time::Duration};
//!
//! use async_trait::async_trait;
//! use kisara_core::Result;
//! use kisara_core::lifecycle::{Lifecycle, Service, ServiceContext, State};
//! use tokio::sync::Notify;
//!
//! struct Ticker;
//!
//! #[async_trait]
//! impl Service for Ticker {
//!     fn name(&self) -> &str {
//!         "ticker"
//!     }
//!
//!     async fn run(&self, ctx: ServiceContext) -> Result<()> {
//!         let mut tick = tokio::time::interval(Duration::from_millis(10));
//!         ctx.running();
//!         loop {
//!             tokio::select! {
//!                 () = ctx.stop_requested() => return Ok(()),
//!                 _ = tick.tick() => { /* do the work */ }
//!             }
//!         }
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ready = Arc::new(Notify::new());
//! let on_ready = Arc::clone(&ready);
//! let handle = Lifecycle::new(Arc::new(Ticker))
//!     .on_running(move || on_ready.notify_one())
//!     .spawn();
//!
//! ready.notified().await;
//! assert_eq!(handle.state(), State::Running);
//! handle.stop(Duration::from_secs(5)).await?;
//! assert_eq!(handle.state(), State::Stopped);
//! # Ok(())
//! # }
//! ```

use std::any::Any;
use std::fmt;
use std::mem;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinError};
use tokio::time::Instant;
use tracing::{Instrument, debug, info_span, warn};

use crate::{Error, Result};

mod pool;

pub use pool::Pool;

/// Where a service is in its life; see the [module docs](self) for the
/// transitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// `run` has begun; the service is not ready yet. The initial state.
    Starting,
    /// The service reported that it is ready to serve.
    Running,
    /// A stop was requested; the service is shutting down.
    Stopping,
    /// The service returned `Ok`. Final.
    Stopped,
    /// The service failed, panicked, ignored its stop deadline or was
    /// cancelled. Final.
    Crashed,
}

impl State {
    /// Whether the service has ended (`Stopped` or `Crashed`).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Stopped | Self::Crashed)
    }

    /// The lowercase name, as shown by `Display`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Crashed => "crashed",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a lifecycle ended: `Ok` once stopped, or the error it crashed with.
///
/// The error sits behind an [`Arc`] because every waiter receives the same
/// one; it derefs to [`Error`] and converts into `Box<dyn std::error::Error>`.
pub type Outcome = std::result::Result<(), Arc<Error>>;

/// A long-lived task run by a [`Lifecycle`] or a [`Pool`].
///
/// # Contract
///
/// - **Ready.** Call [`ServiceContext::running`] once the service is ready to
///   serve (listening, connected). Until then it is `Starting`; a [`Pool`]
///   is ready only when all its members are.
/// - **Stop.** Return promptly once [`ServiceContext::stop_requested`]
///   resolves, having shut down gracefully, before
///   [`ServiceContext::deadline`]. A service still running at the deadline
///   has its `run` future dropped (cancelled at its next `.await`), so
///   cleanup that must happen belongs in `Drop` or must finish in time.
/// - **Result.** `Err` means crashed. `Ok` after a stop request means
///   stopped; `Ok` before any stop request means the service finished on its
///   own, which also ends a [`Pool`] it belongs to. A panic counts as a crash.
/// - **Threads.** `run` is spawned on the Tokio runtime, so it must not
///   block a thread; a future that never yields cannot be cancelled.
#[async_trait]
pub trait Service: Send + Sync + 'static {
    /// A short name for logs and errors, e.g. `"http-api"`.
    fn name(&self) -> &str;

    /// Runs the service until it finishes, fails or is asked to stop.
    async fn run(&self, ctx: ServiceContext) -> Result<()>;
}

/// A running service's link to whoever runs it: report readiness, learn of
/// a stop request and its deadline. Cheap to clone; hand it to subtasks.
#[derive(Debug, Clone)]
pub struct ServiceContext {
    ready: Arc<watch::Sender<bool>>,
    stop: watch::Receiver<Option<StopRequest>>,
}

impl ServiceContext {
    /// Reports that the service is ready to serve (`Starting` → `Running`).
    ///
    /// Calls after the first, and calls once a stop was requested, change
    /// nothing.
    pub fn running(&self) {
        self.ready
            .send_if_modified(|ready| !mem::replace(ready, true));
    }

    /// Resolves once a stop is requested (at once if one already was).
    ///
    /// Cancel-safe: use it in `tokio::select!` next to the service's work.
    pub async fn stop_requested(&self) {
        let mut stop = self.stop.clone();
        // An error means whoever could ask for a stop is gone: stop as well.
        let _ = stop.wait_for(Option::is_some).await;
    }

    /// Whether a stop was requested.
    pub fn is_stop_requested(&self) -> bool {
        self.stop.borrow().is_some()
    }

    /// By when the service must have returned, once a stop was requested.
    pub fn deadline(&self) -> Option<Instant> {
        self.stop.borrow().as_ref().map(|request| request.deadline)
    }
}

/// A stop request: the deadline and the duration it was computed from (for
/// the [`Error::Timeout`] message).
#[derive(Debug, Clone, Copy)]
struct StopRequest {
    deadline: Instant,
    after: Duration,
}

impl StopRequest {
    fn after(after: Duration) -> Self {
        Self {
            deadline: Instant::now() + after,
            after,
        }
    }
}

/// Records `request` unless an earlier deadline is already set: of several
/// stop requests, the one that ends soonest wins.
fn request_stop(stop: &watch::Sender<Option<StopRequest>>, request: StopRequest) {
    stop.send_if_modified(|current| match current {
        Some(existing) if existing.deadline <= request.deadline => false,
        _ => {
            *current = Some(request);
            true
        }
    });
}

/// Resolves when the requested deadline passes; never without a request.
async fn expiry(request: Option<StopRequest>) -> StopRequest {
    match request {
        Some(request) => {
            tokio::time::sleep_until(request.deadline).await;
            request
        }
        None => std::future::pending().await,
    }
}

/// The error for a service task that panicked (with its message) or was
/// cancelled from outside.
fn join_error(service: &str, error: JoinError) -> Error {
    let message = match error.try_into_panic() {
        Ok(payload) => format!("service {service:?} panicked: {}", panic_message(&*payload)),
        Err(error) => format!("service {service:?} was cancelled: {error}"),
    };
    Error::Backend {
        backend: "lifecycle",
        message,
        source: None,
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(a panic payload that is not a string)")
}

/// Aborts a spawned task when dropped, so cancelling the caller cancels the
/// service too (a dropped `JoinHandle` would leave it running).
struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A hook sees the old state (`None` when entering the initial state), the
/// new one, and the error when the new state is `Crashed`.
type Hook = Box<dyn Fn(Option<State>, State, Option<&Error>) + Send + Sync>;

#[derive(Debug, Clone)]
struct Status {
    state: State,
    /// Set once the last hook of the final transition has run.
    outcome: Option<Outcome>,
}

#[derive(Debug)]
struct Shared {
    name: String,
    status: watch::Sender<Status>,
    stop: watch::Sender<Option<StopRequest>>,
}

/// Runs one [`Service`] through its [`State`]s and calls hooks on the way.
///
/// Register hooks with the `on_*` methods, take [`handle`](Self::handle)s for
/// other tasks, then [`run`](Self::run) or [`spawn`](Self::spawn).
///
/// Hooks run on the task driving `run`, in registration order, after the new
/// state is visible through [`LifecycleHandle::state`] and, for the final
/// transition, before [`LifecycleHandle::wait`] returns. They must be quick
/// and must not panic; to do async work, spawn it.
///
/// Dropping a lifecycle that has not ended (never run, or its `run` future
/// dropped) cancels the service and ends it `Crashed`, so waiters never hang.
#[must_use = "a lifecycle does nothing until it is run or spawned"]
pub struct Lifecycle {
    service: Arc<dyn Service>,
    hooks: Vec<Hook>,
    shared: Arc<Shared>,
    started: bool,
}

impl fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lifecycle")
            .field("service", &self.shared.name)
            .field("state", &self.shared.status.borrow().state)
            .field("hooks", &self.hooks.len())
            .finish_non_exhaustive()
    }
}

impl Lifecycle {
    /// A lifecycle for `service`, in state `Starting`, with no hooks.
    pub fn new(service: Arc<dyn Service>) -> Self {
        let shared = Shared {
            name: service.name().to_owned(),
            status: watch::Sender::new(Status {
                state: State::Starting,
                outcome: None,
            }),
            stop: watch::Sender::new(None),
        };
        Self {
            service,
            hooks: Vec::new(),
            shared: Arc::new(shared),
            started: false,
        }
    }

    fn hook(
        mut self,
        hook: impl Fn(Option<State>, State, Option<&Error>) + Send + Sync + 'static,
    ) -> Self {
        self.hooks.push(Box::new(hook));
        self
    }

    /// Calls `f` when `run` begins.
    pub fn on_starting(self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.hook(move |old, _, _| {
            if old.is_none() {
                f();
            }
        })
    }

    /// Calls `f` when the service reports ready.
    pub fn on_running(self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.on(State::Running, f)
    }

    /// Calls `f` when a stop request reaches the service.
    pub fn on_stopping(self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.on(State::Stopping, f)
    }

    /// Calls `f` when the service has returned `Ok`.
    pub fn on_stopped(self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.on(State::Stopped, f)
    }

    /// Calls `f` with the error when the service crashes.
    pub fn on_crashed(self, f: impl Fn(&Error) + Send + Sync + 'static) -> Self {
        self.hook(move |_, _, error| {
            if let Some(error) = error {
                f(error);
            }
        })
    }

    /// Calls `f(old, new)` on every transition (not on entering `Starting`,
    /// which has no old state).
    pub fn on_state_change(self, f: impl Fn(State, State) + Send + Sync + 'static) -> Self {
        self.hook(move |old, new, _| {
            if let Some(old) = old {
                f(old, new);
            }
        })
    }

    fn on(self, state: State, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.hook(move |old, new, _| {
            if old.is_some() && new == state {
                f();
            }
        })
    }

    /// A handle to read the state, stop and wait, usable before and after
    /// `run` begins.
    pub fn handle(&self) -> LifecycleHandle {
        LifecycleHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Runs the service on its own task until it ends, driving the states,
    /// hooks and stop deadline from the current task, and returns the
    /// outcome. A stop requested before `run` reaches the service at once.
    ///
    /// Dropping this future cancels the service (state `Crashed`).
    pub async fn run(mut self) -> Outcome {
        self.started = true;
        let span = info_span!("lifecycle", service = %self.shared.name);
        self.drive().instrument(span).await
    }

    /// Spawns [`run`](Self::run) on the Tokio runtime and returns a handle;
    /// [`LifecycleHandle::wait`] gives the outcome.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub fn spawn(self) -> LifecycleHandle {
        let handle = self.handle();
        drop(tokio::spawn(self.run()));
        handle
    }

    async fn drive(&self) -> Outcome {
        debug!("starting");
        self.fire(None, State::Starting, None);
        let ready = Arc::new(watch::Sender::new(false));
        let mut ready_rx = ready.subscribe();
        let mut stop_rx = self.shared.stop.subscribe();
        let ctx = ServiceContext {
            ready: Arc::clone(&ready),
            stop: stop_rx.clone(),
        };
        let service = Arc::clone(&self.service);
        let mut task = tokio::spawn(async move { service.run(ctx).await }.in_current_span());
        let _abort = AbortOnDrop(task.abort_handle());
        let name = &self.shared.name;
        loop {
            self.observe(&mut ready_rx, &mut stop_rx);
            let request = *stop_rx.borrow();
            tokio::select! {
                biased;
                joined = &mut task => {
                    // Readiness or a stop request seen together with the
                    // end still count, and come first.
                    self.observe(&mut ready_rx, &mut stop_rx);
                    return self.conclude(joined.unwrap_or_else(|e| Err(join_error(name, e))));
                }
                Ok(()) = ready_rx.changed() => {}
                Ok(()) = stop_rx.changed() => {}
                request = expiry(request) => {
                    warn!(after = ?request.after, "service ignored its stop deadline; cancelling it");
                    task.abort();
                    let result = match task.await {
                        Err(e) if e.is_cancelled() => Err(Error::Timeout {
                            operation: format!("stopping service {name:?}"),
                            after: request.after,
                        }),
                        // It ended just before the abort took effect.
                        joined => joined.unwrap_or_else(|e| Err(join_error(name, e))),
                    };
                    return self.conclude(result);
                }
            }
        }
    }

    /// Applies what the service and the handles signalled since last time.
    fn observe(
        &self,
        ready: &mut watch::Receiver<bool>,
        stop: &mut watch::Receiver<Option<StopRequest>>,
    ) {
        // Always mark both as seen, or `changed()` would fire again at once.
        let ready = *ready.borrow_and_update();
        let stop = stop.borrow_and_update().is_some();
        if ready && self.state() == State::Starting {
            self.enter(State::Running, None);
        }
        if stop && matches!(self.state(), State::Starting | State::Running) {
            self.enter(State::Stopping, None);
        }
    }

    fn state(&self) -> State {
        self.shared.status.borrow().state
    }

    /// Enters the final state for `result`, then publishes the outcome.
    fn conclude(&self, result: Result<()>) -> Outcome {
        let outcome = match result {
            Ok(()) => {
                self.enter(State::Stopped, None);
                Ok(())
            }
            Err(error) => {
                warn!(%error, "service crashed");
                let error = Arc::new(error);
                self.enter(State::Crashed, Some(&error));
                Err(error)
            }
        };
        self.shared
            .status
            .send_modify(|status| status.outcome = Some(outcome.clone()));
        outcome
    }

    fn enter(&self, new: State, error: Option<&Error>) {
        let mut old = new;
        self.shared
            .status
            .send_modify(|status| old = mem::replace(&mut status.state, new));
        debug!(from = %old, to = %new, "state change");
        self.fire(Some(old), new, error);
    }

    fn fire(&self, old: Option<State>, new: State, error: Option<&Error>) {
        for hook in &self.hooks {
            hook(old, new, error);
        }
    }
}

impl Drop for Lifecycle {
    fn drop(&mut self) {
        let ended = self.shared.status.borrow().outcome.is_some();
        if !ended {
            let what = if self.started {
                "was cancelled before the service ended"
            } else {
                "was dropped without being run"
            };
            let _ = self.conclude(Err(Error::Backend {
                backend: "lifecycle",
                message: format!("lifecycle of service {:?} {what}", self.shared.name),
                source: None,
            }));
        }
    }
}

/// A cloneable handle on a [`Lifecycle`]: read its state, stop it, wait for
/// it, from any task.
#[derive(Debug, Clone)]
pub struct LifecycleHandle {
    shared: Arc<Shared>,
}

impl LifecycleHandle {
    /// The service's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.shared.status.borrow().state
    }

    /// Asks the service to stop within `deadline` from now, without waiting.
    ///
    /// Of several requests the earliest deadline wins; a request after the
    /// end changes nothing. The deadline is enforced by the task driving
    /// [`Lifecycle::run`]: at the deadline it drops the service's future and
    /// the lifecycle ends `Crashed` with [`Error::Timeout`].
    pub fn request_stop(&self, deadline: Duration) {
        request_stop(&self.shared.stop, StopRequest::after(deadline));
    }

    /// [`request_stop`](Self::request_stop), then [`wait`](Self::wait).
    ///
    /// Returns `Ok` once stopped; [`Error::Timeout`] naming the service if it
    /// ignored the deadline (its future is dropped by then); the service's
    /// own error if it crashed, whether before or during the stop. If `run`
    /// has not begun, this waits for it.
    pub async fn stop(&self, deadline: Duration) -> Outcome {
        self.request_stop(deadline);
        self.wait().await
    }

    /// Waits until the service has ended and every hook has run, and
    /// returns the outcome. Any number of tasks may wait; all get the same.
    pub async fn wait(&self) -> Outcome {
        let mut status = self.shared.status.subscribe();
        let ended = status.wait_for(|status| status.outcome.is_some()).await;
        ended
            .ok()
            .and_then(|status| status.outcome.clone())
            .expect("the status sender lives in `self.shared`, so the channel stays open")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_display_lowercase_and_know_the_final_ones() {
        let all = [
            State::Starting,
            State::Running,
            State::Stopping,
            State::Stopped,
            State::Crashed,
        ];
        let shown: Vec<String> = all.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            ["starting", "running", "stopping", "stopped", "crashed"]
        );
        let finals: Vec<State> = all.into_iter().filter(|s| s.is_final()).collect();
        assert_eq!(finals, [State::Stopped, State::Crashed]);
    }

    #[tokio::test(start_paused = true)]
    async fn earliest_stop_deadline_wins() {
        let stop = watch::Sender::new(None);
        request_stop(&stop, StopRequest::after(Duration::from_secs(10)));
        request_stop(&stop, StopRequest::after(Duration::from_secs(2)));
        request_stop(&stop, StopRequest::after(Duration::from_secs(5)));
        let after = stop.borrow().as_ref().map(|r| r.after);
        assert_eq!(after, Some(Duration::from_secs(2)));
    }

    #[test]
    fn panic_messages_are_read_from_str_and_string() {
        let payload: Box<dyn Any + Send> = Box::new("static");
        assert_eq!(panic_message(&*payload), "static");
        let payload: Box<dyn Any + Send> = Box::new(String::from("owned"));
        assert_eq!(panic_message(&*payload), "owned");
        let payload: Box<dyn Any + Send> = Box::new(7_u8);
        assert!(panic_message(&*payload).contains("not a string"));
    }
}
