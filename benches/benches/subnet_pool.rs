//! kisara-net: subnet allocation over the 32,768-subnet default pool.
//!
//! Run with `cargo bench -p kisara-benches --bench subnet_pool`.
//!
//! - `allocate_release/{sync,trait}/{0,50,99}pct`: one allocate + one
//!   release of a network name (one element = one pair), with the pool
//!   0 %, 50 % and 99 % full, the held subnets scattered over the pool.
//!   `sync` calls `PoolAllocator`'s inherent methods; `trait` goes through
//!   `Arc<dyn SubnetAllocator>` and its boxed futures (`block_on`).
//! - `allocate_release/reference/99pct`: the same through kisara-core's
//!   linear `MemorySubnetAllocator` over an equal pool (10.128.0.0/9 as
//!   /24s), the peer for the speed-up ratio.
//! - `adopt/10000`: adopting 10,000 existing subnets into a fresh allocator,
//!   as after a restart (one element = one subnet).
//! - `port_pool/allocate_release/99pct`: the relay port pool, 20000-50000.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use futures::executor::block_on;
use ipnet::IpNet;
use kisara_core::SubnetAllocator;
use kisara_core::memory::MemorySubnetAllocator;
use kisara_net::{DEFAULT_POOL, PoolAllocator, PortPool, SubnetPool};

const POOL_SIZE: usize = 32_768;
/// A realistic network name.
const NAME: &str = "ctf-challenge-net-000042";

/// `count` distinct indices below `POOL_SIZE`, spread pseudo-randomly
/// (xorshift), sorted.
fn scattered(count: usize) -> Vec<usize> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut chosen = vec![false; POOL_SIZE];
    let mut picked = 0;
    while picked < count {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let index = (state % POOL_SIZE as u64) as usize;
        if !chosen[index] {
            chosen[index] = true;
            picked += 1;
        }
    }
    (0..POOL_SIZE).filter(|&i| chosen[i]).collect()
}

/// The default pool with `percent` % of its subnets held, scattered.
fn filled(percent: usize) -> PoolAllocator {
    let allocator = PoolAllocator::new(SubnetPool::default());
    let held = POOL_SIZE * percent / 100;
    if held == 0 {
        return allocator;
    }
    for i in 0..POOL_SIZE {
        allocator.allocate(&format!("fill-{i}")).unwrap();
    }
    for i in scattered(POOL_SIZE - held) {
        allocator.release(&format!("fill-{i}"));
    }
    assert_eq!(allocator.usage().allocated as usize, held);
    allocator
}

/// kisara-core's reference allocator over an equal pool, `percent` % full
/// (filled by adoption: its own allocation is too slow to fill it).
fn reference_filled(percent: usize) -> MemorySubnetAllocator {
    let pool: IpNet = "10.128.0.0/9".parse().unwrap();
    let allocator = MemorySubnetAllocator::new(pool, 24).unwrap();
    let subnets: Vec<IpNet> = pool.subnets(24).unwrap().collect();
    assert_eq!(subnets.len(), POOL_SIZE);
    let free: std::collections::HashSet<usize> = scattered(POOL_SIZE - POOL_SIZE * percent / 100)
        .into_iter()
        .collect();
    block_on(async {
        for (i, subnet) in subnets.into_iter().enumerate() {
            if !free.contains(&i) {
                allocator.adopt(&format!("fill-{i}"), subnet).await.unwrap();
            }
        }
    });
    allocator
}

fn allocate_release(c: &mut Criterion) {
    let mut group = c.benchmark_group("allocate_release");
    group.throughput(Throughput::Elements(1));
    for percent in [0, 50, 99] {
        // Set up on first use (criterion calls a closure once per sample,
        // and only the ones a filter selects).
        let mut allocator: Option<Arc<PoolAllocator>> = None;
        group.bench_function(format!("sync/{percent}pct"), |b| {
            let allocator = allocator.get_or_insert_with(|| Arc::new(filled(percent)));
            b.iter(|| {
                black_box(allocator.allocate(black_box(NAME)).unwrap());
                black_box(allocator.release(black_box(NAME)));
            });
        });
        let mut dynamic: Option<Arc<dyn SubnetAllocator>> =
            allocator.map(|a| a as Arc<dyn SubnetAllocator>);
        group.bench_function(format!("trait/{percent}pct"), |b| {
            let allocator = dynamic.get_or_insert_with(|| Arc::new(filled(percent)));
            b.iter(|| {
                block_on(async {
                    black_box(allocator.allocate(black_box(NAME)).await.unwrap());
                    allocator.release(black_box(NAME)).await.unwrap();
                });
            });
        });
    }
    group.sample_size(10);
    let mut reference: Option<Arc<dyn SubnetAllocator>> = None;
    group.bench_function("reference/99pct", |b| {
        let reference = reference.get_or_insert_with(|| Arc::new(reference_filled(99)));
        b.iter(|| {
            block_on(async {
                black_box(reference.allocate(black_box(NAME)).await.unwrap());
                reference.release(black_box(NAME)).await.unwrap();
            });
        });
    });
    group.finish();
}

fn adopt(c: &mut Criterion) {
    let pool: SubnetPool = DEFAULT_POOL.parse().unwrap();
    let pattern = pool.patterns()[0].clone();
    let existing: Vec<(String, IpNet)> = scattered(10_000)
        .into_iter()
        .map(|i| (format!("kisara-net-{i}"), pattern.nth(i as u128).unwrap()))
        .collect();
    let mut group = c.benchmark_group("adopt");
    group.throughput(Throughput::Elements(existing.len() as u64));
    group.bench_function("10000", |b| {
        b.iter_batched(
            || PoolAllocator::new(pool.clone()),
            |allocator| {
                for (name, subnet) in &existing {
                    allocator.adopt(name, *subnet).unwrap();
                }
                allocator
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

fn port_pool(c: &mut Criterion) {
    let pool = PortPool::default();
    let total = pool.usage().total as usize;
    let mut ports = Vec::new();
    while let Ok(port) = pool.allocate(None) {
        ports.push(port);
    }
    for port in ports.iter().step_by(100).take(total / 100) {
        pool.release(*port);
    }
    let mut group = c.benchmark_group("port_pool");
    group.throughput(Throughput::Elements(1));
    group.bench_function("allocate_release/99pct", |b| {
        b.iter(|| {
            let port = pool.allocate(None).unwrap();
            black_box(pool.release(black_box(port)));
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = allocate_release, adopt, port_pool
}
criterion_main!(benches);
