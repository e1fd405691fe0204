//! What the relay holds while it runs: its clients' slots (link,
//! exposures, standby connections), the tickets that wait for data
//! connections, and the tasks it spawned.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use kisara_core::model::{ExposureId, Protocol};
use kisara_core::sync::lock;
use kisara_net::PortPool;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info};

use super::options::RelayOptions;
use crate::auth::{self, Failures, hex};
use crate::metrics::Active;
use crate::transport::Conn;
use crate::wire::{Link, Registration, RelayMessage};

#[derive(Debug)]
pub(super) struct Shared {
    pub(super) options: RelayOptions,
    pub(super) public_bind: IpAddr,
    /// Public ports, one pool per protocol: a TCP and a UDP exposure may
    /// share a port number (as iperf3 and DNS-style services expect).
    pub(super) tcp_ports: PortPool,
    pub(super) udp_ports: PortPool,
    pub(super) clients: Mutex<HashMap<String, Arc<ClientSlot>>>,
    pub(super) tickets: Mutex<HashMap<String, Waiting>>,
    pub(super) failures: Failures,
    pub(super) cancel: CancellationToken,
    /// Every task the relay spawned, so [`Relay::stop`](super::Relay::stop)
    /// can wait until their sockets are closed.
    pub(super) tasks: TaskTracker,
}

/// What the relay keeps per client id, across its links.
#[derive(Debug, Default)]
pub(super) struct ClientSlot {
    pub(super) state: Mutex<SlotState>,
}

#[derive(Debug, Default)]
pub(super) struct SlotState {
    pub(super) generation: u64,
    pub(super) link: Option<Link>,
    pub(super) link_cancel: Option<CancellationToken>,
    pub(super) exposures: HashMap<ExposureId, Held>,
    /// Idle data connections of the current link, for the next visitors.
    pub(super) standby: Vec<Standby>,
}

/// An idle data connection.
#[derive(Debug)]
pub(super) struct Standby {
    pub(super) conn: Conn,
    /// The client carries visitors in frames on it, so it comes back.
    pub(super) reusable: bool,
}

/// What a ticket stands for until its data connection arrives.
#[derive(Debug)]
pub(super) enum Waiting {
    /// A visitor waiting for its data connection.
    Visitor(oneshot::Sender<Conn>),
    /// A standby connection for a client's link of this generation.
    Standby(Arc<ClientSlot>, u64),
}

#[derive(Debug)]
pub(super) struct Held {
    pub(super) registration: Registration,
    pub(super) cancel: CancellationToken,
    pub(super) task: JoinHandle<()>,
    pub(super) _counted: Active,
}

impl ClientSlot {
    pub(super) fn link(&self) -> Option<Link> {
        lock(&self.state).link.clone()
    }

    /// Takes an idle data connection that is still open, if the client
    /// has one, with the link generation it belongs to and how many stay
    /// idle; and how many it found closed and dropped on the way.
    pub(super) fn take_standby(&self) -> (Option<(Standby, u64, usize)>, usize) {
        let mut state = lock(&self.state);
        let mut closed = 0;
        while let Some(standby) = state.standby.pop() {
            if standby.conn.idle_and_open() {
                let idle = state.standby.len();
                return (Some((standby, state.generation, idle)), closed);
            }
            closed += 1;
        }
        (None, closed)
    }

    /// Puts a data connection that carried a framed visitor back among the
    /// idle ones, unless its link is gone or `most` are idle already.
    pub(super) fn return_standby(&self, conn: Conn, generation: u64, most: usize) {
        let mut state = lock(&self.state);
        if state.generation == generation && state.link.is_some() && state.standby.len() < most {
            state.standby.push(Standby {
                conn,
                reusable: true,
            });
        }
    }
}

impl Shared {
    /// Spawns `task`, ended when the relay shuts down.
    pub(super) fn spawn<F>(&self, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let cancel = self.cancel.clone();
        self.tasks.spawn(
            async move {
                tokio::select! {
                    () = cancel.cancelled() => {}
                    () = task => {}
                }
            }
            .in_current_span(),
        )
    }

    pub(super) fn ports(&self, protocol: Protocol) -> &PortPool {
        match protocol {
            Protocol::Tcp => &self.tcp_ports,
            Protocol::Udp => &self.udp_ports,
        }
    }

    pub(super) fn slot(&self, client: &str) -> Arc<ClientSlot> {
        lock(&self.clients)
            .entry(client.to_owned())
            .or_default()
            .clone()
    }

    /// Closes every client's standby connections (they belong to no task,
    /// so cancelling the tasks leaves them open).
    pub(super) fn close_standby(&self) {
        let slots: Vec<Arc<ClientSlot>> = lock(&self.clients).values().cloned().collect();
        for slot in slots {
            let standby = std::mem::take(&mut lock(&slot.state).standby);
            drop(standby);
        }
    }

    /// Asks the client of `slot` for one more standby data connection,
    /// if its link is up.
    pub(super) fn request_standby(&self, slot: &Arc<ClientSlot>) {
        let (generation, link) = {
            let state = lock(&slot.state);
            (state.generation, state.link.clone())
        };
        let Some(link) = link else { return };
        let ticket = hex::encode(&auth::random::<16>());
        lock(&self.tickets).insert(ticket.clone(), Waiting::Standby(slot.clone(), generation));
        // A full queue skips it: the next visitor asks again.
        if link
            .try_send(RelayMessage::Standby {
                ticket: ticket.clone(),
            })
            .is_err()
        {
            lock(&self.tickets).remove(&ticket);
        }
    }

    /// Forgets the standby tickets of `slot`'s links before `generation`
    /// (their connections would be refused anyway).
    pub(super) fn forget_standby_tickets(&self, slot: &Arc<ClientSlot>, generation: u64) {
        lock(&self.tickets).retain(|_, waiting| {
            !matches!(waiting, Waiting::Standby(of, issued)
                if Arc::ptr_eq(of, slot) && *issued < generation)
        });
    }

    /// Removes an exposure: closes its public port and gives the port back.
    pub(super) async fn withdraw(self: &Arc<Self>, slot: &ClientSlot, id: &ExposureId) {
        let held = lock(&slot.state).exposures.remove(id);
        if let Some(held) = held {
            self.close(held).await;
        }
    }

    /// Closes the public port of `held`, removed from its client's
    /// exposures, and gives the port back, in a task of its own: a caller
    /// dropped meanwhile (a link ending) must not leave the port taken.
    pub(super) async fn close(self: &Arc<Self>, held: Held) {
        let shared = self.clone();
        let closing = self.spawn(async move {
            let id = &held.registration.id;
            held.cancel.cancel();
            let _ = held.task.await;
            if let Some(port) = held.registration.port {
                shared.ports(held.registration.protocol).release(port);
            }
            info!(exposure = %id, "withdrawn");
        });
        let _ = closing.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::tcp_pair;

    /// A standby connection the client has closed is dropped and counted,
    /// and the visitor gets the next open one.
    #[tokio::test]
    async fn closed_standby_connections_are_skipped() {
        let slot = ClientSlot::default();
        let (_client_end, open) = tcp_pair().await;
        let (client_end, closed) = tcp_pair().await;
        drop(client_end);
        closed.readable().await.unwrap();
        lock(&slot.state).standby = [open, closed]
            .into_iter()
            .map(|stream| Standby {
                conn: Conn::Plain(stream),
                reusable: true,
            })
            .collect();

        let (taken, dropped) = slot.take_standby();
        assert_eq!(dropped, 1, "the closed connection was not dropped");
        let (_, _, idle) = taken.expect("the open connection");
        assert_eq!(idle, 0);
        assert!(matches!(slot.take_standby(), (None, 0)));
    }
}
