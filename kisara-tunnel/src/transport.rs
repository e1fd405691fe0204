//! Connections to the relay: plain TCP or TLS (rustls) over TCP.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};

use crate::error::{Result, TunnelError};

/// TLS settings for a client's link to one relay.
#[derive(Clone)]
pub struct ClientTls {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Verifies the relay against `config`'s roots under `server_name` (a
    /// DNS name or an IP address in the relay's certificate).
    ///
    /// # Errors
    ///
    /// [`TunnelError::Config`] for a malformed server name.
    pub fn new(config: Arc<ClientConfig>, server_name: &str) -> Result<Self> {
        let server_name = ServerName::try_from(server_name.to_owned())
            .map_err(|e| TunnelError::Config(format!("TLS server name {server_name:?}: {e}")))?;
        Ok(Self {
            connector: TlsConnector::from(config),
            server_name,
        })
    }
}

/// TLS settings for a relay.
#[derive(Clone)]
pub struct RelayTls {
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for RelayTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayTls").finish_non_exhaustive()
    }
}

impl RelayTls {
    /// Serves TLS with `config` (certificate chain and key).
    pub fn new(config: Arc<ServerConfig>) -> Self {
        Self {
            acceptor: TlsAcceptor::from(config),
        }
    }

    pub(crate) async fn accept(&self, stream: TcpStream) -> io::Result<Conn> {
        let stream = self.acceptor.accept(stream).await?;
        Ok(Conn::Tls(Box::new(TlsStream::Server(stream))))
    }
}

/// Sets up a TCP connection between client and relay: `TCP_NODELAY` (the
/// control messages are small) and TCP keepalive.
pub(crate) fn tune(stream: &TcpStream) {
    // Best effort: without them the connection still works.
    let _ = stream.set_nodelay(true);
    #[cfg(target_os = "linux")]
    {
        use rustix::net::sockopt;
        use std::time::Duration;
        // Standby data connections idle for as long as no visitor comes,
        // and NAT mappings and stateful firewalls on the way often forget
        // a flow after a few minutes of silence: probe after 30 s. Three
        // unanswered probes 10 s apart end the connection, so a peer that
        // vanished without a word is noticed about a minute later.
        const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
        const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
        const KEEPALIVE_PROBES: u32 = 3;
        let _ = sockopt::set_socket_keepalive(stream, true);
        let _ = sockopt::set_tcp_keepidle(stream, KEEPALIVE_IDLE);
        let _ = sockopt::set_tcp_keepintvl(stream, KEEPALIVE_INTERVAL);
        let _ = sockopt::set_tcp_keepcnt(stream, KEEPALIVE_PROBES);
    }
}

/// Dials `address` (TCP, [`tune`]d), then TLS when configured.
pub(crate) async fn dial(address: SocketAddr, tls: Option<&ClientTls>) -> io::Result<Conn> {
    let stream = TcpStream::connect(address).await?;
    tune(&stream);
    match tls {
        None => Ok(Conn::Plain(stream)),
        Some(tls) => {
            let stream = tls
                .connector
                .connect(tls.server_name.clone(), stream)
                .await?;
            Ok(Conn::Tls(Box::new(TlsStream::Client(stream))))
        }
    }
}

/// A connection between client and relay.
#[derive(Debug)]
pub(crate) enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    /// Whether an idle connection is still open at the other end. Nothing
    /// is sent on an idle one, so anything to read (an end of stream, a
    /// reset, stray bytes) makes it unusable; the probe may consume a byte
    /// of it.
    pub(crate) fn idle_and_open(&self) -> bool {
        let probe = self.socket().try_read(&mut [0u8; 1]);
        matches!(probe, Err(error) if error.kind() == io::ErrorKind::WouldBlock)
    }

    /// Closes the connection with a reset: the other end learns that its
    /// stream broke instead of seeing a clean end.
    pub(crate) fn reset(self) {
        let _ = self.socket().set_zero_linger();
    }

    fn socket(&self) -> &TcpStream {
        match self {
            Self::Plain(stream) => stream,
            Self::Tls(stream) => stream.get_ref().0,
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(stream) => stream.is_write_vectored(),
            Self::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use rustix::net::sockopt;
    use tokio::net::TcpListener;

    use super::*;

    /// A dialed connection has `TCP_NODELAY` and keepalive probing after
    /// 30 s of silence.
    #[tokio::test]
    async fn dialed_connections_probe_when_idle() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let conn = dial(listener.local_addr().unwrap(), None).await.unwrap();
        let Conn::Plain(stream) = &conn else {
            panic!("a plain dial gave TLS")
        };
        assert!(stream.nodelay().unwrap());
        assert!(sockopt::socket_keepalive(stream).unwrap());
        assert_eq!(
            sockopt::tcp_keepidle(stream).unwrap(),
            std::time::Duration::from_secs(30)
        );
        assert_eq!(sockopt::tcp_keepcnt(stream).unwrap(), 3);
    }
}
