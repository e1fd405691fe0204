//! In-memory backends.
