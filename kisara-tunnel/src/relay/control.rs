//! The client port: accepting connections, telling control links from data
//! connections, authenticating a control link and serving it until it
//! ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kisara_core::sync::lock;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info, info_span, warn};

use super::expose::expose;
use super::state::{ClientSlot, Held, Shared, Standby, Waiting};
use crate::auth::{self, Role, hex};
use crate::error::{Result, TunnelError};
use crate::metrics::{self, Active, Rejected};
use crate::transport::{self, Conn};
use crate::wire::{
    self, Auth, Challenge, ClientMessage, Link, Opening, Registration, RelayMessage, VERSION,
    Verdict,
};

/// How long a new connection may take to send its opening frame and answer
/// the challenge.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages that may wait to go out on one client's control link. A
/// visitor or UDP peer that would queue one more is turned away: its
/// client is not keeping up (or has stalled), and an unbounded queue would
/// let public traffic grow the relay's memory until the link times out.
const LINK_QUEUE: usize = 1024;
/// Queued control messages written together in one go, at most.
const LINK_BATCH_BYTES: usize = 64 * 1024;

pub(super) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: wait, do not spin.
                warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        transport::tune(&stream);
        let task = shared.clone();
        shared.spawn(
            async move {
                let stream = match &task.options.tls {
                    None => Conn::Plain(stream),
                    Some(tls) => {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(error)) => {
                                warn!(%error, "TLS handshake failed");
                                metrics::rejected(Rejected::Tls);
                                task.failures.record(peer.ip());
                                return;
                            }
                            Err(_) => {
                                debug!("TLS handshake timed out");
                                return;
                            }
                        }
                    }
                };
                if let Err(error) = connection(task, stream, peer).await {
                    debug!(%error, "connection ended");
                }
            }
            .instrument(info_span!("connection", %peer)),
        );
    }
}

/// Serves one connection from a client: a control link or a data
/// connection, by its opening frame.
async fn connection(shared: Arc<Shared>, mut stream: Conn, peer: SocketAddr) -> Result<()> {
    let opening = tokio::time::timeout(HANDSHAKE_TIMEOUT, wire::read_frame(&mut stream))
        .await
        .map_err(|_| TunnelError::Closed("no opening frame in time".to_owned()))
        .and_then(|r| r);
    let opening: Opening = match opening {
        Ok(opening) => opening,
        Err(error) => {
            warn!(%error, "rejected a connection that sent no valid opening frame");
            metrics::rejected(Rejected::Opening);
            shared.failures.record(peer.ip());
            return Ok(());
        }
    };
    match opening {
        Opening::Data { ticket, reusable } => {
            let waiting = lock(&shared.tickets).remove(&ticket);
            match waiting {
                Some(Waiting::Visitor(visitor)) => {
                    let _ = visitor.send(stream);
                }
                Some(Waiting::Standby(slot, generation)) => {
                    let mut state = lock(&slot.state);
                    // Kept only while the link that asked for it is up.
                    if state.generation == generation && state.link.is_some() {
                        state.standby.push(Standby {
                            conn: stream,
                            reusable,
                        });
                    }
                }
                None => {
                    // Late rather than forged (128 random bits): no penalty.
                    debug!("data connection with an unknown or expired ticket");
                }
            }
            Ok(())
        }
        Opening::Control { version, client } => {
            if version != VERSION {
                let denied = Verdict::Denied {
                    message: format!(
                        "protocol version {version} is not supported; this relay speaks {VERSION}"
                    ),
                };
                let _ = wire::write_frame(&mut stream, &denied).await;
                return Err(TunnelError::Version {
                    theirs: version,
                    ours: VERSION,
                });
            }
            control(shared, stream, peer, client)
                .instrument(info_span!("control"))
                .await
        }
    }
}

/// Authenticates a control link, then serves it until it ends.
async fn control(
    shared: Arc<Shared>,
    mut stream: Conn,
    peer: SocketAddr,
    client: String,
) -> Result<()> {
    let Some(wait) = shared.failures.admit(peer.ip()) else {
        debug!(%client, "handshakes from this source already wait their turn; closed");
        return Ok(());
    };
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    let relay_nonce: auth::Bytes32 = auth::random();
    wire::write_frame(
        &mut stream,
        &Challenge {
            version: VERSION,
            nonce: hex::encode(&relay_nonce),
        },
    )
    .await?;
    let answer: Auth = tokio::time::timeout(HANDSHAKE_TIMEOUT, wire::read_frame(&mut stream))
        .await
        .map_err(|_| TunnelError::Closed("no answer to the challenge in time".to_owned()))??;
    let token = shared.options.token.expose();
    let client_nonce = hex::decode::<{ auth::NONCE_LEN }>(&answer.nonce);
    let offered = hex::decode::<{ auth::NONCE_LEN }>(&answer.proof);
    let verified = match (client_nonce, offered) {
        (Some(client_nonce), Some(offered)) => {
            let expected = auth::proof(token, Role::Client, &relay_nonce, &client_nonce, &client);
            auth::proofs_match(&expected, &offered).then_some(client_nonce)
        }
        _ => None,
    };
    let Some(client_nonce) = verified else {
        let failures = shared.failures.record(peer.ip());
        warn!(%client, failures, "authentication failed");
        metrics::rejected(Rejected::Token);
        let denied = Verdict::Denied {
            message: "authentication failed".to_owned(),
        };
        let _ = wire::write_frame(&mut stream, &denied).await;
        return Ok(());
    };
    shared.failures.clear(peer.ip());
    let _linked = Active::client();

    let slot = shared.slot(&client);
    let (outgoing, mut queue) = mpsc::channel(LINK_QUEUE);
    let link_cancel = shared.cancel.child_token();
    let (generation, held, replaced) = {
        let mut state = lock(&slot.state);
        state.generation += 1;
        state.link = Some(outgoing.clone());
        // Standby connections of an older link go with it.
        let replaced = std::mem::take(&mut state.standby);
        if let Some(old) = state.link_cancel.replace(link_cancel.clone()) {
            // A newer link of the same client replaces the old one.
            old.cancel();
        }
        let held: Vec<Registration> = state
            .exposures
            .values()
            .map(|h| h.registration.clone())
            .collect();
        (state.generation, held, replaced)
    };
    drop(replaced);
    shared.forget_standby_tickets(&slot, generation);
    info!(%client, held = held.len(), "client connected");
    let proof = auth::proof(token, Role::Relay, &relay_nonce, &client_nonce, &client);
    // Whatever ends the link below, the clean-up after it runs.
    let ended = async {
        let mut hello = Vec::new();
        wire::encode_frame(
            &mut hello,
            &Verdict::Welcome {
                proof: hex::encode(&proof),
                public_host: shared.options.public_host.clone(),
                held: held.len() as u32,
            },
        )?;
        for registration in &held {
            wire::encode_frame(&mut hello, registration)?;
        }
        wire::write_frames(&mut stream, &hello).await?;
        for _ in 0..shared.options.standby {
            shared.request_standby(&slot);
        }

        let (mut reader, mut writer) = tokio::io::split(stream);
        let heartbeat = shared.options.heartbeat;
        let writing = async move {
            let mut tick = tokio::time::interval(heartbeat);
            tick.tick().await;
            let mut batch = Vec::new();
            loop {
                let mut next = Some(tokio::select! {
                    message = queue.recv() => match message {
                        Some(message) => message,
                        None => return,
                    },
                    _ = tick.tick() => RelayMessage::Ping,
                });
                // What queued up meanwhile (a burst of visitors) leaves
                // in the same write.
                batch.clear();
                while let Some(message) = next {
                    if wire::encode_frame(&mut batch, &message).is_err() {
                        return;
                    }
                    next = (batch.len() < LINK_BATCH_BYTES)
                        .then(|| queue.try_recv().ok())
                        .flatten();
                }
                // A client that stops reading fills its socket and then
                // this queue; it is dropped as one that went silent is.
                let written =
                    tokio::time::timeout(heartbeat * 3, wire::write_frames(&mut writer, &batch));
                if !matches!(written.await, Ok(Ok(()))) {
                    return;
                }
            }
        };
        let reading = async {
            loop {
                let message: ClientMessage = match tokio::time::timeout(
                    heartbeat * 3,
                    wire::read_frame(&mut reader),
                )
                .await
                {
                    Ok(Ok(message)) => message,
                    Ok(Err(error)) => return error,
                    Err(_) => return TunnelError::Closed("the client went silent".to_owned()),
                };
                handle(&shared, &slot, &outgoing, message).await;
            }
        };
        Ok::<_, TunnelError>(tokio::select! {
            () = link_cancel.cancelled() => "replaced by a newer link".to_owned(),
            () = writing => "the link closed".to_owned(),
            error = reading => error.to_string(),
        })
    };
    let ended = ended.await.unwrap_or_else(|error| error.to_string());
    info!(%client, reason = %ended, "client disconnected");

    let mut state = lock(&slot.state);
    if state.generation == generation {
        state.link = None;
        state.link_cancel = None;
        let standby = std::mem::take(&mut state.standby);
        drop(state);
        drop(standby);
        shared.forget_standby_tickets(&slot, generation + 1);
        let grace = shared.options.grace;
        let (expiring, slot) = (shared.clone(), slot.clone());
        shared.spawn(async move {
            tokio::time::sleep(grace).await;
            // Taken under the same lock as the generation check: a client
            // reconnecting meanwhile finds them gone, not about to go.
            let expired: Vec<Held> = {
                let mut state = lock(&slot.state);
                if state.generation != generation {
                    return;
                }
                state.exposures.drain().map(|(_, held)| held).collect()
            };
            if !expired.is_empty() {
                info!(%client, exposures = expired.len(), "grace over; withdrawing");
            }
            for held in expired {
                expiring.close(held).await;
            }
        });
    }
    Ok(())
}

/// Handles one message on an authenticated control link.
async fn handle(
    shared: &Arc<Shared>,
    slot: &Arc<ClientSlot>,
    outgoing: &Link,
    message: ClientMessage,
) {
    let reply = match message {
        ClientMessage::Pong => return,
        ClientMessage::ConnectFailed { ticket } => {
            // Dropping the waiting sender closes the visitor.
            lock(&shared.tickets).remove(&ticket);
            return;
        }
        ClientMessage::Withdraw { request, id } => {
            shared.withdraw(slot, &id).await;
            RelayMessage::Withdrawn { request }
        }
        ClientMessage::Expose {
            request,
            registration,
        } => match expose(shared, slot, registration)
            .instrument(info_span!("expose"))
            .await
        {
            Ok(port) => RelayMessage::Exposed { request, port },
            Err(error) => RelayMessage::Failed {
                request,
                kind: error.kind(),
                message: wire::wire_message(&error),
            },
        },
    };
    // Waits for room: replies are paced by the client reading them.
    let _ = outgoing.send(reply).await;
}
