//! Conformance suites: the `# Contract` of each backend trait as `pub async
//! fn` cases that every implementation runs (behind the `testing` feature).
//!
//! Each module has a fixture type (what a case needs: the backend, plus test
//! data such as an image or known credentials), its cases, and `all(make)`,
//! which runs every case on a fresh fixture from `make`, cleans up after
//! each, and panics listing every failed case. Cases that need an optional
//! ability read the backend's declared capabilities and report themselves
//! not applicable instead of skipping silently.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::sync::Arc;
//! use kisara_core::memory::MemorySubnetAllocator;
//! use kisara_core::testing::subnet;
//!
//! subnet::all(|| async {
//!     Arc::new(MemorySubnetAllocator::new("10.200.0.0/18".parse().unwrap(), 24).unwrap()) as _
//! })
//! .await;
//! # }
//! ```

use std::fmt::Write as _;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::time::Duration;

use futures::FutureExt;

pub mod access;
pub mod placement;
pub mod recording;
pub mod runtime;
pub mod service;
pub mod subnet;
pub mod tunnel;

/// A case's future.
pub type CaseFuture = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// How a case ended, when it did not panic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every check held.
    Passed,
    /// The backend declares it lacks the ability the case needs.
    NotApplicable(&'static str),
}

/// One case of a suite.
pub struct Case<F> {
    /// The case's name, as reported.
    pub name: &'static str,
    /// Runs the case on a fixture.
    pub run: fn(F) -> CaseFuture,
}

/// What a suite runs against; cleaned up after every case, passed or failed.
pub trait Fixture: Clone + Send + Sync + 'static {
    /// Removes what a case may have left behind.
    fn cleanup(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Longest a single case may take.
const CASE_TIMEOUT: Duration = Duration::from_secs(180);

/// Declares a suite: its table of cases and the `pub async fn` that runs
/// them all, each on a fresh fixture.
macro_rules! suite {
    ($runner:ident, $suite:literal, $table:ident: $fixture:ty: $($case:ident),+ $(,)?) => {
        /// Every case of this suite, in order.
        pub const $table: &[$crate::testing::Case<$fixture>] = &[
            $($crate::testing::Case { name: stringify!($case), run: |f| Box::pin($case(f)) }),+
        ];

        #[doc = concat!("Runs every case of the `", $suite, "` suite, each on a fresh fixture from `make`,")]
        /// and panics listing every case that failed.
        pub async fn $runner<M, Fut>(make: M)
        where
            M: Fn() -> Fut,
            Fut: std::future::Future<Output = $fixture>,
        {
            $crate::testing::run_suite($suite, make, $table).await;
        }
    };
}
pub(crate) use suite;

/// Runs every case of `cases` on a fresh fixture from `make`, cleaning up
/// after each, and panics listing every case that failed.
pub async fn run_suite<F, M, Fut>(suite: &str, make: M, cases: &[Case<F>])
where
    F: Fixture,
    M: Fn() -> Fut,
    Fut: Future<Output = F>,
{
    let mut failures = Vec::new();
    let mut not_applicable = Vec::new();
    for case in cases {
        let fixture = make().await;
        let run = AssertUnwindSafe((case.run)(fixture.clone())).catch_unwind();
        let outcome = tokio::time::timeout(CASE_TIMEOUT, run).await;
        fixture.cleanup().await;
        match outcome {
            Ok(Ok(Outcome::Passed)) => {}
            Ok(Ok(Outcome::NotApplicable(why))) => {
                not_applicable.push(format!("{} ({why})", case.name));
            }
            Ok(Err(panic)) => failures.push(format!("{}: {}", case.name, panic_message(&*panic))),
            Err(_) => failures.push(format!(
                "{}: did not finish within {CASE_TIMEOUT:?}",
                case.name
            )),
        }
    }
    if !not_applicable.is_empty() {
        tracing::info!(suite, cases = ?not_applicable, "conformance cases not applicable to this backend");
    }
    if !failures.is_empty() {
        let mut report = format!(
            "{suite} conformance: {} of {} case(s) failed:",
            failures.len(),
            cases.len()
        );
        for failure in &failures {
            let _ = write!(report, "\n  - {failure}");
        }
        panic!("{report}");
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panicked".to_owned())
}

/// A random 64-bit number (tests need variety across processes, not
/// cryptographic quality).
pub fn random_u64() -> u64 {
    crate::random::random_u64()
}

/// A name unique across processes and runs: `{prefix}-{random hex}`.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{:012x}", random_u64() & 0xffff_ffff_ffff)
}

/// `len` pseudo-random bytes.
pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut state = random_u64() | 1;
    (0..len)
        .map(|_| {
            // xorshift64
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}
