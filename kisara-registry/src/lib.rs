#![doc = include_str!("../README.md")]

pub mod admin;
pub mod config;
mod error;
pub mod keys;
pub mod notify;
pub mod scope;
pub mod service;
pub mod store;
pub mod token;

pub use admin::AdminApi;
pub use error::{RegistryError, Result};
pub use keys::{KeyRing, KidFormat, SigningKey};
pub use notify::NotificationIntake;
pub use scope::{Action, RepositoryName, Resource, Scope};
pub use service::{PullGate, TokenService};
pub use store::{ImageRecord, Project, Role, Store};
pub use token::{Access, Issuer};
