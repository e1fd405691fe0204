//! Built-in backends for production use that need no service of their own:
//! a fixed table of users and tokens ([`StaticAuthenticator`]), a fixed
//! session config ([`StaticConfigProvider`]) and command prefixes
//! ([`PrefixPolicy`]). The in-memory test doubles of the other traits live
//! in [`crate::memory`].

mod access;

pub use access::{PrefixPolicy, StaticAuthenticator, StaticConfigProvider, rejected};
