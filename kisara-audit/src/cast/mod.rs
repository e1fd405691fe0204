//! Session recordings as asciicast v2: [`CastStore`], a
//! [`kisara_core::RecordingStore`] of `.cast` files, and [`CastReader`],
//! which reads v2 (and v1, for import) robustly.

mod read;
mod store;

pub use read::{CastHeader, CastReader, CastReaderOptions, TornLine};
pub use store::{CastStore, CastStoreOptions};
