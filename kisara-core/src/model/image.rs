//! Image references and images.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{Labels, Timestamp};
use crate::{Error, Result};

/// A validated image reference, `[registry[:port]/]path[:tag][@digest]`, by
/// the grammar of the Docker distribution reference.
///
/// Kept as written; [`ImageRef::tag`] says `latest` when no tag and no digest
/// were given, as the engine assumes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ImageRef {
    full: String,
    /// Byte offset where the name ends (the tag or digest begins).
    name_end: usize,
    tag: Option<String>,
    digest: Option<String>,
}

impl ImageRef {
    /// Parses and validates a reference.
    pub fn parse(reference: &str) -> Result<Self> {
        let bad = |why: String| Error::invalid("image reference", format!("{reference:?}: {why}"));
        if reference.is_empty() {
            return Err(bad("is empty".into()));
        }
        let (rest, digest) = match reference.split_once('@') {
            Some((rest, digest)) => {
                validate_digest(digest).map_err(bad)?;
                (rest, Some(digest.to_owned()))
            }
            None => (reference, None),
        };
        // A ':' after the last '/' starts the tag; one before it is a port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].find(':') {
            Some(colon) => {
                let colon = last_slash + colon;
                let tag = &rest[colon + 1..];
                validate_tag(tag).map_err(bad)?;
                (&rest[..colon], Some(tag.to_owned()))
            }
            None => (rest, None),
        };
        validate_name(name).map_err(bad)?;
        Ok(Self {
            full: reference.to_owned(),
            name_end: name.len(),
            tag,
            digest,
        })
    }

    /// The repository name with its registry, without tag or digest.
    pub fn name(&self) -> &str {
        &self.full[..self.name_end]
    }

    /// The tag: as given, or `latest` when neither tag nor digest was given.
    pub fn tag(&self) -> Option<&str> {
        match (&self.tag, &self.digest) {
            (Some(tag), _) => Some(tag),
            (None, None) => Some("latest"),
            (None, Some(_)) => None,
        }
    }

    /// The digest, `algorithm:hex`, when given.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// The reference as written.
    pub fn as_str(&self) -> &str {
        &self.full
    }
}

fn validate_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("the repository name is empty".into());
    }
    if name.len() > 255 {
        return Err(format!(
            "the name is {} characters long; at most 255",
            name.len()
        ));
    }
    let mut components: Vec<&str> = name.split('/').collect();
    let first = components[0];
    let has_domain = components.len() > 1
        && (first.contains(['.', ':'])
            || first == "localhost"
            || first.chars().any(|c| c.is_ascii_uppercase()));
    if has_domain {
        validate_domain(first)?;
        components.remove(0);
    }
    for component in components {
        check_path_component(component)?;
    }
    Ok(())
}

fn validate_domain(domain: &str) -> std::result::Result<(), String> {
    let (host, port) = match domain.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    if let Some(port) = port
        && !matches!(port.parse::<u16>(), Ok(1..))
    {
        return Err(format!("registry port {port:?} is not a port number"));
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if host.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(format!("registry host {host:?} is not a valid host name"))
    }
}

/// Checks one `/`-separated component of a repository name against the
/// distribution reference grammar: `[a-z0-9]` runs joined by `.`, `_`,
/// `__` or dashes. The error names the component and what is wrong with
/// it. Image references and registry scopes both use it.
///
/// # Errors
///
/// The message, when `part` is not a valid component.
pub fn check_path_component(part: &str) -> std::result::Result<(), String> {
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let bytes = part.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return Err("has an empty path component".to_owned());
    };
    if !alnum(first) || !alnum(last) {
        return Err(format!(
            "path component {part:?} must start and end with [a-z0-9]"
        ));
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        // A separator: `.`, `_`, `__` or one or more `-`.
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &part[start..i];
        let ok = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !ok {
            return Err(format!(
                "path component {part:?} has the separator {separator:?} (only ., _, __ or dashes join [a-z0-9] runs)"
            ));
        }
    }
    Ok(())
}

fn validate_tag(tag: &str) -> std::result::Result<(), String> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let valid = tag.len() <= 128
        && tag.chars().next().is_some_and(word)
        && tag.chars().all(|c| word(c) || c == '.' || c == '-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "tag {tag:?} must be 1 to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'"
        ))
    }
}

fn validate_digest(digest: &str) -> std::result::Result<(), String> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err(format!("digest {digest:?} must be algorithm:hex"));
    };
    let algorithm_ok = !algorithm.is_empty()
        && algorithm.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '.' | '_' | '-')
        });
    let hex_ok = hex.len() >= 32 && hex.chars().all(|c| c.is_ascii_hexdigit());
    if algorithm_ok && hex_ok {
        Ok(())
    } else {
        Err(format!(
            "digest {digest:?} must be algorithm:hex with at least 32 hex digits"
        ))
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl FromStr for ImageRef {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl TryFrom<String> for ImageRef {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::parse(&s)
    }
}

impl From<ImageRef> for String {
    fn from(image: ImageRef) -> Self {
        image.full
    }
}

/// An image on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(examples(json!({"id": "sha256:5b0d2f7c1e9a8b3d4c6f0a1e2d3c4b5a69788796a5b4c3d2e1f0a9b8c7d6e5f4", "tags": ["ctf/web-1:latest"], "size_bytes": 7340032, "created_at": 1_767_787_200_000_u64, "labels": {}})))
)]
pub struct ImageInfo {
    /// The engine's image id (`sha256:...`).
    pub id: String,
    /// The references that point at it (`busybox:latest`).
    pub tags: Vec<String>,
    /// Size on disk in bytes.
    pub size_bytes: u64,
    /// When it was built.
    pub created_at: Timestamp,
    /// Its labels.
    #[cfg_attr(feature = "openapi", schema(value_type = std::collections::BTreeMap<String, String>))]
    pub labels: Labels,
}

/// How to build an image from a tar context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildSpec {
    /// The reference the built image gets.
    pub tag: ImageRef,
    /// The Dockerfile's path inside the context.
    #[serde(default = "default_dockerfile")]
    pub dockerfile: String,
    /// `--build-arg`s.
    #[serde(default)]
    pub build_args: Labels,
    /// Labels the image gets.
    #[serde(default)]
    pub labels: Labels,
}

fn default_dockerfile() -> String {
    "Dockerfile".to_owned()
}

impl BuildSpec {
    /// Builds `tag` from the context's `Dockerfile`.
    pub fn new(tag: ImageRef) -> Self {
        Self {
            tag,
            dockerfile: default_dockerfile(),
            build_args: Labels::new(),
            labels: Labels::new(),
        }
    }
}

/// One step of progress of a pull or a build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Progress {
    /// The layer or build step this is about, when there is one.
    pub id: Option<String>,
    /// What is happening (`Downloading`, `Step 2/4 : RUN ...`).
    pub status: String,
    /// Bytes (or units) done so far, when known.
    pub current: Option<u64>,
    /// Total bytes (or units), when known.
    pub total: Option<u64>,
}

impl Progress {
    /// A status line without counters.
    pub fn status(status: impl Into<String>) -> Self {
        Self {
            id: None,
            status: status.into(),
            current: None,
            total: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_real_references() {
        for (reference, name, tag) in [
            ("busybox", "busybox", Some("latest")),
            ("library/busybox:1.36", "library/busybox", Some("1.36")),
            (
                "127.0.0.1:5000/ctf/web:v2",
                "127.0.0.1:5000/ctf/web",
                Some("v2"),
            ),
            ("localhost/a__b.c-d", "localhost/a__b.c-d", Some("latest")),
            ("Registry.Example/x", "Registry.Example/x", Some("latest")),
        ] {
            let image = ImageRef::parse(reference).unwrap();
            assert_eq!(image.name(), name, "{reference}");
            assert_eq!(image.tag(), tag, "{reference}");
            assert_eq!(image.to_string(), reference);
        }
        let pinned = ImageRef::parse(&format!("busybox@sha256:{}", "a".repeat(64))).unwrap();
        assert_eq!(pinned.tag(), None);
        assert!(pinned.digest().unwrap().starts_with("sha256:"));
    }

    #[test]
    fn rejects_bad_references_naming_the_part() {
        for (bad, needle) in [
            ("", "empty"),
            ("Busybox", "\"Busybox\""),
            ("busybox:", "tag \"\""),
            ("busybox:-x", "tag \"-x\""),
            ("a//b", "empty path component"),
            ("a/b_", "\"b_\""),
            ("a:99999/b", "port \"99999\""),
            ("busybox@sha256:abc", "digest"),
            ("bad host!/x", "\"bad host!\""),
        ] {
            let err = ImageRef::parse(bad).unwrap_err().to_string();
            assert!(err.contains(needle), "{bad:?}: {err}");
            assert!(err.contains(&format!("{bad:?}")), "{bad:?}: {err}");
        }
    }
}
