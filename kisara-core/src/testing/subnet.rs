//! Conformance cases for [`SubnetAllocator`].
//!
//! The fixture is a fresh allocator per case whose pool holds between 64 and
//! 65,536 subnets (the exhaustion case allocates all of them).

use std::sync::Arc;

use ipnet::IpNet;

use super::{Fixture, Outcome, suite, unique_name};
use crate::{ErrorKind, SubnetAllocator};

impl Fixture for Arc<dyn SubnetAllocator> {}

suite!(all, "SubnetAllocator", CASES: Arc<dyn SubnetAllocator>:
    allocate_is_idempotent,
    allocations_never_overlap,
    release_frees_the_subnet,
    release_of_unknown_name_is_ok,
    adopted_subnets_are_never_handed_out,
    adopting_the_same_pair_again_is_ok,
    adopting_a_taken_subnet_names_both_networks,
    adopting_a_second_subnet_for_a_name_conflicts,
    empty_names_are_invalid,
    concurrent_allocations_are_distinct,
    exhaustion_names_the_pool_and_recovers,
);

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Allocating twice for one name gives the same subnet and holds one.
pub async fn allocate_is_idempotent(allocator: Arc<dyn SubnetAllocator>) -> Outcome {
    let before = allocator.usage().await.unwrap();
    let name = unique_name("net");
    let first = allocator.allocate(&name).await.unwrap();
    let second = allocator.allocate(&name).await.unwrap();
    assert_eq!(
        first, second,
        "allocate({name:?}) twice must give the same subnet"
    );
    assert_eq!(allocator.lookup(&name).await.unwrap(), Some(first));
    let after = allocator.usage().await.unwrap();
    assert_eq!(
        after.allocated,
        before.allocated + 1,
        "one name holds one subnet"
    );
    Outcome::Passed
}

/// Subnets of different names never overlap.
pub async fn allocations_never_overlap(allocator: Arc<dyn SubnetAllocator>) -> Outcome {
    let mut held = Vec::new();
    for i in 0..32 {
        let subnet = allocator.allocate(&format!("net-{i}")).await.unwrap();
        for (other, other_subnet) in &held {
            assert!(
                !overlaps(&subnet, other_subnet),
                "net-{i} got {subnet}, overlapping {other_subnet} of {other}"
            );
        }
        held.push((format!("net-{i}"), subnet));
    }
    Outcome::Passed
}

/// A released subnet is no longer held and the pool counts it free again.
pub async fn release_frees_the_subnet(allocator: Arc<dyn SubnetAllocator>) -> Outcome {
    let before = allocator.usage().await.unwrap();
    allocator.allocate("to-release").await.unwrap();
    let during = allocator.usage().await.unwrap();
    assert_eq!(
        during.free + 1,
        before.free,
        "allocating takes one free subnet"
    );
    allocator.release("to-release").await.unwrap();
    assert_eq!(allocator.lookup("to-release").await.unwrap(), None);
    let after = allocator.usage().await.unwrap();
    assert_eq!(after.free, before.free, "releasing gives the subnet back");
    assert_eq!(after.allocated, before.allocated);
    Outcome::Passed
}

/// Releasing a name that holds nothing is `Ok`.
pub async fn release_of_unknown_name_is_ok(allocator: Arc<dyn SubnetAllocator>) -> Outcome {
    allocator
        .release(&unique_name("never-allocated"))
        .await
        .unwrap();
    allocator.allocate("twice").await.unwrap();
    allocator.release("twice").await.unwrap();
    allocator.release("twice").await.unwrap();
    Outcome::Passed
}

/// After adopting a subnet, lookup gives it and allocation avoids it.
pub async fn adopted_subnets_are_never_handed_out(allocator: Arc<dyn SubnetAllocator>) -> Outcome {
    // Learn a subnet of the pool, free it, then adopt it under another name,
    // as a restart finds a network that exists in the engine.
    let probe = allocator.allocate("probe").await.unwrap();
    allocator.release("probe").await.unwrap();
    allocator.adopt("adopted", probe).await.unwrap();
    assert_eq!(allocator.lookup("adopted").await.unwrap(), Some(probe));
    for i in 0..8 {
        let subnet = allocator.allocate(&format!("fresh-{i}")).await.unwrap();
        assert!(
            !overlaps(&subnet, &probe),
            "fresh-{i} got {subnet}, overlapping adopted {probe}"
        );
    }
    Outcome::Passed
}

/// Adopting the same name and subnet twice is `Ok`.
pub async fn adopting_the_same_pair_again_is_ok(allocator: Arc<dyn SubnetAllocator>) -> Outcome {
    let subnet = allocator.allocate("held").await.unwrap();
    allocator.adopt("held", subnet).await.unwrap();
    allocator.adopt("held", subnet).await.unwrap();
    assert_eq!(allocator.lookup("held").await.unwrap(), Some(subnet));
    Outcome::Passed
}

/// Adopting another name's subnet is a conflict naming both networks.
pub async fn adopting_a_taken_subnet_names_both_networks(
    allocator: Arc<dyn SubnetAllocator>,
) -> Outcome {
    let subnet = allocator.allocate("owner-net").await.unwrap();
    let err = allocator.adopt("intruder-net", subnet).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    let message = err.to_string();
    assert!(
        message.contains("owner-net") && message.contains("intruder-net"),
        "{message}"
    );
    assert_eq!(allocator.lookup("intruder-net").await.unwrap(), None);
    Outcome::Passed
}

/// A name holds one subnet: adopting a different one conflicts.
pub async fn adopting_a_second_subnet_for_a_name_conflicts(
    allocator: Arc<dyn SubnetAllocator>,
) -> Outcome {
    let first = allocator.allocate("one").await.unwrap();
    let other = allocator.allocate("two").await.unwrap();
    allocator.release("two").await.unwrap();
    let err = allocator.adopt("one", other).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert_eq!(allocator.lookup("one").await.unwrap(), Some(first));
    Outcome::Passed
}

/// An empty network name is invalid.
pub async fn empty_names_are_invalid(allocator: Arc<dyn SubnetAllocator>) -> Outcome {
    assert_eq!(
        allocator.allocate("").await.unwrap_err().kind(),
        ErrorKind::Invalid
    );
    let subnet: IpNet = "10.255.255.0/24".parse().unwrap();
    assert_eq!(
        allocator.adopt("", subnet).await.unwrap_err().kind(),
        ErrorKind::Invalid
    );
    Outcome::Passed
}

/// Many tasks allocating at once still get distinct subnets.
pub async fn concurrent_allocations_are_distinct(allocator: Arc<dyn SubnetAllocator>) -> Outcome {
    let tasks: Vec<_> = (0..48)
        .map(|i| {
            let allocator = allocator.clone();
            // Two tasks per name: both must get the same subnet.
            tokio::spawn(async move {
                (
                    i / 2,
                    allocator.allocate(&format!("c-{}", i / 2)).await.unwrap(),
                )
            })
        })
        .collect();
    let mut by_name = std::collections::BTreeMap::new();
    for task in tasks {
        let (name, subnet) = task.await.unwrap();
        if let Some(previous) = by_name.insert(name, subnet) {
            assert_eq!(previous, subnet, "c-{name} got two subnets");
        }
    }
    let subnets: Vec<_> = by_name.values().collect();
    for (i, a) in subnets.iter().enumerate() {
        for b in &subnets[i + 1..] {
            assert!(!overlaps(a, b), "{a} and {b} overlap");
        }
    }
    Outcome::Passed
}

/// Allocating the whole pool ends in `Exhausted`; a release makes room again.
pub async fn exhaustion_names_the_pool_and_recovers(
    allocator: Arc<dyn SubnetAllocator>,
) -> Outcome {
    let free = allocator.usage().await.unwrap().free;
    assert!(
        (1..=65_536).contains(&free),
        "give this case an allocator with at most 65,536 free subnets, not {free}"
    );
    for i in 0..free {
        allocator.allocate(&format!("fill-{i}")).await.unwrap();
    }
    assert_eq!(allocator.usage().await.unwrap().free, 0);
    let err = allocator.allocate("one-too-many").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Exhausted, "{err}");
    assert!(
        err.to_string().contains("pool"),
        "the error names the pool: {err}"
    );
    allocator.release("fill-0").await.unwrap();
    allocator.allocate("one-too-many").await.unwrap();
    Outcome::Passed
}
