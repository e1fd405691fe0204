#![doc = include_str!("../README.md")]

pub mod asciicast;
pub mod builtin;
pub mod config;
mod error;
pub mod lifecycle;
pub mod memory;
pub mod model;
pub mod placement;
pub mod random;
mod secret;
pub mod sync;
#[cfg(feature = "testing")]
pub mod testing;
pub mod traits;

pub use error::{BoxError, EXCERPT_CHARS, Error, ErrorKind, Result, excerpt};
pub use secret::Secret;
pub use traits::*;

/// The workspace README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct WorkspaceReadme;
