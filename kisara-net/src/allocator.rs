//! [`PoolAllocator`]: the fast [`SubnetAllocator`] over a [`SubnetPool`].

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use ipnet::IpNet;
use kisara_core::model::NetworkInfo;
use kisara_core::model::labels;
use kisara_core::sync::lock;
use kisara_core::{Error, Result, SubnetAllocator, SubnetUsage};
use serde::{Deserialize, Serialize};

use crate::intervals::IntervalSet;
use crate::{PoolPattern, SubnetPool};

/// Hands out the subnets of a [`SubnetPool`], one per network name.
///
/// Every subnet of the pool has an index (the first pool's subnets first,
/// each pool in address order). The free, held and excluded indices live in
/// lazily materialized bitmap trees: finding, taking and giving back a
/// subnet is a walk down at most 12 levels (3 for the default pool of
/// 32,768), and memory grows with fragmentation and held names, never with
/// the size of untouched ranges (a fresh `fd00::/8 as /64` pool of 2^56
/// subnets is one node). Subnets adopted with another size or from outside
/// the pool are kept by address, so overlap checks stay O(log n).
/// Operations on such subnets also visit each pattern of the pool once (a
/// handful).
///
/// Allocation is next fit: it hands out the next free subnet after the last
/// one, wrapping around, so a subnet just released (whose network the engine
/// may still be tearing down) is not handed out again before the search has
/// gone round the pool.
///
/// The inherent methods are synchronous (one short mutex section, never any
/// I/O); the [`SubnetAllocator`] implementation calls them and keeps its
/// `# Contract`. State is rebuilt after a restart from the engine's networks
/// with [`PoolAllocator::restore`] (or [`PoolAllocator::adopt`] and
/// [`PoolAllocator::exclude`]): no state file.
///
/// ```
/// use kisara_net::{PoolAllocator, SubnetPool};
///
/// let allocator = PoolAllocator::new("10.[128-255].[0-255].0/24".parse::<SubnetPool>()?);
/// let web = allocator.allocate("web")?;
/// assert_eq!(web.to_string(), "10.128.0.0/24");
/// assert_eq!(allocator.allocate("web")?, web, "idempotent");
/// allocator.exclude("10.128.1.0/24".parse()?); // e.g. a host route
/// assert_eq!(allocator.allocate("db")?.to_string(), "10.128.2.0/24");
/// assert_eq!(allocator.usage().free, 32_768 - 3);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct PoolAllocator {
    pool: SubnetPool,
    /// Each pattern and its first global index, in pool order.
    blocks: Vec<Block>,
    state: Mutex<State>,
}

/// Shows the pool and how full it is, not every held name.
impl fmt::Debug for PoolAllocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolAllocator")
            .field("pool", &self.pool.to_string())
            .field("stats", &self.stats())
            .finish()
    }
}

#[derive(Debug)]
struct Block {
    offset: u128,
    pattern: PoolPattern,
}

/// Where a held subnet sits in the address space: (is IPv6, first address).
type AddressKey = (bool, u128);

#[derive(Debug)]
struct State {
    /// Global indices of the subnets that can be handed out.
    free: IntervalSet,
    /// Global indices of excluded subnets (never handed out).
    excluded: IntervalSet,
    /// Global indices held exactly (allocated, or adopted as they are).
    held: IntervalSet,
    /// Where the next search for a free subnet starts.
    next: u128,
    names: HashMap<Arc<str>, Holding>,
    /// Who holds each index of `held`.
    holders: HashMap<u128, Arc<str>, BuildHasherDefault<IndexHasher>>,
    /// Held subnets that are not exactly one of the pool's (other sizes,
    /// outside the pool), by first address -> (last address, name). Held
    /// subnets never overlap, which makes one lookup enough to find a
    /// collision.
    others: BTreeMap<AddressKey, (u128, Arc<str>)>,
}

/// The subnets of one pattern that share addresses with a network.
#[derive(Debug, Clone, Copy)]
struct Meet {
    first: u128,
    last: u128,
    /// The pattern's subnets against the network: `Less` when they are
    /// larger (a shorter prefix), `Equal` for the same size.
    size: Ordering,
}

#[derive(Debug, Clone, Copy)]
struct Holding {
    subnet: IpNet,
    /// The global index when the subnet is exactly one of the pool's.
    index: Option<u128>,
}

/// Hashes the allocator's own subnet indices with one multiplication: they
/// are not caller input, so SipHash's flooding resistance buys nothing.
#[derive(Debug, Default, Clone, Copy)]
struct IndexHasher(u64);

impl Hasher for IndexHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(byte)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u128(&mut self, value: u128) {
        let folded = (value as u64) ^ ((value >> 64) as u64).rotate_left(32);
        self.0 = (self.0 ^ folded).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Detailed usage of a [`PoolAllocator`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStats {
    /// Subnets of the pool, including excluded and held ones.
    pub total: u128,
    /// Names holding a subnet (allocated or adopted, in the pool or not).
    pub allocated: u64,
    /// Subnets that can still be handed out.
    pub free: u128,
    /// Subnets of the pool that are excluded.
    pub excluded: u128,
    /// Inner nodes the allocator's bitmap trees have materialized, about
    /// 1 KiB each: its memory beyond the held names (0 for a fresh pool).
    pub nodes: usize,
}

/// What [`PoolAllocator::restore`] did.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Restored {
    /// Kisara networks whose subnets were adopted.
    pub adopted: usize,
    /// Other networks whose subnets were excluded.
    pub excluded: usize,
    /// Kisara networks that could not be adopted, with the reason (an
    /// overlap with another adopted network, a second subnet for a name).
    pub conflicts: Vec<Error>,
}

fn check_name(network: &str) -> Result<()> {
    if network.is_empty() {
        return Err(Error::invalid("network name", "the name is empty"));
    }
    Ok(())
}

impl PoolAllocator {
    /// An allocator with every subnet of `pool` free. Logs a warning for
    /// each pool in public address space ([`SubnetPool::warnings`]).
    pub fn new(pool: SubnetPool) -> Self {
        for warning in pool.warnings() {
            tracing::warn!(pool = %pool, "{warning}");
        }
        let mut offset = 0;
        let blocks = pool
            .patterns()
            .iter()
            .map(|pattern| {
                let block = Block {
                    offset,
                    pattern: pattern.clone(),
                };
                offset += pattern.count();
                block
            })
            .collect();
        let total = pool.total();
        Self {
            pool,
            blocks,
            state: Mutex::new(State {
                free: IntervalSet::full(total),
                excluded: IntervalSet::empty(total),
                held: IntervalSet::empty(total),
                next: 0,
                names: HashMap::new(),
                holders: HashMap::default(),
                others: BTreeMap::new(),
            }),
        }
    }

    /// The pool it hands subnets out of.
    pub fn pool(&self) -> &SubnetPool {
        &self.pool
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The subnet at global index `index`.
    fn subnet_at(&self, index: u128) -> IpNet {
        let block = &self.blocks[self.blocks.partition_point(|b| b.offset <= index) - 1];
        block
            .pattern
            .nth(index - block.offset)
            .expect("a global index lies inside its block")
    }

    /// Where `net` meets the pool: per pattern it shares addresses with,
    /// the global index range of those subnets.
    fn meets(&self, net: &IpNet) -> Vec<Meet> {
        self.blocks
            .iter()
            .filter_map(|block| {
                let (first, last) = block.pattern.index_range(net)?;
                Some(Meet {
                    first: block.offset + first,
                    last: block.offset + last,
                    size: block.pattern.subnet_prefix_len().cmp(&net.prefix_len()),
                })
            })
            .collect()
    }

    /// A held subnet that overlaps `net` (which meets the pool at `meets`),
    /// with its name.
    fn holder_overlapping(
        &self,
        state: &State,
        net: &IpNet,
        meets: &[Meet],
    ) -> Option<(Arc<str>, IpNet)> {
        let (v6, first, last) = span(net);
        // Held subnets are disjoint: of those kept by address, the one
        // starting last at or before `last` is the only candidate.
        if let Some((_, (held_last, name))) = state.others.range((v6, 0)..=(v6, last)).next_back()
            && *held_last >= first
        {
            return Some((Arc::clone(name), state.names.get(name)?.subnet));
        }
        meets.iter().find_map(|meet| {
            let index = state
                .held
                .next_member(meet.first)
                .filter(|&index| index <= meet.last)?;
            Some((
                Arc::clone(state.holders.get(&index)?),
                self.subnet_at(index),
            ))
        })
    }

    /// The subnet `network` holds, or a free one.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for an empty name, [`Error::Exhausted`] (naming the
    /// pool) when no subnet is free.
    pub fn allocate(&self, network: &str) -> Result<IpNet> {
        check_name(network)?;
        let mut guard = self.state();
        let state = &mut *guard;
        if let Some(holding) = state.names.get(network) {
            return Ok(holding.subnet);
        }
        let from = state.next;
        let Some(index) = state.free.take_next(from) else {
            return Err(Error::exhausted(format!(
                "subnet pool {} has no free subnet for network {network:?} ({} subnets: {} held, {} excluded)",
                self.pool,
                self.pool.total(),
                state.names.len(),
                state.excluded.len()
            )));
        };
        state.next = index + 1;
        let subnet = self.subnet_at(index);
        state.hold(network, subnet, Some(index));
        Ok(subnet)
    }

    /// Frees the subnet `network` holds; returns it (`None` when the name
    /// holds nothing, which is fine).
    pub fn release(&self, network: &str) -> Option<IpNet> {
        let mut state = self.state();
        let (_, holding) = state.names.remove_entry(network)?;
        match holding.index {
            Some(index) => {
                state.held.remove(index, index);
                state.holders.remove(&index);
                if !state.excluded.contains(index) {
                    state.free.insert(index, index);
                }
            }
            None => {
                let (v6, first, _) = span(&holding.subnet);
                state.others.remove(&(v6, first));
                for meet in self.meets(&holding.subnet) {
                    // A subnet smaller than the pool's may share its pool
                    // subnet with other held ones: then that stays taken.
                    if meet.size == Ordering::Less {
                        let unit = self.subnet_at(meet.first);
                        if self
                            .holder_overlapping(&state, &unit, &self.meets(&unit))
                            .is_some()
                        {
                            continue;
                        }
                    }
                    state.give_back(meet.first, meet.last);
                }
            }
        }
        Some(holding.subnet)
    }

    /// Records that `network` holds `subnet`, as found in the engine after a
    /// restart. The subnet may lie outside the pool or have another size;
    /// allocation avoids every pool subnet it overlaps from now on.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for an empty name or a subnet with host bits set;
    /// [`Error::Conflict`] naming both networks when the subnet overlaps
    /// another name's, or when `network` already holds another subnet.
    /// Adopting the same pair again is `Ok`.
    pub fn adopt(&self, network: &str, subnet: IpNet) -> Result<()> {
        check_name(network)?;
        if subnet.trunc() != subnet {
            return Err(Error::invalid(
                "subnet",
                format!(
                    "{subnet} for network {network:?} has host bits set; the network is {}",
                    subnet.trunc()
                ),
            ));
        }
        let mut state = self.state();
        if let Some(holding) = state.names.get(network) {
            if holding.subnet == subnet {
                return Ok(());
            }
            return Err(Error::conflict(format!(
                "network {network:?} already holds {}, cannot adopt {subnet}",
                holding.subnet
            )));
        }
        let meets = self.meets(&subnet);
        if let Some((other, other_subnet)) = self.holder_overlapping(&state, &subnet, &meets) {
            return Err(Error::conflict(format!(
                "subnet {subnet} for network {network:?} overlaps {other_subnet} of network {other:?}"
            )));
        }
        for meet in &meets {
            state.free.remove(meet.first, meet.last);
        }
        // Exactly one of the pool's subnets: tracked by index, like an
        // allocated one.
        let index = meets
            .iter()
            .find(|meet| meet.size == Ordering::Equal)
            .map(|meet| meet.first);
        state.hold(network, subnet, index);
        Ok(())
    }

    /// Never hands out pool subnets that overlap `subnet`: a host route, or
    /// a network Kisara did not create. Held subnets stay held (a warning is
    /// logged if `subnet` overlaps one), and their pool subnets stay out of
    /// use after release. Exclusions last for the life of the allocator.
    pub fn exclude(&self, subnet: IpNet) {
        let subnet = subnet.trunc();
        let mut state = self.state();
        let meets = self.meets(&subnet);
        for meet in &meets {
            state.excluded.insert(meet.first, meet.last);
            state.free.remove(meet.first, meet.last);
        }
        if let Some((holder, held)) = self.holder_overlapping(&state, &subnet, &meets) {
            tracing::warn!(%subnet, network = %holder, %held, "an excluded subnet overlaps a held network");
        }
    }

    /// Rebuilds the state from the engine's networks after a restart: the
    /// subnet of every network labelled [`labels::MANAGED`] is adopted under
    /// its [`labels::NETWORK`] label (or its name), and the subnet of every
    /// other network is excluded. Conflicts are collected, not fatal.
    pub fn restore<'a>(&self, networks: impl IntoIterator<Item = &'a NetworkInfo>) -> Restored {
        let mut restored = Restored::default();
        for network in networks {
            let Some(subnet) = network
                .subnet
                .or_else(|| network.labels.get(labels::SUBNET)?.parse().ok())
            else {
                continue;
            };
            if network
                .labels
                .get(labels::MANAGED)
                .is_some_and(|v| v == "true")
            {
                let name = network.labels.get(labels::NETWORK).unwrap_or(&network.name);
                match self.adopt(name, subnet) {
                    Ok(()) => restored.adopted += 1,
                    Err(err) => {
                        tracing::warn!(network = %name, %subnet, error = %err, "cannot adopt a Kisara network");
                        restored.conflicts.push(err);
                    }
                }
            } else {
                self.exclude(subnet);
                restored.excluded += 1;
            }
        }
        restored
    }

    /// The subnet `network` holds, if any.
    pub fn lookup(&self, network: &str) -> Option<IpNet> {
        self.state()
            .names
            .get(network)
            .map(|holding| holding.subnet)
    }

    /// How full the pool is.
    pub fn usage(&self) -> SubnetUsage {
        let stats = self.stats();
        SubnetUsage {
            total: stats.total,
            allocated: stats.allocated,
            free: stats.free,
        }
    }

    /// How full the pool is, in detail.
    pub fn stats(&self) -> PoolStats {
        let state = self.state();
        PoolStats {
            total: self.pool.total(),
            allocated: state.names.len() as u64,
            free: state.free.len(),
            excluded: state.excluded.len(),
            nodes: state.free.nodes() + state.excluded.nodes() + state.held.nodes(),
        }
    }
}

/// Where `net` lies in the address space: (is IPv6, first address, last
/// address), the order [`AddressKey`] sorts held subnets in.
fn span(net: &IpNet) -> (bool, u128, u128) {
    match net {
        IpNet::V4(net) => (
            false,
            u32::from(net.network()).into(),
            u32::from(net.broadcast()).into(),
        ),
        IpNet::V6(net) => (true, net.network().into(), net.broadcast().into()),
    }
}

impl State {
    fn hold(&mut self, network: &str, subnet: IpNet, index: Option<u128>) {
        let name: Arc<str> = Arc::from(network);
        match index {
            Some(index) => {
                self.held.insert(index, index);
                self.holders.insert(index, Arc::clone(&name));
            }
            None => {
                let (v6, first, last) = span(&subnet);
                self.others.insert((v6, first), (last, Arc::clone(&name)));
            }
        }
        self.names.insert(name, Holding { subnet, index });
    }

    /// Makes `first..=last` free again, except excluded indices.
    fn give_back(&mut self, first: u128, last: u128) {
        self.free.insert(first, last);
        for (a, b) in self.excluded.overlapping(first, last) {
            self.free.remove(a, b);
        }
    }
}

#[async_trait]
impl SubnetAllocator for PoolAllocator {
    async fn allocate(&self, network: &str) -> Result<IpNet> {
        PoolAllocator::allocate(self, network)
    }

    async fn release(&self, network: &str) -> Result<()> {
        PoolAllocator::release(self, network);
        Ok(())
    }

    async fn adopt(&self, network: &str, subnet: IpNet) -> Result<()> {
        PoolAllocator::adopt(self, network, subnet)
    }

    async fn lookup(&self, network: &str) -> Result<Option<IpNet>> {
        Ok(PoolAllocator::lookup(self, network))
    }

    async fn usage(&self) -> Result<SubnetUsage> {
        Ok(PoolAllocator::usage(self))
    }
}
