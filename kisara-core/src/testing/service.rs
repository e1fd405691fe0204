//! Conformance cases for [`Service`], one or more per clause of its
//! `# Contract`, each run through a [`Lifecycle`] as a program runs it.
//!
//! A service is a black box to the suite, so the fixture brings a probe
//! that visits it as its users would (a request to a server, a handshake
//! with a relay) and tells whether it serves. The cases check:
//!
//! - **Ready**: the service reports ready in time, and serves once it has
//!   ([`reports_ready_then_serves`]).
//! - **Stop**: it returns `Ok` before the deadline once asked to stop,
//!   idle ([`stops_before_the_deadline`]), with a visitor connected
//!   ([`stops_with_a_visitor_connected`]), or asked before it was ready
//!   ([`a_stop_before_ready_still_stops`]); and once it has returned it has
//!   shut down, so it serves no more ([`serves_no_more_once_stopped`]).
//! - **Result**: `Ok` after a stop request ends it `Stopped`, which every
//!   stop case checks; a service that crashes or finishes on its own
//!   before being asked fails them, naming the outcome.
//! - **Threads**: other tasks on its runtime keep running while it starts,
//!   serves and stops ([`never_blocks_the_runtime`]; a thread-blocking
//!   service is caught on a current-thread runtime, which `#[tokio::test]`
//!   gives by default).
//!
//! What happens when a service ignores its deadline, panics or is
//! dropped is the [`Lifecycle`]'s part of the contract and is tested with
//! it, not here.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Fixture, Outcome, suite};
use crate::lifecycle::{Lifecycle, LifecycleHandle, Service, State};

/// How long a service may take to report ready.
const READY_WAIT: Duration = Duration::from_secs(10);
/// The deadline every stop request gives.
const STOP_DEADLINE: Duration = Duration::from_secs(5);
/// Longest a task on the service's runtime may wait for its turn; far more
/// than a scheduler needs, far less than a blocked thread takes.
const STALL_LIMIT: Duration = Duration::from_millis(500);

/// What a probe keeps open after a successful visit (a connection, say);
/// dropping it ends the visit.
pub type Visit = Box<dyn Any + Send>;

/// A probe's future: the open visit when the service serves, else why not.
pub type ProbeFuture = Pin<Box<dyn Future<Output = Result<Visit, String>> + Send>>;

/// A fresh service, not yet run, and a probe that visits it.
#[derive(Clone)]
pub struct ServiceFixture {
    /// The service under test; each case runs it once.
    pub service: Arc<dyn Service>,
    /// Visits the service as its users do and returns the visit, still
    /// open, if it was served; an error saying what failed if not. It must
    /// give up within a few seconds rather than wait for an answer forever.
    pub probe: Arc<dyn Fn() -> ProbeFuture + Send + Sync>,
}

impl ServiceFixture {
    /// A fixture for `service` visited by `probe`.
    pub fn new<P, Fut>(service: Arc<dyn Service>, probe: P) -> Self
    where
        P: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Visit, String>> + Send + 'static,
    {
        Self {
            service,
            probe: Arc::new(move || Box::pin(probe())),
        }
    }

    async fn visit(&self) -> Result<Visit, String> {
        (self.probe)().await
    }
}

impl fmt::Debug for ServiceFixture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceFixture")
            .field("service", &self.service.name())
            .finish_non_exhaustive()
    }
}

impl Fixture for ServiceFixture {}

suite!(all, "Service", CASES: ServiceFixture:
    names_itself,
    reports_ready_then_serves,
    stops_before_the_deadline,
    stops_with_a_visitor_connected,
    a_stop_before_ready_still_stops,
    serves_no_more_once_stopped,
    never_blocks_the_runtime,
);

/// Spawns the fixture's service in a lifecycle and waits until it reports
/// ready; panics, naming the outcome, if it ends first or takes too long.
async fn start(fx: &ServiceFixture) -> LifecycleHandle {
    let ready = Arc::new(Notify::new());
    let on_ready = Arc::clone(&ready);
    let handle = Lifecycle::new(Arc::clone(&fx.service))
        .on_running(move || on_ready.notify_one())
        .spawn();
    let name = handle.name().to_owned();
    tokio::select! {
        () = ready.notified() => {}
        outcome = handle.wait() => {
            panic!("{name:?} ended before it reported ready: {outcome:?}")
        }
        () = tokio::time::sleep(READY_WAIT) => {
            panic!("{name:?} did not report ready within {READY_WAIT:?}")
        }
    }
    assert_eq!(handle.state(), State::Running, "{name:?} reported ready");
    handle
}

/// Stops the service with [`STOP_DEADLINE`] and checks it returned `Ok`
/// in time, ending `Stopped`.
async fn stop_in_time(handle: &LifecycleHandle, what: &str) {
    let name = handle.name().to_owned();
    let began = Instant::now();
    let outcome = handle.stop(STOP_DEADLINE).await;
    let took = began.elapsed();
    assert!(
        outcome.is_ok(),
        "{name:?} asked to stop {what} did not stop cleanly: {outcome:?}"
    );
    assert_eq!(handle.state(), State::Stopped, "{name:?} {what}");
    assert!(
        took < STOP_DEADLINE,
        "{name:?} asked to stop {what} took {took:?}, past its {STOP_DEADLINE:?} deadline"
    );
}

/// The name is short and printable, fit for logs and errors.
pub async fn names_itself(fx: ServiceFixture) -> Outcome {
    let name = fx.service.name();
    assert!(!name.is_empty(), "a service needs a name");
    assert!(
        name.len() <= 64 && !name.chars().any(|c| c.is_whitespace() || c.is_control()),
        "{name:?} is not a short name without spaces"
    );
    Outcome::Passed
}

/// The service reports ready, and serves once it has.
pub async fn reports_ready_then_serves(fx: ServiceFixture) -> Outcome {
    let handle = start(&fx).await;
    let visit = fx.visit().await;
    let name = handle.name().to_owned();
    assert!(
        visit.is_ok(),
        "{name:?} reported ready but does not serve: {}",
        visit.err().unwrap_or_default()
    );
    drop(visit);
    stop_in_time(&handle, "after serving").await;
    Outcome::Passed
}

/// Asked to stop while idle, the service returns `Ok` before the deadline.
pub async fn stops_before_the_deadline(fx: ServiceFixture) -> Outcome {
    let handle = start(&fx).await;
    stop_in_time(&handle, "while idle").await;
    Outcome::Passed
}

/// A visitor that stays connected does not hold the stop past its
/// deadline.
pub async fn stops_with_a_visitor_connected(fx: ServiceFixture) -> Outcome {
    let handle = start(&fx).await;
    let visit = fx
        .visit()
        .await
        .unwrap_or_else(|why| panic!("{:?} does not serve: {why}", handle.name()));
    stop_in_time(&handle, "with a visitor connected").await;
    drop(visit);
    Outcome::Passed
}

/// A stop requested before the service reported ready still ends it `Ok`
/// in time.
pub async fn a_stop_before_ready_still_stops(fx: ServiceFixture) -> Outcome {
    let lifecycle = Lifecycle::new(Arc::clone(&fx.service));
    let handle = lifecycle.handle();
    handle.request_stop(STOP_DEADLINE);
    let began = Instant::now();
    let outcome = lifecycle.run().await;
    let took = began.elapsed();
    let name = handle.name();
    assert!(
        outcome.is_ok(),
        "{name:?} asked to stop before it began did not stop cleanly: {outcome:?}"
    );
    assert_eq!(handle.state(), State::Stopped, "{name:?}");
    assert!(
        took < STOP_DEADLINE,
        "{name:?} asked to stop before it began took {took:?}"
    );
    Outcome::Passed
}

/// Once `run` has returned after a stop, the service has shut down: it
/// serves no more.
pub async fn serves_no_more_once_stopped(fx: ServiceFixture) -> Outcome {
    let handle = start(&fx).await;
    stop_in_time(&handle, "after starting").await;
    let visit = fx.visit().await;
    assert!(
        visit.is_err(),
        "{:?} still serves after its run returned",
        handle.name()
    );
    Outcome::Passed
}

/// Another task on the service's runtime keeps getting its turn while the
/// service starts, serves a visitor and stops.
pub async fn never_blocks_the_runtime(fx: ServiceFixture) -> Outcome {
    let ticker = tokio::spawn(async {
        let mut longest = Duration::ZERO;
        loop {
            let before = Instant::now();
            tokio::time::sleep(Duration::from_millis(5)).await;
            longest = longest.max(before.elapsed());
            if longest > STALL_LIMIT {
                return longest;
            }
        }
    });
    let handle = start(&fx).await;
    let visit = fx.visit().await;
    stop_in_time(&handle, "while a ticker runs").await;
    drop(visit);
    // A ticker held up until just now gets its turn to report it.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let name = handle.name();
    if ticker.is_finished() {
        let longest = ticker.await.expect("the ticker does not panic");
        panic!("{name:?} kept another task from running for {longest:?}");
    }
    ticker.abort();
    Outcome::Passed
}
