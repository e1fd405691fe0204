//! Carrying TCP visitors: accepting them on an exposure's public port and
//! splicing each to a data connection from the client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kisara_core::model::{ExposureId, ExposureLimits};
use kisara_core::sync::lock;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Semaphore, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span, warn};

use super::state::{ClientSlot, Shared, Waiting};
use crate::auth::{self, hex};
use crate::bucket::TokenBucket;
use crate::metrics::{self, Active, VisitorEnd};
use crate::splice::{FRAMING, splice, splice_framed, splice_tcp};
use crate::transport::Conn;
use crate::wire::{self, Dispatch, RelayMessage};

/// How long a visitor waits for the client's data connection.
const DATA_TIMEOUT: Duration = Duration::from_secs(10);

/// How a visitor gets its data connection.
enum Route {
    /// A standby connection, told which exposure the visitor came to and
    /// whether the visitor's bytes go in frames.
    Standby(Conn, ExposureId, bool),
    /// A connection the client dials with the ticket, answering `Connect`.
    Ticket(String, oneshot::Receiver<Conn>),
}

impl Route {
    /// The data connection, ready for the visitor's bytes.
    async fn open(self, shared: &Shared) -> Option<Conn> {
        match self {
            Self::Standby(mut data, id, framed) => {
                match wire::write_frame(&mut data, &Dispatch { id, framed }).await {
                    Ok(()) => Some(data),
                    Err(error) => {
                        debug!(%error, "the standby connection is gone");
                        None
                    }
                }
            }
            Self::Ticket(ticket, receiver) => {
                let data = tokio::time::timeout(DATA_TIMEOUT, receiver).await;
                if let Ok(Ok(data)) = data {
                    return Some(data);
                }
                lock(&shared.tickets).remove(&ticket);
                debug!("no data connection for the visitor");
                None
            }
        }
    }
}

/// Records how a visitor ended. One that was not carried to the end is
/// reset once dropped, as a direct connection to a closed port (or to a
/// target that went away) is.
fn visitor_ended(visitor: &TcpStream, end: VisitorEnd) {
    if !matches!(end, VisitorEnd::Carried(..)) {
        let _ = visitor.set_zero_linger();
    }
    metrics::tcp_visitor_ended(end);
}

/// Turns a visitor away before it is carried.
fn refuse(visitor: &TcpStream, peer: SocketAddr, end: VisitorEnd) {
    debug!(%peer, reason = end.label(), "visitor refused");
    visitor_ended(visitor, end);
}

/// Accepts visitors on a TCP exposure and splices each to a data
/// connection from the client: a standby one when the client has one open,
/// else a fresh one.
pub(super) async fn serve_tcp(
    shared: Arc<Shared>,
    slot: Arc<ClientSlot>,
    id: ExposureId,
    listener: TcpListener,
    limits: ExposureLimits,
    cancel: CancellationToken,
) {
    let slots = limits
        .max_connections
        .map(|n| Arc::new(Semaphore::new(n as usize)));
    let buckets = limits
        .bandwidth
        .map(|rate| Arc::new((TokenBucket::new(rate), TokenBucket::new(rate))));
    // Visitors end with the exposure (reset, as by a target that is gone),
    // and it ends after them: a withdrawn exposure carries nothing more to
    // a target that may be about to be torn down or handed to someone
    // else. (A relay stopping drops this task at once and ends them
    // itself.)
    let visitors = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (mut visitor, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let permit = match &slots {
            Some(slots) => match slots.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    refuse(&visitor, peer, VisitorEnd::OverLimit);
                    continue;
                }
            },
            None => None,
        };
        let Some(link) = slot.link() else {
            refuse(&visitor, peer, VisitorEnd::ClientOffline);
            continue;
        };
        // A framed visitor's data connection comes back for the next one.
        let mut reuse = None;
        let (taken, closed) = slot.take_standby();
        if closed > 0 {
            debug!(closed, "dropped standby connections the client had closed");
        }
        for _ in 0..closed {
            shared.request_standby(&slot);
        }
        let route = match taken {
            Some((standby, generation, idle)) => {
                // A framed visitor's connection comes back when it leaves,
                // so one more is asked for only once fewer than half stay
                // idle (long-lived visitors hold theirs); a raw one is
                // used up and always replaced. Asking at every take made
                // sequential visitors that came faster than their
                // connections were returned open new ones, and the surplus
                // was closed (a `TIME_WAIT` each).
                let framed = standby.reusable && FRAMING;
                if !framed || idle < shared.options.standby.div_ceil(2) {
                    shared.request_standby(&slot);
                }
                if framed {
                    reuse = Some(generation);
                }
                Route::Standby(standby.conn, id.clone(), framed)
            }
            None => {
                let ticket = hex::encode(&auth::random::<16>());
                let (sender, receiver) = oneshot::channel();
                lock(&shared.tickets).insert(ticket.clone(), Waiting::Visitor(sender));
                let asked = link.try_send(RelayMessage::Connect {
                    id: id.clone(),
                    ticket: ticket.clone(),
                });
                if let Err(error) = asked {
                    lock(&shared.tickets).remove(&ticket);
                    let end = match error {
                        TrySendError::Full(_) => VisitorEnd::LinkCongested,
                        TrySendError::Closed(_) => VisitorEnd::ClientOffline,
                    };
                    refuse(&visitor, peer, end);
                    continue;
                }
                Route::Ticket(ticket, receiver)
            }
        };
        let buckets = buckets.clone();
        let relay = shared.clone();
        let slot = slot.clone();
        let cancel = cancel.clone();
        let visit = async move {
            let _permit = permit;
            let _carrying = Active::tcp_visitor();
            let data = tokio::select! {
                () = cancel.cancelled() => None,
                data = route.open(&relay) => Some(data),
            };
            let end = match data {
                None => VisitorEnd::Withdrawn,
                Some(None) => VisitorEnd::NoDataConnection,
                Some(Some(mut data)) => {
                    let _ = visitor.set_nodelay(true);
                    let carried = tokio::select! {
                        () = cancel.cancelled() => None,
                        carried = async {
                            match (reuse, &mut data, buckets.as_deref()) {
                                (Some(_), data, buckets) => {
                                    splice_framed(Some(&visitor), data, buckets).await
                                }
                                (None, Conn::Plain(data), None) => {
                                    splice_tcp(&mut visitor, data).await
                                }
                                (None, data, buckets) => splice(&mut visitor, data, buckets).await,
                            }
                        } => Some(carried),
                    };
                    match carried {
                        Some(Ok((up, down))) => {
                            debug!(up, down, "visitor left");
                            if let Some(generation) = reuse {
                                let most = 2 * relay.options.standby;
                                slot.return_standby(data, generation, most);
                            }
                            VisitorEnd::Carried(up, down)
                        }
                        Some(Err(error)) => {
                            debug!(%error, "visitor connection broke");
                            VisitorEnd::Broken
                        }
                        None => {
                            // Cut mid-stream: the client resets the target
                            // when its data connection is reset.
                            data.reset();
                            VisitorEnd::Withdrawn
                        }
                    }
                }
            };
            if matches!(end, VisitorEnd::Withdrawn) {
                debug!("exposure withdrawn; visitor reset");
            }
            visitor_ended(&visitor, end);
        };
        shared.spawn(visitors.track_future(visit.instrument(info_span!("visitor", %peer))));
    }
    visitors.close();
    visitors.wait().await;
}
