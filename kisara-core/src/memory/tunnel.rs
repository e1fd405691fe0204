//! A [`Tunnel`] that forwards TCP on the loopback interface, in-process.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::model::{ExposeRequest, Exposure, ExposureId, LabelFilter, Protocol, PublicAddress};
use crate::sync::lock;
use crate::{Error, Result, Tunnel};

/// A [`Tunnel`] whose "relay" is a listener on `127.0.0.1` in this process,
/// forwarding each TCP visitor to the target.
///
/// Real forwarding with no relay server or node client: good for tests and
/// single-host development. It carries TCP only and ignores bandwidth limits;
/// `kisara-tunnel` is the production tunnel.
#[derive(Debug)]
pub struct LoopbackTunnel {
    bind: IpAddr,
    exposures: Mutex<BTreeMap<ExposureId, (Exposure, JoinHandle<()>)>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl Default for LoopbackTunnel {
    fn default() -> Self {
        Self::new(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }
}

impl LoopbackTunnel {
    /// Listens on `bind` (a loopback address) for visitors.
    pub fn new(bind: IpAddr) -> Self {
        Self {
            bind,
            exposures: Mutex::new(BTreeMap::new()),
            next_id: std::sync::atomic::AtomicU64::new(1),
        }
    }
}

impl Drop for LoopbackTunnel {
    fn drop(&mut self) {
        let exposures = self
            .exposures
            .get_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        for (_, (_, task)) in exposures {
            task.abort();
        }
    }
}

async fn forward(listener: TcpListener, target: SocketAddr, limit: Option<Arc<Semaphore>>) {
    loop {
        let Ok((mut visitor, peer)) = listener.accept().await else {
            continue;
        };
        let permit = match &limit {
            Some(semaphore) => match semaphore.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                // Over the connection limit: refuse by closing at once.
                Err(_) => continue,
            },
            None => None,
        };
        tokio::spawn(
            async move {
                let _permit = permit;
                match TcpStream::connect(target).await {
                    Ok(mut upstream) => {
                        // Errors end this visitor's connection only.
                        let _ = tokio::io::copy_bidirectional(&mut visitor, &mut upstream).await;
                    }
                    Err(error) => tracing::debug!(%error, "target unreachable"),
                }
            }
            .instrument(tracing::debug_span!("visitor", %peer, %target)),
        );
    }
}

#[async_trait]
impl Tunnel for LoopbackTunnel {
    fn supports(&self, protocol: Protocol) -> bool {
        protocol == Protocol::Tcp
    }

    async fn expose(&self, request: &ExposeRequest) -> Result<Exposure> {
        if !self.supports(request.protocol) {
            return Err(Error::not_supported(
                "loopback tunnel",
                format!("{} exposures", request.protocol),
            ));
        }
        let port = request.public_port.unwrap_or(0);
        let listener = TcpListener::bind((self.bind, port))
            .await
            .map_err(|error| {
                if error.kind() == std::io::ErrorKind::AddrInUse {
                    Error::conflict(format!("public port {port} on {} is in use", self.bind))
                } else {
                    Error::unavailable(format!("cannot listen on {}:{port}: {error}", self.bind))
                }
            })?;
        let public = listener
            .local_addr()
            .map_err(|error| Error::unavailable(format!("listener address: {error}")))?;
        let id = ExposureId::new(format!(
            "loopback-{}",
            self.next_id
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let limit = request
            .limits
            .max_connections
            .map(|n| Arc::new(Semaphore::new(n as usize)));
        let task = tokio::spawn(forward(listener, request.target, limit));
        let exposure = Exposure {
            id: id.clone(),
            relay: "loopback".to_owned(),
            public: PublicAddress {
                host: public.ip().to_string(),
                port: public.port(),
            },
            target: request.target,
            protocol: request.protocol,
            limits: request.limits,
            labels: request.labels.clone(),
        };
        lock(&self.exposures).insert(id, (exposure.clone(), task));
        Ok(exposure)
    }

    async fn withdraw(&self, exposure: &ExposureId) -> Result<()> {
        let removed = lock(&self.exposures).remove(exposure);
        if let Some((_, task)) = removed {
            task.abort();
            // Wait until the listener is really closed before saying so.
            let _ = task.await;
        }
        Ok(())
    }

    async fn list(&self, filter: &LabelFilter) -> Result<Vec<Exposure>> {
        Ok(lock(&self.exposures)
            .values()
            .filter(|(exposure, _)| filter.matches(&exposure.labels))
            .map(|(exposure, _)| exposure.clone())
            .collect())
    }
}
