//! Opening a session and running it: the steps of the [module docs](super)
//! in order, then one task per session pumping bytes between the client
//! and the exec.
//!
//! The pump holds at most [`OUTPUT_QUEUE`] chunks for the client and as
//! many writes for stdin, and reads from a side only while the other has
//! room: a client that stops reading stops the exec's output at the link's
//! window, and nothing grows without bound.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::Instrument;

use super::{
    DEFAULT_SIZE, EndReason, Engine, INPUT_QUEUE, OUTPUT_QUEUE, Session, SessionEnd, SessionInfo,
    SessionInput, SessionOutput, SessionRequest, access, audit_event, check_size, command_context,
    exec_spec, recording_request,
};
use kisara_core::model::{ExecId, ExecOutput, SessionId, TtySize};
use kisara_core::{
    AuditEventKind, CommandContext, ConfigRequest, ContainerRuntime, Error, EventData, ExecSession,
    GateAction, InputGate, PolicyDecision, RecordingEvent, RecordingWriter, Result, SessionKind,
    SessionTarget,
};

/// How long the exit code of an exec whose output ended may take to show.
const EXIT_CODE_WAIT: Duration = Duration::from_secs(5);

pub(super) async fn open(
    engine: Arc<Engine>,
    id: SessionId,
    request: SessionRequest,
    span: tracing::Span,
) -> Result<Session> {
    async move {
        let result = prepare(&engine, &id, &request).await;
        if let Err(error) = &result {
            tracing::warn!(%error, "session refused");
        }
        result
    }
    .instrument(span)
    .await
}

async fn prepare(
    engine: &Arc<Engine>,
    id: &SessionId,
    request: &SessionRequest,
) -> Result<Session> {
    let identity = &request.identity;
    // A named container is authorised before the config provider hears of
    // it, so a player learns nothing about other teams' containers.
    if let Some(asked) = &request.container {
        let (_, info) = engine.server.inspect(asked).await?;
        access::authorize_session(identity, &info)?;
    }
    let config = engine
        .config
        .session_config(&ConfigRequest {
            session: id.clone(),
            identity: identity.clone(),
            remote: request.remote,
            requested_container: request.container.clone(),
        })
        .await?;
    let target = match &config.target {
        SessionTarget::Container { container } => container.clone(),
        SessionTarget::Launch { .. } => {
            return Err(Error::not_supported(
                "the session engine",
                "a session config that launches its container: name an existing container",
            ));
        }
    };
    if let Some(asked) = &request.container
        && *asked != target
    {
        return Err(Error::permission_denied(format!(
            "the session config sends user {:?} to container {target}, not to the container {asked} it asked for",
            identity.username
        )));
    }
    let (node, info) = engine.server.inspect(&target).await?;
    access::authorize_session(identity, &info)?;
    if let Some(size) = request.tty {
        check_size(size)?;
    }
    let session_info = SessionInfo {
        id: id.clone(),
        identity: identity.clone(),
        kind: request.kind,
        container: info.id.clone(),
        node: node.clone(),
        remote: request.remote,
    };
    for hook in &engine.on_start {
        hook(&session_info)?;
    }
    let context = command_context(identity, &info);
    let audit = |kind| audit_event(id, identity, &info.id, kind);
    engine
        .audit
        .record(&audit(AuditEventKind::SessionStarted {
            kind: request.kind,
            remote: request.remote,
        }))
        .await?;

    let command = match &request.command {
        Some(command) => command.clone(),
        None => config.shell.clone(),
    };
    if request.command.is_some() || engine.terminals.is_none() {
        // An exec's command, and a terminal's shell when no gate judges
        // lines, are judged whole before they run.
        let decision = engine.commands.check(&context, &command).await?;
        engine
            .audit
            .record(&audit(AuditEventKind::Command {
                command: command.clone(),
                decision: decision.clone(),
                uncertain: false,
            }))
            .await?;
        if let PolicyDecision::Deny { reason } = decision {
            let end = SessionEnd {
                exit_code: None,
                reason: EndReason::Failed(format!("denied: {reason}")),
            };
            engine
                .audit
                .record(&audit(AuditEventKind::SessionEnded {
                    exit_code: None,
                    reason: "denied".into(),
                }))
                .await?;
            for hook in &engine.on_end {
                hook(&session_info, &end);
            }
            return Err(Error::permission_denied(format!(
                "command {command:?} denied: {reason}"
            )));
        }
    }

    let spec = exec_spec(request, &config, command);
    let mut recording = if config.record {
        Some(
            engine
                .recordings
                .create(recording_request(id, identity, &info.id, &spec))
                .await?,
        )
    } else {
        None
    };
    let (runtime, exec) = match engine.server.exec(&info.id, &spec).await {
        Ok(started) => started,
        Err(error) => {
            let reason = format!("exec failed: {error}");
            if let Some(recording) = recording.as_mut() {
                let _ = recording.finish(&reason).await;
            }
            let _ = engine
                .audit
                .record(&audit(AuditEventKind::SessionEnded {
                    exit_code: None,
                    reason,
                }))
                .await;
            return Err(error);
        }
    };
    let idle = config.idle_timeout.or(engine.limits.idle_timeout);
    let (input_tx, input_rx) = mpsc::channel(INPUT_QUEUE);
    let (output_tx, output_rx) = mpsc::channel(OUTPUT_QUEUE);
    let (ended_tx, ended_rx) = oneshot::channel();
    let recording_id = recording.as_ref().map(|r| r.id().clone());
    let gate = match (request.kind, &engine.terminals) {
        (SessionKind::Terminal | SessionKind::Ssh, Some(policy)) => Some(policy.gate()),
        _ => None,
    };
    tracing::info!(container = %info.id, %node, recording = ?recording_id, "session open");
    let pump = Pump {
        engine: engine.clone(),
        info: session_info,
        context,
        runtime,
        exec_id: exec.id.clone(),
        gate,
        recording,
        started: Instant::now(),
        idle,
        size: spec.size.unwrap_or(DEFAULT_SIZE),
        to_client: VecDeque::new(),
        to_stdin: VecDeque::new(),
    };
    tokio::spawn(
        pump.run(exec, input_rx, output_tx, ended_tx)
            .in_current_span(),
    );
    Ok(Session {
        id: id.clone(),
        container: info.id,
        node,
        recording: recording_id,
        input: input_tx,
        output: output_rx,
        ended: ended_rx,
    })
}

/// What the stdin writer is told.
enum Stdin {
    Data(Bytes),
    Eof,
}

struct Pump {
    engine: Arc<Engine>,
    info: SessionInfo,
    context: CommandContext,
    runtime: Arc<dyn ContainerRuntime>,
    exec_id: ExecId,
    gate: Option<Box<dyn InputGate>>,
    recording: Option<Box<dyn RecordingWriter>>,
    started: Instant,
    idle: Option<Duration>,
    size: TtySize,
    to_client: VecDeque<SessionOutput>,
    to_stdin: VecDeque<Stdin>,
}

impl Pump {
    async fn run(
        mut self,
        exec: ExecSession,
        mut input: mpsc::Receiver<SessionInput>,
        output: mpsc::Sender<SessionOutput>,
        ended: oneshot::Sender<SessionEnd>,
    ) {
        let ExecSession {
            stdin,
            output: mut exec_output,
            ..
        } = exec;
        let (stdin_tx, stdin_rx) = mpsc::channel(INPUT_QUEUE);
        let writer = stdin.map(|stdin| tokio::spawn(write_stdin(stdin, stdin_rx)));
        let lifetime = self.engine.limits.max_lifetime;
        let deadline = self.started + lifetime;
        let mut last_activity = Instant::now();
        let reason = loop {
            let idle_at = self.idle.map(|idle| last_activity + idle);
            tokio::select! {
                biased;
                () = tokio::time::sleep_until(deadline) => {
                    break EndReason::LifetimeReached(lifetime);
                }
                () = sleep_until(idle_at) => {
                    break EndReason::IdleTimeout(self.idle.unwrap_or_default());
                }
                () = output.closed() => break EndReason::ClientClosed,
                permit = output.reserve(), if !self.to_client.is_empty() => match permit {
                    Ok(permit) => permit.send(self.to_client.pop_front().expect("not empty")),
                    Err(_) => break EndReason::ClientClosed,
                },
                permit = stdin_tx.reserve(), if !self.to_stdin.is_empty() => {
                    // A closed writer means the process closed its stdin:
                    // what the client types next has nowhere to go.
                    match permit {
                        Ok(permit) => permit.send(self.to_stdin.pop_front().expect("not empty")),
                        Err(_) => self.to_stdin.clear(),
                    }
                }
                chunk = exec_output.next(), if self.to_client.is_empty() => match chunk {
                    Some(Ok(chunk)) => {
                        last_activity = Instant::now();
                        let (bytes, out) = match chunk {
                            ExecOutput::Stdout(bytes) => (bytes.clone(), SessionOutput::Stdout(bytes)),
                            ExecOutput::Stderr(bytes) => (bytes.clone(), SessionOutput::Stderr(bytes)),
                        };
                        if let Err(end) = self.record(EventData::Output(bytes)).await {
                            break end;
                        }
                        self.to_client.push_back(out);
                    }
                    Some(Err(error)) if error.is_retryable() => break EndReason::NodeLinkLost,
                    Some(Err(error)) => break EndReason::Failed(error.to_string()),
                    None => break EndReason::Exit,
                },
                message = input.recv(), if self.to_client.len() < OUTPUT_QUEUE
                    && self.to_stdin.len() < INPUT_QUEUE =>
                {
                    let Some(message) = message else {
                        // The client dropped its sender: it is gone.
                        break EndReason::ClientClosed;
                    };
                    last_activity = Instant::now();
                    if let Err(end) = self.take_input(message).await {
                        break end;
                    }
                }
            }
        };
        let mut end = SessionEnd {
            exit_code: None,
            reason,
        };
        // Whatever is still queued reaches a client that keeps reading.
        drop(stdin_tx);
        if end.reason == EndReason::Exit {
            for chunk in self.to_client.drain(..) {
                if output.send(chunk).await.is_err() {
                    break;
                }
            }
            end.exit_code = self.exit_code().await;
            if end.exit_code.is_none() {
                end.reason = EndReason::NodeLinkLost;
            }
        }
        drop(exec_output);
        if let Some(writer) = writer {
            writer.abort();
        }
        drop(output);
        self.finish(&end).await;
        let _ = ended.send(end);
    }

    /// One message from the client; `Err` ends the session with that reason.
    async fn take_input(&mut self, message: SessionInput) -> std::result::Result<(), EndReason> {
        match message {
            SessionInput::Data(bytes) => {
                self.record(EventData::Input(bytes.clone())).await?;
                match self.gate.take() {
                    Some(mut gate) => {
                        let actions = gate.feed(&bytes);
                        let result = self.apply(&mut *gate, actions).await;
                        self.gate = Some(gate);
                        result?;
                    }
                    None => self.to_stdin.push_back(Stdin::Data(bytes)),
                }
            }
            SessionInput::Resize(size) => {
                let Ok(size) = check_size(size) else {
                    tracing::warn!(?size, "resize ignored: out of range");
                    return Ok(());
                };
                if size == self.size {
                    return Ok(());
                }
                self.size = size;
                if let Err(error) = self.runtime.resize_exec(&self.exec_id, size).await {
                    tracing::warn!(%error, "resize failed");
                }
                self.audit(AuditEventKind::Resize { size }).await?;
                self.record(EventData::Resize(size)).await?;
            }
            SessionInput::Eof => self.to_stdin.push_back(Stdin::Eof),
        }
        Ok(())
    }

    /// Carries out a gate's actions, judging each completed line.
    async fn apply(
        &mut self,
        gate: &mut dyn InputGate,
        actions: Vec<GateAction>,
    ) -> std::result::Result<(), EndReason> {
        let mut pending: VecDeque<GateAction> = actions.into();
        while let Some(action) = pending.pop_front() {
            match action {
                GateAction::Forward(bytes) => self.to_stdin.push_back(Stdin::Data(bytes.into())),
                GateAction::Show(bytes) => {
                    let bytes = Bytes::from(bytes);
                    self.record(EventData::Output(bytes.clone())).await?;
                    self.to_client.push_back(SessionOutput::Stdout(bytes));
                }
                GateAction::Decide(line) => {
                    let policy = self
                        .engine
                        .terminals
                        .clone()
                        .expect("a gate comes with its policy");
                    let (decision, event) = match policy.judge(&self.context, &line).await {
                        Ok(judged) => judged,
                        Err(error) => {
                            // A policy that cannot decide denies: the line
                            // never runs unjudged.
                            let reason = format!("the policy could not judge the line: {error}");
                            let event = AuditEventKind::Command {
                                command: vec!["sh".into(), "-c".into(), line.line.clone()],
                                decision: PolicyDecision::Deny {
                                    reason: reason.clone(),
                                },
                                uncertain: line.uncertain.is_some(),
                            };
                            (PolicyDecision::Deny { reason }, event)
                        }
                    };
                    self.audit(event).await?;
                    let next = match &decision {
                        PolicyDecision::Allow => {
                            self.record(EventData::Marker(line.line.clone())).await?;
                            gate.allow()
                        }
                        PolicyDecision::Deny { reason } => {
                            self.record(EventData::Marker(format!("denied: {}", line.line)))
                                .await?;
                            gate.deny(reason)
                        }
                    };
                    // The gate's next actions come before the rest, in order.
                    for action in next.into_iter().rev() {
                        pending.push_front(action);
                    }
                }
            }
        }
        Ok(())
    }

    async fn record(&mut self, data: EventData) -> std::result::Result<(), EndReason> {
        let Some(recording) = self.recording.as_mut() else {
            return Ok(());
        };
        let event = RecordingEvent {
            time: self.started.elapsed(),
            data,
        };
        recording
            .append(event)
            .await
            .map_err(|error| EndReason::RecordingFailed(error.to_string()))
    }

    async fn audit(&mut self, kind: AuditEventKind) -> std::result::Result<(), EndReason> {
        let event = audit_event(
            &self.info.id,
            &self.info.identity,
            &self.info.container,
            kind,
        );
        self.engine
            .audit
            .record(&event)
            .await
            .map_err(|error| EndReason::AuditFailed(error.to_string()))
    }

    /// The exit code once the exec reports it stopped; `None` when the node
    /// does not answer.
    async fn exit_code(&mut self) -> Option<i64> {
        let give_up = Instant::now() + EXIT_CODE_WAIT;
        loop {
            match self.runtime.exec_status(&self.exec_id).await {
                Ok(status) if !status.running => return status.exit_code,
                Ok(_) if Instant::now() < give_up => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(_) => return None,
                Err(error) => {
                    tracing::warn!(%error, "exit code unknown");
                    return None;
                }
            }
        }
    }

    /// Audits the end, finishes the recording and calls the hooks.
    async fn finish(&mut self, end: &SessionEnd) {
        let reason = end.reason.to_string();
        if let Err(error) = self
            .audit(AuditEventKind::SessionEnded {
                exit_code: end.exit_code,
                reason: reason.clone(),
            })
            .await
        {
            tracing::error!(%error, "the session's end could not be audited");
        }
        if let Some(recording) = self.recording.as_mut()
            && let Err(error) = recording.finish(&reason).await
        {
            tracing::error!(%error, "the recording could not be finished");
        }
        for hook in &self.engine.on_end {
            hook(&self.info, end);
        }
        tracing::info!(exit_code = ?end.exit_code, reason = %end.reason, "session ended");
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Writes the client's input to the exec's stdin, in its own task so a
/// process that does not read its stdin never stops its output.
async fn write_stdin(
    mut stdin: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    mut from: mpsc::Receiver<Stdin>,
) {
    while let Some(message) = from.recv().await {
        let written = match message {
            Stdin::Data(bytes) => stdin.write_all(&bytes).await.and(stdin.flush().await),
            Stdin::Eof => stdin.shutdown().await,
        };
        if written.is_err() {
            // The process closed its stdin or ended.
            return;
        }
    }
}
