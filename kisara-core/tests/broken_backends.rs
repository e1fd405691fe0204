//! The suites catch broken backends: each deliberately broken in-memory
//! backend here must make at least one named case fail.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use async_trait::async_trait;
use futures::FutureExt;
use ipnet::IpNet;
use std::time::Duration;

use kisara_core::memory::{MemoryRuntime, MemorySubnetAllocator};
use kisara_core::model::{
    BuildSpec, ContainerId, ContainerInfo, ContainerSpec, ContainerStats, ExecId, ExecSpec,
    ExecStatus, ImageInfo, ImageRef, LabelFilter, NetworkId, NetworkInfo, NetworkSpec, NodeId,
    NodeLoad, NodeStats, TtySize,
};
use kisara_core::testing::{placement, runtime, subnet};
use kisara_core::{
    ByteStream, ContainerRuntime, Error, EventStream, ExecSession, Placement, ProgressStream,
    Result, RuntimeCapabilities, SubnetAllocator, SubnetUsage,
};

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

/// A runtime that is not idempotent on removal and ignores list filters:
/// every other call goes to a correct in-memory engine.
#[derive(Debug)]
struct SloppyRuntime(MemoryRuntime);

#[async_trait]
impl ContainerRuntime for SloppyRuntime {
    fn name(&self) -> &str {
        "sloppy"
    }
    fn capabilities(&self) -> RuntimeCapabilities {
        self.0.capabilities()
    }
    async fn create_network(&self, spec: &NetworkSpec) -> Result<NetworkInfo> {
        self.0.create_network(spec).await
    }
    async fn inspect_network(&self, network: &NetworkId) -> Result<NetworkInfo> {
        self.0.inspect_network(network).await
    }
    async fn list_networks(&self, filter: &LabelFilter) -> Result<Vec<NetworkInfo>> {
        self.0.list_networks(filter).await
    }
    async fn remove_network(&self, network: &NetworkId) -> Result<()> {
        self.0.remove_network(network).await
    }
    async fn launch(&self, spec: &ContainerSpec) -> Result<ContainerInfo> {
        self.0.launch(spec).await
    }
    async fn stop(&self, container: &ContainerId, grace: Duration) -> Result<()> {
        self.0.stop(container, grace).await
    }
    async fn remove(&self, container: &ContainerId) -> Result<()> {
        // Broken: removing a missing container is an error.
        self.0.inspect(container).await?;
        self.0.remove(container).await
    }
    async fn inspect(&self, container: &ContainerId) -> Result<ContainerInfo> {
        self.0.inspect(container).await
    }
    async fn list(&self, _filter: &LabelFilter) -> Result<Vec<ContainerInfo>> {
        // Broken: the filter is ignored.
        self.0.list(&LabelFilter::all()).await
    }
    async fn exec(&self, container: &ContainerId, spec: &ExecSpec) -> Result<ExecSession> {
        self.0.exec(container, spec).await
    }
    async fn resize_exec(&self, exec: &ExecId, size: TtySize) -> Result<()> {
        self.0.resize_exec(exec, size).await
    }
    async fn exec_status(&self, exec: &ExecId) -> Result<ExecStatus> {
        self.0.exec_status(exec).await
    }
    async fn copy_to(&self, container: &ContainerId, dir: &str, archive: ByteStream) -> Result<()> {
        self.0.copy_to(container, dir, archive).await
    }
    async fn copy_from(&self, container: &ContainerId, path: &str) -> Result<ByteStream> {
        self.0.copy_from(container, path).await
    }
    async fn pull_image(&self, image: &ImageRef) -> Result<ProgressStream> {
        self.0.pull_image(image).await
    }
    async fn build_image(&self, spec: &BuildSpec, context: ByteStream) -> Result<ProgressStream> {
        self.0.build_image(spec, context).await
    }
    async fn list_images(&self) -> Result<Vec<ImageInfo>> {
        self.0.list_images().await
    }
    async fn remove_image(&self, image: &str) -> Result<()> {
        self.0.remove_image(image).await
    }
    async fn events(&self, filter: &LabelFilter) -> Result<EventStream> {
        self.0.events(filter).await
    }
    async fn container_stats(&self, container: &ContainerId) -> Result<ContainerStats> {
        self.0.container_stats(container).await
    }
    async fn node_stats(&self) -> Result<NodeStats> {
        self.0.node_stats().await
    }
}

#[tokio::test]
async fn a_sloppy_runtime_fails_the_runtime_suite() {
    let image = ImageRef::parse("kisara-test/busybox:latest").unwrap();
    let report = failure_report(runtime::all(|| async {
        let engine = MemoryRuntime::new();
        engine.add_image(&image, None);
        runtime::RuntimeFixture::new(Arc::new(SloppyRuntime(engine)), image.clone())
    }))
    .await;
    assert!(report.contains("remove_is_idempotent"), "{report}");
    assert!(report.contains("list_filters_by_labels"), "{report}");
}
