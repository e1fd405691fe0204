//! A node's stable identity, kept on its disk.
//!
//! The Go original made a new id on every start, so a restarted node looked
//! like a stranger and its containers were killed. A Kisara agent keeps its
//! id in `<state_dir>/node-id` and presents the same one after any restart.

use std::path::Path;

use kisara_core::model::NodeId;
use kisara_core::{Error, Result};

/// The file, inside the state directory, that holds the node id.
pub const NODE_ID_FILE: &str = "node-id";

/// The node id for this agent: `configured` when given (and kept for next
/// time), else the one kept in `state_dir`, else a new one (the host name
/// and a random suffix) that is kept from now on.
pub fn load_or_create_node_id(state_dir: &Path, configured: Option<&str>) -> Result<NodeId> {
    let path = state_dir.join(NODE_ID_FILE);
    let io_error = |what: &str, error: std::io::Error| {
        Error::unavailable(format!(
            "cannot {what} node id file {}: {error}",
            path.display()
        ))
    };
    let id = match configured {
        Some(configured) => NodeId::new(configured.trim())?,
        None => match std::fs::read_to_string(&path) {
            Ok(kept) => {
                return NodeId::new(kept.trim()).map_err(|error| {
                    Error::invalid(
                        "node id file",
                        format!(
                            "{} holds no valid node id ({error}); fix or delete it",
                            path.display()
                        ),
                    )
                });
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => generated()?,
            Err(error) => return Err(io_error("read", error)),
        },
    };
    std::fs::create_dir_all(state_dir)
        .map_err(|error| io_error("create the directory of", error))?;
    // Write then rename, so a crash never leaves a half-written id.
    let partial = state_dir.join(format!("{NODE_ID_FILE}.partial"));
    std::fs::write(&partial, format!("{id}\n")).map_err(|error| io_error("write", error))?;
    std::fs::rename(&partial, &path).map_err(|error| io_error("replace", error))?;
    Ok(id)
}

fn generated() -> Result<NodeId> {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(40)
        .collect();
    let host = host.trim_start_matches('-');
    let prefix = if host.is_empty() { "node" } else { host };
    NodeId::new(format!(
        "{prefix}-{:08x}",
        kisara_core::random::random_u64() as u32
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let first = load_or_create_node_id(&state, None).unwrap();
        let again = load_or_create_node_id(&state, None).unwrap();
        assert_eq!(first, again, "a restart presents the same id");
        let other = load_or_create_node_id(&dir.path().join("elsewhere"), None).unwrap();
        assert_ne!(first, other);
    }

    #[test]
    fn a_configured_id_wins_and_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create_node_id(dir.path(), None).unwrap();
        let configured = load_or_create_node_id(dir.path(), Some("edge-1")).unwrap();
        assert_eq!(configured.as_str(), "edge-1");
        assert_eq!(
            load_or_create_node_id(dir.path(), None).unwrap().as_str(),
            "edge-1"
        );
        let err = load_or_create_node_id(dir.path(), Some("bad id")).unwrap_err();
        assert!(err.to_string().contains("\"bad id\""), "{err}");
    }

    #[test]
    fn a_corrupt_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(NODE_ID_FILE), "../../etc\n").unwrap();
        let err = load_or_create_node_id(dir.path(), None).unwrap_err();
        assert!(err.to_string().contains(NODE_ID_FILE), "{err}");
    }
}
