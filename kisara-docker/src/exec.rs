//! Exec: commands in running containers, with or without a terminal,
//! stdin, resize, exit codes, and cancellation when the session is dropped.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, ResizeExecOptions, StartExecOptions, StartExecResults};
use bollard::models::ExecConfig;
use bollard::query_parameters::InspectContainerOptions;
use futures::StreamExt;
use kisara_core::model::{ExecId, ExecOutput, ExecSpec, ExecStatus, TtySize};
use kisara_core::{Error, ExecSession, Result};
use tokio::io::AsyncWrite;

use crate::error::status_of;
use crate::runtime::DockerRuntime;

/// The environment variable that marks an exec's processes, so they can be
/// found and killed from inside the container when the session is dropped
/// (Docker has no API to end an exec).
pub const EXEC_MARKER_ENV: &str = "KISARA_EXEC_MARKER";

/// How long a dropped exec may take to start and, once killed, to end.
const EXEC_END_PATIENCE: Duration = Duration::from_secs(15);
/// How often a dropped exec's state is looked at while it is being ended.
const EXEC_POLL: Duration = Duration::from_millis(50);
/// How long a kill gets to show before it is tried again.
const KILL_RETRY: Duration = Duration::from_secs(1);

/// Ends the exec when the session is dropped before its output ended.
struct Canceller {
    runtime: DockerRuntime,
    container: String,
    exec_id: String,
    marker: String,
    user: Option<String>,
    finished: AtomicBool,
}

impl Drop for Canceller {
    fn drop(&mut self) {
        if self.finished.load(Ordering::Acquire) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(exec_id = %self.exec_id, "exec dropped outside a Tokio runtime; it keeps running");
            return;
        };
        let runtime = self.runtime.clone();
        let container = std::mem::take(&mut self.container);
        let exec_id = std::mem::take(&mut self.exec_id);
        let marker = std::mem::take(&mut self.marker);
        let user = self.user.take();
        handle.spawn(async move {
            if let Err(e) = runtime.kill_exec(&container, &exec_id, &marker, user).await {
                tracing::warn!(exec_id, container, error = %e, "could not end a dropped exec");
            }
        });
    }
}

/// stdin of an exec; keeps the exec alive while held.
struct ExecStdin {
    inner: Pin<Box<dyn AsyncWrite + Send>>,
    _canceller: Arc<Canceller>,
}

impl AsyncWrite for ExecStdin {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.inner.as_mut().poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.as_mut().poll_shutdown(cx)
    }
}

fn random_marker() -> String {
    use std::hash::{BuildHasher, Hasher};
    let state = std::collections::hash_map::RandomState::new();
    let mut a = state.build_hasher();
    a.write_u8(1);
    let mut b = state.build_hasher();
    b.write_u8(2);
    format!("{:016x}{:016x}", a.finish(), b.finish())
}

impl DockerRuntime {
    pub(crate) async fn exec_impl(&self, container: &str, spec: &ExecSpec) -> Result<ExecSession> {
        if spec.command.is_empty() {
            return Err(Error::invalid("exec command", "the command is empty"));
        }
        let inspected = self
            .docker
            .inspect_container(container, None::<InspectContainerOptions>)
            .await
            .map_err(|e| self.err(e, "container", container))?;
        let running = inspected
            .state
            .as_ref()
            .and_then(|s| s.running)
            .unwrap_or(false);
        let name = inspected
            .name
            .as_deref()
            .unwrap_or(container)
            .trim_start_matches('/')
            .to_owned();
        if !running {
            return Err(Error::conflict(format!(
                "container {name:?} is not running, cannot exec in it"
            )));
        }
        let container_id = inspected.id.unwrap_or_else(|| container.to_owned());
        let marker = random_marker();
        // The engine starts terminals at 0x0: use the conventional 24x80
        // unless the spec says otherwise.
        let tty_size = spec.size.unwrap_or(TtySize { rows: 24, cols: 80 });
        let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.push(format!("{EXEC_MARKER_ENV}={marker}"));
        let created = self
            .docker
            .create_exec(
                &container_id,
                ExecConfig {
                    attach_stdin: Some(spec.stdin),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    tty: Some(spec.tty),
                    // Engines from API 1.42 start the terminal at this size;
                    // older ones ignore it and get the resize below.
                    console_size: spec
                        .tty
                        .then(|| vec![usize::from(tty_size.rows), usize::from(tty_size.cols)]),
                    env: Some(env),
                    cmd: Some(spec.command.clone()),
                    user: spec.user.clone(),
                    working_dir: spec.workdir.clone(),
                    privileged: Some(false),
                    ..ExecConfig::default()
                },
            )
            .await
            .map_err(|e| match status_of(&e) {
                Some((409, _)) => Error::conflict(format!(
                    "container {name:?} is not running, cannot exec in it"
                )),
                _ => self.err(e, "container", container),
            })?;
        let exec_id = created.id;
        tracing::debug!(container = %name, exec_id = %exec_id, "exec created");
        let canceller = Arc::new(Canceller {
            runtime: self.clone(),
            container: container_id.clone(),
            exec_id: exec_id.clone(),
            marker,
            user: spec.user.clone(),
            finished: AtomicBool::new(false),
        });
        let raw = if spec.tty {
            let version = self.docker.client_version().to_string();
            crate::hijack::start_tty_exec(&self.endpoint, &version, &exec_id).await
        } else {
            None
        };
        let (output, input): (Output, Pin<Box<dyn AsyncWrite + Send>>) = match raw {
            Some(raw) => {
                let raw = raw?;
                let output = raw.output.map(|chunk| {
                    chunk
                        .map(|message| LogOutput::Console { message })
                        .map_err(|err| bollard::errors::Error::IOError { err })
                });
                (Box::pin(output), raw.input)
            }
            None => {
                let started = self
                    .docker
                    .start_exec(
                        &exec_id,
                        Some(StartExecOptions {
                            detach: false,
                            tty: spec.tty,
                            output_capacity: None,
                        }),
                    )
                    .await
                    .map_err(|e| self.err(e, "exec", &exec_id))?;
                let StartExecResults::Attached { output, input } = started else {
                    return Err(Error::Backend {
                        backend: "docker",
                        message: format!("exec {exec_id} started detached"),
                        source: None,
                    });
                };
                (output, input)
            }
        };
        if spec.tty {
            let size = tty_size;
            // The process may not have its terminal yet: retry briefly.
            for attempt in 0..20 {
                match self.resize_exec_impl(&exec_id, size).await {
                    Ok(()) => break,
                    Err(e) if attempt == 19 => tracing::debug!(error = %e, "initial resize failed"),
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        }
        let stream = output_stream(output, canceller.clone(), self.endpoint.clone());
        let stdin = spec.stdin.then(|| {
            Box::pin(ExecStdin {
                inner: input,
                _canceller: canceller,
            }) as Pin<Box<dyn AsyncWrite + Send>>
        });
        Ok(ExecSession {
            id: ExecId::new(exec_id),
            stdin,
            output: stream,
        })
    }

    /// Ends every process of an exec and waits until the engine sees it
    /// ended.
    ///
    /// An exec dropped right after it was started may not be running yet:
    /// the engine reports it as not running, with no exit code, until its
    /// process exists. Such an exec is waited for, not taken as ended, or it
    /// would run on unowned.
    async fn kill_exec(
        &self,
        container: &str,
        exec_id: &str,
        marker: &str,
        user: Option<String>,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + EXEC_END_PATIENCE;
        let mut next_kill = tokio::time::Instant::now();
        let mut killed = false;
        loop {
            match self.exec_status_impl(exec_id).await {
                Ok(ExecStatus {
                    running: false,
                    exit_code: Some(_),
                })
                | Err(Error::NotFound { .. }) => {
                    tracing::debug!(exec_id, "dropped exec ended");
                    return Ok(());
                }
                Ok(ExecStatus { running: true, .. })
                    if tokio::time::Instant::now() >= next_kill =>
                {
                    self.kill_marked(container, marker, user.clone()).await;
                    killed = true;
                    // The engine learns of the exit a moment later.
                    next_kill = tokio::time::Instant::now() + KILL_RETRY;
                }
                // Not started yet, killed but not yet reaped, or the engine
                // did not answer: look again shortly.
                _ => {}
            }
            if tokio::time::Instant::now() >= deadline {
                let patience = EXEC_END_PATIENCE.as_secs();
                let message = if killed {
                    format!(
                        "exec {exec_id} in {container} still ran {patience} s after it was dropped: the image has \
                         no /bin/sh with tr, grep and kill, and the engine's processes are not visible from this host"
                    )
                } else {
                    format!(
                        "exec {exec_id} in {container} was dropped and the engine did not report it running or \
                         ended within {patience} s"
                    )
                };
                return Err(Error::Backend {
                    backend: "docker",
                    message,
                    source: None,
                });
            }
            tokio::time::sleep(EXEC_POLL).await;
        }
    }

    /// Kills every process carrying `marker` in its environment (the exec's
    /// process and all its children): from inside the container with its
    /// shell, and, for images without one, from this host when the engine
    /// runs here.
    async fn kill_marked(&self, container: &str, marker: &str, user: Option<String>) {
        let script = format!(
            "for d in /proc/[0-9]*; do if tr '\\000' '\\n' < \"$d/environ\" 2>/dev/null | grep -qx '{EXEC_MARKER_ENV}={marker}'; \
             then kill -9 \"${{d#/proc/}}\" 2>/dev/null; fi; done; exit 0"
        );
        if let Err(e) = self
            .run_to_end(
                container,
                vec!["/bin/sh".to_owned(), "-c".to_owned(), script],
                user,
            )
            .await
        {
            tracing::debug!(container, error = %e, "in-container kill failed");
        }
        let marker = format!("{EXEC_MARKER_ENV}={marker}");
        let killed = tokio::task::spawn_blocking(move || kill_marked_host_processes(&marker))
            .await
            .unwrap_or(0);
        tracing::debug!(container, killed, "marked processes killed from this host");
    }

    /// Runs `command` in `container` and waits for its output to end.
    async fn run_to_end(
        &self,
        container: &str,
        command: Vec<String>,
        user: Option<String>,
    ) -> Result<()> {
        let exec = self
            .docker
            .create_exec(
                container,
                CreateExecOptions {
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    cmd: Some(command),
                    user,
                    ..CreateExecOptions::default()
                },
            )
            .await
            .map_err(|e| self.err(e, "container", container))?;
        if let StartExecResults::Attached { mut output, .. } = self
            .docker
            .start_exec(&exec.id, None)
            .await
            .map_err(|e| self.err(e, "exec", &exec.id))?
        {
            while output.next().await.is_some() {}
        }
        Ok(())
    }

    pub(crate) async fn resize_exec_impl(&self, exec: &str, size: TtySize) -> Result<()> {
        let inspected = self
            .docker
            .inspect_exec(exec)
            .await
            .map_err(|e| self.err(e, "exec", exec))?;
        let tty = inspected
            .process_config
            .as_ref()
            .and_then(|p| p.tty)
            .unwrap_or(false);
        if !tty {
            return Err(Error::invalid(
                "resize",
                format!("exec {exec} has no terminal"),
            ));
        }
        self.docker
            .resize_exec(
                exec,
                ResizeExecOptions {
                    height: size.rows,
                    width: size.cols,
                },
            )
            .await
            .map_err(|e| self.err(e, "exec", exec))
    }

    pub(crate) async fn exec_status_impl(&self, exec: &str) -> Result<ExecStatus> {
        let inspected = self
            .docker
            .inspect_exec(exec)
            .await
            .map_err(|e| self.err(e, "exec", exec))?;
        let running = inspected.running.unwrap_or(false);
        Ok(ExecStatus {
            running,
            exit_code: if running { None } else { inspected.exit_code },
        })
    }
}

/// Kills every process of this host whose environment holds `marker`
/// (`NAME=value`); returns how many. Finds nothing when the engine runs
/// elsewhere or its processes are not visible.
fn kill_marked_host_processes(marker: &str) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let pids: Vec<String> = entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == marker.as_bytes()))
        })
        .collect();
    if pids.is_empty() {
        return 0;
    }
    match std::process::Command::new("kill")
        .arg("-9")
        .args(&pids)
        .status()
    {
        Ok(status) if status.success() => pids.len(),
        _ => 0,
    }
}

type Output = Pin<
    Box<dyn futures::Stream<Item = std::result::Result<LogOutput, bollard::errors::Error>> + Send>,
>;

/// The exec's output as core chunks; marks the exec finished at its end so
/// dropping the session afterwards kills nothing.
fn output_stream(
    output: Output,
    canceller: Arc<Canceller>,
    endpoint: Arc<str>,
) -> kisara_core::BoxStream<ExecOutput> {
    Box::pin(futures::stream::unfold(
        Some((output, canceller)),
        move |state| {
            let endpoint = endpoint.clone();
            async move {
                let (mut output, canceller) = state?;
                match output.next().await {
                    Some(Ok(chunk)) => {
                        let out = match chunk {
                            LogOutput::StdErr { message } => ExecOutput::Stderr(message),
                            LogOutput::StdOut { message }
                            | LogOutput::Console { message }
                            | LogOutput::StdIn { message } => ExecOutput::Stdout(message),
                        };
                        Some((Ok(out), Some((output, canceller))))
                    }
                    Some(Err(e)) => Some((
                        Err(crate::error::map(e, &endpoint, "exec", &canceller.exec_id)),
                        None,
                    )),
                    None => {
                        canceller.finished.store(true, Ordering::Release);
                        None
                    }
                }
            }
        },
    ))
}
