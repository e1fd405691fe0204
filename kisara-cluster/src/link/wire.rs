//! The link's messages: JSON text frames for control, binary frames for
//! stream bytes.
//!
//! A binary frame is `stream id (u64, big endian) · channel (u8) · bytes`.
//! A stream shares its id with the request that opened it, so one
//! [`Control::Cancel`] ends both.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use kisara_core::model::{
    BuildSpec, ContainerEvent, ContainerId, ContainerSpec, ExecId, ExecSpec, ExposeRequest,
    ExposureId, ImageRef, Inventory, LabelFilter, NetworkId, NetworkSpec, NodeCapacity, NodeId,
    NodeStats, Protocol, TtySize,
};
use kisara_core::traits::RuntimeCapabilities;
use kisara_core::{Error, ErrorKind};

/// The protocol version both sides must speak; a mismatch is refused at
/// the hello with a message naming both versions.
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest WebSocket message either side accepts. Bigger ones close
/// the link: a peer that sends them is broken or hostile.
pub const MAX_MESSAGE_BYTES: usize = 8 << 20;

/// Stream bytes travel in chunks of at most this size, so one busy stream
/// never holds the link for long.
pub(crate) const MAX_CHUNK_BYTES: usize = 64 << 10;

/// How many bytes a sender may have in flight per stream before the
/// receiver grants more: bounds the memory a slow consumer can pin.
pub(crate) const STREAM_WINDOW: u32 = 1 << 20;

/// What one JSON stream item (a progress step) counts against the window.
pub(crate) const ITEM_COST: u32 = 1 << 10;

/// The agent's greeting: who it is and what it can do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the agent.
    pub version: u32,
    /// The agent's stable node id.
    pub node: NodeId,
    /// Its capacity, for placement.
    pub capacity: NodeCapacity,
    /// The name of its runtime (e.g. `docker`).
    pub runtime: String,
    /// What its runtime can do.
    pub capabilities: RuntimeCapabilities,
    /// The agent's software version, for logs.
    pub agent_version: String,
    /// The protocols its tunnel carries, when it exposes ports for the
    /// server (empty: the agent has no tunnel).
    #[serde(default)]
    pub tunnel: Vec<Protocol>,
    /// Its Kisara containers and networks, which the server resyncs from.
    #[serde(default)]
    pub inventory: Inventory,
}

/// An error as it crosses the link: its kind and its message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WireError {
    pub(crate) kind: ErrorKind,
    pub(crate) message: String,
}

impl From<&Error> for WireError {
    fn from(error: &Error) -> Self {
        Self {
            kind: error.kind(),
            message: error.to_string(),
        }
    }
}

impl From<WireError> for Error {
    fn from(wire: WireError) -> Self {
        Self::from_wire(wire.kind, wire.message)
    }
}

/// The outcome of a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum WireResult {
    Ok(serde_json::Value),
    Err(WireError),
}

/// One runtime operation the server asks of an agent: the
/// [`kisara_core::ContainerRuntime`] methods, one for one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Op {
    CreateNetwork {
        spec: NetworkSpec,
    },
    InspectNetwork {
        network: NetworkId,
    },
    ListNetworks {
        filter: LabelFilter,
    },
    RemoveNetwork {
        network: NetworkId,
    },
    Launch {
        spec: Box<ContainerSpec>,
    },
    Stop {
        container: ContainerId,
        grace_ms: u64,
    },
    Remove {
        container: ContainerId,
    },
    Inspect {
        container: ContainerId,
    },
    List {
        filter: LabelFilter,
    },
    /// Answered with the exec id; output follows on the request's stream
    /// (channels [`Channel::Stdout`] and [`Channel::Stderr`]), stdin goes
    /// the other way on [`Channel::Data`].
    Exec {
        container: ContainerId,
        spec: ExecSpec,
    },
    ResizeExec {
        exec: ExecId,
        size: TtySize,
    },
    ExecStatus {
        exec: ExecId,
    },
    /// The archive follows the request on its stream; answered once it is
    /// unpacked.
    CopyTo {
        container: ContainerId,
        dir: String,
    },
    /// Answered once the archive can be read; its bytes follow.
    CopyFrom {
        container: ContainerId,
        path: String,
    },
    /// Answered at once; progress items follow.
    PullImage {
        image: ImageRef,
    },
    /// The context follows the request; answered at once, progress items
    /// follow.
    BuildImage {
        spec: BuildSpec,
    },
    ListImages,
    RemoveImage {
        image: String,
    },
    ContainerStats {
        container: ContainerId,
    },
    NodeStats,
    Expose {
        request: Box<ExposeRequest>,
    },
    Withdraw {
        exposure: ExposureId,
    },
    ListExposures {
        filter: LabelFilter,
    },
}

impl Op {
    /// Whether sending it twice does no more harm than sending it once, so
    /// it may be resent on a new link after the old one died mid-request.
    /// Mutations carry an idempotency key instead; streams are never
    /// resent.
    pub(crate) fn is_read_only(&self) -> bool {
        matches!(
            self,
            Self::InspectNetwork { .. }
                | Self::ListNetworks { .. }
                | Self::Inspect { .. }
                | Self::List { .. }
                | Self::ExecStatus { .. }
                | Self::ListImages
                | Self::ContainerStats { .. }
                | Self::NodeStats
                | Self::ListExposures { .. }
        )
    }

    /// Whether the request opens a stream (and so cannot be resent).
    pub(crate) fn has_stream(&self) -> bool {
        matches!(
            self,
            Self::Exec { .. }
                | Self::CopyTo { .. }
                | Self::CopyFrom { .. }
                | Self::PullImage { .. }
                | Self::BuildImage { .. }
        )
    }
}

/// A control message (a JSON text frame).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Control {
    /// Agent → server, first message.
    Hello(Hello),
    /// Server → agent: the hello was accepted.
    Welcome { heartbeat_ms: u64 },
    /// Server → agent: the hello was refused; the link closes.
    Refused { error: WireError },
    /// Server → agent.
    Request {
        id: u64,
        /// How long the server waits for the answer; the agent gives up
        /// (and undoes nothing: see the idempotency key) after it.
        timeout_ms: u64,
        /// The same key on a resent request returns the first outcome
        /// instead of acting twice.
        idempotency_key: Option<String>,
        /// The id of the API request this one serves, for the agent's logs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
        #[serde(flatten)]
        op: Op,
    },
    /// Agent → server.
    Response { id: u64, result: WireResult },
    /// Server → agent: stop working on a request and drop its stream.
    Cancel { id: u64 },
    /// Agent → server: a container event.
    Event { event: ContainerEvent },
    /// Agent → server: the node's current load.
    Heartbeat { stats: NodeStats },
    /// A JSON stream item (progress), in stream order.
    Item {
        stream: u64,
        item: serde_json::Value,
    },
    /// The sender's side of a stream ended, with an error if it failed.
    End {
        stream: u64,
        error: Option<WireError>,
    },
    /// The receiver consumed `amount` of a stream's window: the sender may
    /// send that much more.
    Credit { stream: u64, amount: u32 },
}

/// Which flow of a stream a binary frame belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Channel {
    /// Archives, build contexts and stdin.
    Data,
    /// An exec's stdout (or its terminal).
    Stdout,
    /// An exec's stderr.
    Stderr,
}

impl Channel {
    fn tag(self) -> u8 {
        match self {
            Self::Data => 0,
            Self::Stdout => 1,
            Self::Stderr => 2,
        }
    }

    fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            0 => Some(Self::Data),
            1 => Some(Self::Stdout),
            2 => Some(Self::Stderr),
            _ => None,
        }
    }
}

const CHUNK_HEADER: usize = 9;

/// Encodes a binary frame.
pub(crate) fn encode_chunk(stream: u64, channel: Channel, bytes: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(CHUNK_HEADER + bytes.len());
    frame.put_u64(stream);
    frame.put_u8(channel.tag());
    frame.put_slice(bytes);
    frame.freeze()
}

/// Decodes a binary frame, or says what is wrong with it.
pub(crate) fn decode_chunk(mut frame: Bytes) -> Result<(u64, Channel, Bytes), String> {
    if frame.len() < CHUNK_HEADER {
        return Err(format!(
            "binary frame of {} bytes is shorter than its {CHUNK_HEADER}-byte header",
            frame.len()
        ));
    }
    let header = frame.split_to(CHUNK_HEADER);
    let stream = u64::from_be_bytes(header[..8].try_into().expect("8 bytes"));
    let channel =
        Channel::from_tag(header[8]).ok_or_else(|| format!("unknown channel {}", header[8]))?;
    Ok((stream, channel, frame))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_round_trip_and_garbage_is_named() {
        let frame = encode_chunk(7, Channel::Stderr, b"oops");
        let (stream, channel, bytes) = decode_chunk(frame).unwrap();
        assert_eq!(
            (stream, channel, &bytes[..]),
            (7, Channel::Stderr, &b"oops"[..])
        );
        assert!(
            decode_chunk(Bytes::from_static(b"short"))
                .unwrap_err()
                .contains("5 bytes")
        );
        let bad = encode_chunk(1, Channel::Data, b"")
            .iter()
            .copied()
            .enumerate()
            .map(|(i, b)| if i == 8 { 9 } else { b })
            .collect::<Vec<u8>>();
        assert!(decode_chunk(bad.into()).unwrap_err().contains("channel 9"));
    }

    #[test]
    fn requests_are_flat_json() {
        let request = Control::Request {
            id: 3,
            timeout_ms: 1000,
            idempotency_key: None,
            request_id: Some("req-7".into()),
            op: Op::Remove {
                container: ContainerId::new("web-1"),
            },
        };
        let json = serde_json::to_value(&request).unwrap();
        assert_eq!(json["type"], "request");
        assert_eq!(json["op"], "remove");
        assert_eq!(json["container"], "web-1");
        assert_eq!(json["request_id"], "req-7");
        let back: Control = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, request);
        // A server that sends no request id is understood.
        let mut older = json;
        older.as_object_mut().unwrap().remove("request_id");
        let Control::Request { request_id, .. } = serde_json::from_value(older).unwrap() else {
            panic!("not a request");
        };
        assert_eq!(request_id, None);
    }
}
