//! The core `SubnetAllocator` conformance suite, on several pool shapes.

use std::sync::Arc;

use kisara_core::SubnetAllocator;
use kisara_core::testing::subnet;
use kisara_net::{PoolAllocator, SubnetPool};

/// Runs every case on fresh allocators over `pool`.
async fn conformance(pool: &'static str) {
    subnet::all(|| async move {
        let pool: SubnetPool = pool.parse().unwrap();
        Arc::new(PoolAllocator::new(pool)) as Arc<dyn SubnetAllocator>
    })
    .await;
}

#[tokio::test]
async fn octet_range_pattern() {
    conformance("10.[200-203].[0-255].0/24").await;
}

#[tokio::test]
async fn cidr_pool_split_into_24s() {
    conformance("10.200.0.0/16").await;
}

#[tokio::test]
async fn go_default_pool() {
    conformance(kisara_net::GO_DEFAULT_POOL).await;
}

#[tokio::test]
async fn ipv6_pool() {
    conformance("fd00:6b69::/52 as /64").await;
}

#[tokio::test]
async fn several_pools_of_both_families() {
    conformance("10.[200-201].[0-255].0/24, 192.168.0.0/20 as /26, fd00:6b69::/56").await;
}
