#![doc = include_str!("../README.md")]

mod backend;
mod client;
mod error;
pub mod events;
pub mod server;
pub mod sign;
pub use kisara_tls as tls;
mod transport;
pub mod users;
pub mod wire;

pub use backend::{WebhookAuthenticator, WebhookConfigProvider};
pub use client::{ClientOptions, WebhookClient};
pub use error::WebhookError;
pub use events::{EventOptions, EventSender};
pub use server::{BackendHandler, ServerOptions, WebhookHandler, WebhookServer, router};
pub use sign::Signer;
pub use users::{UsersFile, hash_password};
