#![doc = include_str!("../README.md")]

pub mod sink;

pub use sink::{
    Durability, JsonlConfig, JsonlReader, JsonlSink, SqliteConfig, SqliteSink, StoredEvent, Tee,
    TeePolicy, WebhookConfig, WebhookSink,
};
