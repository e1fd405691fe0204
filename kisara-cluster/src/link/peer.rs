//! One end of a link: a writer that puts control messages ahead of stream
//! bytes, streams with per-stream windows, requests matched to responses,
//! and liveness by pings.
//!
//! Why two queues: a busy exec or a large archive must never delay a
//! launch, a heartbeat or a credit. Control messages go first; stream
//! frames (bytes, items and their end marker, which must stay in order)
//! share the second, bounded queue. Each stream may have at most
//! [`STREAM_WINDOW`] bytes in flight, so a slow consumer only stalls its
//! own stream and never the reader, which therefore never blocks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::RequestId;

use super::wire::{
    Channel, Control, ITEM_COST, MAX_CHUNK_BYTES, MAX_MESSAGE_BYTES, Op, STREAM_WINDOW, WireError,
    WireResult, decode_chunk, encode_chunk,
};
use kisara_core::sync::lock;
use kisara_core::{Error, Result};

/// The WebSocket settings both ends use: messages and frames over
/// [`MAX_MESSAGE_BYTES`] are refused. Buffers are small (the defaults are
/// 128 KiB each way): a server holds hundreds of mostly idle links, and a
/// stream chunk is at most 64 KiB anyway.
pub(crate) fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES))
        .read_buffer_size(LINK_BUFFER_BYTES)
        .write_buffer_size(LINK_BUFFER_BYTES)
}

/// See [`websocket_config`].
const LINK_BUFFER_BYTES: usize = 16 << 10;

/// How many stream frames may wait for the socket before stream senders
/// wait: enough to keep the socket busy, small enough to bound memory.
const DATA_QUEUE: usize = 64;

/// What a stream's receiver gets.
#[derive(Debug)]
pub(crate) enum Inbound {
    Chunk(Channel, Bytes),
    Item(serde_json::Value),
    End(Option<WireError>),
}

#[derive(Debug)]
struct InboundSlot {
    tx: mpsc::UnboundedSender<Inbound>,
    /// Bytes received and not yet consumed: a sender that ignores its
    /// window is cut off instead of growing this without bound.
    outstanding: Arc<AtomicU64>,
}

/// The reading half of a link, handed to [`Peer::serve`].
pub(crate) type LinkReader<S> = SplitStream<WebSocketStream<S>>;

/// One end of a link.
#[derive(Debug)]
pub(crate) struct Peer {
    /// Whom this end talks to, for messages (`node node-1`, `server`).
    remote: String,
    control: mpsc::UnboundedSender<Message>,
    data: mpsc::Sender<Message>,
    inbound: Mutex<HashMap<u64, InboundSlot>>,
    windows: Mutex<HashMap<u64, Arc<Semaphore>>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<WireResult>>>,
    next_id: AtomicU64,
    closed: AtomicBool,
    closed_notify: tokio::sync::Notify,
}

impl Peer {
    /// Splits `ws`, starts its writer and returns this end with the reading
    /// half.
    pub(crate) fn start<S>(ws: WebSocketStream<S>, remote: String) -> (Arc<Self>, LinkReader<S>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sink, reader) = ws.split();
        let (control, control_rx) = mpsc::unbounded_channel();
        let (data, data_rx) = mpsc::channel(DATA_QUEUE);
        let peer = Arc::new(Self {
            remote,
            control,
            data,
            inbound: Mutex::default(),
            windows: Mutex::default(),
            pending: Mutex::default(),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            closed_notify: tokio::sync::Notify::new(),
        });
        tokio::spawn(write_loop(peer.clone(), sink, control_rx, data_rx));
        (peer, reader)
    }

    fn lost(&self) -> Error {
        Error::unavailable(format!("the link to {} is closed", self.remote))
    }

    /// Whether the link is gone.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Resolves once the link is gone.
    pub(crate) async fn closed(&self) {
        let notified = self.closed_notify.notified();
        if !self.is_closed() {
            notified.await;
        }
    }

    /// Queues a control message ahead of every stream frame.
    pub(crate) fn send_control(&self, message: &Control) -> Result<()> {
        let text = serde_json::to_string(message).expect("control messages serialize");
        self.control
            .send(Message::text(text))
            .map_err(|_| self.lost())
    }

    /// Ends the link: every pending request and open stream fails with
    /// `Unavailable`, every stream sender stops.
    pub(crate) fn close(&self, reason: &str) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::debug!(remote = %self.remote, reason, "link closed");
        let error = WireError::from(&self.lost());
        for (_, pending) in lock(&self.pending).drain() {
            // Ignored: the caller may have given up already.
            let _ = pending.send(WireResult::Err(error.clone()));
        }
        for (_, slot) in lock(&self.inbound).drain() {
            // Ignored: the receiver may be gone.
            let _ = slot.tx.send(Inbound::End(Some(error.clone())));
        }
        for (_, window) in lock(&self.windows).drain() {
            window.close();
        }
        self.closed_notify.notify_waiters();
    }

    // ---- streams we receive ----

    /// Opens the receiving side of stream `id`; register it before the
    /// peer can send on it.
    pub(crate) fn open_inbound(self: &Arc<Self>, id: u64) -> InboundStream {
        let (tx, rx) = mpsc::unbounded_channel();
        let outstanding = Arc::new(AtomicU64::new(0));
        if self.is_closed() {
            // Ignored: rx is right here.
            let _ = tx.send(Inbound::End(Some(WireError::from(&self.lost()))));
        } else {
            lock(&self.inbound).insert(
                id,
                InboundSlot {
                    tx,
                    outstanding: outstanding.clone(),
                },
            );
        }
        InboundStream {
            peer: self.clone(),
            id,
            rx,
            outstanding,
            unacknowledged: 0,
            ended: false,
            cancel_on_drop: false,
        }
    }

    fn deliver(&self, id: u64, item: Inbound, cost: u32) -> std::result::Result<(), String> {
        let mut inbound = lock(&self.inbound);
        let Some(slot) = inbound.get(&id) else {
            // A stream the receiver already dropped: its Cancel crossed
            // frames still in flight.
            return Ok(());
        };
        let outstanding = slot
            .outstanding
            .fetch_add(u64::from(cost), Ordering::AcqRel);
        if outstanding + u64::from(cost) > u64::from(STREAM_WINDOW) {
            return Err(format!(
                "stream {id} overran its window of {STREAM_WINDOW} bytes"
            ));
        }
        let end = matches!(item, Inbound::End(_));
        if slot.tx.send(item).is_err() || end {
            inbound.remove(&id);
        }
        Ok(())
    }

    // ---- streams we send ----

    /// Opens the sending side of stream `id` with a full window.
    pub(crate) fn open_outbound(self: &Arc<Self>, id: u64) -> OutboundStream {
        let window = Arc::new(Semaphore::new(STREAM_WINDOW as usize));
        if self.is_closed() {
            window.close();
        } else {
            lock(&self.windows).insert(id, window.clone());
        }
        OutboundStream {
            peer: self.clone(),
            id,
            window,
        }
    }

    fn close_outbound(&self, id: u64) {
        if let Some(window) = lock(&self.windows).remove(&id) {
            window.close();
        }
    }

    // ---- requests ----

    /// A fresh request (and stream) id.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends request `id`; its outcome is awaited with
    /// [`PendingCall::outcome`]. Frames of the request's stream may be
    /// queued once this returns: the request is ahead of them.
    pub(crate) fn send_request(
        &self,
        id: u64,
        op: Op,
        timeout: Duration,
        idempotency_key: Option<String>,
    ) -> Result<PendingCall<'_>> {
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        let guard = CancelGuard {
            peer: self,
            id,
            armed: true,
        };
        let operation = format!("{} request {id} on {}", op_name(&op), self.remote);
        self.send_control(&Control::Request {
            id,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            idempotency_key,
            request_id: RequestId::current().map(|id| id.as_str().to_owned()),
            op,
        })?;
        Ok(PendingCall {
            guard,
            rx,
            operation,
            timeout,
        })
    }

    /// Hands a response to the request waiting for it.
    pub(crate) fn complete(&self, id: u64, result: WireResult) {
        if let Some(pending) = lock(&self.pending).remove(&id) {
            // Ignored: the caller gave up (and sent a Cancel).
            let _ = pending.send(result);
        }
    }

    // ---- the reading side ----

    /// Reads the first message of a link (the hello exchange), which must
    /// be a control message and come within `timeout`.
    pub(crate) async fn first_control(
        reader: &mut (
                 impl futures::Stream<
            Item = std::result::Result<Message, tokio_tungstenite::tungstenite::Error>,
        > + Unpin
             ),
        timeout: Duration,
        from: &str,
    ) -> Result<Control> {
        let unavailable = |what: String| Error::unavailable(format!("{from}: {what}"));
        let message = tokio::time::timeout(timeout, async {
            loop {
                match reader.next().await {
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    other => return other,
                }
            }
        })
        .await
        .map_err(|_| unavailable(format!("no hello within {timeout:?}")))?;
        match message {
            Some(Ok(Message::Text(text))) => serde_json::from_str(&text)
                .map_err(|e| Error::invalid("hello", format!("{from}: malformed message: {e}"))),
            Some(Ok(other)) => Err(Error::invalid(
                "hello",
                format!("{from}: expected a JSON text message, got {other:?}"),
            )),
            Some(Err(error)) => Err(unavailable(format!("read failed: {error}"))),
            None => Err(unavailable("closed before the hello".to_owned())),
        }
    }

    /// Reads the link until it ends, handling stream frames itself and
    /// handing every other control message to `handle`. Pings every
    /// `heartbeat`; a link silent for `timeout` is dead.
    pub(crate) async fn serve<S, H>(
        &self,
        mut reader: LinkReader<S>,
        heartbeat: Duration,
        timeout: Duration,
        mut handle: H,
    ) -> String
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        H: FnMut(Control) -> std::result::Result<(), String>,
    {
        let _close = CloseOnDrop(self);
        let mut ticker = tokio::time::interval(heartbeat);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        let reason = loop {
            tokio::select! {
                () = self.closed() => break "closed locally".to_owned(),
                _ = ticker.tick() => {
                    if last_heard.elapsed() > timeout {
                        break format!("nothing heard for {timeout:?}");
                    }
                    if self.control.send(Message::Ping(Bytes::new())).is_err() {
                        break "writer stopped".to_owned();
                    }
                }
                message = reader.next() => {
                    last_heard = Instant::now();
                    let message = match message {
                        None => break "closed by the peer".to_owned(),
                        Some(Err(error)) => break format!("read failed: {error}"),
                        Some(Ok(message)) => message,
                    };
                    let handled = match message {
                        Message::Binary(frame) => self.dispatch_chunk(frame),
                        Message::Text(text) => match serde_json::from_str::<Control>(&text) {
                            Ok(control) => match self.dispatch_control(control) {
                                Ok(Some(control)) => handle(control),
                                Ok(None) => Ok(()),
                                Err(error) => Err(error),
                            },
                            Err(error) => Err(format!("malformed control message: {error}")),
                        },
                        Message::Close(_) => break "closed by the peer".to_owned(),
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Ok(()),
                    };
                    if let Err(error) = handled {
                        tracing::warn!(remote = %self.remote, %error, "protocol error, closing the link");
                        break format!("protocol error: {error}");
                    }
                }
            }
        };
        self.close(&reason);
        reason
    }

    fn dispatch_chunk(&self, frame: Bytes) -> std::result::Result<(), String> {
        let (id, channel, bytes) = decode_chunk(frame)?;
        let cost = u32::try_from(bytes.len()).map_err(|_| "oversized chunk".to_owned())?;
        self.deliver(id, Inbound::Chunk(channel, bytes), cost)
    }

    /// Handles stream messages; returns the others.
    fn dispatch_control(&self, control: Control) -> std::result::Result<Option<Control>, String> {
        match control {
            Control::Item { stream, item } => self.deliver(stream, Inbound::Item(item), ITEM_COST),
            Control::End { stream, error } => self.deliver(stream, Inbound::End(error), 0),
            Control::Credit { stream, amount } => {
                if let Some(window) = lock(&self.windows).get(&stream) {
                    window.add_permits(amount as usize);
                }
                Ok(())
            }
            other => return Ok(Some(other)),
        }
        .map(|()| None)
    }
}

/// Aborts a task when dropped: tasks serving a link end with it.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Closes the link when the future reading it is dropped, so its writer
/// ends too.
struct CloseOnDrop<'a>(&'a Peer);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close("no longer read");
    }
}

/// A request on its way. If its caller stops waiting (timeout, or this is
/// dropped) the peer is told to cancel the request.
pub(crate) struct PendingCall<'a> {
    guard: CancelGuard<'a>,
    rx: oneshot::Receiver<WireResult>,
    operation: String,
    timeout: Duration,
}

impl PendingCall<'_> {
    /// Waits up to the request's timeout for its outcome.
    pub(crate) async fn outcome(mut self) -> Result<serde_json::Value> {
        let result = match tokio::time::timeout(self.timeout, &mut self.rx).await {
            Ok(Ok(WireResult::Ok(value))) => Ok(value),
            Ok(Ok(WireResult::Err(error))) => Err(error.into()),
            Ok(Err(_)) => Err(self.guard.peer.lost()),
            Err(_) => {
                return Err(Error::Timeout {
                    operation: self.operation,
                    after: self.timeout,
                });
            }
        };
        self.guard.armed = false;
        result
    }
}

/// Sends `Cancel` for a request whose caller stopped waiting.
struct CancelGuard<'a> {
    peer: &'a Peer,
    id: u64,
    armed: bool,
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        lock(&self.peer.pending).remove(&self.id);
        if self.armed {
            // Ignored: a closed link has nothing left to cancel.
            let _ = self.peer.send_control(&Control::Cancel { id: self.id });
        }
    }
}

/// The short name of an operation, for messages.
pub(crate) fn op_name(op: &Op) -> String {
    serde_json::to_value(op)
        .ok()
        .and_then(|v| v.get("op").and_then(|o| o.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

async fn write_loop<S>(
    peer: Arc<Peer>,
    mut sink: SplitSink<WebSocketStream<S>, Message>,
    mut control: mpsc::UnboundedReceiver<Message>,
    mut data: mpsc::Receiver<Message>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    loop {
        let message = tokio::select! {
            biased;
            () = peer.closed() => break,
            Some(message) = control.recv() => message,
            Some(message) = data.recv() => message,
            else => break,
        };
        if let Err(error) = sink.send(message).await {
            peer.close(&format!("write failed: {error}"));
            break;
        }
    }
    // Ignored: the socket may already be gone.
    let _ = sink.close().await;
}

/// The receiving side of a stream. Grants the sender more window as items
/// are consumed.
#[derive(Debug)]
pub(crate) struct InboundStream {
    peer: Arc<Peer>,
    id: u64,
    rx: mpsc::UnboundedReceiver<Inbound>,
    outstanding: Arc<AtomicU64>,
    unacknowledged: u32,
    ended: bool,
    /// Whether dropping it before its end tells the peer to cancel the
    /// request (the requester's side does; the agent's stdin does not).
    cancel_on_drop: bool,
}

impl InboundStream {
    /// The stream's (and its request's) id.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Makes dropping the stream before its end cancel its request.
    pub(crate) fn cancel_on_drop(mut self) -> Self {
        self.cancel_on_drop = true;
        self
    }

    /// The next item; `None` after the end.
    pub(crate) async fn next(&mut self) -> Option<Inbound> {
        if self.ended {
            return None;
        }
        let item = self.rx.recv().await?;
        let cost = match &item {
            Inbound::Chunk(_, bytes) => u32::try_from(bytes.len()).unwrap_or(u32::MAX),
            Inbound::Item(_) => ITEM_COST,
            Inbound::End(_) => {
                self.ended = true;
                return Some(item);
            }
        };
        self.outstanding
            .fetch_sub(u64::from(cost), Ordering::AcqRel);
        self.unacknowledged += cost;
        // Credit in quarters of the window: few credit messages, and the
        // sender never runs dry while the consumer keeps up.
        if self.unacknowledged >= STREAM_WINDOW / 4 {
            let amount = std::mem::take(&mut self.unacknowledged);
            // Ignored: a closed link ends the stream anyway.
            let _ = self.peer.send_control(&Control::Credit {
                stream: self.id,
                amount,
            });
        }
        Some(item)
    }
}

impl Drop for InboundStream {
    fn drop(&mut self) {
        lock(&self.peer.inbound).remove(&self.id);
        if self.cancel_on_drop && !self.ended {
            // Ignored: a closed link has nothing left to cancel.
            let _ = self.peer.send_control(&Control::Cancel { id: self.id });
        }
    }
}

/// The sending side of a stream, limited by the receiver's window.
#[derive(Debug)]
pub(crate) struct OutboundStream {
    peer: Arc<Peer>,
    id: u64,
    window: Arc<Semaphore>,
}

impl OutboundStream {
    async fn take_window(&self, amount: u32) -> Result<()> {
        self.window
            .acquire_many(amount)
            .await
            .map_err(|_| {
                Error::unavailable(format!("stream {} was closed by its reader", self.id))
            })?
            .forget();
        Ok(())
    }

    async fn queue(&self, message: Message) -> Result<()> {
        self.peer
            .data
            .send(message)
            .await
            .map_err(|_| self.peer.lost())
    }

    /// Sends bytes on `channel`, in chunks the window allows.
    pub(crate) async fn send_bytes(&self, channel: Channel, bytes: &[u8]) -> Result<()> {
        for chunk in bytes.chunks(MAX_CHUNK_BYTES) {
            self.take_window(u32::try_from(chunk.len()).expect("chunks are small"))
                .await?;
            self.queue(Message::Binary(encode_chunk(self.id, channel, chunk)))
                .await?;
        }
        Ok(())
    }

    /// Sends one JSON item.
    pub(crate) async fn send_item(&self, item: serde_json::Value) -> Result<()> {
        self.take_window(ITEM_COST).await?;
        let control = Control::Item {
            stream: self.id,
            item,
        };
        self.queue(Message::text(
            serde_json::to_string(&control).expect("items serialize"),
        ))
        .await
    }

    /// Ends the stream, after everything sent before.
    pub(crate) async fn end(self, error: Option<&Error>) -> Result<()> {
        let control = Control::End {
            stream: self.id,
            error: error.map(WireError::from),
        };
        self.queue(Message::text(
            serde_json::to_string(&control).expect("ends serialize"),
        ))
        .await
    }
}

impl Drop for OutboundStream {
    fn drop(&mut self) {
        self.peer.close_outbound(self.id);
    }
}
