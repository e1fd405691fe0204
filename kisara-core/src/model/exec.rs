//! Running commands inside containers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A terminal size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TtySize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// What to run inside a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecSpec {
    /// The command and its arguments; must not be empty.
    pub command: Vec<String>,
    /// Allocate a terminal (stdout and stderr then arrive merged as stdout).
    #[serde(default)]
    pub tty: bool,
    /// Open stdin for writing.
    #[serde(default)]
    pub stdin: bool,
    /// The initial terminal size, with `tty`.
    #[serde(default)]
    pub size: Option<TtySize>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Run as this user instead of the container's.
    #[serde(default)]
    pub user: Option<String>,
    /// The working directory.
    #[serde(default)]
    pub workdir: Option<String>,
}

impl ExecSpec {
    /// Runs `command` without terminal or stdin.
    pub fn new<S: Into<String>>(command: impl IntoIterator<Item = S>) -> Self {
        Self {
            command: command.into_iter().map(Into::into).collect(),
            tty: false,
            stdin: false,
            size: None,
            env: BTreeMap::new(),
            user: None,
            workdir: None,
        }
    }

    /// Allocates a terminal of `size`.
    pub fn with_tty(mut self, size: TtySize) -> Self {
        self.tty = true;
        self.size = Some(size);
        self
    }

    /// Opens stdin.
    pub fn with_stdin(mut self) -> Self {
        self.stdin = true;
        self
    }
}

/// A chunk of output from an exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecOutput {
    /// Bytes written to stdout (or to the terminal, with a TTY).
    Stdout(bytes::Bytes),
    /// Bytes written to stderr.
    Stderr(bytes::Bytes),
}

/// Where an exec stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecStatus {
    /// Still running.
    pub running: bool,
    /// The exit code, once it finished.
    pub exit_code: Option<i64>,
}
