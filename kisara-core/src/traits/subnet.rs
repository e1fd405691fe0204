//! [`SubnetAllocator`]: hands out subnets for networks from a pool.

use std::fmt;

use async_trait::async_trait;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::Result;

/// How full an allocator is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetUsage {
    /// Subnets the pool holds in all (including excluded ones).
    pub total: u128,
    /// Subnets handed out or adopted.
    pub allocated: u64,
    /// Subnets that can still be handed out.
    pub free: u128,
}

/// Hands out a distinct subnet per network name from a pool, cluster-wide.
///
/// # Contract
///
/// - **Distinct.** Two names never hold overlapping subnets, whether
///   allocated or adopted, and concurrent calls keep this true.
/// - **Idempotent.** `allocate(name)` for a name that holds a subnet returns
///   that subnet again; `release` of a name that holds none is `Ok`.
/// - **Nothing lost.** A released subnet can be allocated again; a subnet is
///   never free and held at once.
/// - **Adoption.** `adopt(name, subnet)` records a subnet that already exists
///   (read back from the engine after a restart): afterwards `lookup(name)`
///   gives it and `allocate` never hands out a subnet overlapping it, even
///   when it lies outside the pool. Adopting the same pair again is `Ok`;
///   adopting a subnet overlapping another name's, or a second subnet for a
///   name, is [`crate::Error::Conflict`] naming both.
/// - **Exhaustion.** When no subnet is free, `allocate` gives
///   [`crate::Error::Exhausted`] naming the pool.
/// - **Names.** An empty name is [`crate::Error::Invalid`].
#[async_trait]
pub trait SubnetAllocator: Send + Sync + fmt::Debug {
    /// The subnet for `network`: the one it holds, or a free one.
    async fn allocate(&self, network: &str) -> Result<IpNet>;

    /// Frees the subnet `network` holds.
    async fn release(&self, network: &str) -> Result<()>;

    /// Records that `network` already holds `subnet`.
    async fn adopt(&self, network: &str, subnet: IpNet) -> Result<()>;

    /// The subnet `network` holds, if any.
    async fn lookup(&self, network: &str) -> Result<Option<IpNet>>;

    /// How full the pool is.
    async fn usage(&self) -> Result<SubnetUsage>;
}
