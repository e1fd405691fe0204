//! [`ContainerRuntime`]: containers, networks, exec, files, images, events and
//! stats on one node.

use std::fmt;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::io::AsyncWrite;

use crate::model::{
    BuildSpec, ContainerEvent, ContainerId, ContainerInfo, ContainerSpec, ContainerStats, ExecId,
    ExecOutput, ExecSpec, ExecStatus, ImageInfo, ImageRef, LabelFilter, NetworkId, NetworkInfo,
    NetworkSpec, NodeStats, Progress, TtySize,
};
use crate::{Error, Result};

/// A boxed stream of results, as runtimes return them.
pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T>> + Send + 'static>>;
/// A stream of bytes (tar archives, build contexts).
pub type ByteStream = BoxStream<Bytes>;
/// Progress of a pull or a build; see [`ContainerRuntime::pull_image`].
pub type ProgressStream = BoxStream<Progress>;
/// Container events; see [`ContainerRuntime::events`].
pub type EventStream = BoxStream<ContainerEvent>;

/// What a runtime can do beyond the operations every runtime offers.
///
/// Conformance cases that need an ability read it here instead of skipping
/// ad hoc; callers check it before relying on one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuntimeCapabilities {
    /// Multi-host overlay networks ([`crate::model::NetworkDriver::Overlay`]).
    pub overlay_networks: bool,
    /// OOM events and `oom_killed` when a memory limit is hit.
    pub oom_events: bool,
    /// [`ContainerRuntime::pull_image`] from a registry.
    pub image_pull: bool,
    /// [`ContainerRuntime::build_image`] from a tar context.
    pub image_build: bool,
}

/// A running exec: its id, stdin (when asked for) and its output.
///
/// Dropping it cancels the exec: the runtime ends the process.
pub struct ExecSession {
    /// Its id, for [`ContainerRuntime::resize_exec`] and
    /// [`ContainerRuntime::exec_status`].
    pub id: ExecId,
    /// The process's stdin when [`ExecSpec::stdin`] was set; shutting it
    /// down sends end-of-file.
    pub stdin: Option<Pin<Box<dyn AsyncWrite + Send>>>,
    /// stdout and stderr as they come; ends when the process exits.
    pub output: BoxStream<ExecOutput>,
}

impl fmt::Debug for ExecSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecSession")
            .field("id", &self.id)
            .field("stdin", &self.stdin.is_some())
            .finish_non_exhaustive()
    }
}

/// The whole result of an exec run to completion.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecResult {
    /// Everything written to stdout (or the terminal).
    pub stdout: Vec<u8>,
    /// Everything written to stderr.
    pub stderr: Vec<u8>,
    /// The exit code.
    pub exit_code: i64,
}

/// Containers, networks, exec, files, images, events and stats on one node:
/// a Docker engine, an in-memory fake, or a remote node seen from the server.
///
/// # Contract
///
/// Every implementation guarantees:
///
/// - **Addressing.** Containers and networks are addressed by id or by name.
///   Unknown ones give [`Error::NotFound`] naming the id or name.
/// - **Names.** Creating a container or network whose name exists gives
///   [`Error::AlreadyExists`] naming it and changes nothing.
/// - **Labels.** Launched containers carry [`ContainerSpec::kisara_labels`];
///   created networks carry [`NetworkSpec::kisara_labels`]. `list` and
///   `list_networks` return exactly the objects whose labels match the filter.
/// - **Launch.** `launch` creates the container, joins it to each of
///   `spec.networks` (which must exist: [`Error::NotFound`] otherwise) and
///   starts it; on any failure nothing is left behind. The returned info
///   shows it running with an address on each network, inside that
///   network's subnet.
/// - **Idempotent removal.** `remove` of a missing container, and
///   `remove_network` of a missing network, return `Ok`. `remove` stops a
///   running container first. `remove_network` of a network with containers
///   attached gives [`Error::Conflict`] naming them.
/// - **Stop.** `stop` sends the stop signal and kills after `grace`; stopping
///   a stopped container is `Ok`. Afterwards `inspect` shows
///   [`crate::model::ContainerState::Exited`] with an exit code.
/// - **Exec.** An empty command is [`Error::Invalid`]; exec in a container
///   that is not running is [`Error::Conflict`]. Without a TTY stdout and
///   stderr stay apart. The output stream ends when the process exits; then
///   `exec_status` gives its exit code. `resize_exec` changes the terminal
///   size the process sees. Dropping the [`ExecSession`] ends the process.
/// - **Files.** `copy_to` unpacks a tar archive into a directory of the
///   container; `copy_from` returns a tar archive of a path, with the same
///   bytes that were copied in.
/// - **Images.** Progress streams end when the operation is done; an `Err`
///   item means it failed. `remove_image` of a missing image is `Ok`.
/// - **Events.** `events` yields the events that happen from the moment it
///   is called (so every event after it returns is included), of containers
///   whose labels match the filter, in the order they happened for each
///   container, each with the container's labels.
/// - **Errors.** Transient failures (engine restarting, link down) are
///   [`Error::Unavailable`] or [`Error::Timeout`], so callers may retry them;
///   nothing else is retryable.
/// - **Cancel safety.** Dropping a future of this trait never leaves a
///   half-created object that later calls cannot see or remove.
#[async_trait]
pub trait ContainerRuntime: Send + Sync + fmt::Debug {
    /// A short name for logs and errors (`"docker"`, `"memory"`).
    fn name(&self) -> &str;

    /// What this runtime can do beyond the basics.
    fn capabilities(&self) -> RuntimeCapabilities;

    /// Creates a network.
    async fn create_network(&self, spec: &NetworkSpec) -> Result<NetworkInfo>;

    /// Inspects a network by id or name.
    async fn inspect_network(&self, network: &NetworkId) -> Result<NetworkInfo>;

    /// Lists networks whose labels match `filter`.
    async fn list_networks(&self, filter: &LabelFilter) -> Result<Vec<NetworkInfo>>;

    /// Removes a network; `Ok` when it does not exist.
    async fn remove_network(&self, network: &NetworkId) -> Result<()>;

    /// Creates, connects and starts a container.
    async fn launch(&self, spec: &ContainerSpec) -> Result<ContainerInfo>;

    /// Stops a container, killing it after `grace`.
    async fn stop(&self, container: &ContainerId, grace: Duration) -> Result<()>;

    /// Removes a container, stopping it first; `Ok` when it does not exist.
    async fn remove(&self, container: &ContainerId) -> Result<()>;

    /// Inspects a container by id or name.
    async fn inspect(&self, container: &ContainerId) -> Result<ContainerInfo>;

    /// Lists containers (running or not) whose labels match `filter`.
    async fn list(&self, filter: &LabelFilter) -> Result<Vec<ContainerInfo>>;

    /// Starts a command inside a running container.
    async fn exec(&self, container: &ContainerId, spec: &ExecSpec) -> Result<ExecSession>;

    /// Changes the terminal size of an exec started with a TTY.
    async fn resize_exec(&self, exec: &ExecId, size: TtySize) -> Result<()>;

    /// Whether an exec still runs, and its exit code once it finished.
    async fn exec_status(&self, exec: &ExecId) -> Result<ExecStatus>;

    /// Unpacks the tar archive `archive` into directory `dir` of the container.
    async fn copy_to(&self, container: &ContainerId, dir: &str, archive: ByteStream) -> Result<()>;

    /// A tar archive of `path` (a file or directory) in the container.
    async fn copy_from(&self, container: &ContainerId, path: &str) -> Result<ByteStream>;

    /// Pulls an image from its registry.
    async fn pull_image(&self, image: &ImageRef) -> Result<ProgressStream>;

    /// Builds an image from a tar context.
    async fn build_image(&self, spec: &BuildSpec, context: ByteStream) -> Result<ProgressStream>;

    /// Lists the images on this node.
    async fn list_images(&self) -> Result<Vec<ImageInfo>>;

    /// Removes an image by id or reference; `Ok` when it does not exist.
    async fn remove_image(&self, image: &str) -> Result<()>;

    /// Container events from now on, for containers matching `filter`.
    async fn events(&self, filter: &LabelFilter) -> Result<EventStream>;

    /// Resource use of one container.
    async fn container_stats(&self, container: &ContainerId) -> Result<ContainerStats>;

    /// The load of the whole node.
    async fn node_stats(&self) -> Result<NodeStats>;
}

impl ExecSession {
    /// Reads the output to the end and returns it with the exit code.
    ///
    /// The exit code is read with [`ContainerRuntime::exec_status`] once the
    /// output ends; runtimes may report it a moment later, so this waits up to
    /// `status_wait` for it.
    pub async fn collect(
        mut self,
        runtime: &dyn ContainerRuntime,
        status_wait: Duration,
    ) -> Result<ExecResult> {
        let mut result = ExecResult::default();
        // Close stdin so commands that read it see end-of-file.
        if let Some(mut stdin) = self.stdin.take() {
            use tokio::io::AsyncWriteExt;
            // Ignored: the process may already have closed its stdin.
            let _ = stdin.shutdown().await;
        }
        while let Some(chunk) = self.output.next().await {
            match chunk? {
                ExecOutput::Stdout(bytes) => result.stdout.extend_from_slice(&bytes),
                ExecOutput::Stderr(bytes) => result.stderr.extend_from_slice(&bytes),
            }
        }
        let deadline = tokio::time::Instant::now() + status_wait;
        loop {
            let status = runtime.exec_status(&self.id).await?;
            if let (false, Some(code)) = (status.running, status.exit_code) {
                result.exit_code = code;
                return Ok(result);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout {
                    operation: format!("exit code of exec {}", self.id),
                    after: status_wait,
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Runs `command` in `container` to completion and returns its output and
/// exit code: the short way for callers that need no streaming.
pub async fn exec_to_end<S: Into<String>>(
    runtime: &dyn ContainerRuntime,
    container: &ContainerId,
    command: impl IntoIterator<Item = S>,
) -> Result<ExecResult> {
    let session = runtime.exec(container, &ExecSpec::new(command)).await?;
    session.collect(runtime, Duration::from_secs(5)).await
}

/// Drains a progress stream, returning every step, or the first error.
pub async fn drain_progress(mut progress: ProgressStream) -> Result<Vec<Progress>> {
    let mut steps = Vec::new();
    while let Some(step) = progress.next().await {
        steps.push(step?);
    }
    Ok(steps)
}

/// Collects a byte stream into one buffer.
pub async fn collect_bytes(mut stream: ByteStream) -> Result<Vec<u8>> {
    let mut all = Vec::new();
    while let Some(chunk) = stream.next().await {
        all.extend_from_slice(&chunk?);
    }
    Ok(all)
}

/// A byte stream of one buffer.
pub fn bytes_stream(bytes: impl Into<Bytes>) -> ByteStream {
    Box::pin(futures::stream::once(futures::future::ready(Ok(
        bytes.into()
    ))))
}
