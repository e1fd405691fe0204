//! Placing an exposure: binding its public port and starting the task that
//! serves it.

use std::net::SocketAddr;
use std::sync::Arc;

use kisara_core::model::Protocol;
use kisara_core::sync::lock;
use tokio::net::{TcpListener, UdpSocket};
use tracing::{Instrument, info, info_span};

use super::forward::serve_tcp;
use super::state::{ClientSlot, Held, Shared};
use crate::datagram;
use crate::metrics::Active;
use crate::udp;
use crate::wire::Registration;

/// Attempts at finding a bindable port before giving up.
const BIND_ATTEMPTS: usize = 64;

/// A bound public socket.
enum Bound {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

impl Shared {
    /// Takes a port (the requested one, or the next free) and binds it.
    async fn allocate(
        &self,
        protocol: Protocol,
        requested: Option<u16>,
    ) -> kisara_core::Result<(u16, Bound)> {
        let attempts = if requested.is_some() {
            1
        } else {
            BIND_ATTEMPTS
        };
        for _ in 0..attempts {
            let port = self.ports(protocol).allocate(requested)?;
            let address = SocketAddr::new(self.public_bind, port);
            let bound = match protocol {
                Protocol::Tcp => TcpListener::bind(address).await.map(Bound::Tcp),
                Protocol::Udp => datagram::bind(address).await.map(Bound::Udp),
            };
            match bound {
                Ok(bound) => return Ok((port, bound)),
                Err(error) => {
                    self.ports(protocol).release(port);
                    if error.kind() != std::io::ErrorKind::AddrInUse {
                        return Err(kisara_core::Error::unavailable(format!(
                            "cannot listen on {address}/{protocol}: {error}"
                        )));
                    }
                    if requested.is_some() {
                        return Err(kisara_core::Error::conflict(format!(
                            "public port {port}/{protocol} on {} is in use by another program",
                            self.public_bind
                        )));
                    }
                }
            }
        }
        Err(kisara_core::Error::exhausted(format!(
            "no bindable port found in {} after {BIND_ATTEMPTS} attempts",
            self.options.port_range
        )))
    }
}

/// Places an exposure (or confirms one already in place under its id).
pub(super) async fn expose(
    shared: &Arc<Shared>,
    slot: &Arc<ClientSlot>,
    mut registration: Registration,
) -> kisara_core::Result<u16> {
    {
        let mut state = lock(&slot.state);
        if let Some(held) = state.exposures.get_mut(&registration.id) {
            if held.registration.protocol == registration.protocol {
                held.registration.target = registration.target;
                held.registration.labels = registration.labels;
                return held
                    .registration
                    .port
                    .ok_or_else(|| kisara_core::Error::unavailable("exposure without a port"));
            }
            return Err(kisara_core::Error::conflict(format!(
                "exposure {} is already in place for {}",
                registration.id, held.registration.protocol
            )));
        }
    }
    let (port, bound) = shared
        .allocate(registration.protocol, registration.port)
        .await?;
    registration.port = Some(port);
    let cancel = shared.cancel.child_token();
    let id = registration.id.clone();
    let limits = registration.limits;
    let span = info_span!("exposure", exposure = %id, port);
    let task = match bound {
        Bound::Tcp(listener) => shared.spawn(
            serve_tcp(
                shared.clone(),
                slot.clone(),
                id.clone(),
                listener,
                limits,
                cancel.clone(),
            )
            .instrument(span),
        ),
        Bound::Udp(socket) => shared.spawn(
            udp::serve_relay(udp::RelaySide {
                bind: shared.options.listen.ip(),
                socket: Arc::new(socket),
                id: id.clone(),
                peers: limits
                    .max_connections
                    .map_or(shared.options.udp_peers, |most| most as usize),
                idle: shared.options.udp_idle,
                limits,
                cancel: cancel.clone(),
                link: {
                    let slot = slot.clone();
                    Box::new(move || slot.link())
                },
                tasks: shared.tasks.clone(),
            })
            .instrument(span),
        ),
    };
    info!(exposure = %id, port, protocol = %registration.protocol, "exposed");
    let counted = Active::exposure(registration.protocol);
    let replaced = lock(&slot.state).exposures.insert(
        id,
        Held {
            registration,
            cancel,
            task,
            _counted: counted,
        },
    );
    if let Some(old) = replaced {
        // Two requests for one id raced; keep the newer.
        old.cancel.cancel();
        if let Some(port) = old.registration.port {
            shared.ports(old.registration.protocol).release(port);
        }
    }
    Ok(port)
}
