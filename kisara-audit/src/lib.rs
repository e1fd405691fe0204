#![doc = include_str!("../README.md")]

pub mod cast;

pub use cast::{CastError, CastReader, CastReaderOptions, CastStore, CastStoreOptions};
