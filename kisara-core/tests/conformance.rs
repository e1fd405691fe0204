//! Every conformance suite against the in-memory backends, through
//! `Arc<dyn Trait>`.

use std::sync::Arc;

use kisara_core::memory::{MemoryRuntime, MemorySubnetAllocator};
use kisara_core::model::ImageRef;
use kisara_core::placement::HeadroomPlacement;
use kisara_core::testing::{placement, runtime, subnet};
use kisara_core::{ContainerRuntime, Placement, SubnetAllocator};

fn test_image() -> ImageRef {
    ImageRef::parse("kisara-test/busybox:latest").unwrap()
}

fn memory_runtime() -> Arc<dyn ContainerRuntime> {
    let runtime = MemoryRuntime::new();
    runtime.add_image(&test_image(), None);
    Arc::new(runtime)
}

#[tokio::test]
async fn memory_runtime_passes_the_runtime_suite() {
    runtime::all(|| async { runtime::RuntimeFixture::new(memory_runtime(), test_image()) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_runtime_passes_on_a_multi_threaded_scheduler() {
    runtime::all(|| async { runtime::RuntimeFixture::new(memory_runtime(), test_image()) }).await;
}

#[tokio::test]
async fn memory_allocator_passes_the_subnet_suite() {
    subnet::all(|| async {
        Arc::new(MemorySubnetAllocator::new("10.200.0.0/16".parse().unwrap(), 24).unwrap())
            as Arc<dyn SubnetAllocator>
    })
    .await;
}

#[tokio::test]
async fn headroom_placement_passes_the_placement_suite() {
    placement::all(|| async { Arc::new(HeadroomPlacement) as Arc<dyn Placement> }).await;
}
