//! Docker-specific tests against the real engine: secure defaults, OOM,
//! exit codes, terminals, files, subnets, mounts, overlay networks, exec
//! cancellation, image garbage collection, stats and bad input.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kisara_core::model::{
    BuildSpec, ContainerEventKind, ContainerId, ContainerState, ExecOutput, ExecSpec, ImageRef,
    LabelFilter, Mount, NetworkDriver, NetworkId, TtySize, labels,
};
use kisara_core::testing::runtime::{copied_out, tar_of};
use kisara_core::{ContainerRuntime, ErrorKind, bytes_stream, drain_progress, exec_to_end};
use kisara_docker::testing::{self, Cleanup};
use kisara_docker::{DockerOptions, DockerRuntime, ImageGc};

const WAIT: Duration = Duration::from_secs(30);

async fn setup() -> (DockerRuntime, ImageRef, Cleanup) {
    setup_with(DockerOptions::default()).await
}

async fn setup_with(options: DockerOptions) -> (DockerRuntime, ImageRef, Cleanup) {
    let runtime = testing::connect(options).await;
    let image = testing::test_image(&runtime).await;
    let cleanup = Cleanup::new(&runtime);
    (runtime, image, cleanup)
}

/// A random /24 in 10.[200-254].x.0 (the range tests use).
fn random_subnet() -> ipnet::IpNet {
    let r = kisara_core::testing::random_u64();
    format!("10.{}.{}.0/24", 200 + r % 55, (r >> 8) % 256)
        .parse()
        .unwrap()
}

#[tokio::test]
async fn secure_defaults_are_visible_in_docker_inspect() {
    let options = DockerRuntime::builder()
        .with_cap_add(["NET_BIND_SERVICE"])
        .with_dns(["10.200.0.53".parse().unwrap()])
        .options()
        .clone();
    let (runtime, image, cleanup) = setup_with(options).await;
    let mut spec = cleanup.spec(&image, ["sleep", "3600"]);
    spec.resources.memory_bytes = Some(48 * 1024 * 1024);
    spec.resources.pids = Some(77);
    spec.resources.cpu_millis = Some(250);
    spec.read_only_root = true;
    spec.env.insert("FLAG".into(), "kisara{x}".into());
    let launched = runtime.launch(&spec).await.unwrap();
    let inspected = runtime
        .docker()
        .inspect_container(launched.id.as_str(), None)
        .await
        .unwrap();
    let host = inspected.host_config.unwrap();
    assert_eq!(host.privileged, Some(false));
    assert!(
        host.security_opt
            .unwrap()
            .iter()
            .any(|o| o == "no-new-privileges")
    );
    assert_eq!(host.cap_drop.unwrap(), ["ALL"]);
    assert_eq!(host.cap_add.unwrap(), ["NET_BIND_SERVICE"]);
    assert_eq!(host.pids_limit, Some(77));
    assert_eq!(host.memory, Some(48 * 1024 * 1024));
    assert_eq!(host.memory_swap, Some(48 * 1024 * 1024));
    assert_eq!(host.nano_cpus, Some(250_000_000));
    assert_eq!(host.readonly_rootfs, Some(true));
    assert_eq!(host.dns.unwrap(), ["10.200.0.53"]);
    let config = inspected.config.unwrap();
    assert!(config.env.unwrap().iter().any(|e| e == "FLAG=kisara{x}"));
    let labels = config.labels.unwrap();
    assert_eq!(
        labels.get(labels::MANAGED).map(String::as_str),
        Some("true")
    );
    // The read-only root really is read-only.
    let touch = exec_to_end(&runtime, &launched.id, ["touch", "/x"])
        .await
        .unwrap();
    assert_ne!(touch.exit_code, 0);
    // And the process limit holds inside.
    let cat = exec_to_end(
        &runtime,
        &launched.id,
        ["cat", "/sys/fs/cgroup/pids/pids.max"],
    )
    .await
    .unwrap();
    if cat.exit_code == 0 {
        assert_eq!(String::from_utf8_lossy(&cat.stdout).trim(), "77");
    }
    cleanup.clean().await;
}

/// How many containers the OOM test may launch: under load the engine now
/// and then reports the exit before the OOM kill, or alone, and then
/// records no kill (the README's engine note "OOM kills").
const OOM_ATTEMPTS: usize = 3;

#[tokio::test]
async fn memory_limited_container_reports_oom() {
    let (runtime, image, cleanup) = setup().await;
    let mut events = runtime.events(&cleanup.filter()).await.unwrap();
    let mut orders = Vec::new();
    for _ in 0..OOM_ATTEMPTS {
        // Doubles a string until the 8 MiB limit kills it.
        let mut spec = cleanup.spec(
            &image,
            [
                "sh",
                "-c",
                "x=0123456789abcdef; while true; do x=$x$x; done",
            ],
        );
        spec.resources.memory_bytes = Some(8 * 1024 * 1024);
        let launched = runtime.launch(&spec).await.unwrap();
        // The OOM and die events in arrival order, waiting up to 5 s after
        // the die event for an OOM event that follows it.
        let mut order = Vec::new();
        let mut deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.next()).await {
            let event = event.unwrap();
            if event.container != launched.id {
                continue;
            }
            assert_eq!(
                event
                    .labels
                    .get(testing::TEST_RUN_LABEL)
                    .map(String::as_str),
                Some(cleanup.run())
            );
            match event.kind {
                ContainerEventKind::Oom => order.push(event.kind),
                ContainerEventKind::Die { .. } => {
                    order.push(event.kind);
                    deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                }
                _ => continue,
            }
            let died = order
                .iter()
                .any(|kind| matches!(kind, ContainerEventKind::Die { .. }));
            if died && order.contains(&ContainerEventKind::Oom) {
                break;
            }
        }
        assert!(
            order.contains(&ContainerEventKind::Die { exit_code: 137 }),
            "within 60 s the container dies, killed by SIGKILL (events: {order:?})"
        );
        if order.first() != Some(&ContainerEventKind::Oom) {
            orders.push(order);
            continue;
        }
        let info = runtime.inspect(&launched.id).await.unwrap();
        assert!(info.oom_killed);
        assert_eq!(info.state, ContainerState::Exited);
        let listed = runtime.list(&cleanup.filter()).await.unwrap();
        assert!(
            listed.iter().any(|c| c.id == launched.id && c.oom_killed),
            "list shows the OOM kill"
        );
        cleanup.clean().await;
        return;
    }
    panic!(
        "in {OOM_ATTEMPTS} containers the engine never reported an OOM kill before the exit \
         (events of each: {orders:?})"
    );
}

#[tokio::test]
async fn non_zero_exit_codes_of_containers_and_execs() {
    let (runtime, image, cleanup) = setup().await;
    let mut events = runtime.events(&cleanup.filter()).await.unwrap();
    let dying = runtime
        .launch(&cleanup.spec(&image, ["sh", "-c", "exit 42"]))
        .await
        .unwrap();
    let die = tokio::time::timeout(WAIT, async {
        loop {
            let event = events.next().await.unwrap().unwrap();
            if event.container == dying.id && matches!(event.kind, ContainerEventKind::Die { .. }) {
                return event;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(die.kind, ContainerEventKind::Die { exit_code: 42 });
    let info = runtime.inspect(&dying.id).await.unwrap();
    assert_eq!(info.exit_code, Some(42));
    // A listed container shows the same exit code.
    let listed = runtime.list(&cleanup.filter()).await.unwrap();
    assert_eq!(
        listed.iter().find(|c| c.id == dying.id).unwrap().exit_code,
        Some(42)
    );
    let sleeper = runtime
        .launch(&cleanup.spec(&image, ["sleep", "3600"]))
        .await
        .unwrap();
    let result = exec_to_end(&runtime, &sleeper.id, ["sh", "-c", "echo bye; exit 201"])
        .await
        .unwrap();
    assert_eq!(result.exit_code, 201);
    assert_eq!(result.stdout, b"bye\n");
    let missing = exec_to_end(&runtime, &sleeper.id, ["/no/such/binary"]).await;
    match missing {
        Ok(result) => assert_eq!(result.exit_code, 126.max(result.exit_code).min(127)),
        Err(e) => assert!(
            matches!(
                e.kind(),
                ErrorKind::NotFound | ErrorKind::Invalid | ErrorKind::Backend
            ),
            "{e}"
        ),
    }
    cleanup.clean().await;
}

async fn read_until(
    needle: &str,
    seen: &mut Vec<u8>,
    output: &mut kisara_core::BoxStream<ExecOutput>,
) {
    let fut = async {
        while !String::from_utf8_lossy(seen).contains(needle) {
            match output.next().await {
                Some(Ok(ExecOutput::Stdout(b) | ExecOutput::Stderr(b))) => {
                    seen.extend_from_slice(&b);
                }
                other => panic!("output ended before {needle:?}: {other:?}"),
            }
        }
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("no {needle:?} within {WAIT:?}"));
}

#[tokio::test]
async fn tty_exec_sees_its_initial_size_and_resizes() {
    let (runtime, image, cleanup) = setup().await;
    let launched = runtime
        .launch(&cleanup.spec(&image, ["sleep", "3600"]))
        .await
        .unwrap();
    let spec = ExecSpec::new(["sh"])
        .with_tty(TtySize {
            rows: 33,
            cols: 111,
        })
        .with_stdin();
    let mut session = runtime.exec(&launched.id, &spec).await.unwrap();
    let mut stdin = session.stdin.take().unwrap();
    let mut seen = Vec::new();
    use tokio::io::AsyncWriteExt;
    stdin.write_all(b"stty size\n").await.unwrap();
    read_until("33 111", &mut seen, &mut session.output).await;
    for (rows, cols, needle) in [(50, 200, "50 200"), (10, 40, "10 40")] {
        runtime
            .resize_exec(&session.id, TtySize { rows, cols })
            .await
            .unwrap();
        stdin.write_all(b"stty size\n").await.unwrap();
        read_until(needle, &mut seen, &mut session.output).await;
    }
    // A terminal merges stderr into the one output stream.
    stdin.write_all(b"echo to-stderr >&2\n").await.unwrap();
    read_until("\nto-stderr", &mut seen, &mut session.output).await;
    stdin.write_all(b"exit 9\n").await.unwrap();
    session.stdin = Some(stdin);
    let result = session
        .collect(&runtime, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(result.exit_code, 9);
    assert!(result.stderr.is_empty());
    // Without a size, a terminal starts at 24x80.
    let mut spec = ExecSpec::new(["sh"]).with_stdin();
    spec.tty = true;
    let mut session = runtime.exec(&launched.id, &spec).await.unwrap();
    let mut stdin = session.stdin.take().unwrap();
    let mut seen = Vec::new();
    stdin.write_all(b"stty size\n").await.unwrap();
    read_until("24 80", &mut seen, &mut session.output).await;
    drop(stdin);
    drop(session);
    // Resizing an exec without a terminal is refused.
    let plain = runtime
        .exec(&launched.id, &ExecSpec::new(["sleep", "5"]))
        .await
        .unwrap();
    let err = runtime
        .resize_exec(&plain.id, TtySize { rows: 1, cols: 1 })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    drop(plain);
    cleanup.clean().await;
}

#[tokio::test]
async fn dropping_an_exec_kills_its_whole_process_tree() {
    let (runtime, image, cleanup) = setup().await;
    let launched = runtime
        .launch(&cleanup.spec(&image, ["sleep", "3600"]))
        .await
        .unwrap();
    let session = runtime
        .exec(
            &launched.id,
            &ExecSpec::new(["sh", "-c", "sleep 301 & sleep 302; wait"]),
        )
        .await
        .unwrap();
    let id = session.id.clone();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ps = exec_to_end(&runtime, &launched.id, ["ps"]).await.unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout).into_owned();
    assert!(ps.contains("sleep 301") && ps.contains("sleep 302"), "{ps}");
    drop(session);
    tokio::time::timeout(WAIT, async {
        while runtime.exec_status(&id).await.unwrap().running {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the exec ends");
    let ps = exec_to_end(&runtime, &launched.id, ["ps"]).await.unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout).into_owned();
    assert!(
        !ps.contains("sleep 301") && !ps.contains("sleep 302"),
        "children survived:\n{ps}"
    );
    // An exec that ended by itself is not touched by dropping its session.
    let done = runtime
        .exec(&launched.id, &ExecSpec::new(["true"]))
        .await
        .unwrap();
    let done_id = done.id.clone();
    let result = done
        .collect(&runtime, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(result.exit_code, 0);
    assert_eq!(
        runtime.exec_status(&done_id).await.unwrap().exit_code,
        Some(0)
    );
    cleanup.clean().await;
}

#[tokio::test]
async fn copy_in_and_out_round_trips_bytes() {
    let (runtime, image, cleanup) = setup().await;
    let launched = runtime
        .launch(&cleanup.spec(&image, ["sleep", "3600"]))
        .await
        .unwrap();
    let big = kisara_core::testing::random_bytes(3 * 1024 * 1024 + 17);
    let small = kisara_core::testing::random_bytes(513);
    let archive = tar_of(&[("data/big.bin", &big), ("data/sub/small.bin", &small)]);
    runtime
        .copy_to(&launched.id, "/tmp", bytes_stream(archive))
        .await
        .unwrap();
    let sum = exec_to_end(
        &runtime,
        &launched.id,
        ["sh", "-c", "wc -c < /tmp/data/big.bin"],
    )
    .await
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&sum.stdout).trim(),
        big.len().to_string()
    );
    let files = copied_out(&runtime, &launched.id, "/tmp/data").await;
    assert!(
        files.get("data/big.bin") == Some(&big),
        "big.bin differs: {:?}",
        files.keys()
    );
    assert!(
        files.get("data/sub/small.bin") == Some(&small),
        "small.bin differs"
    );
    let err = runtime
        .copy_to(
            &ContainerId::new("no-such-container-kd"),
            "/tmp",
            bytes_stream(tar_of(&[("x", b"x")])),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.to_string().contains("no-such-container-kd"), "{err}");
    cleanup.clean().await;
}

#[tokio::test]
async fn containers_get_addresses_in_the_requested_subnet_and_gateway() {
    let (runtime, image, cleanup) = setup().await;
    let (network, subnet) = loop {
        let subnet = random_subnet();
        let mut spec = cleanup.network_spec(Some(subnet));
        spec.gateway = Some(subnet.hosts().last().unwrap());
        spec.internal = true;
        match runtime.create_network(&spec).await {
            Ok(n) => break (n, subnet),
            Err(e) if e.kind() == ErrorKind::Conflict => continue,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(network.gateway, subnet.hosts().last());
    assert!(network.internal);
    assert_eq!(network.driver, NetworkDriver::Bridge);
    let mut spec = cleanup.spec(&image, ["sleep", "3600"]);
    spec.networks = vec![network.name.clone()];
    let launched = runtime.launch(&spec).await.unwrap();
    let ip = launched.ip_on(&network.name).unwrap();
    assert!(subnet.contains(&ip));
    // The address is really configured inside the container.
    let addr = exec_to_end(&runtime, &launched.id, ["ip", "-4", "addr"])
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&addr.stdout).contains(&format!("{ip}/24")),
        "{addr:?}"
    );
    // The second network of a launch is joined too.
    let second = loop {
        match runtime
            .create_network(&cleanup.network_spec(Some(random_subnet())))
            .await
        {
            Ok(n) => break n,
            Err(e) if e.kind() == ErrorKind::Conflict => continue,
            Err(e) => panic!("{e}"),
        }
    };
    let mut spec = cleanup.spec(&image, ["sleep", "3600"]);
    spec.networks = vec![network.name.clone(), second.name.clone()];
    let both = runtime.launch(&spec).await.unwrap();
    assert!(
        second
            .subnet
            .unwrap()
            .contains(&both.ip_on(&second.name).unwrap())
    );
    assert!(subnet.contains(&both.ip_on(&network.name).unwrap()));
    assert_eq!(both.labels[labels::NETWORK], network.name);
    cleanup.clean().await;
}

#[tokio::test]
async fn overlapping_subnets_conflict_naming_the_other_network() {
    let (runtime, _image, cleanup) = setup().await;
    let first = loop {
        match runtime
            .create_network(&cleanup.network_spec(Some(random_subnet())))
            .await
        {
            Ok(n) => break n,
            Err(e) if e.kind() == ErrorKind::Conflict => continue,
            Err(e) => panic!("{e}"),
        }
    };
    let inner = first.subnet.unwrap();
    // A /16 containing the first network's /24.
    let outer: ipnet::IpNet = format!("{}/16", inner.network())
        .parse::<ipnet::IpNet>()
        .unwrap()
        .trunc();
    let err = runtime
        .create_network(&cleanup.network_spec(Some(outer)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(err.to_string().contains(&first.name), "{err}");
    // Same name is AlreadyExists, even with another subnet.
    let mut again = cleanup.network_spec(None);
    again.name = first.name.clone();
    let err = runtime.create_network(&again).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    cleanup.clean().await;
}

#[tokio::test]
async fn mounts_only_from_the_allow_list() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("motd"), b"allowed mount\n").unwrap();
    let options = DockerRuntime::builder()
        .with_mount_allow_list([dir.path()])
        .options()
        .clone();
    let (runtime, image, cleanup) = setup_with(options).await;
    let mut spec = cleanup.spec(&image, ["sleep", "3600"]);
    spec.mounts = vec![Mount {
        source: dir.path().to_owned(),
        target: "/data".into(),
        read_only: true,
    }];
    let launched = runtime.launch(&spec).await.unwrap();
    let cat = exec_to_end(&runtime, &launched.id, ["cat", "/data/motd"])
        .await
        .unwrap();
    assert_eq!(cat.stdout, b"allowed mount\n");
    let write = exec_to_end(&runtime, &launched.id, ["sh", "-c", "echo x > /data/y"])
        .await
        .unwrap();
    assert_ne!(write.exit_code, 0, "read-only mount");
    for denied in [
        std::path::PathBuf::from("/etc"),
        dir.path().join("../.."),
        std::path::PathBuf::from("relative/path"),
    ] {
        let mut spec = cleanup.spec(&image, ["sleep", "3600"]);
        spec.mounts = vec![Mount {
            source: denied.clone(),
            target: "/x".into(),
            read_only: true,
        }];
        let err = runtime.launch(&spec).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
        assert!(
            err.to_string().contains(&denied.display().to_string()),
            "{err}"
        );
    }
    assert_eq!(runtime.list(&cleanup.filter()).await.unwrap().len(), 1);
    cleanup.clean().await;
}

#[tokio::test]
async fn overlay_networks_on_a_swarm_manager() {
    let runtime = testing::connect_default().await;
    assert!(
        testing::ensure_swarm(&runtime).await,
        "the engine becomes a Swarm manager"
    );
    let (runtime, image, cleanup) = setup().await;
    assert!(runtime.capabilities().overlay_networks);
    let network = loop {
        let mut spec = cleanup.network_spec(Some(random_subnet()));
        spec.driver = NetworkDriver::Overlay;
        match runtime.create_network(&spec).await {
            Ok(n) => break n,
            Err(e) if e.kind() == ErrorKind::Conflict => continue,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(network.driver, NetworkDriver::Overlay, "{network:?}");
    let mut spec = cleanup.spec(&image, ["sleep", "3600"]);
    spec.networks = vec![network.name.clone()];
    let launched = runtime.launch(&spec).await.unwrap();
    let ip = launched.ip_on(&network.name).expect("an overlay address");
    assert!(network.subnet.unwrap().contains(&ip), "{ip}");
    let err = runtime.remove_network(&network.id).await.unwrap_err();
    assert!(err.to_string().contains(&launched.name), "{err}");
    runtime.remove(&launched.id).await.unwrap();
    runtime
        .remove_network(&NetworkId::new(&network.name))
        .await
        .unwrap();
    cleanup.clean().await;
}

#[tokio::test]
async fn image_garbage_collection_spares_images_in_use() {
    let (runtime, image, cleanup) = setup().await;
    let marker = format!("gc-{}", cleanup.run());
    let mut tags = Vec::new();
    for which in ["used", "unused"] {
        let tag = ImageRef::parse(&format!("kisara-test/gc-{which}:{}", cleanup.run())).unwrap();
        let mut spec = BuildSpec::new(tag.clone());
        spec.labels.insert("kisara-test-gc".into(), marker.clone());
        let dockerfile = format!("FROM {image}\nRUN echo {which} > /which\n");
        let progress = runtime
            .build_image(
                &spec,
                bytes_stream(tar_of(&[("Dockerfile", dockerfile.as_bytes())])),
            )
            .await
            .unwrap();
        let steps = drain_progress(progress).await.unwrap();
        assert!(steps.iter().any(|s| s.status.contains("Step")), "{steps:?}");
        tags.push(tag);
    }
    let mut spec = cleanup.spec(&tags[0], ["sleep", "3600"]);
    spec.image = tags[0].clone();
    runtime.launch(&spec).await.unwrap();
    let gc = ImageGc {
        older_than: Duration::ZERO,
        labels: LabelFilter::all().with("kisara-test-gc", &marker),
        name_prefixes: vec!["kisara-test/gc-".into()],
    };
    let removed = runtime.collect_garbage_images(&gc).await.unwrap();
    assert_eq!(removed.len(), 1, "{removed:?}");
    let images = runtime.list_images().await.unwrap();
    let has = |tag: &ImageRef| {
        images
            .iter()
            .any(|i| i.tags.iter().any(|t| t == tag.as_str()))
    };
    assert!(has(&tags[0]), "the used image stays");
    assert!(!has(&tags[1]), "the unused image is gone");
    // Too young: nothing removed.
    let young = ImageGc {
        older_than: Duration::from_secs(3600),
        ..gc.clone()
    };
    cleanup.clean().await;
    assert!(
        runtime
            .collect_garbage_images(&young)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(runtime.collect_garbage_images(&gc).await.unwrap().len(), 1);
    // Build errors are Invalid and name the tag.
    let bad = ImageRef::parse(&format!("kisara-test/gc-bad:{}", cleanup.run())).unwrap();
    let result = match runtime
        .build_image(
            &BuildSpec::new(bad.clone()),
            bytes_stream(tar_of(&[(
                "Dockerfile",
                b"FROM scratch\nRUN [\"/nope\"]\n",
            )])),
        )
        .await
    {
        Ok(progress) => drain_progress(progress).await.map(drop),
        Err(e) => Err(e),
    };
    let err = result.unwrap_err();
    assert!(err.to_string().contains(bad.as_str()), "{err}");
}

#[tokio::test]
async fn stats_of_containers_and_the_node() {
    let (runtime, image, cleanup) = setup().await;
    let mut spec = cleanup.spec(&image, ["sh", "-c", "while true; do :; done"]);
    spec.resources.cpu_millis = Some(500);
    spec.resources.memory_bytes = Some(32 * 1024 * 1024);
    let busy = runtime.launch(&spec).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = runtime.container_stats(&busy.id).await.unwrap();
    assert_eq!(stats.memory_limit_bytes, 32 * 1024 * 1024);
    assert!(stats.pids >= 1, "{stats:?}");
    assert!(
        stats.cpu_millis > 0 && stats.cpu_millis < 900,
        "some CPU, at most the half-CPU quota: {stats:?}"
    );
    let node = runtime.node_stats().await.unwrap();
    assert!(node.containers >= 1);
    assert!(node.cpu > 0.0 && node.cpu <= 1.0, "{node:?}");
    assert!(node.memory >= 0.0 && node.memory <= 1.0, "{node:?}");
    cleanup.clean().await;
}

#[tokio::test]
async fn bad_input_is_refused_with_the_right_kind() {
    let (runtime, image, cleanup) = setup().await;
    let err = ImageRef::parse("Not A/Valid:ref!").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid);
    let mut spec = cleanup.spec(&image, ["true"]);
    spec.image = ImageRef::parse("kisara-test/never-built:v9").unwrap();
    let err = runtime.launch(&spec).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(
        err.to_string().contains("kisara-test/never-built:v9"),
        "{err}"
    );
    let mut spec = cleanup.spec(&image, ["true"]);
    spec.labels
        .insert("io.kisara.owner".into(), "forged".into());
    assert_eq!(
        runtime.launch(&spec).await.unwrap_err().kind(),
        ErrorKind::Invalid
    );
    let err = runtime
        .inspect_network(&NetworkId::new("kisara-no-such-network"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(runtime.list(&cleanup.filter()).await.unwrap().is_empty());
    cleanup.clean().await;
}

#[tokio::test]
async fn no_engine_is_unavailable_saying_how_to_start_one() {
    for host in [
        "unix:///tmp/kisara-no-engine-here.sock",
        "tcp://127.0.0.1:9",
    ] {
        let err = DockerRuntime::builder()
            .with_host(host)
            .with_request_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        assert!(err.is_retryable());
        let text = err.to_string();
        assert!(
            text.contains(host) && text.contains("dockerd") && text.contains("DOCKER_HOST"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn the_runtime_works_as_a_trait_object() {
    let (runtime, image, cleanup) = setup().await;
    let dynamic: Arc<dyn ContainerRuntime> = Arc::new(runtime.clone());
    assert_eq!(dynamic.name(), "docker");
    let launched = dynamic
        .launch(&cleanup.spec(&image, ["sleep", "3600"]))
        .await
        .unwrap();
    let by_name = dynamic
        .inspect(&ContainerId::new(&launched.name))
        .await
        .unwrap();
    assert_eq!(by_name.id, launched.id);
    cleanup.clean().await;
    assert!(dynamic.list(&cleanup.filter()).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_dropped_launch_leaves_nothing_behind() {
    let (runtime, image, cleanup) = setup().await;
    let mut abandoned = 0;
    for millis in [1, 10, 30, 60, 100, 150, 250, 400] {
        let spec = cleanup.spec(&image, ["sleep", "3600"]);
        match tokio::time::timeout(Duration::from_millis(millis), runtime.launch(&spec)).await {
            // A launch that beat its deadline belongs to the caller, who
            // removes it; only the dropped ones must clean up after
            // themselves.
            Ok(launched) => runtime.remove(&launched.unwrap().id).await.unwrap(),
            Err(_) => abandoned += 1,
        }
    }
    assert!(
        abandoned > 0,
        "every launch beat its deadline: nothing was dropped"
    );
    // Launches still in flight finish and then remove themselves.
    let gone = async {
        loop {
            let left = runtime.list(&cleanup.filter()).await.unwrap();
            if left.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(WAIT, gone)
        .await
        .expect("abandoned launches are removed");
    cleanup.clean().await;
}

#[tokio::test]
async fn dropping_an_exec_in_an_image_without_a_shell_ends_it() {
    let (runtime, _image, cleanup) = setup().await;
    // Only /busybox: no /bin/sh, tr, grep or kill in the image.
    let busybox = std::fs::read(kisara_docker::static_image::static_busybox().unwrap()).unwrap();
    let tag = ImageRef::parse(&format!("kisara-test/no-shell:{}", cleanup.run())).unwrap();
    let dockerfile = b"FROM scratch\nCOPY busybox /busybox\n";
    let mut builder = tar::Builder::new(Vec::new());
    for (name, content, mode) in [
        ("Dockerfile", &dockerfile[..], 0o644),
        ("busybox", &busybox[..], 0o755),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(mode);
        header.set_cksum();
        builder.append_data(&mut header, name, content).unwrap();
    }
    let progress = runtime
        .build_image(
            &BuildSpec::new(tag.clone()),
            bytes_stream(builder.into_inner().unwrap()),
        )
        .await
        .unwrap();
    drain_progress(progress).await.unwrap();
    let mut spec = cleanup.spec(&tag, ["/busybox", "sleep", "3600"]);
    spec.image = tag.clone();
    let launched = runtime.launch(&spec).await.unwrap();
    // Dropped at once, while the engine may not yet report them running
    // (or their processes may not yet carry the marker): each must still
    // end.
    let mut ids = Vec::new();
    for _ in 0..4 {
        let session = runtime
            .exec(&launched.id, &ExecSpec::new(["/busybox", "sleep", "300"]))
            .await
            .unwrap();
        ids.push(session.id.clone());
    }
    tokio::time::timeout(WAIT, async {
        for id in &ids {
            while runtime.exec_status(id).await.unwrap().running {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    })
    .await
    .expect("the execs end without a shell in the image");
    cleanup.clean().await;
    runtime.remove_image(tag.as_str()).await.unwrap();
}

#[tokio::test]
async fn stop_honours_the_grace_period() {
    let (runtime, image, cleanup) = setup().await;
    // PID 1 without a TERM handler ignores SIGTERM: killed after the grace.
    let stubborn = runtime
        .launch(&cleanup.spec(&image, ["sleep", "3600"]))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    runtime
        .stop(&stubborn.id, Duration::from_secs(2))
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1900),
        "killed before the grace ended: {took:?}"
    );
    assert_eq!(
        runtime.inspect(&stubborn.id).await.unwrap().exit_code,
        Some(137)
    );
    // One that handles SIGTERM exits at once with its own code.
    let polite = runtime
        .launch(&cleanup.spec(
            &image,
            [
                "sh",
                "-c",
                "trap 'exit 3' TERM; while :; do sleep 0.1; done",
            ],
        ))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    runtime
        .stop(&polite.id, Duration::from_secs(20))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        runtime.inspect(&polite.id).await.unwrap().exit_code,
        Some(3)
    );
    let err = runtime
        .stop(
            &ContainerId::new("kisara-no-such-container"),
            Duration::ZERO,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    cleanup.clean().await;
}

#[tokio::test]
async fn terminal_output_starting_with_frame_like_bytes_arrives_intact() {
    let (runtime, image, cleanup) = setup().await;
    let launched = runtime
        .launch(&cleanup.spec(&image, ["sleep", "3600"]))
        .await
        .unwrap();
    // Bytes 1 and 2 open frame headers in the engine's multiplexed format; a
    // terminal's raw output must not be parsed as such.
    let mut spec = ExecSpec::new([
        "sh",
        "-c",
        "stty raw -echo; printf '\\001\\002\\001\\002abcdefgh'; sleep 0.3; printf '\\002\\000\\000\\000tail'",
    ]);
    spec.tty = true;
    let session = runtime.exec(&launched.id, &spec).await.unwrap();
    let result = tokio::time::timeout(WAIT, session.collect(&runtime, Duration::from_secs(5)))
        .await
        .expect("the output ends")
        .unwrap();
    assert_eq!(
        result.stdout, b"\x01\x02\x01\x02abcdefgh\x02\x00\x00\x00tail",
        "{:?}",
        result.stdout
    );
    assert_eq!(result.exit_code, 0);
    cleanup.clean().await;
}

#[tokio::test]
async fn a_launch_that_fails_to_start_leaves_nothing_behind() {
    let (runtime, image, cleanup) = setup().await;
    let spec = cleanup.spec(&image, ["/no/such/binary"]);
    let err = runtime.launch(&spec).await.unwrap_err();
    assert!(err.to_string().contains("/no/such/binary"), "{err}");
    assert!(!err.is_retryable(), "{err}");
    assert!(
        runtime.list(&cleanup.filter()).await.unwrap().is_empty(),
        "nothing left behind"
    );
    // The name is free again.
    let mut spec = spec;
    spec.command = Some(vec!["sleep".into(), "3600".into()]);
    runtime.launch(&spec).await.unwrap();
    cleanup.clean().await;
}
