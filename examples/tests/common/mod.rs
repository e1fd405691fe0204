//! What the example binaries' process tests share: free ports, child
//! processes with their logs kept, raw HTTP/1.1 exchanges.

// Each test binary includes this module and uses a part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// A free port on 127.0.0.1 (bound, then released for a child to take).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An example binary reading `config`, logging at info (debug for
/// kisara_core) so failures can be explained.
pub(crate) fn kisara(binary: &str, config: &Path) -> Command {
    let mut command = Command::new(binary);
    command
        .arg(config)
        .env("KISARA_LOG", "info,kisara_core=debug");
    command
}

/// One child process, killed when dropped; its stderr is kept in a log
/// file for failure messages.
pub(crate) struct Process {
    pub(crate) name: String,
    pub(crate) child: Child,
    pub(crate) log: PathBuf,
}

impl Process {
    /// Starts `command` as `name`, its stderr appended to `<dir>/<name>.log`.
    pub(crate) fn start(dir: &Path, name: &str, mut command: Command) -> Self {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = command
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({command:?}): {e}"));
        Self {
            name: name.to_owned(),
            child,
            log,
        }
    }

    /// SIGKILL, as a crash would.
    pub(crate) async fn kill(&mut self) {
        self.child.kill().await.unwrap();
    }

    /// Everything it logged so far.
    pub(crate) fn logged(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its last 30 log lines, headed by its name.
    pub(crate) fn tail(&self) -> String {
        let log = self.logged();
        let lines: Vec<&str> = log.lines().collect();
        let start = lines.len().saturating_sub(30);
        format!("--- {} ---\n{}", self.name, lines[start..].join("\n"))
    }
}

/// Removes every container and network node `node` left on the local
/// engine (by its label), so a failed run leaks nothing.
pub(crate) fn remove_node_leftovers(node: &str) {
    let label = format!("label={}={node}", kisara_core::model::labels::NODE);
    let docker = |args: &[&str]| {
        std::process::Command::new("docker")
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    for id in docker(&["ps", "-aq", "--filter", &label]).split_whitespace() {
        docker(&["rm", "-f", id]);
    }
    for id in docker(&["network", "ls", "-q", "--filter", &label]).split_whitespace() {
        docker(&["network", "rm", id]);
    }
}

/// A raw HTTP/1.1 exchange with `address` (the answer is read to the end).
pub(crate) async fn http(address: &str, request: &str) -> std::io::Result<(u16, String)> {
    exchange(TcpStream::connect(address).await?, request).await
}

/// A raw HTTP/1.1 exchange over `stream` (plain or TLS), the answer read to
/// the end: its status and body.
pub(crate) async fn exchange(
    stream: impl AsyncRead + AsyncWrite + Unpin,
    request: &str,
) -> std::io::Result<(u16, String)> {
    exchange_parts(stream, request)
        .await
        .map(|(status, _, body)| (status, body))
}

/// [`exchange`], with the answer's headers.
pub(crate) async fn exchange_parts(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    request: &str,
) -> std::io::Result<(u16, axum::http::HeaderMap, String)> {
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer))
        .await
        .map_err(|_| std::io::Error::other("no answer within 30 s"))??;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("not HTTP: {answer:?}")))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {head:?}")))?;
    let mut headers = axum::http::HeaderMap::new();
    for line in lines {
        let parsed = line.split_once(':').and_then(|(name, value)| {
            Some((
                axum::http::HeaderName::from_bytes(name.trim().as_bytes()).ok()?,
                axum::http::HeaderValue::from_str(value.trim()).ok()?,
            ))
        });
        let (name, value) =
            parsed.ok_or_else(|| std::io::Error::other(format!("bad header line {line:?}")))?;
        headers.append(name, value);
    }
    Ok((status, headers, body.to_owned()))
}
