//! [`Tunnel`]: makes container ports reachable on a relay's public ports.

use std::fmt;

use async_trait::async_trait;

use crate::Result;
use crate::model::{ExposeRequest, Exposure, ExposureId, LabelFilter, Protocol};

/// Exposes a target `ip:port` (a container's service) on a public address.
///
/// # Contract
///
/// - **Reachable.** Once `expose` returns, a visitor connecting to the
///   exposure's public address reaches the target, bytes unchanged in both
///   directions, for the exposure's protocol.
/// - **Ports.** A requested public port that is taken gives
///   [`crate::Error::Conflict`] naming it; no two exposures of the same
///   protocol on one relay share a public port.
/// - **Independent.** Adding or withdrawing one exposure never interrupts
///   the others.
/// - **Idempotent withdrawal.** `withdraw` of an unknown id is `Ok`; after
///   `withdraw` returns, the public port accepts no new visitors.
/// - **Listing.** `list` returns exactly the exposures in place whose labels
///   match the filter.
/// - **Protocols.** A protocol the tunnel does not carry (see
///   [`Tunnel::supports`]) is [`crate::Error::NotSupported`].
#[async_trait]
pub trait Tunnel: Send + Sync + fmt::Debug {
    /// Whether this tunnel carries `protocol`.
    fn supports(&self, protocol: Protocol) -> bool;

    /// Exposes a target.
    async fn expose(&self, request: &ExposeRequest) -> Result<Exposure>;

    /// Withdraws an exposure.
    async fn withdraw(&self, exposure: &ExposureId) -> Result<()>;

    /// The exposures in place whose labels match `filter`.
    async fn list(&self, filter: &LabelFilter) -> Result<Vec<Exposure>>;
}
