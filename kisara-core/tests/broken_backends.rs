//! The suites catch broken backends: each deliberately broken in-memory
//! backend here must make at least one named case fail.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use async_trait::async_trait;
use futures::FutureExt;
use ipnet::IpNet;
use kisara_core::memory::MemorySubnetAllocator;
use kisara_core::model::{NodeId, NodeLoad};
use kisara_core::testing::{placement, subnet};
use kisara_core::{Error, Placement, Result, SubnetAllocator, SubnetUsage};

/// Runs a suite that must fail and returns its report.
async fn failure_report(suite: impl Future<Output = ()>) -> String {
    let panic = AssertUnwindSafe(suite)
        .catch_unwind()
        .await
        .expect_err("the suite passed a broken backend");
    panic
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_else(|| "non-string panic".to_owned())
}

/// Forgets to free subnets on release.
#[derive(Debug)]
struct LeakyAllocator(MemorySubnetAllocator);

#[async_trait]
impl SubnetAllocator for LeakyAllocator {
    async fn allocate(&self, network: &str) -> Result<IpNet> {
        self.0.allocate(network).await
    }
    async fn release(&self, _network: &str) -> Result<()> {
        Ok(())
    }
    async fn adopt(&self, network: &str, subnet: IpNet) -> Result<()> {
        self.0.adopt(network, subnet).await
    }
    async fn lookup(&self, network: &str) -> Result<Option<IpNet>> {
        self.0.lookup(network).await
    }
    async fn usage(&self) -> Result<SubnetUsage> {
        self.0.usage().await
    }
}

#[tokio::test]
async fn a_leaky_allocator_fails_the_subnet_suite() {
    let report = failure_report(subnet::all(|| async {
        let inner = MemorySubnetAllocator::new("10.201.0.0/20".parse().unwrap(), 24).unwrap();
        Arc::new(LeakyAllocator(inner)) as Arc<dyn SubnetAllocator>
    }))
    .await;
    assert!(report.contains("release_frees_the_subnet"), "{report}");
}

/// Picks the first node, whatever its state: the Go original's failure.
#[derive(Debug)]
struct FirstNodePlacement;

impl Placement for FirstNodePlacement {
    fn place(&self, requested: Option<&NodeId>, nodes: &[NodeLoad]) -> Result<NodeId> {
        requested
            .cloned()
            .or_else(|| nodes.first().map(|n| n.node.clone()))
            .ok_or_else(|| Error::exhausted("no nodes"))
    }
}

#[tokio::test]
async fn a_careless_placement_fails_the_placement_suite() {
    let report = failure_report(placement::all(|| async {
        Arc::new(FirstNodePlacement) as Arc<dyn Placement>
    }))
    .await;
    assert!(
        report.contains("full_and_offline_nodes_are_never_chosen"),
        "{report}"
    );
    assert!(
        report.contains("explicit_node_refusals_name_the_node"),
        "{report}"
    );
}
