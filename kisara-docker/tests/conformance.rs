//! The core conformance suite for `ContainerRuntime`, every case, against
//! the real engine.

use std::sync::Arc;

use kisara_core::testing::runtime::{self, RuntimeFixture};
use kisara_docker::testing;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_runtime_passes_the_conformance_suite() {
    let (runtime, image) =
        testing::runtime_and_image(kisara_docker::DockerOptions::default()).await;
    runtime::all(|| {
        let runtime = runtime.clone();
        let image = image.clone();
        async move { RuntimeFixture::new(runtime as Arc<dyn kisara_core::ContainerRuntime>, image) }
    })
    .await;
}
