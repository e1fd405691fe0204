//! Raw exec streams for terminals.
//!
//! With a TTY the engine sends the terminal's bytes unframed. bollard's
//! decoder tells framed from raw output by the first byte of each read (0,
//! 1 and 2 mean a frame header), so terminal output that happens to start
//! a read with such a byte would be taken for a header and corrupt or stall
//! the stream. For terminals on `unix://` and plain `tcp://` engines the
//! runtime therefore starts the exec itself and reads the raw stream.

use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use kisara_core::{Error, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A bidirectional byte stream to the engine.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// The raw halves of a started exec.
pub(crate) struct RawExec {
    /// The terminal's output, in chunks as they arrive.
    pub(crate) output: Pin<Box<dyn futures::Stream<Item = std::io::Result<Bytes>> + Send>>,
    /// The terminal's input; shutting it down sends end-of-file.
    pub(crate) input: Pin<Box<dyn AsyncWrite + Send>>,
}

async fn dial(endpoint: &str) -> Option<std::io::Result<(Box<dyn Io>, String)>> {
    if let Some(path) = endpoint.strip_prefix("unix://") {
        return Some(
            tokio::net::UnixStream::connect(path)
                .await
                .map(|s| (Box::new(s) as Box<dyn Io>, "docker".to_owned())),
        );
    }
    // TLS engines go through bollard.
    if std::env::var_os("DOCKER_TLS_VERIFY").is_some() {
        return None;
    }
    let address = endpoint
        .strip_prefix("tcp://")
        .or_else(|| endpoint.strip_prefix("http://"))?;
    let address = address.trim_end_matches('/').to_owned();
    Some(
        tokio::net::TcpStream::connect(address.clone())
            .await
            .map(|s| (Box::new(s) as Box<dyn Io>, address)),
    )
}

/// Starts exec `exec_id` with a TTY and returns its raw stream, or `None`
/// when the endpoint is one this does not speak (TLS, SSH): use bollard.
pub(crate) async fn start_tty_exec(
    endpoint: &str,
    api_version: &str,
    exec_id: &str,
) -> Option<Result<RawExec>> {
    let connected = dial(endpoint).await?;
    Some(start(connected, api_version, exec_id).await)
}

async fn start(
    connected: std::io::Result<(Box<dyn Io>, String)>,
    api_version: &str,
    exec_id: &str,
) -> Result<RawExec> {
    let io_error = |e: std::io::Error| Error::Unavailable {
        message: format!("starting exec {exec_id}: {e}"),
        source: Some(Box::new(e)),
    };
    let (mut io, host) = connected.map_err(io_error)?;
    let body = r#"{"Detach":false,"Tty":true}"#;
    let request = format!(
        "POST /v{api_version}/exec/{exec_id}/start HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    io.write_all(request.as_bytes()).await.map_err(io_error)?;
    // Read the response head; whatever follows it is terminal output.
    let mut buffer = BytesMut::with_capacity(8192);
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if buffer.len() > 64 * 1024 || io.read_buf(&mut buffer).await.map_err(io_error)? == 0 {
            return Err(Error::unavailable(format!(
                "starting exec {exec_id}: the engine closed the connection before answering"
            )));
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let rest = buffer.split_off(head_end);
    if !(status == 101 || status == 200) {
        let message = String::from_utf8_lossy(&rest).trim().to_owned();
        return Err(match status {
            404 => Error::not_found("exec", exec_id),
            409 => Error::conflict(format!("exec {exec_id}: {message}")),
            _ => Error::Backend {
                backend: "docker",
                message: format!("starting exec {exec_id}: engine answered {status}: {message}"),
                source: None,
            },
        });
    }
    let (read, write) = tokio::io::split(io);
    let first = (!rest.is_empty()).then(|| Ok(rest.freeze()));
    let reads = futures::stream::unfold(read, |mut read| async move {
        let mut chunk = BytesMut::with_capacity(8192);
        match read.read_buf(&mut chunk).await {
            Ok(0) => None,
            Ok(_) => Some((Ok(chunk.freeze()), read)),
            Err(e) => Some((Err(e), read)),
        }
    });
    use futures::StreamExt;
    Ok(RawExec {
        output: Box::pin(futures::stream::iter(first).chain(reads)),
        input: Box::pin(write),
    })
}
