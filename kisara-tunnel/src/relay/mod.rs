//! The relay: the public side. Accepts clients' control links and data
//! connections on one port, and visitors on the public ports of the
//! exposures the clients place.
//!
//! Each module is built only on those before it:
//!
//! ```text
//! options   how a relay runs (RelayOptions)
//!    ^
//! state     what it holds: client slots, tickets, tasks (Shared)
//!    ^
//! forward   carrying TCP visitors to data connections (serve_tcp)
//!    ^
//! expose    binding a public port, starting its TCP or UDP service
//!    ^
//! control   the client port: control links and data connections
//!    ^
//! mod       Relay: bind, stop, Service
//! ```

mod control;
mod expose;
mod forward;
mod options;
mod state;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use kisara_core::lifecycle::{Service, ServiceContext};
use kisara_core::sync::lock;
use kisara_net::PortPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use self::control::accept_loop;
pub use self::options::RelayOptions;
use self::state::Shared;
use crate::auth::Failures;
use crate::error::{Result, TunnelError};
use crate::metrics;

/// A running relay. Dropping it (or [`Relay::shutdown`]) closes every
/// listener and connection it holds.
#[derive(Debug)]
pub struct Relay {
    shared: Arc<Shared>,
    local: SocketAddr,
}

impl Relay {
    /// Binds the relay's listener and starts serving.
    ///
    /// # Errors
    ///
    /// [`TunnelError::Config`] for an empty token or a bad port range,
    /// [`TunnelError::Io`] when the listen address cannot be bound.
    pub async fn bind(options: RelayOptions) -> Result<Self> {
        if options.token.is_empty() {
            return Err(TunnelError::Config(
                "the relay token is empty; set [relay] token".to_owned(),
            ));
        }
        let pool =
            || PortPool::new(options.port_range).map_err(|e| TunnelError::Config(e.to_string()));
        let (tcp_ports, udp_ports) = (pool()?, pool()?);
        metrics::describe();
        let listener = TcpListener::bind(options.listen)
            .await
            .map_err(|e| TunnelError::io(format!("bind relay on {}", options.listen), e))?;
        let local = listener
            .local_addr()
            .map_err(|e| TunnelError::io("relay address", e))?;
        let shared = Arc::new(Shared {
            public_bind: options.public_bind.unwrap_or(local.ip()),
            options,
            tcp_ports,
            udp_ports,
            clients: Mutex::default(),
            tickets: Mutex::default(),
            failures: Failures::default(),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        info!(listen = %local, public_host = %shared.options.public_host, "relay listening");
        shared.spawn(accept_loop(shared.clone(), listener));
        Ok(Self { shared, local })
    }

    /// Where clients connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The number of exposures in place, over all clients.
    pub fn exposure_count(&self) -> usize {
        lock(&self.shared.clients)
            .values()
            .map(|slot| lock(&slot.state).exposures.len())
            .sum()
    }

    /// Stops serving: closes the listener, every public port and every
    /// connection.
    pub fn shutdown(&self) {
        self.shared.cancel.cancel();
        self.shared.close_standby();
    }

    /// Shuts down like [`Relay::shutdown`] and returns once every listener
    /// and connection is closed, so the listen address can be bound again
    /// (a restart in the same process).
    pub async fn stop(&self) {
        self.shutdown();
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
        // One may have arrived while the tasks were ending.
        self.shared.close_standby();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

#[async_trait]
impl Service for Relay {
    fn name(&self) -> &str {
        "relay"
    }

    async fn run(&self, ctx: ServiceContext) -> kisara_core::Result<()> {
        ctx.running();
        tokio::select! {
            () = ctx.stop_requested() => {}
            () = self.shared.cancel.cancelled() => {}
        }
        // Returning means shut down: every listener and connection closed,
        // not only told to close.
        self.stop().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::time::Duration;

    use kisara_core::model::Labels;
    use tokio::io::AsyncReadExt;

    use kisara_core::model::{ExposureId, ExposureLimits, Protocol};
    use tokio::net::TcpStream;
    use tokio::sync::mpsc;

    use super::expose::expose;
    use super::*;
    use crate::wire::{Registration, RelayMessage};

    /// A client whose control link has a full queue gets no more
    /// messages: its visitors are reset at once instead of waiting for a
    /// data connection that was never asked for, and the queue stays as
    /// long as it was.
    #[tokio::test]
    async fn visitors_of_a_congested_link_are_reset_at_once() {
        let relay = Relay::bind(RelayOptions::new("127.0.0.1:0".parse().unwrap(), "token"))
            .await
            .unwrap();
        let slot = relay.shared.slot("congested");
        let (link, queue) = mpsc::channel(1);
        link.try_send(RelayMessage::Ping).unwrap();
        lock(&slot.state).link = Some(link);
        let registration = Registration {
            id: ExposureId::new("congested-tcp"),
            protocol: Protocol::Tcp,
            port: None,
            limits: ExposureLimits::default(),
            target: "127.0.0.1:9".parse().unwrap(),
            labels: Labels::default(),
        };
        let port = expose(&relay.shared, &slot, registration).await.unwrap();

        for _ in 0..3 {
            let mut visitor = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
                .await
                .unwrap();
            let mut byte = [0; 1];
            // Well before DATA_TIMEOUT, which a visitor whose `Connect`
            // was queued without bound would wait out.
            let read = tokio::time::timeout(Duration::from_secs(2), visitor.read(&mut byte))
                .await
                .expect("the visitor was left waiting");
            let error = read.expect_err("the visitor was not reset");
            assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
        }
        assert_eq!(queue.len(), 1, "a congested link was given more to send");
        assert!(
            lock(&relay.shared.tickets).is_empty(),
            "tickets were left behind"
        );
        relay.stop().await;
    }
}
