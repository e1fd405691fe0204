//! Launch latency on a real Docker engine: `DockerRuntime::launch` vs the
//! same calls made with raw bollard vs `docker run -d`, alternating in one
//! run; then a burst of 50 concurrent launches, `DockerRuntime` vs raw
//! bollard in parallel.
//!
//!     cargo bench -p kisara-benches --bench docker_launch
//!
//! Needs an engine (`scripts/ensure-docker`) and Debian's busybox-static for
//! the test image. `KISARA_BENCH_ROUNDS` (default 25) and
//! `KISARA_BENCH_BURST_ROUNDS` (default 3) set the sample counts. Every
//! container carries the label `kisara-test-run=<run>` and is removed.
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, ListContainersOptions, RemoveContainerOptions,
};
use kisara_benches::{Samples, env_count};
use kisara_core::ContainerRuntime;
use kisara_core::model::{ContainerSpec, ImageRef, labels};
use kisara_docker::testing::{self, Cleanup};

const BENCH_LABEL: &str = testing::TEST_RUN_LABEL;
const BURST: usize = 50;

/// What `DockerRuntime` sends for a spec without options: the same secure
/// defaults, so the raw path does the same work on the engine.
fn raw_body(image: &ImageRef, run: &str) -> ContainerCreateBody {
    let memory = 512 * 1024 * 1024;
    ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: Some(vec!["sleep".into(), "3600".into()]),
        labels: Some(HashMap::from([
            (labels::MANAGED.to_owned(), "true".to_owned()),
            (BENCH_LABEL.to_owned(), run.to_owned()),
        ])),
        host_config: Some(HostConfig {
            privileged: Some(false),
            security_opt: Some(vec!["no-new-privileges".into()]),
            cap_drop: Some(vec!["ALL".into()]),
            pids_limit: Some(256),
            memory: Some(memory),
            memory_swap: Some(memory),
            nano_cpus: Some(1_000_000_000),
            readonly_rootfs: Some(false),
            network_mode: Some("none".into()),
            init: Some(false),
            ..HostConfig::default()
        }),
        ..ContainerCreateBody::default()
    }
}

async fn raw_launch(docker: &Docker, image: &ImageRef, run: &str, name: String) {
    let created = docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name),
                platform: String::new(),
            }),
            raw_body(image, run),
        )
        .await
        .expect("raw create");
    docker
        .start_container(&created.id, None)
        .await
        .expect("raw start");
    docker
        .inspect_container(&created.id, None::<InspectContainerOptions>)
        .await
        .expect("raw inspect");
}

fn kisara_spec(image: &ImageRef, run: &str, name: String) -> ContainerSpec {
    let mut spec = ContainerSpec::new(image.clone());
    spec.name = Some(name);
    spec.command = Some(vec!["sleep".into(), "3600".into()]);
    spec.labels.insert(BENCH_LABEL.into(), run.into());
    spec
}

fn cli_run(image: &ImageRef, run: &str, name: &str) {
    let status = Command::new("docker")
        .args(["run", "-d", "--name", name, "--network", "none"])
        .args(["--label", &format!("{}=true", labels::MANAGED)])
        .args(["--label", &format!("{BENCH_LABEL}={run}")])
        .args(kisara_benches::DOCKER_RUN_DEFAULTS)
        .arg(image.as_str())
        .args(["sleep", "3600"])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run the docker CLI");
    assert!(status.success(), "docker run -d failed");
}

async fn remove_all(docker: &Docker, run: &str) {
    let filters = HashMap::from([("label".to_owned(), vec![format!("{BENCH_LABEL}={run}")])]);
    let list = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..ListContainersOptions::default()
        }))
        .await
        .expect("list bench containers");
    let removals = list.into_iter().filter_map(|c| c.id).map(|id| {
        let docker = docker.clone();
        tokio::spawn(async move {
            let options = RemoveContainerOptions {
                force: true,
                v: true,
                link: false,
            };
            let _ = docker.remove_container(&id, Some(options)).await;
        })
    });
    for removal in removals.collect::<Vec<_>>() {
        let _ = removal.await;
    }
}

#[tokio::main]
async fn main() {
    let rounds = env_count("KISARA_BENCH_ROUNDS", 25).max(1);
    let burst_rounds = env_count("KISARA_BENCH_BURST_ROUNDS", 3).max(1);
    let runtime = Arc::new(testing::connect_default().await);
    let image = testing::test_image(&runtime).await;
    let docker = runtime.docker().clone();
    // Removes every bench container on the way out, even after a panic.
    let cleanup = Cleanup::new(&runtime);
    let run = cleanup.run().to_owned();
    let name = |method: &str, i: usize| format!("{run}-{method}-{i}");

    // Warm up each path once (connection pool, image layers in cache).
    runtime
        .launch(&kisara_spec(&image, &run, name("warm-k", 0)))
        .await
        .expect("launch");
    raw_launch(&docker, &image, &run, name("warm-r", 0)).await;
    cli_run(&image, &run, &name("warm-c", 0));
    remove_all(&docker, &run).await;

    let (mut kisara, mut raw, mut cli) =
        (Samples::default(), Samples::default(), Samples::default());
    for i in 0..rounds {
        // Rotate the order so no method always goes first.
        for method in (0..3).map(|m| (m + i) % 3) {
            let started = Instant::now();
            match method {
                0 => {
                    runtime
                        .launch(&kisara_spec(&image, &run, name("k", i)))
                        .await
                        .expect("launch");
                    kisara.push(started.elapsed());
                }
                1 => {
                    raw_launch(&docker, &image, &run, name("r", i)).await;
                    raw.push(started.elapsed());
                }
                _ => {
                    cli_run(&image, &run, &name("c", i));
                    cli.push(started.elapsed());
                }
            }
        }
        remove_all(&docker, &run).await;
    }
    let (k, r, c) = (kisara.median(), raw.median(), cli.median());
    println!("launch latency, median of {rounds} (create + start + inspect):");
    println!("  DockerRuntime::launch   {k:8.1} ms");
    println!("  raw bollard             {r:8.1} ms");
    println!("  docker run -d           {c:8.1} ms");
    println!("  DockerRuntime / raw     {:8.3}   (goal <= 1.05)", k / r);
    println!("  DockerRuntime / CLI     {:8.3}", k / c);

    let (mut kisara_burst, mut raw_burst) = (Samples::default(), Samples::default());
    for round in 0..burst_rounds {
        for kisara_first in [round % 2 == 0, round % 2 != 0] {
            let started = Instant::now();
            let tasks: Vec<_> = (0..BURST)
                .map(|i| {
                    let (runtime, docker, image, run) =
                        (runtime.clone(), docker.clone(), image.clone(), run.clone());
                    let name = format!(
                        "{run}-b{round}-{}-{i}",
                        if kisara_first { "k" } else { "r" }
                    );
                    tokio::spawn(async move {
                        if kisara_first {
                            runtime
                                .launch(&kisara_spec(&image, &run, name))
                                .await
                                .expect("launch");
                        } else {
                            raw_launch(&docker, &image, &run, name).await;
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.expect("launch task");
            }
            if kisara_first {
                kisara_burst.push(started.elapsed());
            } else {
                raw_burst.push(started.elapsed());
            }
            remove_all(&docker, &run).await;
        }
    }
    let (kb, rb) = (kisara_burst.median(), raw_burst.median());
    println!("burst of {BURST} concurrent launches, median of {burst_rounds}:");
    println!("  DockerRuntime::launch   {kb:8.1} ms");
    println!("  raw bollard (parallel)  {rb:8.1} ms");
    println!("  DockerRuntime / raw     {:8.3}   (goal <= 1.2)", kb / rb);
    remove_all(&docker, &run).await;
}
