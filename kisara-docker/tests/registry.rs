//! Pulling through `DockerRuntime` from a local registry: Debian's
//! `docker-registry` on 127.0.0.1 (the engine treats loopback registries as
//! insecure, so plain HTTP works), fed by pushing the test image.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bollard::query_parameters::{PushImageOptions, TagImageOptions};
use futures::StreamExt;
use kisara_core::model::ImageRef;
use kisara_core::{ContainerRuntime, drain_progress};
use kisara_docker::testing;

/// Kills the registry when the test ends, passed or failed.
struct Registry {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn registry_binary() -> &'static str {
    for candidate in ["/usr/bin/docker-registry", "/usr/local/bin/docker-registry"] {
        if Path::new(candidate).exists() {
            return candidate;
        }
    }
    panic!(
        "the registry test needs Debian's docker-registry: run `apt-get install docker-registry` \
         (scripts/ensure-docker installs it)"
    );
}

fn start_registry() -> Registry {
    let binary = registry_binary();
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let child = Command::new(binary)
        .arg("serve")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {binary}: {e}"));
    let registry = Registry {
        child,
        port,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "docker-registry did not listen on 127.0.0.1:{port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    registry
}

#[tokio::test]
async fn pull_from_a_local_registry_reports_progress() {
    let runtime = testing::connect_default().await;
    let image = testing::test_image(&runtime).await;
    let registry = start_registry();
    let run = kisara_core::testing::unique_name("pull");
    let repo = format!("127.0.0.1:{}/kisara-test/pulled", registry.port);
    let reference = ImageRef::parse(&format!("{repo}:{run}")).unwrap();
    let docker = runtime.docker();
    docker
        .tag_image(
            image.as_str(),
            Some(TagImageOptions {
                repo: Some(repo.clone()),
                tag: Some(run.clone()),
            }),
        )
        .await
        .unwrap();
    let mut push = docker.push_image(
        &repo,
        Some(PushImageOptions {
            tag: Some(run.clone()),
            platform: None,
        }),
        None,
    );
    while let Some(step) = push.next().await {
        let step = step.unwrap_or_else(|e| panic!("pushing {reference}: {e}"));
        assert!(step.error_detail.is_none(), "pushing {reference}: {step:?}");
    }
    runtime.remove_image(reference.as_str()).await.unwrap();
    assert!(
        !runtime
            .list_images()
            .await
            .unwrap()
            .iter()
            .any(|i| i.tags.iter().any(|t| t == reference.as_str())),
        "the local tag is gone before the pull"
    );

    let steps = drain_progress(runtime.pull_image(&reference).await.unwrap())
        .await
        .unwrap();
    assert!(!steps.is_empty(), "a pull reports progress");
    assert!(
        steps
            .iter()
            .any(|s| s.status.contains("Pulling") || s.status.contains("Downloaded")),
        "{steps:?}"
    );
    let images = runtime.list_images().await.unwrap();
    assert!(
        images
            .iter()
            .any(|i| i.tags.iter().any(|t| t == reference.as_str())),
        "{reference} is listed after the pull"
    );
    // A tag the registry does not have is NotFound naming it.
    let missing = ImageRef::parse(&format!("{repo}:missing-{run}")).unwrap();
    let err = match runtime.pull_image(&missing).await {
        Ok(progress) => drain_progress(progress).await.map(drop).unwrap_err(),
        Err(e) => e,
    };
    assert_eq!(err.kind(), kisara_core::ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains(missing.as_str()), "{err}");
    runtime.remove_image(reference.as_str()).await.unwrap();
}
