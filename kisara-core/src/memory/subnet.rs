//! An in-memory [`SubnetAllocator`] over one CIDR pool.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use ipnet::IpNet;

use crate::sync::lock;
use crate::{Error, Result, SubnetAllocator, SubnetUsage};

/// A [`SubnetAllocator`] that splits one CIDR pool into subnets of a fixed
/// prefix length and scans for a free one.
///
/// Simple and obviously right, as a reference and for tests; allocation is
/// linear in the pool's size. `kisara-net` has the fast allocator with pool
/// patterns for production.
#[derive(Debug)]
pub struct MemorySubnetAllocator {
    pool: IpNet,
    prefix_len: u8,
    held: Mutex<BTreeMap<String, IpNet>>,
}

impl MemorySubnetAllocator {
    /// Splits `pool` into subnets of `prefix_len` (`10.0.0.0/16` into /24s).
    pub fn new(pool: IpNet, prefix_len: u8) -> Result<Self> {
        if prefix_len < pool.prefix_len() || prefix_len > pool.max_prefix_len() {
            return Err(Error::invalid(
                "subnet pool",
                format!(
                    "cannot split {pool} into /{prefix_len} subnets: the prefix must be between /{} and /{}",
                    pool.prefix_len(),
                    pool.max_prefix_len()
                ),
            ));
        }
        Ok(Self {
            pool: pool.trunc(),
            prefix_len,
            held: Mutex::new(BTreeMap::new()),
        })
    }

    fn total(&self) -> u128 {
        1u128 << u32::from(self.prefix_len - self.pool.prefix_len())
    }

    fn candidates(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.pool
            .subnets(self.prefix_len)
            .expect("prefix length checked in new")
    }
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn check_name(network: &str) -> Result<()> {
    if network.is_empty() {
        return Err(Error::invalid("network name", "the name is empty"));
    }
    Ok(())
}

#[async_trait]
impl SubnetAllocator for MemorySubnetAllocator {
    async fn allocate(&self, network: &str) -> Result<IpNet> {
        check_name(network)?;
        let mut held = lock(&self.held);
        if let Some(subnet) = held.get(network) {
            return Ok(*subnet);
        }
        let free = self
            .candidates()
            .find(|candidate| !held.values().any(|h| overlaps(h, candidate)))
            .ok_or_else(|| {
                Error::exhausted(format!(
                    "subnet pool {} (/{} subnets) has no free subnet for network {network:?}",
                    self.pool, self.prefix_len
                ))
            })?;
        held.insert(network.to_owned(), free);
        Ok(free)
    }

    async fn release(&self, network: &str) -> Result<()> {
        lock(&self.held).remove(network);
        Ok(())
    }

    async fn adopt(&self, network: &str, subnet: IpNet) -> Result<()> {
        check_name(network)?;
        let mut held = lock(&self.held);
        if let Some(existing) = held.get(network) {
            if *existing == subnet {
                return Ok(());
            }
            return Err(Error::conflict(format!(
                "network {network:?} already holds {existing}, cannot adopt {subnet}"
            )));
        }
        if let Some((other, other_subnet)) = held.iter().find(|(_, h)| overlaps(h, &subnet)) {
            return Err(Error::conflict(format!(
                "subnet {subnet} for network {network:?} overlaps {other_subnet} of network {other:?}"
            )));
        }
        held.insert(network.to_owned(), subnet);
        Ok(())
    }

    async fn lookup(&self, network: &str) -> Result<Option<IpNet>> {
        Ok(lock(&self.held).get(network).copied())
    }

    async fn usage(&self) -> Result<SubnetUsage> {
        let held = lock(&self.held);
        let taken = self
            .candidates()
            .filter(|candidate| held.values().any(|h| overlaps(h, candidate)))
            .count() as u128;
        Ok(SubnetUsage {
            total: self.total(),
            allocated: held.len() as u64,
            free: self.total() - taken,
        })
    }
}
