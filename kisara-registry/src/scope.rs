//! The registry's scope grammar (distribution `docs/spec/auth/scope.md`):
//! `resourcetype[(class)]:resourcename:action[,action]*`, with repository
//! names checked against the distribution reference grammar.

use std::collections::BTreeSet;
use std::fmt;

use kisara_core::model::check_path_component;
use serde::Serialize;

use crate::error::{RegistryError, Result};

/// The longest scope string accepted: a repository name is at most 255
/// characters, so anything much longer is hostile.
pub const MAX_SCOPE_LEN: usize = 512;
/// The most scopes one token request may ask for.
pub const MAX_SCOPES: usize = 32;
/// The longest repository name (the reference grammar's limit).
pub const MAX_NAME_LEN: usize = 255;

/// What a token may allow on a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// Read manifests and blobs (and the catalog's `*`).
    Pull,
    /// Upload.
    Push,
    /// Delete manifests.
    Delete,
    /// Everything (`registry:catalog:*`).
    All,
}

impl Action {
    fn parse(text: &str, scope: &str) -> Result<Self> {
        match text {
            "pull" => Ok(Self::Pull),
            "push" => Ok(Self::Push),
            "delete" => Ok(Self::Delete),
            "*" => Ok(Self::All),
            other => Err(RegistryError::invalid(
                "scope",
                format!("{scope:?}: unknown action {other:?} (pull, push, delete or *)"),
            )),
        }
    }

    /// The spelling in scopes and tokens.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pull => "pull",
            Self::Push => "push",
            Self::Delete => "delete",
            Self::All => "*",
        }
    }
}

impl Serialize for Action {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// What a scope names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    /// A repository (`repository` or the deprecated `repository(plugin)`).
    Repository(RepositoryName),
    /// The catalog (`registry:catalog`).
    Catalog,
}

/// One parsed scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// The resource.
    pub resource: Resource,
    /// The actions asked for.
    pub actions: BTreeSet<Action>,
}

impl Scope {
    /// Parses one scope. The type runs to the first `:`, the actions follow
    /// the last one, so a name with `host:port/` stays whole.
    pub fn parse(text: &str) -> Result<Self> {
        if text.len() > MAX_SCOPE_LEN {
            return Err(RegistryError::invalid(
                "scope",
                format!(
                    "{:?}... is {} bytes, over the {MAX_SCOPE_LEN}-byte limit",
                    excerpt(text),
                    text.len()
                ),
            ));
        }
        let shape = || {
            RegistryError::invalid(
                "scope",
                format!("{text:?} is not `type:name:action[,action]`"),
            )
        };
        let (kind, rest) = text.split_once(':').ok_or_else(shape)?;
        let (name, actions) = rest.rsplit_once(':').ok_or_else(shape)?;
        if actions.is_empty() {
            return Err(RegistryError::invalid(
                "scope",
                format!("{text:?} asks for no action"),
            ));
        }
        let actions = actions
            .split(',')
            .map(|a| Action::parse(a, text))
            .collect::<Result<BTreeSet<_>>>()?;
        let resource = match kind {
            // `repository(plugin)` is deprecated and means `repository`.
            "repository" | "repository(plugin)" => {
                Resource::Repository(RepositoryName::parse(name).map_err(|e| match e {
                    RegistryError::Invalid { message, .. } => {
                        RegistryError::invalid("scope", format!("{text:?}: {message}"))
                    }
                    other => other,
                })?)
            }
            "registry" if name == "catalog" => Resource::Catalog,
            "registry" => {
                return Err(RegistryError::invalid(
                    "scope",
                    format!("{text:?}: the registry resource is `catalog`, not {name:?}"),
                ));
            }
            other => {
                return Err(RegistryError::invalid(
                    "scope",
                    format!(
                        "{text:?}: unknown resource type {:?} (repository, repository(plugin) or registry)",
                        excerpt(other)
                    ),
                ));
            }
        };
        Ok(Self { resource, actions })
    }

    /// Parses every scope of a request: repeated `scope` parameters, each
    /// of which may hold several space-separated scopes (the OAuth2 form).
    pub fn parse_all<'a>(values: impl IntoIterator<Item = &'a str>) -> Result<Vec<Self>> {
        let mut scopes = Vec::new();
        for text in values.into_iter().flat_map(str::split_whitespace) {
            if scopes.len() == MAX_SCOPES {
                return Err(RegistryError::invalid(
                    "scope",
                    format!("more than {MAX_SCOPES} scopes in one request"),
                ));
            }
            scopes.push(Self::parse(text)?);
        }
        Ok(scopes)
    }
}

fn excerpt(text: &str) -> String {
    text.chars().take(64).collect()
}

/// A repository name in the distribution reference grammar: an optional
/// `domain[:port]/` and `/`-separated path components of `[a-z0-9]`
/// runs joined by `.`, `_`, `__` or dashes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RepositoryName {
    full: String,
    /// Where the path (after any domain) starts in `full`.
    path_start: usize,
}

impl RepositoryName {
    /// Checks `name` against the grammar.
    pub fn parse(name: &str) -> Result<Self> {
        let bad =
            |why: String| RegistryError::invalid("repository name", format!("{name:?}: {why}"));
        if name.is_empty() {
            return Err(bad("is empty".to_owned()));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(bad(format!("is over {MAX_NAME_LEN} characters")));
        }
        let mut parts = name.split('/').collect::<Vec<_>>();
        let mut path_start = 0;
        // As docker decides: a first component with `.` or `:`, or
        // `localhost`, is a domain when more components follow.
        if parts.len() > 1 {
            let first = parts[0];
            if first.contains(['.', ':']) || first == "localhost" {
                check_domain(first).map_err(bad)?;
                path_start = first.len() + 1;
                parts.remove(0);
            }
        }
        for part in parts {
            check_path_component(part).map_err(bad)?;
        }
        Ok(Self {
            full: name.to_owned(),
            path_start,
        })
    }

    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The project: the first path component (after any domain).
    pub fn project(&self) -> &str {
        let path = &self.full[self.path_start..];
        path.split('/').next().unwrap_or(path)
    }
}

impl fmt::Display for RepositoryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

fn check_domain(domain: &str) -> std::result::Result<(), String> {
    let (host, port) = match domain.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    if let Some(port) = port
        && (port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.len() > 5)
    {
        return Err(format!("domain {domain:?} has a bad port {port:?}"));
    }
    for label in host.split('.') {
        let b = label.as_bytes();
        let ok = !b.is_empty()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-';
        if !ok {
            return Err(format!("domain {domain:?} has a bad label {label:?}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actions(list: &[Action]) -> BTreeSet<Action> {
        list.iter().copied().collect()
    }

    #[test]
    fn valid_scopes_parse() {
        let s = Scope::parse("repository:ctf/x:pull,push").unwrap();
        let Resource::Repository(name) = &s.resource else {
            panic!("{s:?}")
        };
        assert_eq!(name.as_str(), "ctf/x");
        assert_eq!(name.project(), "ctf");
        assert_eq!(s.actions, actions(&[Action::Pull, Action::Push]));

        let s = Scope::parse("repository:127.0.0.1:5000/ctf/deep/x:pull").unwrap();
        let Resource::Repository(name) = &s.resource else {
            panic!("{s:?}")
        };
        assert_eq!(name.as_str(), "127.0.0.1:5000/ctf/deep/x");
        assert_eq!(name.project(), "ctf");

        let s = Scope::parse("repository(plugin):ctf/a.b__c-d---e/f_g:pull").unwrap();
        assert!(matches!(s.resource, Resource::Repository(_)));
        let s = Scope::parse("registry:catalog:*").unwrap();
        assert_eq!(s.resource, Resource::Catalog);
        assert_eq!(s.actions, actions(&[Action::All]));
        // A single-component name is its own project.
        let s = Scope::parse("repository:alpine:pull").unwrap();
        let Resource::Repository(name) = &s.resource else {
            panic!("{s:?}")
        };
        assert_eq!(name.project(), "alpine");
    }

    #[test]
    fn invalid_scopes_name_the_problem() {
        for (scope, expect) in [
            ("repository", "is not `type:name:action"),
            ("repository:ctf/x", "is not `type:name:action"),
            ("repository:ctf/x:", "asks for no action"),
            ("repository:ctf/x:pull,steal", "unknown action \"steal\""),
            ("repository:Ctf/x:pull", "must start and end with [a-z0-9]"),
            ("repository:ctf//x:pull", "empty path component"),
            ("repository:ctf/x-:pull", "must start and end"),
            ("repository:ctf/a..b:pull", "separator \"..\""),
            ("repository:ctf/a___b:pull", "separator \"___\""),
            ("repository:bad_host:99999999/x:pull", "bad port"),
            ("registry:users:*", "the registry resource is `catalog`"),
            ("blob:ctf/x:pull", "unknown resource type \"blob\""),
            ("repository::pull", "is empty"),
        ] {
            let err = Scope::parse(scope).unwrap_err().to_string();
            assert!(err.contains(expect), "{scope}: {err}");
        }
    }

    #[test]
    fn hostile_scopes_are_bounded() {
        let long = format!("repository:{}:pull", "a".repeat(300));
        let err = Scope::parse(&long).unwrap_err().to_string();
        assert!(err.contains("over 255 characters"), "{err}");
        let huge = format!("repository:{}:pull", "a/".repeat(10_000));
        let err = Scope::parse(&huge).unwrap_err().to_string();
        assert!(err.contains("over the 512-byte limit"), "{err}");
        let many = vec!["repository:ctf/x:pull"; MAX_SCOPES + 1];
        let err = Scope::parse_all(many).unwrap_err().to_string();
        assert!(err.contains("more than 32 scopes"), "{err}");
        // Newlines, NULs and unicode are not in the grammar.
        for scope in [
            "repository:ctf/x\n:pull",
            "repository:ctf/\0x:pull",
            "repository:ctf/ẋ:pull",
            "repository:../etc:pull",
        ] {
            assert!(Scope::parse(scope).is_err(), "{scope:?}");
        }
        // Space-separated scopes in one parameter (the OAuth2 form).
        let scopes = Scope::parse_all(["repository:a/b:pull registry:catalog:*"]).unwrap();
        assert_eq!(scopes.len(), 2);
    }
}
