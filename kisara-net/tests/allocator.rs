//! `PoolAllocator` beyond the conformance suite: exhaustion of the Go
//! default pool, adoption and exclusion of subnets of other sizes, restore
//! from engine networks, threads, and a model-based property test.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ipnet::IpNet;
use kisara_core::ErrorKind;
use kisara_core::model::{Labels, NetworkDriver, NetworkId, NetworkInfo, labels};
use kisara_net::{GO_DEFAULT_POOL, PoolAllocator, SubnetPool};
use proptest::prelude::*;

fn allocator(pool: &str) -> PoolAllocator {
    PoolAllocator::new(pool.parse::<SubnetPool>().unwrap())
}

fn net(text: &str) -> IpNet {
    text.parse().unwrap()
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[test]
fn the_go_default_pool_holds_exactly_32768_subnets() {
    let allocator = allocator(GO_DEFAULT_POOL);
    assert_eq!(allocator.usage().total, 32_768);
    let mut seen = BTreeSet::new();
    for i in 0..32_768 {
        let subnet = allocator.allocate(&format!("net-{i}")).unwrap();
        assert!(seen.insert(subnet), "{subnet} handed out twice");
    }
    assert_eq!(seen.first(), Some(&net("172.128.0.0/24")));
    assert_eq!(seen.last(), Some(&net("172.255.255.0/24")));
    let err = allocator.allocate("one-too-many").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Exhausted);
    assert_eq!(
        err.to_string(),
        "exhausted: subnet pool 172.[128-255].[0-255].0/24 has no free subnet for network \"one-too-many\" \
         (32768 subnets: 32768 held, 0 excluded)"
    );
    let usage = allocator.usage();
    assert_eq!((usage.allocated, usage.free), (32_768, 0));
    assert_eq!(allocator.release("net-100"), Some(net("172.128.100.0/24")));
    assert_eq!(
        allocator.allocate("one-too-many").unwrap(),
        net("172.128.100.0/24")
    );
}

#[test]
fn debug_output_shows_the_pool_not_every_name() {
    let allocator = allocator(GO_DEFAULT_POOL);
    for i in 0..1000 {
        allocator.allocate(&format!("net-{i}")).unwrap();
    }
    let text = format!("{allocator:?}");
    assert!(
        text.contains("172.[128-255].[0-255].0/24") && text.contains("allocated: 1000"),
        "{text}"
    );
    assert!(text.len() < 300, "{text}");
    let ports = format!("{:?}", kisara_net::PortPool::default());
    assert!(
        ports.contains("20000-50000") && ports.len() < 200,
        "{ports}"
    );
}

#[test]
fn later_pools_are_used_when_earlier_ones_are_full() {
    let allocator = allocator("10.0.[0-1].0/24, fd00::/63");
    let got: Vec<String> = (0..4)
        .map(|i| allocator.allocate(&format!("n{i}")).unwrap().to_string())
        .collect();
    assert_eq!(
        got,
        ["10.0.0.0/24", "10.0.1.0/24", "fd00::/64", "fd00:0:0:1::/64"]
    );
    assert_eq!(
        allocator.allocate("n4").unwrap_err().kind(),
        ErrorKind::Exhausted
    );
}

#[test]
fn a_huge_ipv6_pool_costs_nothing_until_used() {
    let allocator = allocator("fd00::/8 as /64");
    assert_eq!(allocator.usage().total, 1 << 56);
    for i in 0..1000 {
        allocator.allocate(&format!("n{i}")).unwrap();
    }
    allocator
        .adopt("far", net("fdff:ffff:ffff:ff00::/56"))
        .unwrap();
    let stats = allocator.stats();
    assert_eq!(stats.free, (1 << 56) - 1000 - 256);
    assert!(
        stats.nodes <= 40,
        "{} tree nodes for a few touched places",
        stats.nodes
    );
}

#[test]
fn adopting_larger_smaller_and_outside_subnets() {
    let allocator = allocator("10.0.[0-15].0/24");
    // A /22 over four pool subnets.
    allocator.adopt("wide", net("10.0.4.0/22")).unwrap();
    assert_eq!(allocator.usage().free, 12);
    // Two /25 halves of one pool subnet.
    allocator.adopt("half-a", net("10.0.0.0/25")).unwrap();
    allocator.adopt("half-b", net("10.0.0.128/25")).unwrap();
    assert_eq!(allocator.usage().free, 11);
    // Outside the pool: counted as held, blocks nothing of the pool.
    allocator.adopt("outside", net("192.168.7.0/24")).unwrap();
    assert_eq!(allocator.usage().free, 11);
    assert_eq!(allocator.usage().allocated, 4);
    let err = allocator
        .adopt("inside-wide", net("10.0.5.0/24"))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(
        err.to_string().contains("\"wide\"") && err.to_string().contains("\"inside-wide\""),
        "{err}"
    );
    let err = allocator
        .adopt("around-outside", net("192.168.0.0/16"))
        .unwrap_err();
    assert!(err.to_string().contains("\"outside\""), "{err}");

    for i in 0..11 {
        let subnet = allocator.allocate(&format!("n{i}")).unwrap();
        for held in ["10.0.4.0/22", "10.0.0.0/24"] {
            assert!(!overlaps(&subnet, &net(held)), "{subnet} overlaps {held}");
        }
    }
    assert_eq!(
        allocator.allocate("full").unwrap_err().kind(),
        ErrorKind::Exhausted
    );

    // Releasing one half keeps the pool subnet taken; the other frees it.
    allocator.release("half-a");
    assert_eq!(allocator.usage().free, 0);
    allocator.release("half-b");
    assert_eq!(allocator.allocate("full").unwrap(), net("10.0.0.0/24"));
    allocator.release("wide");
    assert_eq!(allocator.usage().free, 4);

    let err = allocator.adopt("sloppy", net("10.0.9.1/24")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid);
    assert!(err.to_string().contains("host bits"), "{err}");
}

#[test]
fn excluded_subnets_are_never_handed_out_even_after_release() {
    let allocator = allocator("10.0.[0-7].0/24");
    let first = allocator.allocate("first").unwrap();
    allocator.exclude(net("10.0.0.0/23")); // overlaps the held first subnet
    allocator.exclude(net("10.0.5.7/32"));
    allocator.exclude(net("172.16.0.0/12")); // outside: no effect
    assert_eq!(allocator.stats().excluded, 3);
    assert_eq!(
        allocator.lookup("first"),
        Some(first),
        "held subnets stay held"
    );
    allocator.release("first");
    let handed: Vec<IpNet> = (0..5)
        .map(|i| allocator.allocate(&format!("n{i}")).unwrap())
        .collect();
    for subnet in &handed {
        assert!(
            !["10.0.0.0/24", "10.0.1.0/24", "10.0.5.0/24"].contains(&subnet.to_string().as_str()),
            "{subnet}"
        );
    }
    assert_eq!(
        allocator.allocate("n5").unwrap_err().kind(),
        ErrorKind::Exhausted
    );
    // Adopting an excluded subnet (a network that does exist) still works.
    allocator.adopt("found", net("10.0.5.0/24")).unwrap();
    allocator.release("found");
    assert_eq!(allocator.usage().free, 0);
}

fn network(name: &str, subnet: Option<&str>, labels: &[(&str, &str)]) -> NetworkInfo {
    NetworkInfo {
        id: NetworkId::from(format!("id-{name}")),
        name: name.to_owned(),
        subnet: subnet.map(net),
        gateway: None,
        driver: NetworkDriver::Bridge,
        internal: false,
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<Labels>(),
        containers: Vec::new(),
    }
}

#[test]
fn restore_adopts_kisara_networks_and_excludes_the_rest() {
    let allocator = allocator("10.[128-255].[0-255].0/24");
    let managed = [(labels::MANAGED, "true")];
    let networks = [
        network(
            "kisara-a",
            Some("10.128.0.0/24"),
            &[(labels::MANAGED, "true"), (labels::NETWORK, "a")],
        ),
        network("b", Some("10.128.1.0/24"), &managed),
        // Seen again from a second node (overlay): fine.
        network("b", Some("10.128.1.0/24"), &managed),
        // Only the label says which subnet.
        network(
            "c",
            None,
            &[(labels::MANAGED, "true"), (labels::SUBNET, "10.128.2.0/24")],
        ),
        // Collides with "a".
        network("d", Some("10.128.0.0/16"), &managed),
        // Someone else's networks.
        network("bridge", Some("10.128.3.0/24"), &[]),
        network("host", None, &[]),
    ];
    let restored = allocator.restore(&networks);
    assert_eq!((restored.adopted, restored.excluded), (4, 1));
    assert_eq!(restored.conflicts.len(), 1);
    assert!(
        restored.conflicts[0].to_string().contains("\"d\""),
        "{:?}",
        restored.conflicts
    );
    assert_eq!(allocator.lookup("a"), Some(net("10.128.0.0/24")));
    assert_eq!(allocator.lookup("c"), Some(net("10.128.2.0/24")));
    assert_eq!(allocator.allocate("new").unwrap(), net("10.128.4.0/24"));
}

#[test]
fn threads_never_share_a_subnet() {
    let allocator = Arc::new(allocator("10.[200-203].[0-255].0/24"));
    let kept: Vec<Vec<(String, IpNet)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|t| {
                let allocator = Arc::clone(&allocator);
                scope.spawn(move || {
                    let mut kept = Vec::new();
                    for i in 0..2000 {
                        let name = format!("t{t}-{}", i % 300);
                        let subnet = allocator.allocate(&name).unwrap();
                        if i % 2 == 0 {
                            allocator.release(&name);
                        } else {
                            kept.push((name, subnet));
                        }
                    }
                    kept
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let mut by_subnet: BTreeMap<IpNet, String> = BTreeMap::new();
    for (name, subnet) in kept.into_iter().flatten() {
        if allocator.lookup(&name) != Some(subnet) {
            continue; // released again later by its thread
        }
        if let Some(other) = by_subnet.insert(subnet, name.clone()) {
            assert_eq!(other, name, "{subnet} held by {other} and {name}");
        }
    }
    let usage = allocator.usage();
    assert_eq!(usage.allocated as usize, by_subnet.len());
    assert_eq!(usage.free, 1024 - by_subnet.len() as u128);
}

/// The pool of the model test: 16 subnets in three pools of two families.
const MODEL_POOL: &str = "10.0.[0-7].0/24, 10.1.0.0/22 as /24, fd00::/62 as /64";

/// Subnets to adopt and exclude: pool subnets, larger and smaller ones, and
/// subnets outside the pool.
const CANDIDATES: &[&str] = &[
    "10.0.0.0/24",
    "10.0.3.0/24",
    "10.0.7.0/24",
    "10.1.2.0/24",
    "fd00::/64",
    "fd00:0:0:3::/64",
    "10.0.0.0/22",
    "10.0.0.0/25",
    "10.0.0.128/25",
    "10.0.6.64/26",
    "10.1.0.0/16",
    "10.0.0.0/8",
    "192.168.0.0/24",
    "192.168.0.0/23",
    "fd00::/63",
    "fd00:0:0:2::/65",
    "fe80::/64",
];

#[derive(Debug, Clone)]
enum Op {
    Allocate(usize),
    Release(usize),
    Adopt(usize, usize),
    Exclude(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let name = 0..8usize;
    let candidate = 0..CANDIDATES.len();
    prop_oneof![
        4 => name.clone().prop_map(Op::Allocate),
        3 => name.clone().prop_map(Op::Release),
        2 => (name, candidate.clone()).prop_map(|(n, c)| Op::Adopt(n, c)),
        1 => candidate.prop_map(Op::Exclude),
    ]
}

/// The obvious allocator: scan every pool subnet, compare with every held
/// and excluded subnet.
struct Model {
    units: Vec<IpNet>,
    held: BTreeMap<String, IpNet>,
    excluded: Vec<IpNet>,
    next: usize,
}

impl Model {
    fn is_free(&self, unit: &IpNet) -> bool {
        !self
            .held
            .values()
            .chain(&self.excluded)
            .any(|other| overlaps(unit, other))
    }

    fn allocate(&mut self, name: &str) -> Option<IpNet> {
        if let Some(subnet) = self.held.get(name) {
            return Some(*subnet);
        }
        let n = self.units.len();
        let index = (self.next..n)
            .chain(0..self.next)
            .find(|&i| self.is_free(&self.units[i]))?;
        self.next = index + 1;
        self.held.insert(name.to_owned(), self.units[index]);
        Some(self.units[index])
    }

    fn adopt(&mut self, name: &str, subnet: IpNet) -> Result<(), ErrorKind> {
        if let Some(held) = self.held.get(name) {
            return if *held == subnet {
                Ok(())
            } else {
                Err(ErrorKind::Conflict)
            };
        }
        if self.held.values().any(|held| overlaps(held, &subnet)) {
            return Err(ErrorKind::Conflict);
        }
        self.held.insert(name.to_owned(), subnet);
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random allocate / release / adopt / exclude sequences never hand a
    /// subnet out twice, never lose one, and match the model exactly.
    #[test]
    fn matches_a_simple_model(ops in proptest::collection::vec(op(), 1..80)) {
        let pool: SubnetPool = MODEL_POOL.parse().unwrap();
        let units: Vec<IpNet> = pool
            .patterns()
            .iter()
            .flat_map(|p| (0..p.count()).map(move |i| p.nth(i).unwrap()))
            .collect();
        prop_assert_eq!(units.len(), 16);
        let allocator = PoolAllocator::new(pool);
        let mut model = Model { units, held: BTreeMap::new(), excluded: Vec::new(), next: 0 };
        let names: Vec<String> = (0..8).map(|i| format!("n{i}")).collect();
        for op in ops {
            match op {
                Op::Allocate(n) => {
                    let got = allocator.allocate(&names[n]);
                    match (got, model.allocate(&names[n])) {
                        (Ok(got), Some(expected)) => prop_assert_eq!(got, expected),
                        (Err(err), None) => prop_assert_eq!(err.kind(), ErrorKind::Exhausted),
                        (got, expected) => prop_assert!(false, "allocate: got {:?}, model {:?}", got, expected),
                    }
                }
                Op::Release(n) => {
                    prop_assert_eq!(allocator.release(&names[n]), model.held.remove(&names[n]));
                }
                Op::Adopt(n, c) => {
                    let subnet = net(CANDIDATES[c]);
                    let got = allocator.adopt(&names[n], subnet).map_err(|err| err.kind());
                    prop_assert_eq!(got, model.adopt(&names[n], subnet));
                }
                Op::Exclude(c) => {
                    allocator.exclude(net(CANDIDATES[c]));
                    model.excluded.push(net(CANDIDATES[c]));
                }
            }
            for name in &names {
                prop_assert_eq!(allocator.lookup(name), model.held.get(name).copied());
            }
            let held: Vec<&IpNet> = model.held.values().collect();
            for (i, a) in held.iter().enumerate() {
                for b in &held[i + 1..] {
                    prop_assert!(!overlaps(a, b), "{} and {} are both held", a, b);
                }
            }
            let usage = allocator.usage();
            prop_assert_eq!(usage.total, 16);
            prop_assert_eq!(usage.allocated as usize, model.held.len());
            let free = model.units.iter().filter(|u| model.is_free(u)).count();
            prop_assert_eq!(usage.free, free as u128);
        }
    }
}
