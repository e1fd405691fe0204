//! The control protocol: length-prefixed JSON frames with a hard size limit.
//!
//! Every connection to the relay starts with one frame from the client:
//! [`Opening::Control`] for a control link or [`Opening::Data`] for a data
//! connection answering a [`RelayMessage::Connect`] or a
//! [`RelayMessage::Standby`]. After a data opening the connection carries
//! visitor bytes; a standby connection first waits for the relay's
//! [`Dispatch`] naming the exposure its visitor came to, and returns to
//! standby after a framed visitor.

use std::net::SocketAddr;

use kisara_core::ErrorKind;
use kisara_core::model::{ExposureId, ExposureLimits, Labels, Protocol};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{Result, TunnelError};

/// The protocol version both sides must speak.
pub const VERSION: u16 = 3;

/// The largest frame either side accepts, in bytes.
pub const MAX_FRAME: usize = 64 * 1024;

/// The first frame on every connection to the relay.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Opening {
    /// Opens a control link.
    Control {
        /// Protocol version.
        version: u16,
        /// The client's stable id (a node id).
        client: String,
    },
    /// Opens a data connection for one TCP visitor.
    Data {
        /// The one-time ticket from [`RelayMessage::Connect`] or
        /// [`RelayMessage::Standby`].
        ticket: String,
        /// The client can carry visitors in frames on this connection
        /// ([`Dispatch::framed`]), so it may be reused.
        reusable: bool,
    },
}

/// The relay's challenge, answered by [`Auth`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Challenge {
    pub(crate) version: u16,
    /// Hex of 32 random bytes.
    pub(crate) nonce: String,
}

/// The client's answer to a [`Challenge`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Auth {
    /// Hex of the client's 32 random bytes.
    pub(crate) nonce: String,
    /// Hex of HMAC-SHA256(token, "client" ‖ relay nonce ‖ client nonce ‖ id).
    pub(crate) proof: String,
}

/// The relay's verdict on [`Auth`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Verdict {
    /// Authenticated; the relay proves it knows the token too.
    Welcome {
        /// Hex of HMAC-SHA256(token, "relay" ‖ relay nonce ‖ client nonce ‖ id).
        proof: String,
        /// The host visitors use to reach this relay's public ports.
        public_host: String,
        /// How many exposures the relay still holds for this client id
        /// (after a client restart): that many [`Registration`] frames
        /// follow, one each, so that no count of them outgrows a frame.
        held: u32,
    },
    /// Refused; the message never says which part was wrong.
    Denied {
        /// Why, in general terms.
        message: String,
    },
}

/// An exposure as the client registers it with the relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Registration {
    pub(crate) id: ExposureId,
    pub(crate) protocol: Protocol,
    /// The port asked for; any free one when `None`.
    pub(crate) port: Option<u16>,
    pub(crate) limits: ExposureLimits,
    /// Kept by the relay only so a restarted client can take the exposure
    /// back; the relay never connects to it.
    pub(crate) target: SocketAddr,
    pub(crate) labels: Labels,
}

/// The relay's frame on a standby data connection: a visitor of exposure
/// `id` is on the other end. Raw bytes follow, or with `framed`, frames
/// (a big-endian `u32` length and that many bytes) ending in a marker each
/// way (`0`: end of stream, `u32::MAX`: reset), after which the connection
/// is a standby one again and waits for the next `Dispatch`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Dispatch {
    pub(crate) id: ExposureId,
    pub(crate) framed: bool,
}

/// Client to relay, after authentication.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum ClientMessage {
    /// Places (or re-places, same id) an exposure.
    Expose {
        request: u64,
        registration: Registration,
    },
    /// Removes an exposure; unknown ids are fine.
    Withdraw { request: u64, id: ExposureId },
    /// The target of a visitor could not be reached; the relay closes it.
    ConnectFailed { ticket: String },
    /// Answers [`RelayMessage::Ping`].
    Pong,
}

/// The sending end of a client's control link on the relay: messages
/// queued on it go out to that client in order.
pub(crate) type Link = tokio::sync::mpsc::Sender<RelayMessage>;

/// Relay to client, after authentication.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum RelayMessage {
    /// The exposure is in place on `port`.
    Exposed { request: u64, port: u16 },
    /// The exposure is gone.
    Withdrawn { request: u64 },
    /// A request failed.
    Failed {
        request: u64,
        kind: ErrorKind,
        message: String,
    },
    /// A TCP visitor arrived: open a data connection with this ticket.
    Connect { id: ExposureId, ticket: String },
    /// Open a standby data connection with this ticket and keep it until
    /// the relay sends a [`Dispatch`] on it, so the next visitor need not
    /// wait for a dial.
    Standby { ticket: String },
    /// A UDP peer arrived: open a datagram channel to the relay's `port`
    /// and greet it with the ticket.
    UdpSession {
        id: ExposureId,
        ticket: String,
        port: u16,
    },
    /// Liveness check.
    Ping,
}

/// Appends one frame to `frames`: a big-endian `u32` length, then JSON.
pub(crate) fn encode_frame<T: Serialize>(frames: &mut Vec<u8>, message: &T) -> Result<()> {
    let body = serde_json::to_vec(message).map_err(|e| TunnelError::Malformed(e.to_string()))?;
    if body.len() > MAX_FRAME {
        return Err(TunnelError::FrameTooLarge {
            len: body.len(),
            limit: MAX_FRAME,
        });
    }
    frames.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frames.extend_from_slice(&body);
    Ok(())
}

/// Writes one frame ([`encode_frame`]).
pub(crate) async fn write_frame<W, T>(writer: &mut W, message: &T) -> Result<()>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let mut frame = Vec::new();
    encode_frame(&mut frame, message)?;
    write_frames(writer, &frame).await
}

/// Writes frames made with [`encode_frame`] and flushes them.
pub(crate) async fn write_frames<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frames: &[u8],
) -> Result<()> {
    writer
        .write_all(frames)
        .await
        .map_err(|e| TunnelError::io("write frame", e))?;
    writer
        .flush()
        .await
        .map_err(|e| TunnelError::io("flush frame", e))
}

/// Reads one frame, exactly (no read-ahead, so raw bytes may follow). An
/// announced length over [`MAX_FRAME`] fails before anything is read.
pub(crate) async fn read_frame<R, T>(reader: &mut R) -> Result<T>
where
    R: AsyncRead + Unpin,
    T: for<'de> Deserialize<'de>,
{
    let mut len = [0u8; 4];
    reader.read_exact(&mut len).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            TunnelError::Closed("the peer closed the connection".to_owned())
        } else {
            TunnelError::io("read frame", e)
        }
    })?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(TunnelError::FrameTooLarge {
            len,
            limit: MAX_FRAME,
        });
    }
    let mut body = vec![0u8; len];
    reader
        .read_exact(&mut body)
        .await
        .map_err(|e| TunnelError::io("read frame body", e))?;
    serde_json::from_slice(&body).map_err(|e| TunnelError::Malformed(e.to_string()))
}

/// The message of a core error without its kind prefix, for the wire (the
/// kind travels separately).
pub(crate) fn wire_message(error: &kisara_core::Error) -> String {
    let text = error.to_string();
    match text.split_once(": ") {
        Some((head, rest)) if !head.contains(' ') => rest.to_owned(),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_leave_the_rest() {
        let mut buffer = Vec::new();
        write_frame(
            &mut buffer,
            &Opening::Data {
                ticket: "t".into(),
                reusable: true,
            },
        )
        .await
        .unwrap();
        buffer.extend_from_slice(b"raw");
        let mut reader = &buffer[..];
        let opening: Opening = read_frame(&mut reader).await.unwrap();
        assert!(matches!(opening, Opening::Data { ticket, reusable: true } if ticket == "t"));
        assert_eq!(reader, b"raw");
    }

    #[tokio::test]
    async fn oversized_and_garbage_frames_fail() {
        let mut huge = (MAX_FRAME as u32 + 1).to_be_bytes().to_vec();
        huge.extend_from_slice(&[b'x'; 16]);
        let err = read_frame::<_, Opening>(&mut &huge[..]).await.unwrap_err();
        assert!(matches!(err, TunnelError::FrameTooLarge { .. }), "{err}");
        let mut garbage = 5u32.to_be_bytes().to_vec();
        garbage.extend_from_slice(b"\xff{]\0x");
        let err = read_frame::<_, Opening>(&mut &garbage[..])
            .await
            .unwrap_err();
        assert!(matches!(err, TunnelError::Malformed(_)), "{err}");
        let unknown = br#"{"type":"control","version":1,"client":"a","extra":1}"#;
        let mut frame = (unknown.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(unknown);
        assert!(read_frame::<_, Opening>(&mut &frame[..]).await.is_err());
    }

    proptest::proptest! {
        /// Untrusted bytes never panic the decoder: they decode or fail.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            runtime.block_on(async {
                let _ = read_frame::<_, Opening>(&mut &bytes[..]).await;
                let _ = read_frame::<_, ClientMessage>(&mut &bytes[..]).await;
                let _ = read_frame::<_, Auth>(&mut &bytes[..]).await;
            });
        }

        /// A valid length prefix with arbitrary JSON-ish bodies fails cleanly.
        #[test]
        fn framed_garbage_is_rejected_cleanly(body in "[{}\\[\\]\":a-z0-9, ]{0,200}") {
            let mut frame = (body.len() as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(body.as_bytes());
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            runtime.block_on(async {
                let _ = read_frame::<_, ClientMessage>(&mut &frame[..]).await;
            });
        }
    }

    #[test]
    fn wire_message_drops_the_kind_prefix() {
        let error = kisara_core::Error::conflict("port 20001 is in use");
        assert_eq!(wire_message(&error), "port 20001 is in use");
    }
}
