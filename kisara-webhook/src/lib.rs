#![doc = include_str!("../README.md")]

mod error;
pub mod wire;

pub use error::WebhookError;
