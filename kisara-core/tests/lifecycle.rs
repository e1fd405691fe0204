//! Tests of `kisara_core::lifecycle`: every transition and hook, stop
//! deadlines, panics, cancellation, and pools (flat and nested).
//!
//! Most tests run on a paused clock (`start_paused`): the runtime advances
//! time only when every task is idle, so timings are exact and fast.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use kisara_core::lifecycle::{Lifecycle, LifecycleHandle, Pool, Service, ServiceContext, State};
use kisara_core::{Error, ErrorKind, Result};
use tokio::time::{Instant, sleep};

const SECOND: Duration = Duration::from_secs(1);

/// A service made of a name and an async closure.
struct FnService<F> {
    name: String,
    run: F,
}

#[async_trait]
impl<F, Fut> Service for FnService<F>
where
    F: Fn(ServiceContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }

    async fn run(&self, ctx: ServiceContext) -> Result<()> {
        (self.run)(ctx).await
    }
}

fn service<F, Fut>(name: &str, run: F) -> Arc<dyn Service>
where
    F: Fn(ServiceContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    Arc::new(FnService {
        name: name.to_owned(),
        run,
    })
}

/// Set when dropped: proves a service's future was dropped.
#[derive(Clone, Default)]
struct Dropped(Arc<AtomicBool>);

impl Dropped {
    fn guard(&self) -> DropGuard {
        DropGuard(Arc::clone(&self.0))
    }

    fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

struct DropGuard(Arc<AtomicBool>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Ready at once, returns `Ok` when asked to stop; sets `stopped` then.
fn until_stopped(name: &str, stopped: &Dropped) -> Arc<dyn Service> {
    let stopped = stopped.clone();
    service(name, move |ctx| {
        let guard = stopped.guard();
        async move {
            ctx.running();
            ctx.stop_requested().await;
            drop(guard);
            Ok(())
        }
    })
}

/// Ready at once, then never returns, whatever is asked.
fn ignores_stop(name: &str, dropped: &Dropped) -> Arc<dyn Service> {
    let dropped = dropped.clone();
    service(name, move |ctx| {
        let guard = dropped.guard();
        async move {
            let _guard = guard;
            ctx.running();
            std::future::pending::<()>().await;
            Ok(())
        }
    })
}

/// Ready at once, fails with a conflict after `after`.
fn fails_after(name: &str, after: Duration) -> Arc<dyn Service> {
    let message = format!("{name} broke");
    service(name, move |ctx| {
        let message = message.clone();
        async move {
            ctx.running();
            sleep(after).await;
            Err(Error::conflict(message))
        }
    })
}

/// Records every hook call as a line.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, line: String) {
        self.0.lock().unwrap().push(line);
    }

    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// A lifecycle with every hook recording into the returned log.
fn recorded(service: Arc<dyn Service>) -> (Lifecycle, Log) {
    let log = Log::default();
    let (a, b, c, d, e, f) = (
        log.clone(),
        log.clone(),
        log.clone(),
        log.clone(),
        log.clone(),
        log.clone(),
    );
    let lifecycle = Lifecycle::new(service)
        .on_state_change(move |old, new| a.push(format!("{old} -> {new}")))
        .on_starting(move || b.push("on_starting".into()))
        .on_running(move || c.push("on_running".into()))
        .on_stopping(move || d.push("on_stopping".into()))
        .on_stopped(move || e.push("on_stopped".into()))
        .on_crashed(move |error| f.push(format!("on_crashed: {error}")));
    (lifecycle, log)
}

fn lines(expected: &[&str]) -> Vec<String> {
    expected.iter().map(|line| (*line).to_owned()).collect()
}

/// Lets every ready task run; on a paused clock nothing else happens first.
async fn settle() {
    sleep(Duration::from_millis(1)).await;
}

/// Fails instead of hanging when a bug keeps `future` from finishing.
async fn bounded<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), future)
        .await
        .expect("did not finish within 60 s")
}

#[tokio::test(start_paused = true)]
async fn start_run_stop_fires_every_hook_once_in_order() {
    let stopped = Dropped::default();
    let (lifecycle, log) = recorded(until_stopped("web", &stopped));
    let handle = lifecycle.handle();
    assert_eq!(handle.name(), "web");
    assert_eq!(handle.state(), State::Starting);
    let handle = lifecycle.spawn();
    settle().await;
    assert_eq!(handle.state(), State::Running);
    assert_eq!(
        log.lines(),
        lines(&["on_starting", "starting -> running", "on_running"])
    );

    bounded(handle.stop(SECOND)).await.unwrap();
    assert!(stopped.get());
    assert_eq!(handle.state(), State::Stopped);
    assert_eq!(
        log.lines(),
        lines(&[
            "on_starting",
            "starting -> running",
            "on_running",
            "running -> stopping",
            "on_stopping",
            "stopping -> stopped",
            "on_stopped",
        ])
    );
}

#[tokio::test(start_paused = true)]
async fn run_returns_the_outcome_on_the_current_task() {
    let lifecycle = Lifecycle::new(service("job", |ctx| async move {
        ctx.running();
        sleep(SECOND).await;
        Ok(())
    }));
    let handle = lifecycle.handle();
    let started = Instant::now();
    bounded(lifecycle.run()).await.unwrap();
    assert_eq!(started.elapsed(), SECOND);
    assert_eq!(handle.state(), State::Stopped);
    bounded(handle.wait()).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn finishing_unasked_goes_from_running_to_stopped() {
    let (lifecycle, log) = recorded(service("job", |ctx| async move {
        ctx.running();
        Ok(())
    }));
    bounded(lifecycle.run()).await.unwrap();
    assert_eq!(
        log.lines(),
        lines(&[
            "on_starting",
            "starting -> running",
            "on_running",
            "running -> stopped",
            "on_stopped"
        ])
    );
}

#[tokio::test(start_paused = true)]
async fn finishing_without_ever_running_goes_from_starting_to_stopped() {
    let (lifecycle, log) = recorded(service("oneshot", |_ctx| async { Ok(()) }));
    bounded(lifecycle.run()).await.unwrap();
    assert_eq!(
        log.lines(),
        lines(&["on_starting", "starting -> stopped", "on_stopped"])
    );
}

#[tokio::test(start_paused = true)]
async fn stop_while_starting_skips_running_even_if_ready_comes_later() {
    let saw_stop = Arc::new(AtomicBool::new(false));
    let saw = Arc::clone(&saw_stop);
    let (lifecycle, log) = recorded(service("slow-init", move |ctx| {
        let saw = Arc::clone(&saw);
        async move {
            sleep(SECOND).await; // initialising
            saw.store(ctx.is_stop_requested(), Ordering::SeqCst);
            ctx.running(); // too late: a stop was requested
            ctx.stop_requested().await;
            Ok(())
        }
    }));
    let handle = lifecycle.spawn();
    settle().await;
    assert_eq!(handle.state(), State::Starting);
    bounded(handle.stop(10 * SECOND)).await.unwrap();
    assert!(saw_stop.load(Ordering::SeqCst));
    assert_eq!(
        log.lines(),
        lines(&[
            "on_starting",
            "starting -> stopping",
            "on_stopping",
            "stopping -> stopped",
            "on_stopped",
        ])
    );
}

#[tokio::test(start_paused = true)]
async fn stop_requested_before_run_reaches_the_service_at_once() {
    let deadline_seen = Arc::new(Mutex::new(None));
    let seen = Arc::clone(&deadline_seen);
    let lifecycle = Lifecycle::new(service("early", move |ctx| {
        let seen = Arc::clone(&seen);
        async move {
            ctx.stop_requested().await;
            *seen.lock().unwrap() = ctx.deadline();
            Ok(())
        }
    }));
    let requested_at = Instant::now();
    lifecycle.handle().request_stop(3 * SECOND);
    bounded(lifecycle.run()).await.unwrap();
    assert_eq!(
        *deadline_seen.lock().unwrap(),
        Some(requested_at + 3 * SECOND)
    );
}

#[tokio::test(start_paused = true)]
async fn stop_twice_and_wait_from_several_tasks_all_get_the_outcome() {
    let stopped_hooks = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&stopped_hooks);
    let handle = Lifecycle::new(service("shared", |ctx| async move {
        ctx.running();
        ctx.stop_requested().await;
        sleep(SECOND).await; // a graceful stop that takes a while
        Ok(())
    }))
    .on_stopped(move || {
        count.fetch_add(1, Ordering::SeqCst);
    })
    .spawn();
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let handle = handle.clone();
            tokio::spawn(async move { bounded(handle.wait()).await })
        })
        .collect();
    let stoppers: Vec<_> = (0..2)
        .map(|_| {
            let handle = handle.clone();
            tokio::spawn(async move { bounded(handle.stop(5 * SECOND)).await })
        })
        .collect();
    for task in waiters.into_iter().chain(stoppers) {
        bounded(task).await.unwrap().unwrap();
    }
    // Stopping an ended lifecycle returns its outcome at once.
    let again = Instant::now();
    bounded(handle.stop(SECOND)).await.unwrap();
    assert_eq!(again.elapsed(), Duration::ZERO);
    assert_eq!(stopped_hooks.load(Ordering::SeqCst), 1);
    assert_eq!(handle.state(), State::Stopped);
}

#[tokio::test(start_paused = true)]
async fn an_error_crashes_and_reaches_on_crashed_run_and_every_waiter() {
    let (lifecycle, log) = recorded(fails_after("db", SECOND));
    let handle = lifecycle.handle();
    let waiter = tokio::spawn({
        let handle = handle.clone();
        async move { bounded(handle.wait()).await }
    });
    let error = bounded(lifecycle.run()).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Conflict);
    assert_eq!(error.to_string(), "conflict: db broke");
    let waited = bounded(waiter).await.unwrap().unwrap_err();
    assert!(Arc::ptr_eq(&error, &waited));
    assert_eq!(handle.state(), State::Crashed);
    assert_eq!(
        log.lines(),
        lines(&[
            "on_starting",
            "starting -> running",
            "on_running",
            "running -> crashed",
            "on_crashed: conflict: db broke",
        ])
    );
}

#[tokio::test(start_paused = true)]
async fn an_error_while_stopping_crashes_and_stop_returns_it() {
    let (lifecycle, log) = recorded(service("flaky", |ctx| async move {
        ctx.running();
        ctx.stop_requested().await;
        Err(Error::unavailable("flush failed"))
    }));
    let handle = lifecycle.spawn();
    settle().await;
    let error = bounded(handle.stop(SECOND)).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable);
    assert_eq!(handle.state(), State::Crashed);
    let lines = log.lines();
    assert_eq!(
        lines[lines.len() - 2..],
        [
            "stopping -> crashed",
            "on_crashed: unavailable: flush failed"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_slow_stop_within_the_deadline_is_clean() {
    let handle = Lifecycle::new(service("slow", |ctx| async move {
        ctx.running();
        ctx.stop_requested().await;
        sleep(2 * SECOND).await;
        Ok(())
    }))
    .spawn();
    settle().await;
    let started = Instant::now();
    bounded(handle.stop(5 * SECOND)).await.unwrap();
    assert_eq!(started.elapsed(), 2 * SECOND);
    assert_eq!(handle.state(), State::Stopped);
}

#[tokio::test(start_paused = true)]
async fn ignoring_the_deadline_times_out_crashes_and_drops_the_service() {
    let dropped = Dropped::default();
    let (lifecycle, log) = recorded(ignores_stop("stubborn", &dropped));
    let handle = lifecycle.handle();
    let stopper = tokio::spawn({
        let handle = handle.clone();
        async move {
            settle().await;
            handle.stop(5 * SECOND).await
        }
    });
    let started = Instant::now();
    // Run on this task: nothing else runs between `run` returning and the
    // check, so the future must have been dropped by `run` itself.
    let error = bounded(lifecycle.run()).await.unwrap_err();
    assert!(
        dropped.get(),
        "the service future must be dropped when run returns"
    );
    assert_eq!(started.elapsed(), 5 * SECOND + Duration::from_millis(1));
    match &*error {
        Error::Timeout { operation, after } => {
            assert!(operation.contains("\"stubborn\""), "{operation}");
            assert_eq!(*after, 5 * SECOND);
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    let stopped = bounded(stopper).await.unwrap().unwrap_err();
    assert!(
        Arc::ptr_eq(&error, &stopped),
        "stop returns the same timeout"
    );
    assert_eq!(handle.state(), State::Crashed);
    let lines = log.lines();
    assert_eq!(lines[lines.len() - 2], "stopping -> crashed");
    assert!(lines[lines.len() - 1].starts_with("on_crashed: timed out after 5s"));
}

#[tokio::test(start_paused = true)]
async fn a_second_stop_with_an_earlier_deadline_wins() {
    let dropped = Dropped::default();
    let handle = Lifecycle::new(ignores_stop("stubborn", &dropped)).spawn();
    settle().await;
    handle.request_stop(60 * SECOND);
    settle().await;
    let started = Instant::now();
    let error = bounded(handle.stop(SECOND)).await.unwrap_err();
    assert_eq!(started.elapsed(), SECOND);
    assert!(matches!(*error, Error::Timeout { after, .. } if after == SECOND));
    assert!(dropped.get());
}

#[tokio::test(start_paused = true)]
async fn a_panic_crashes_with_its_message() {
    let (lifecycle, log) = recorded(service("buggy", |ctx| async move {
        ctx.running();
        panic!("index out of bounds");
    }));
    let error = bounded(lifecycle.run()).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Backend);
    let message = error.to_string();
    assert!(
        message.contains("\"buggy\" panicked: index out of bounds"),
        "{message}"
    );
    assert_eq!(
        log.lines().last().unwrap(),
        &format!("on_crashed: {message}")
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_run_cancels_the_service_and_releases_waiters() {
    let dropped = Dropped::default();
    let (lifecycle, log) = recorded(ignores_stop("orphan", &dropped));
    let handle = lifecycle.handle();
    let cut = tokio::time::timeout(SECOND, lifecycle.run()).await;
    assert!(cut.is_err(), "run must still be going when cut");
    let error = bounded(handle.wait()).await.unwrap_err();
    assert!(error.to_string().contains("cancelled"), "{error}");
    assert_eq!(handle.state(), State::Crashed);
    assert_eq!(log.lines().last().unwrap(), &format!("on_crashed: {error}"));
    settle().await; // the abort takes effect when the runtime next runs the task
    assert!(dropped.get());
}

#[tokio::test(start_paused = true)]
async fn dropping_an_unrun_lifecycle_releases_waiters() {
    let (lifecycle, log) = recorded(until_stopped("never", &Dropped::default()));
    let handle = lifecycle.handle();
    drop(lifecycle);
    let error = bounded(handle.stop(SECOND)).await.unwrap_err();
    assert!(error.to_string().contains("without being run"), "{error}");
    assert_eq!(
        log.lines(),
        lines(&["starting -> crashed", &format!("on_crashed: {error}")])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_on_a_multi_threaded_runtime_in_real_time() {
    let stopped = Dropped::default();
    let ready = Arc::new(tokio::sync::Notify::new());
    let on_ready = Arc::clone(&ready);
    let handle = Lifecycle::new(until_stopped("mt", &stopped))
        .on_running(move || on_ready.notify_one())
        .spawn();
    bounded(ready.notified()).await;
    let stops: Vec<_> = (0..4)
        .map(|_| {
            let handle = handle.clone();
            tokio::spawn(async move { bounded(handle.stop(Duration::from_secs(5))).await })
        })
        .collect();
    for stop in stops {
        bounded(stop).await.unwrap().unwrap();
    }
    assert!(stopped.get());
    assert_eq!(handle.state(), State::Stopped);
}

// --- pools ---

/// Calls `running()` after `delay`, then waits for a stop.
fn ready_after(name: &str, delay: Duration, stopped: &Dropped) -> Arc<dyn Service> {
    let stopped = stopped.clone();
    service(name, move |ctx| {
        let guard = stopped.guard();
        async move {
            sleep(delay).await;
            ctx.running();
            ctx.stop_requested().await;
            drop(guard);
            Ok(())
        }
    })
}

fn spawn_pool(pool: Pool) -> (LifecycleHandle, Log) {
    let (lifecycle, log) = recorded(Arc::new(pool));
    (lifecycle.spawn(), log)
}

#[tokio::test(start_paused = true)]
async fn a_pool_runs_only_once_every_member_runs_and_stops_them_all() {
    let (a, b) = (Dropped::default(), Dropped::default());
    let pool = Pool::new("pool")
        .with_service(ready_after("a", Duration::ZERO, &a))
        .with_service(ready_after("b", 2 * SECOND, &b));
    assert!(format!("{pool:?}").contains("[\"a\", \"b\"]"));
    let (handle, log) = spawn_pool(pool);
    sleep(SECOND).await;
    assert_eq!(handle.state(), State::Starting, "b is not ready yet");
    sleep(2 * SECOND).await;
    assert_eq!(handle.state(), State::Running);
    bounded(handle.stop(SECOND)).await.unwrap();
    assert!(a.get() && b.get(), "both members must have been stopped");
    assert_eq!(handle.state(), State::Stopped);
    assert_eq!(
        log.lines(),
        lines(&[
            "on_starting",
            "starting -> running",
            "on_running",
            "running -> stopping",
            "on_stopping",
            "stopping -> stopped",
            "on_stopped",
        ])
    );
}

#[tokio::test(start_paused = true)]
async fn a_failing_member_stops_the_others_and_the_pool_reports_its_error() {
    let (a, c) = (Dropped::default(), Dropped::default());
    let pool = Pool::new("pool")
        .with_service(until_stopped("a", &a))
        .with_service(fails_after("b", SECOND))
        .with_service(until_stopped("c", &c))
        .with_service(service("d", |ctx| async move {
            ctx.running();
            ctx.stop_requested().await;
            Err(Error::unavailable("d failed to flush"))
        }));
    let (handle, log) = spawn_pool(pool);
    let error = bounded(handle.wait()).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "conflict: b broke",
        "the first error wins"
    );
    assert!(
        a.get() && c.get(),
        "the other members must have been stopped"
    );
    assert_eq!(handle.state(), State::Crashed);
    assert!(log.lines().contains(&"running -> crashed".to_owned()));
}

#[tokio::test(start_paused = true)]
async fn a_member_finishing_ends_the_pool_cleanly() {
    let a = Dropped::default();
    let pool = Pool::new("pool")
        .with_service(until_stopped("a", &a))
        .with_service(service("job", |ctx| async move {
            ctx.running();
            sleep(SECOND).await;
            Ok(())
        }));
    let (handle, log) = spawn_pool(pool);
    bounded(handle.wait()).await.unwrap();
    assert!(a.get());
    assert_eq!(log.lines().last().unwrap(), "on_stopped");
}

#[tokio::test(start_paused = true)]
async fn a_member_ignoring_the_pool_stop_timeout_is_cancelled_and_the_first_error_wins() {
    // Set the moment the pool's `run` returns; the stubborn member records
    // whether that had happened when its future was dropped.
    let pool_returned = Arc::new(AtomicBool::new(false));
    let dropped_after_return = Arc::new(Mutex::new(None));
    let stubborn = {
        let (returned, seen) = (
            Arc::clone(&pool_returned),
            Arc::clone(&dropped_after_return),
        );
        service("stubborn", move |ctx| {
            let guard = RecordOnDrop(Arc::clone(&returned), Arc::clone(&seen));
            async move {
                let _guard = guard;
                ctx.running();
                std::future::pending::<()>().await;
                Ok(())
            }
        })
    };
    let pool = Arc::new(
        Pool::new("pool")
            .with_service(stubborn)
            .with_service(fails_after("b", SECOND))
            .with_stop_timeout(3 * SECOND),
    );
    let returned = Arc::clone(&pool_returned);
    let watched = service("watched", move |ctx| {
        let (pool, returned) = (Arc::clone(&pool), Arc::clone(&returned));
        async move {
            let result = pool.run(ctx).await;
            returned.store(true, Ordering::SeqCst);
            result
        }
    });
    let started = Instant::now();
    let error = bounded(Lifecycle::new(watched).run()).await.unwrap_err();
    assert_eq!(
        started.elapsed(),
        4 * SECOND,
        "fails at 1 s, then 3 s to stop"
    );
    assert_eq!(error.to_string(), "conflict: b broke");
    assert_eq!(
        *dropped_after_return.lock().unwrap(),
        Some(false),
        "the pool must return only after dropping the member"
    );
}

/// On drop, records whether the flag was already set.
struct RecordOnDrop(Arc<AtomicBool>, Arc<Mutex<Option<bool>>>);

impl Drop for RecordOnDrop {
    fn drop(&mut self) {
        *self.1.lock().unwrap() = Some(self.0.load(Ordering::SeqCst));
    }
}

#[tokio::test(start_paused = true)]
async fn stopping_a_pool_with_a_member_that_ignores_it_times_out() {
    let (stubborn, polite) = (Dropped::default(), Dropped::default());
    let pool = Pool::new("pool")
        .with_service(ignores_stop("stubborn", &stubborn))
        .with_service(until_stopped("polite", &polite));
    let (handle, _log) = spawn_pool(pool);
    settle().await;
    assert_eq!(handle.state(), State::Running);
    let started = Instant::now();
    let error = bounded(handle.stop(2 * SECOND)).await.unwrap_err();
    assert_eq!(started.elapsed(), 2 * SECOND);
    assert_eq!(error.kind(), ErrorKind::Timeout);
    assert!(polite.get());
    assert_eq!(handle.state(), State::Crashed);
    settle().await; // if the pool itself was cancelled, its members are aborted next
    assert!(stubborn.get());
}

#[tokio::test(start_paused = true)]
async fn a_panicking_member_is_reported_as_a_crash() {
    let a = Dropped::default();
    let pool = Pool::new("pool")
        .with_service(until_stopped("a", &a))
        .with_service(service("buggy", |_ctx| async { panic!("boom") }));
    let (handle, _log) = spawn_pool(pool);
    let error = bounded(handle.wait()).await.unwrap_err();
    assert!(
        error.to_string().contains("\"buggy\" panicked: boom"),
        "{error}"
    );
    assert!(a.get());
}

#[tokio::test(start_paused = true)]
async fn nested_pools_report_running_and_propagate_a_failure_outwards() {
    let (a, b) = (Dropped::default(), Dropped::default());
    let inner = Pool::new("inner")
        .with_service(ready_after("b", SECOND, &b))
        .with_service(fails_after("c", 5 * SECOND));
    let outer = Pool::new("outer")
        .with_service(until_stopped("a", &a))
        .with_service(Arc::new(inner));
    let (handle, log) = spawn_pool(outer);
    settle().await;
    assert_eq!(
        handle.state(),
        State::Starting,
        "inner's b is not ready yet"
    );
    sleep(2 * SECOND).await;
    assert_eq!(handle.state(), State::Running);
    let error = bounded(handle.wait()).await.unwrap_err();
    assert_eq!(error.to_string(), "conflict: c broke");
    assert!(
        a.get() && b.get(),
        "members of both pools must have been stopped"
    );
    assert!(log.lines().contains(&"running -> crashed".to_owned()));
}

#[tokio::test(start_paused = true)]
async fn stopping_nested_pools_reaches_every_member() {
    let (a, b) = (Dropped::default(), Dropped::default());
    let inner = Pool::new("inner").with_service(until_stopped("b", &b));
    let outer = Pool::new("outer")
        .with_service(until_stopped("a", &a))
        .with_service(Arc::new(inner));
    let (handle, _log) = spawn_pool(outer);
    settle().await;
    assert_eq!(handle.state(), State::Running);
    bounded(handle.stop(SECOND)).await.unwrap();
    assert!(a.get() && b.get());
}

#[tokio::test(start_paused = true)]
async fn an_empty_pool_finishes_at_once() {
    let (handle, log) = spawn_pool(Pool::new("empty"));
    bounded(handle.wait()).await.unwrap();
    assert_eq!(
        log.lines(),
        lines(&["on_starting", "starting -> stopped", "on_stopped"])
    );
}
