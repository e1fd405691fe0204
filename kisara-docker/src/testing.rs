//! Test helpers for tests against a real engine (behind the `testing`
//! feature): connecting loudly, the locally built busybox test image, a
//! Swarm for overlay networks, and unique names.
//!
//! Nothing here pulls: the test image is [`busybox_image`], built `FROM
//! scratch` from Debian's statically linked busybox (`apt-get install
//! busybox-static`).

use std::sync::Arc;

use bollard::models::{LocalNodeState, SwarmInitRequest};
use kisara_core::ContainerRuntime;
use kisara_core::model::ImageRef;

use crate::static_image::busybox_image;
use crate::{DockerOptions, DockerRuntime};

/// Connects to the engine for a test, panicking with instructions when none
/// answers (tests never skip silently).
pub async fn connect(options: DockerOptions) -> DockerRuntime {
    match DockerRuntime::connect(options).await {
        Ok(runtime) => runtime,
        Err(e) => panic!(
            "these tests need a Docker engine: {e}\n\
             start one (`dockerd`, or `scripts/ensure-docker` in the Kisara repository) or point DOCKER_HOST at one"
        ),
    }
}

/// Connects with default options; see [`connect`].
pub async fn connect_default() -> DockerRuntime {
    connect(DockerOptions::default()).await
}

/// The busybox image for tests ([`busybox_image`]).
///
/// # Panics
///
/// When it cannot be built, saying why (no static busybox on the host, or
/// a failed build).
pub async fn test_image(runtime: &DockerRuntime) -> ImageRef {
    busybox_image(runtime)
        .await
        .unwrap_or_else(|e| panic!("building the test image: {e}"))
}

/// Makes the engine a Swarm manager (`docker swarm init` on loopback) when
/// it is in no swarm, so overlay networks can be created. Returns whether
/// it is a manager afterwards.
pub async fn ensure_swarm(runtime: &DockerRuntime) -> bool {
    let docker = runtime.docker();
    let info = docker.info().await.expect("docker info");
    let swarm = info.swarm.unwrap_or_default();
    if swarm.control_available == Some(true) {
        return true;
    }
    if matches!(
        swarm.local_node_state,
        Some(LocalNodeState::INACTIVE) | None
    ) {
        let request = SwarmInitRequest {
            listen_addr: Some("127.0.0.1:2377".to_owned()),
            advertise_addr: Some("127.0.0.1".to_owned()),
            ..SwarmInitRequest::default()
        };
        // Another test may initialise it at the same time: look again below.
        if let Err(e) = docker.init_swarm(request).await {
            tracing::info!(error = %e, "swarm init");
        }
    }
    for _ in 0..50 {
        let info = docker.info().await.expect("docker info");
        if info.swarm.and_then(|s| s.control_available) == Some(true) {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

/// A runtime (as a trait object) and the test image, ready for a test.
pub async fn runtime_and_image(options: DockerOptions) -> (Arc<DockerRuntime>, ImageRef) {
    let runtime = connect(options).await;
    let image = test_image(&runtime).await;
    (Arc::new(runtime), image)
}

/// The label that marks the objects of one test, for [`Cleanup`].
pub const TEST_RUN_LABEL: &str = "kisara-test-run";

/// Removes every container and network labelled [`TEST_RUN_LABEL`] with
/// its run id when dropped, even when the test panicked.
#[derive(Debug)]
pub struct Cleanup {
    runtime: DockerRuntime,
    run: String,
}

impl Cleanup {
    /// A guard for a fresh, unique run id.
    pub fn new(runtime: &DockerRuntime) -> Self {
        Self {
            runtime: runtime.clone(),
            run: kisara_core::testing::unique_name("run"),
        }
    }

    /// The run id: put it on objects as the [`TEST_RUN_LABEL`] label.
    pub fn run(&self) -> &str {
        &self.run
    }

    /// The filter selecting this run's objects.
    pub fn filter(&self) -> kisara_core::model::LabelFilter {
        kisara_core::model::LabelFilter::all().with(TEST_RUN_LABEL, &self.run)
    }

    /// A container spec of `image` running `command`, named uniquely and
    /// labelled with this run.
    pub fn spec<S: Into<String>>(
        &self,
        image: &ImageRef,
        command: impl IntoIterator<Item = S>,
    ) -> kisara_core::model::ContainerSpec {
        let mut spec = kisara_core::model::ContainerSpec::new(image.clone());
        spec.name = Some(kisara_core::testing::unique_name("kd"));
        spec.command = Some(command.into_iter().map(Into::into).collect());
        spec.labels
            .insert(TEST_RUN_LABEL.to_owned(), self.run.clone());
        spec
    }

    /// A network spec with `subnet`, named uniquely and labelled with this
    /// run.
    pub fn network_spec(&self, subnet: Option<ipnet::IpNet>) -> kisara_core::model::NetworkSpec {
        let mut spec =
            kisara_core::model::NetworkSpec::new(kisara_core::testing::unique_name("kdn"), subnet);
        spec.labels
            .insert(TEST_RUN_LABEL.to_owned(), self.run.clone());
        spec
    }

    /// Removes this run's containers and networks now.
    pub async fn clean(&self) {
        let filter = self.filter();
        if let Ok(containers) = self.runtime.list(&filter).await {
            for c in containers {
                if let Err(e) = self.runtime.remove(&c.id).await {
                    tracing::warn!(error = %e, container = %c.name, "test cleanup failed");
                }
            }
        }
        if let Ok(networks) = self.runtime.list_networks(&filter).await {
            for n in networks {
                if let Err(e) = self.runtime.remove_network(&n.id).await {
                    tracing::warn!(error = %e, network = %n.name, "test cleanup failed");
                }
            }
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let run = std::mem::take(&mut self.run);
        if run.is_empty() {
            return;
        }
        let runtime = self.runtime.clone();
        // A thread with its own runtime: works while the test's runtime is
        // unwinding or gone.
        let joined = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                // A fresh connection: the old one's I/O belongs to the
                // test's runtime.
                let Ok(fresh) = DockerRuntime::connect((*runtime.options).clone()).await else {
                    return;
                };
                let mut cleanup = Cleanup {
                    runtime: fresh,
                    run,
                };
                cleanup.clean().await;
                // Cleaned: nothing left for this guard's own drop.
                cleanup.run.clear();
            });
        })
        .join();
        if joined.is_err() {
            tracing::warn!("test cleanup thread panicked");
        }
    }
}
