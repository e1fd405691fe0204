//! [`Pool`]: several services run, reported and stopped as one.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::task::{Id, JoinError, JoinSet};
use tracing::{Instrument, debug, info, info_span, warn};

use super::{Service, ServiceContext, StopRequest, expiry, join_error, request_stop};
use crate::{Error, Result};

/// Runs several services concurrently as one [`Service`]; pools nest.
///
/// # Behavior
///
/// - Every member is spawned on its own task at once, each with its own
///   [`ServiceContext`]. The pool reports running when all members have.
/// - When a member ends on its own (crashes, panics or finishes), the pool
///   stops all the others within its [stop timeout](Self::with_stop_timeout),
///   or within the pool's own deadline if it is already stopping.
/// - When the pool is asked to stop, it passes the request with the same
///   deadline to all members at once (not in reverse order: one slow member
///   must not eat the others' time); a later request with an earlier
///   deadline is passed on too.
/// - Members still running at the deadline are cancelled (their futures
///   dropped before the pool returns). Dropping the pool's own future aborts
///   its members.
/// - The pool returns the first member error, else [`Error::Timeout`]
///   naming the members that ignored the deadline, else `Ok`. An empty pool
///   returns `Ok` at once.
pub struct Pool {
    name: String,
    services: Vec<Arc<dyn Service>>,
    stop_timeout: Duration,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let members: Vec<&str> = self.services.iter().map(|s| s.name()).collect();
        f.debug_struct("Pool")
            .field("name", &self.name)
            .field("members", &members)
            .field("stop_timeout", &self.stop_timeout)
            .finish()
    }
}

impl Pool {
    /// How long members get to stop after one of them ended, unless set with
    /// [`with_stop_timeout`](Self::with_stop_timeout).
    pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

    /// An empty pool called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            services: Vec::new(),
            stop_timeout: Self::DEFAULT_STOP_TIMEOUT,
        }
    }

    /// Adds a member service.
    #[must_use]
    pub fn with_service(mut self, service: Arc<dyn Service>) -> Self {
        self.services.push(service);
        self
    }

    /// How long members get to stop when the pool stops them because one of
    /// them ended (a stop asked of the pool brings its own deadline).
    #[must_use]
    pub fn with_stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }
}

/// Waits until every member has reported ready.
async fn all_ready(ready: &[Arc<watch::Sender<bool>>]) {
    for member in ready {
        // The sender is held in `ready`, so this cannot fail.
        let _ = member.subscribe().wait_for(|ready| *ready).await;
    }
}

/// A finished member task: its name, and its result with a panic turned into
/// an error; `None` if it was cancelled.
fn settle(
    names: &HashMap<Id, String>,
    joined: std::result::Result<(Id, Result<()>), JoinError>,
) -> (&str, Option<Result<()>>) {
    let (id, result) = match joined {
        Ok((id, result)) => (id, Some(result)),
        Err(error) => {
            let id = error.id();
            let name = names.get(&id).map_or("?", String::as_str);
            let result = (!error.is_cancelled()).then(|| Err(join_error(name, error)));
            (id, result)
        }
    };
    (names.get(&id).map_or("?", String::as_str), result)
}

#[async_trait]
impl Service for Pool {
    fn name(&self) -> &str {
        &self.name
    }

    async fn run(&self, ctx: ServiceContext) -> Result<()> {
        let stop = watch::Sender::new(None);
        let mut members = JoinSet::new();
        let mut names = HashMap::new();
        let mut ready = Vec::with_capacity(self.services.len());
        for service in &self.services {
            let member_ready = Arc::new(watch::Sender::new(false));
            let member_ctx = ServiceContext {
                ready: Arc::clone(&member_ready),
                stop: stop.subscribe(),
            };
            ready.push(member_ready);
            let name = service.name().to_owned();
            let span = info_span!("service", member = %name);
            let service = Arc::clone(service);
            let task = members.spawn(async move { service.run(member_ctx).await }.instrument(span));
            names.insert(task.id(), name);
        }

        let mut outer = ctx.stop.clone();
        let mut first_error: Option<Error> = None;
        let mut reported_ready = false;
        while !members.is_empty() {
            if let Some(request) = *outer.borrow_and_update() {
                request_stop(&stop, request);
            }
            let request = *stop.borrow();
            // Members that become ready while the pool stops do not make it
            // running any more.
            let awaiting_ready = !reported_ready && request.is_none();
            tokio::select! {
                biased;
                Some(joined) = members.join_next_with_id() => {
                    let (name, result) = settle(&names, joined);
                    match result {
                        Some(Err(error)) => {
                            warn!(member = name, %error, "pool member crashed");
                            first_error.get_or_insert(error);
                        }
                        _ => debug!(member = name, "pool member ended"),
                    }
                    if stop.borrow().is_none() {
                        info!(member = name, "a pool member ended; stopping the others");
                        request_stop(&stop, StopRequest::after(self.stop_timeout));
                    }
                }
                () = all_ready(&ready), if awaiting_ready => {
                    reported_ready = true;
                    ctx.running();
                }
                Ok(()) = outer.changed() => {}
                request = expiry(request) => {
                    members.abort_all();
                    let mut ignored = Vec::new();
                    while let Some(joined) = members.join_next_with_id().await {
                        match settle(&names, joined) {
                            (name, None) => ignored.push(format!("{name:?}")),
                            (_, Some(Err(error))) => {
                                first_error.get_or_insert(error);
                            }
                            (_, Some(Ok(()))) => {}
                        }
                    }
                    if ignored.is_empty() {
                        // All of them ended just before the abort took effect.
                        break;
                    }
                    warn!(ignored = %ignored.join(", "), "pool members ignored their stop deadline; cancelled them");
                    let timeout = Error::Timeout {
                        operation: format!("stopping {} of pool {:?}", ignored.join(", "), self.name),
                        after: request.after,
                    };
                    return Err(first_error.unwrap_or(timeout));
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
