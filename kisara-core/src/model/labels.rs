//! Labels: Kisara's state lives on the objects it creates, as `io.kisara.*`
//! labels, so every restart can rebuild it from the engine.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Key/value labels on containers, networks, images and exposures.
pub type Labels = BTreeMap<String, String>;

/// Present (`"true"`) on every object Kisara created; the marker that
/// recovery and garbage collection look for.
pub const MANAGED: &str = "io.kisara.managed";
/// The owner (user or team id) a container was launched for.
pub const OWNER: &str = "io.kisara.owner";
/// The module (challenge, lab, ...) a container belongs to.
pub const MODULE: &str = "io.kisara.module";
/// The Kisara network name a container or network belongs to.
pub const NETWORK: &str = "io.kisara.network";
/// The subnet a network was allocated from the pool.
pub const SUBNET: &str = "io.kisara.subnet";
/// When a container expires, in Unix seconds.
pub const EXPIRES_AT: &str = "io.kisara.expires-at";
/// The node a container runs on.
pub const NODE: &str = "io.kisara.node";
/// On an exposure: the container whose port it exposes.
pub const CONTAINER: &str = "io.kisara.container";
/// On an exposure: the container port it exposes (`80/tcp`).
pub const PORT: &str = "io.kisara.port";

/// Selects objects by their labels: every condition must hold.
///
/// `key` alone matches any value; `key=value` matches that value only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LabelFilter(BTreeMap<String, Option<String>>);

impl LabelFilter {
    /// Matches everything.
    pub fn all() -> Self {
        Self::default()
    }

    /// Matches objects Kisara created ([`MANAGED`]).
    pub fn managed() -> Self {
        Self::all().with(MANAGED, "true")
    }

    /// Also requires `key` to have `value`.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.0.insert(key.into(), Some(value.into()));
        self
    }

    /// Also requires `key` to be present, with any value.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.0.insert(key.into(), None);
        self
    }

    /// Whether `labels` satisfy every condition.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.0
            .iter()
            .all(|(key, wanted)| match (labels.get(key), wanted) {
                (Some(value), Some(wanted)) => value == wanted,
                (Some(_), None) => true,
                (None, _) => false,
            })
    }

    /// The conditions, for backends that translate them into their own
    /// filter syntax (`key` or `key=value`).
    pub fn conditions(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_deref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_need_every_condition() {
        let labels: Labels = [(MANAGED, "true"), (OWNER, "7")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert!(LabelFilter::all().matches(&labels));
        assert!(LabelFilter::managed().with(OWNER, "7").matches(&labels));
        assert!(!LabelFilter::managed().with(OWNER, "8").matches(&labels));
        assert!(LabelFilter::all().with_key(OWNER).matches(&labels));
        assert!(!LabelFilter::all().with_key(MODULE).matches(&labels));
    }
}
