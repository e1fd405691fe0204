//! TLS for agent links: the agent dials `wss://` with a client config
//! (optionally presenting a client certificate; `kisara_tls::client_config`
//! builds one trusting the system's roots, or only a pinned CA, as every
//! Kisara client does), and the server accepts
//! TLS with [`TlsListener`], optionally requiring client certificates
//! signed by its CA (mutual TLS).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

use kisara_core::{Error, Result};

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Completed handshakes waiting for the HTTP server to take them.
const READY_QUEUE: usize = 64;

/// A TLS listener for the server's HTTP API and agent endpoint, to hand to
/// `axum::serve`. Handshakes run beside the accept loop, so a slow or
/// silent client delays nobody; failed ones are logged and dropped.
#[derive(Debug)]
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(server::TlsStream<TcpStream>, SocketAddr)>,
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Serves TLS with `config` on `listener`. With a client certificate
    /// verifier in `config`, only agents holding a certificate its CA signed
    /// get through (the bearer token is still checked).
    ///
    /// # Errors
    ///
    /// When the listener has no local address.
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> Result<Self> {
        let local = listener
            .local_addr()
            .map_err(|e| Error::unavailable(format!("TLS listener address: {e}")))?;
        let acceptor = TlsAcceptor::from(config);
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        let accepting = tokio::spawn(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            // Ignored: the server stopped taking connections.
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(error)) => tracing::warn!(%peer, %error, "TLS handshake failed"),
                        Err(_) => tracing::warn!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self {
            local,
            ready,
            accepting,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept loop never ends while the listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Opens TLS to `host` over `stream` with `config`.
pub(crate) async fn connect(
    config: Arc<ClientConfig>,
    host: &str,
    stream: TcpStream,
) -> Result<client::TlsStream<TcpStream>> {
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| Error::invalid("server_url", format!("TLS server name {host:?}: {e}")))?;
    TlsConnector::from(config)
        .connect(name, stream)
        .await
        .map_err(|e| Error::unavailable(format!("TLS to {host} failed: {e}")))
}
