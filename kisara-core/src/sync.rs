//! One way to take a lock across the workspace.
//!
//! # Poisoning policy
//!
//! Every critical section in Kisara leaves the guarded state consistent at
//! each step (no invariant is broken across a call that can panic), so a
//! panic while a lock was held says nothing about the data. [`lock`] takes
//! the guard of a poisoned mutex instead of spreading the panic: one failed
//! task must not take down every other user of a shared table.

pub use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, recovering the guard if a holder panicked (see the
/// module's poisoning policy).
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
