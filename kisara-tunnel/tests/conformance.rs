//! `kisara-core`'s `Tunnel` conformance suite against a real relay and
//! client on loopback.

mod common;

use std::sync::Arc;

use kisara_core::Tunnel;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_tunnel_conformance_suite() {
    kisara_core::testing::tunnel::all(|| async { common::Pair::new().await as Arc<dyn Tunnel> })
        .await;
}
