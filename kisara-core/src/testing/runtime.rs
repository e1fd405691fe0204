//! Conformance cases for [`ContainerRuntime`].
//!
//! The fixture names a busybox-like image present on the runtime, with
//! `/bin/sh`, `echo`, `cat`, `stty`, `sleep`, `true`, `false`, `read` and a
//! `/tmp` directory. Every object a case creates carries the label
//! [`RUN_LABEL`] with the fixture's run id, and is removed after the case.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ipnet::IpNet;
use tokio::io::AsyncWriteExt;

use super::{Fixture, Outcome, random_bytes, random_u64, suite, unique_name};
use crate::model::{
    BuildSpec, ContainerEvent, ContainerEventKind, ContainerId, ContainerSpec, ContainerState,
    ExecOutput, ExecSpec, ImageRef, LabelFilter, Mount, NetworkId, NetworkInfo, NetworkSpec,
    TtySize, labels,
};
use crate::{
    BoxStream, ContainerRuntime, ErrorKind, EventStream, bytes_stream, collect_bytes,
    drain_progress, exec_to_end,
};

/// The label that marks the objects of one fixture, for cleanup.
pub const RUN_LABEL: &str = "kisara-conformance";

/// How long a case waits for something asynchronous (an event, output).
const WAIT: Duration = Duration::from_secs(30);

/// What the runtime cases run against.
#[derive(Debug, Clone)]
pub struct RuntimeFixture {
    /// The runtime under test.
    pub runtime: Arc<dyn ContainerRuntime>,
    /// A busybox-like image present on it.
    pub image: ImageRef,
    /// This fixture's run id, the value of [`RUN_LABEL`].
    pub run: String,
}

impl RuntimeFixture {
    /// A fixture with a fresh run id.
    pub fn new(runtime: Arc<dyn ContainerRuntime>, image: ImageRef) -> Self {
        Self {
            runtime,
            image,
            run: unique_name("run"),
        }
    }

    fn filter(&self) -> LabelFilter {
        LabelFilter::all().with(RUN_LABEL, &self.run)
    }

    /// A container that sleeps for an hour, named uniquely, labelled with
    /// the run.
    pub fn spec(&self) -> ContainerSpec {
        self.spec_running(["sleep", "3600"])
    }

    /// A container running `command`, named uniquely, labelled with the run.
    pub fn spec_running<S: Into<String>>(
        &self,
        command: impl IntoIterator<Item = S>,
    ) -> ContainerSpec {
        let mut spec = ContainerSpec::new(self.image.clone());
        spec.name = Some(unique_name("kc"));
        spec.command = Some(command.into_iter().map(Into::into).collect());
        spec.labels.insert(RUN_LABEL.to_owned(), self.run.clone());
        spec
    }

    /// Creates a network named uniquely with a random private subnet from
    /// `10.[200-254].[0-255].0/24`, trying other subnets when one is taken.
    pub async fn network(&self) -> NetworkInfo {
        let mut last_error = None;
        for _ in 0..8 {
            let random = random_u64();
            let subnet: IpNet = format!("10.{}.{}.0/24", 200 + random % 55, (random >> 8) % 256)
                .parse()
                .expect("valid subnet");
            let mut spec = NetworkSpec::new(unique_name("kn"), Some(subnet));
            spec.labels.insert(RUN_LABEL.to_owned(), self.run.clone());
            match self.runtime.create_network(&spec).await {
                Ok(info) => return info,
                Err(error) if error.kind() == ErrorKind::Conflict => last_error = Some(error),
                Err(error) => panic!("creating network {}: {error}", spec.name),
            }
        }
        panic!("no free test subnet after 8 tries: {last_error:?}");
    }

    /// Events of this run's containers from now on.
    pub async fn events(&self) -> EventStream {
        self.runtime
            .events(&self.filter())
            .await
            .expect("subscribe to events")
    }
}

impl Fixture for RuntimeFixture {
    async fn cleanup(&self) {
        let runtime = &self.runtime;
        if let Ok(containers) = runtime.list(&self.filter()).await {
            for container in containers {
                if let Err(error) = runtime.remove(&container.id).await {
                    tracing::warn!(%error, container = %container.name, "cleanup failed");
                }
            }
        }
        if let Ok(networks) = runtime.list_networks(&self.filter()).await {
            for network in networks {
                if let Err(error) = runtime.remove_network(&network.id).await {
                    tracing::warn!(%error, network = %network.name, "cleanup failed");
                }
            }
        }
        if let Ok(images) = runtime.list_images().await {
            for image in images
                .iter()
                .filter(|i| i.labels.get(RUN_LABEL) == Some(&self.run))
            {
                if let Err(error) = runtime.remove_image(&image.id).await {
                    tracing::warn!(%error, image = %image.id, "cleanup failed");
                }
            }
        }
    }
}

suite!(all, "ContainerRuntime", CASES: RuntimeFixture:
    launch_and_inspect,
    launch_of_a_missing_image_is_not_found,
    duplicate_container_names_already_exist,
    launch_into_a_missing_network_leaves_nothing,
    inspect_of_a_missing_container_is_not_found,
    remove_is_idempotent,
    list_filters_by_labels,
    stop_leaves_an_exit_code,
    main_process_exit_code_arrives_as_die_event,
    events_arrive_in_order_with_labels,
    mounts_outside_the_allow_list_are_denied,
    network_lifecycle,
    overlapping_subnets_conflict_naming_the_network,
    containers_get_an_address_in_the_subnet,
    removing_a_network_in_use_names_the_containers,
    exec_exit_codes,
    exec_keeps_stdout_and_stderr_apart,
    exec_stdin_round_trips,
    exec_tty_sees_resizes,
    exec_bad_requests,
    dropping_an_exec_session_ends_it,
    files_round_trip,
    image_build_list_remove,
    pull_of_a_missing_image_fails_naming_it,
    stats_reflect_limits,
    concurrent_launches_are_distinct,
);

async fn next_matching(
    events: &mut EventStream,
    container: &ContainerId,
    wanted: impl Fn(&ContainerEventKind) -> bool,
) -> ContainerEvent {
    let wait = async {
        while let Some(event) = events.next().await {
            let event = event.expect("event stream error");
            if &event.container == container && wanted(&event.kind) {
                return event;
            }
        }
        panic!("event stream ended while waiting for an event of {container}");
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .unwrap_or_else(|_| panic!("no matching event of {container} within {WAIT:?}"))
}

/// Reads exec output until it contains `needle`, returning all read.
async fn read_until(output: &mut BoxStream<ExecOutput>, seen: &mut Vec<u8>, needle: &str) {
    let wait = async {
        while !String::from_utf8_lossy(seen).contains(needle) {
            match output.next().await {
                Some(Ok(ExecOutput::Stdout(bytes) | ExecOutput::Stderr(bytes))) => {
                    seen.extend_from_slice(&bytes);
                }
                Some(Err(error)) => panic!("exec output error: {error}"),
                None => panic!(
                    "output ended before {needle:?}; got {:?}",
                    String::from_utf8_lossy(seen)
                ),
            }
        }
    };
    if tokio::time::timeout(WAIT, wait).await.is_err() {
        panic!(
            "no {needle:?} within {WAIT:?}; got {:?}",
            String::from_utf8_lossy(seen)
        );
    }
}

/// A launched container is running, carries its labels and is found by id
/// and by name.
pub async fn launch_and_inspect(fx: RuntimeFixture) -> Outcome {
    let mut spec = fx.spec();
    spec.owner = Some("team-7".into());
    spec.module = Some("web-1".into());
    spec.env.insert("GREETING".into(), "hello".into());
    spec.ports = vec!["80/tcp".parse().unwrap(), "53/udp".parse().unwrap()];
    let launched = fx.runtime.launch(&spec).await.unwrap();
    assert_eq!(launched.state, ContainerState::Running);
    assert_eq!(Some(&launched.name), spec.name.as_ref());
    assert_eq!(launched.image, fx.image.to_string());
    for (key, value) in spec.kisara_labels() {
        assert_eq!(launched.labels.get(&key), Some(&value), "label {key}");
    }
    assert_eq!(launched.owner(), Some("team-7"));
    assert_eq!(launched.module(), Some("web-1"));
    let mut ports = launched.ports.clone();
    ports.sort();
    let mut wanted = spec.ports.clone();
    wanted.sort();
    assert_eq!(ports, wanted);
    let by_id = fx.runtime.inspect(&launched.id).await.unwrap();
    let by_name = fx
        .runtime
        .inspect(&ContainerId::new(&launched.name))
        .await
        .unwrap();
    assert_eq!(by_id.id, launched.id);
    assert_eq!(by_name.id, launched.id);
    assert_eq!(by_id.state, ContainerState::Running);
    Outcome::Passed
}

/// Launching an image the runtime does not have is `NotFound` naming it.
pub async fn launch_of_a_missing_image_is_not_found(fx: RuntimeFixture) -> Outcome {
    let mut spec = fx.spec();
    spec.image = ImageRef::parse(&format!(
        "kisara-conformance/missing-{}:v1",
        random_u64() % 100_000
    ))
    .unwrap();
    let err = fx.runtime.launch(&spec).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(
        err.to_string().contains(spec.image.name()),
        "names the image: {err}"
    );
    assert!(
        fx.runtime.list(&fx.filter()).await.unwrap().is_empty(),
        "nothing left behind"
    );
    Outcome::Passed
}

/// A second container with a taken name is refused; the first is untouched.
pub async fn duplicate_container_names_already_exist(fx: RuntimeFixture) -> Outcome {
    let spec = fx.spec();
    let first = fx.runtime.launch(&spec).await.unwrap();
    let err = fx.runtime.launch(&spec).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    assert!(
        err.to_string().contains(spec.name.as_deref().unwrap()),
        "names it: {err}"
    );
    let still = fx.runtime.inspect(&first.id).await.unwrap();
    assert_eq!(still.state, ContainerState::Running);
    assert_eq!(fx.runtime.list(&fx.filter()).await.unwrap().len(), 1);
    Outcome::Passed
}

/// A launch into a network that does not exist fails and leaves nothing.
pub async fn launch_into_a_missing_network_leaves_nothing(fx: RuntimeFixture) -> Outcome {
    let mut spec = fx.spec();
    let missing = unique_name("no-such-network");
    spec.networks = vec![missing.clone()];
    let err = fx.runtime.launch(&spec).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(
        err.to_string().contains(&missing),
        "names the network: {err}"
    );
    assert!(
        fx.runtime.list(&fx.filter()).await.unwrap().is_empty(),
        "nothing left behind"
    );
    // The name is free again.
    spec.networks.clear();
    fx.runtime.launch(&spec).await.unwrap();
    Outcome::Passed
}

/// Inspecting an unknown container is `NotFound` naming it.
pub async fn inspect_of_a_missing_container_is_not_found(fx: RuntimeFixture) -> Outcome {
    let missing = ContainerId::new(unique_name("no-such-container"));
    let err = fx.runtime.inspect(&missing).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(
        err.to_string().contains(missing.as_str()),
        "names it: {err}"
    );
    Outcome::Passed
}

/// Removing works on running containers and again on removed ones.
pub async fn remove_is_idempotent(fx: RuntimeFixture) -> Outcome {
    let launched = fx.runtime.launch(&fx.spec()).await.unwrap();
    fx.runtime.remove(&launched.id).await.unwrap();
    let err = fx.runtime.inspect(&launched.id).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    fx.runtime.remove(&launched.id).await.unwrap();
    fx.runtime
        .remove(&ContainerId::new(unique_name("never-existed")))
        .await
        .unwrap();
    Outcome::Passed
}

/// Listing returns exactly the containers whose labels match.
pub async fn list_filters_by_labels(fx: RuntimeFixture) -> Outcome {
    let mut ids = std::collections::BTreeMap::new();
    for owner in ["alice", "alice", "bob"] {
        let mut spec = fx.spec();
        spec.owner = Some(owner.into());
        if owner == "bob" {
            spec.module = Some("crypto-2".into());
        }
        let launched = fx.runtime.launch(&spec).await.unwrap();
        ids.entry(owner).or_insert_with(Vec::new).push(launched.id);
    }
    let count = |filter: LabelFilter| {
        let runtime = fx.runtime.clone();
        async move { runtime.list(&filter).await.unwrap().len() }
    };
    assert_eq!(count(fx.filter()).await, 3);
    assert_eq!(count(fx.filter().with(labels::OWNER, "alice")).await, 2);
    assert_eq!(count(fx.filter().with(labels::OWNER, "bob")).await, 1);
    assert_eq!(count(fx.filter().with(labels::OWNER, "carol")).await, 0);
    assert_eq!(count(fx.filter().with_key(labels::MODULE)).await, 1);
    assert_eq!(count(fx.filter().with(labels::MANAGED, "true")).await, 3);
    let bobs = fx
        .runtime
        .list(&fx.filter().with(labels::OWNER, "bob"))
        .await
        .unwrap();
    assert_eq!(bobs[0].id, ids["bob"][0]);
    Outcome::Passed
}

/// A stopped container shows as exited with an exit code; stopping it again
/// is fine.
pub async fn stop_leaves_an_exit_code(fx: RuntimeFixture) -> Outcome {
    let launched = fx.runtime.launch(&fx.spec()).await.unwrap();
    fx.runtime
        .stop(&launched.id, Duration::from_secs(1))
        .await
        .unwrap();
    let stopped = fx.runtime.inspect(&launched.id).await.unwrap();
    assert_eq!(stopped.state, ContainerState::Exited);
    assert!(
        stopped.exit_code.is_some(),
        "an exited container has an exit code"
    );
    fx.runtime
        .stop(&launched.id, Duration::from_secs(1))
        .await
        .unwrap();
    Outcome::Passed
}

/// The main process's exit code arrives as a `Die` event and in inspect.
pub async fn main_process_exit_code_arrives_as_die_event(fx: RuntimeFixture) -> Outcome {
    let mut events = fx.events().await;
    let launched = fx
        .runtime
        .launch(&fx.spec_running(["sh", "-c", "exit 7"]))
        .await
        .unwrap();
    let die = next_matching(&mut events, &launched.id, |k| {
        matches!(k, ContainerEventKind::Die { .. })
    })
    .await;
    assert_eq!(die.kind, ContainerEventKind::Die { exit_code: 7 });
    let exited = fx.runtime.inspect(&launched.id).await.unwrap();
    assert_eq!(exited.state, ContainerState::Exited);
    assert_eq!(exited.exit_code, Some(7));
    Outcome::Passed
}

/// Start, die and destroy arrive in that order, with the container's labels,
/// and only for containers the filter selects.
pub async fn events_arrive_in_order_with_labels(fx: RuntimeFixture) -> Outcome {
    let filter = fx.filter().with(labels::OWNER, "team-events");
    let mut events = fx.runtime.events(&filter).await.unwrap();
    // A container the filter does not select must not show up.
    let mut outsider = fx.spec_running(["true"]);
    outsider.owner = Some("team-outsider".into());
    let outsider = fx.runtime.launch(&outsider).await.unwrap();
    let mut spec = fx.spec_running(["sh", "-c", "exit 0"]);
    spec.owner = Some("team-events".into());
    let launched = fx.runtime.launch(&spec).await.unwrap();
    let mut seen = Vec::new();
    let mut removed = false;
    let collect = async {
        while let Some(event) = events.next().await {
            let event = event.expect("event stream error");
            assert_ne!(
                event.container, outsider.id,
                "the filter let another run's event through"
            );
            if event.container != launched.id {
                continue;
            }
            assert_eq!(
                event.labels.get(labels::OWNER).map(String::as_str),
                Some("team-events")
            );
            seen.push(event.kind);
            match event.kind {
                ContainerEventKind::Die { .. } if !removed => {
                    fx.runtime.remove(&launched.id).await.unwrap();
                    fx.runtime.remove(&outsider.id).await.unwrap();
                    removed = true;
                }
                ContainerEventKind::Destroy => break,
                _ => {}
            }
        }
    };
    tokio::time::timeout(WAIT, collect)
        .await
        .expect("destroy event within the wait");
    // The stream began before launch: start, then die, then destroy.
    let position = |wanted: fn(&ContainerEventKind) -> bool| {
        seen.iter()
            .position(wanted)
            .unwrap_or_else(|| panic!("missing an event in {seen:?}"))
    };
    let start = position(|k| *k == ContainerEventKind::Start);
    let die = position(|k| matches!(k, ContainerEventKind::Die { .. }));
    assert!(start < die, "start before die: {seen:?}");
    assert_eq!(seen.last(), Some(&ContainerEventKind::Destroy), "{seen:?}");
    Outcome::Passed
}

/// Host mounts outside the allow-list are refused naming the path.
pub async fn mounts_outside_the_allow_list_are_denied(fx: RuntimeFixture) -> Outcome {
    let mut spec = fx.spec();
    spec.mounts = vec![Mount {
        source: "/etc".into(),
        target: "/host-etc".into(),
        read_only: true,
    }];
    let err = fx.runtime.launch(&spec).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(err.to_string().contains("/etc"), "names the path: {err}");
    assert!(
        fx.runtime.list(&fx.filter()).await.unwrap().is_empty(),
        "nothing left behind"
    );
    Outcome::Passed
}

/// Networks are created with their labels, found by id and name, listed by
/// labels, refused when the name is taken, and removed idempotently.
pub async fn network_lifecycle(fx: RuntimeFixture) -> Outcome {
    let network = fx.network().await;
    let subnet = network.subnet.expect("created with a subnet");
    assert_eq!(
        network.labels.get(labels::MANAGED).map(String::as_str),
        Some("true")
    );
    assert_eq!(network.labels.get(labels::NETWORK), Some(&network.name));
    assert_eq!(
        network.labels.get(labels::SUBNET),
        Some(&subnet.to_string())
    );
    let by_name = fx
        .runtime
        .inspect_network(&NetworkId::new(&network.name))
        .await
        .unwrap();
    let by_id = fx.runtime.inspect_network(&network.id).await.unwrap();
    assert_eq!(by_name.id, network.id);
    assert_eq!(by_id.subnet, Some(subnet));
    let listed = fx.runtime.list_networks(&fx.filter()).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, network.id);
    let mut again = NetworkSpec::new(network.name.clone(), None);
    again.labels.insert(RUN_LABEL.into(), fx.run.clone());
    let err = fx.runtime.create_network(&again).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    assert!(err.to_string().contains(&network.name), "names it: {err}");
    fx.runtime.remove_network(&network.id).await.unwrap();
    let err = fx.runtime.inspect_network(&network.id).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    fx.runtime.remove_network(&network.id).await.unwrap();
    Outcome::Passed
}

/// A second network with an overlapping subnet is a conflict naming the
/// first.
pub async fn overlapping_subnets_conflict_naming_the_network(fx: RuntimeFixture) -> Outcome {
    let first = fx.network().await;
    let mut spec = NetworkSpec::new(unique_name("kn"), first.subnet);
    spec.labels.insert(RUN_LABEL.into(), fx.run.clone());
    let err = fx.runtime.create_network(&spec).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(
        err.to_string().contains(&first.name),
        "names {}: {err}",
        first.name
    );
    assert_eq!(
        fx.runtime.list_networks(&fx.filter()).await.unwrap().len(),
        1
    );
    Outcome::Passed
}

/// A container joined to a network has an address inside its subnet, and
/// the network lists it.
pub async fn containers_get_an_address_in_the_subnet(fx: RuntimeFixture) -> Outcome {
    let network = fx.network().await;
    let subnet = network.subnet.unwrap();
    let mut spec = fx.spec();
    spec.networks = vec![network.name.clone()];
    let launched = fx.runtime.launch(&spec).await.unwrap();
    let ip = launched
        .ip_on(&network.name)
        .expect("an address on the network");
    assert!(subnet.contains(&ip), "{ip} is outside {subnet}");
    let inspected = fx.runtime.inspect(&launched.id).await.unwrap();
    assert_eq!(inspected.ip_on(&network.name), Some(ip));
    let network = fx.runtime.inspect_network(&network.id).await.unwrap();
    assert!(
        network.containers.iter().any(|c| c == &launched.id),
        "the network lists the container: {:?}",
        network.containers
    );
    Outcome::Passed
}

/// Removing a network with containers attached is a conflict naming them.
pub async fn removing_a_network_in_use_names_the_containers(fx: RuntimeFixture) -> Outcome {
    let network = fx.network().await;
    let mut spec = fx.spec();
    spec.networks = vec![network.name.clone()];
    let launched = fx.runtime.launch(&spec).await.unwrap();
    let err = fx.runtime.remove_network(&network.id).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(
        err.to_string().contains(&launched.name),
        "names {}: {err}",
        launched.name
    );
    fx.runtime.remove(&launched.id).await.unwrap();
    fx.runtime.remove_network(&network.id).await.unwrap();
    Outcome::Passed
}

/// Exit codes of exec'd commands come back as they are.
pub async fn exec_exit_codes(fx: RuntimeFixture) -> Outcome {
    let launched = fx.runtime.launch(&fx.spec()).await.unwrap();
    for (command, code) in [
        (vec!["true"], 0),
        (vec!["false"], 1),
        (vec!["sh", "-c", "exit 3"], 3),
        (vec!["sh", "-c", "exit 255"], 255),
    ] {
        let result = exec_to_end(&*fx.runtime, &launched.id, command.clone())
            .await
            .unwrap();
        assert_eq!(result.exit_code, code, "{command:?}");
    }
    Outcome::Passed
}

/// Without a terminal, stdout and stderr stay apart.
pub async fn exec_keeps_stdout_and_stderr_apart(fx: RuntimeFixture) -> Outcome {
    let launched = fx.runtime.launch(&fx.spec()).await.unwrap();
    let result = exec_to_end(
        &*fx.runtime,
        &launched.id,
        ["sh", "-c", "echo out; echo err >&2"],
    )
    .await
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&result.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&result.stderr), "err\n");
    assert_eq!(result.exit_code, 0);
    Outcome::Passed
}

/// Bytes written to stdin come back from `cat` unchanged; shutting stdin
/// down ends it.
pub async fn exec_stdin_round_trips(fx: RuntimeFixture) -> Outcome {
    let launched = fx.runtime.launch(&fx.spec()).await.unwrap();
    let mut session = fx
        .runtime
        .exec(&launched.id, &ExecSpec::new(["cat"]).with_stdin())
        .await
        .unwrap();
    // Text lines, so no terminal layer could reinterpret them.
    let payload: Vec<u8> = random_bytes(48 * 1024)
        .into_iter()
        .enumerate()
        .map(|(i, b)| if i % 64 == 63 { b'\n' } else { b'a' + b % 26 })
        .collect();
    let mut stdin = session.stdin.take().expect("stdin was asked for");
    let to_send = payload.clone();
    let writer = tokio::spawn(async move {
        stdin.write_all(&to_send).await.unwrap();
        stdin.shutdown().await.unwrap();
    });
    let result = tokio::time::timeout(WAIT, session.collect(&*fx.runtime, Duration::from_secs(10)))
        .await
        .expect("cat ends after stdin closes")
        .unwrap();
    writer.await.unwrap();
    assert_eq!(result.stdout.len(), payload.len());
    assert!(result.stdout == payload, "cat echoed different bytes");
    assert_eq!(result.exit_code, 0);
    Outcome::Passed
}

/// A process with a terminal sees its initial size and every resize.
pub async fn exec_tty_sees_resizes(fx: RuntimeFixture) -> Outcome {
    let launched = fx.runtime.launch(&fx.spec()).await.unwrap();
    let spec = ExecSpec::new(["sh"])
        .with_tty(TtySize { rows: 24, cols: 80 })
        .with_stdin();
    let mut session = fx.runtime.exec(&launched.id, &spec).await.unwrap();
    let mut stdin = session.stdin.take().unwrap();
    let mut seen = Vec::new();
    stdin.write_all(b"stty size\n").await.unwrap();
    read_until(&mut session.output, &mut seen, "24 80").await;
    fx.runtime
        .resize_exec(
            &session.id,
            TtySize {
                rows: 40,
                cols: 120,
            },
        )
        .await
        .unwrap();
    stdin.write_all(b"stty size\n").await.unwrap();
    read_until(&mut session.output, &mut seen, "40 120").await;
    stdin.write_all(b"exit 4\n").await.unwrap();
    session.stdin = Some(stdin);
    let result = session
        .collect(&*fx.runtime, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(result.exit_code, 4);
    Outcome::Passed
}

/// Empty commands, unknown containers and stopped containers are refused.
pub async fn exec_bad_requests(fx: RuntimeFixture) -> Outcome {
    let launched = fx.runtime.launch(&fx.spec()).await.unwrap();
    let empty = ExecSpec::new(Vec::<String>::new());
    let err = fx.runtime.exec(&launched.id, &empty).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    let missing = ContainerId::new(unique_name("no-such-container"));
    let err = fx
        .runtime
        .exec(&missing, &ExecSpec::new(["true"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    fx.runtime
        .stop(&launched.id, Duration::from_secs(1))
        .await
        .unwrap();
    let err = fx
        .runtime
        .exec(&launched.id, &ExecSpec::new(["true"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    Outcome::Passed
}

/// Dropping a session ends its process.
pub async fn dropping_an_exec_session_ends_it(fx: RuntimeFixture) -> Outcome {
    let launched = fx.runtime.launch(&fx.spec()).await.unwrap();
    let session = fx
        .runtime
        .exec(&launched.id, &ExecSpec::new(["sleep", "300"]))
        .await
        .unwrap();
    let id = session.id.clone();
    // An engine under load may report a just-started exec as not yet
    // running: wait until it runs, so the drop is what ends it.
    let started = async {
        while !fx.runtime.exec_status(&id).await.unwrap().running {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(WAIT, started)
        .await
        .expect("the exec runs before its session is dropped");
    drop(session);
    let ended = async {
        while fx.runtime.exec_status(&id).await.unwrap().running {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(WAIT, ended)
        .await
        .expect("the exec ends once its session is dropped");
    Outcome::Passed
}

/// A tar archive holding `files` (name, content), mode 0644.
pub fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, *content).unwrap();
    }
    builder.into_inner().unwrap()
}

/// The regular files under `path` in `container`, copied out, by name.
pub async fn copied_out(
    runtime: &dyn ContainerRuntime,
    container: &ContainerId,
    path: &str,
) -> std::collections::BTreeMap<String, Vec<u8>> {
    let archive = collect_bytes(runtime.copy_from(container, path).await.unwrap())
        .await
        .unwrap();
    files_of(&archive)
}

/// The regular files of a tar archive, by name.
pub fn files_of(archive: &[u8]) -> std::collections::BTreeMap<String, Vec<u8>> {
    use std::io::Read;
    let mut files = std::collections::BTreeMap::new();
    for entry in tar::Archive::new(archive).entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.header().entry_type().is_file() {
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let mut content = Vec::new();
            entry.read_to_end(&mut content).unwrap();
            files.insert(name, content);
        }
    }
    files
}

/// Files copied in are visible to processes and copy back out byte for byte.
pub async fn files_round_trip(fx: RuntimeFixture) -> Outcome {
    let launched = fx.runtime.launch(&fx.spec()).await.unwrap();
    let content = random_bytes(100 * 1024);
    let archive = tar_of(&[("hello.txt", b"hello kisara\n"), ("blob.bin", &content)]);
    fx.runtime
        .copy_to(&launched.id, "/tmp", bytes_stream(archive))
        .await
        .unwrap();
    let cat = exec_to_end(&*fx.runtime, &launched.id, ["cat", "/tmp/hello.txt"])
        .await
        .unwrap();
    assert_eq!(cat.stdout, b"hello kisara\n");
    let files = copied_out(&*fx.runtime, &launched.id, "/tmp/blob.bin").await;
    assert!(
        files.get("blob.bin") == Some(&content),
        "blob.bin came back different: {:?}",
        files.keys()
    );
    let err = fx
        .runtime
        .copy_from(&launched.id, "/tmp/no-such-file")
        .await
        .err()
        .expect("copying a missing path fails");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let err = fx
        .runtime
        .copy_to(
            &launched.id,
            "/no-such-dir",
            bytes_stream(tar_of(&[("x", b"x")])),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    Outcome::Passed
}

/// An image built from a context is listed, runs its `CMD`, cannot be
/// removed while a container uses it, and is removed idempotently.
pub async fn image_build_list_remove(fx: RuntimeFixture) -> Outcome {
    if !fx.runtime.capabilities().image_build {
        return Outcome::NotApplicable("no image_build capability");
    }
    let tag = ImageRef::parse(&format!(
        "kisara-conformance/built-{}:v1",
        random_u64() % 1_000_000
    ))
    .unwrap();
    let dockerfile = format!(
        "FROM {}\nLABEL {RUN_LABEL}={}\nCMD [\"sh\", \"-c\", \"exit 5\"]\n",
        fx.image, fx.run
    );
    let mut spec = BuildSpec::new(tag.clone());
    spec.labels.insert(RUN_LABEL.into(), fx.run.clone());
    let progress = fx
        .runtime
        .build_image(
            &spec,
            bytes_stream(tar_of(&[("Dockerfile", dockerfile.as_bytes())])),
        )
        .await
        .unwrap();
    let steps = drain_progress(progress).await.unwrap();
    assert!(!steps.is_empty(), "a build reports progress");
    let images = fx.runtime.list_images().await.unwrap();
    let built = images
        .iter()
        .find(|i| i.tags.iter().any(|t| t == tag.as_str()))
        .unwrap_or_else(|| panic!("{tag} is listed"));
    assert_eq!(built.labels.get(RUN_LABEL), Some(&fx.run));
    let mut events = fx.events().await;
    let mut container = fx.spec();
    container.image = tag.clone();
    container.command = None;
    let launched = fx.runtime.launch(&container).await.unwrap();
    let die = next_matching(&mut events, &launched.id, |k| {
        matches!(k, ContainerEventKind::Die { .. })
    })
    .await;
    assert_eq!(
        die.kind,
        ContainerEventKind::Die { exit_code: 5 },
        "the image's CMD ran"
    );
    let err = fx.runtime.remove_image(tag.as_str()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    fx.runtime.remove(&launched.id).await.unwrap();
    fx.runtime.remove_image(tag.as_str()).await.unwrap();
    let images = fx.runtime.list_images().await.unwrap();
    assert!(
        !images
            .iter()
            .any(|i| i.tags.iter().any(|t| t == tag.as_str())),
        "{tag} is gone"
    );
    fx.runtime.remove_image(tag.as_str()).await.unwrap();
    Outcome::Passed
}

/// Pulling what no registry has fails, naming the image.
pub async fn pull_of_a_missing_image_fails_naming_it(fx: RuntimeFixture) -> Outcome {
    if !fx.runtime.capabilities().image_pull {
        return Outcome::NotApplicable("no image_pull capability");
    }
    // Port 9 (discard) on loopback: no registry answers there.
    let image = ImageRef::parse("127.0.0.1:9/kisara-conformance/missing:v1").unwrap();
    let result = match fx.runtime.pull_image(&image).await {
        Ok(progress) => drain_progress(progress).await.map(drop),
        Err(error) => Err(error),
    };
    let err = result.expect_err("pulling from nowhere fails");
    assert!(
        matches!(err.kind(), ErrorKind::NotFound | ErrorKind::Unavailable),
        "NotFound or Unavailable, not {err}"
    );
    assert!(
        err.to_string().contains("kisara-conformance/missing"),
        "names the image: {err}"
    );
    Outcome::Passed
}

/// Requested limits show in the container's stats; the node counts it.
pub async fn stats_reflect_limits(fx: RuntimeFixture) -> Outcome {
    let mut spec = fx.spec();
    spec.resources.memory_bytes = Some(64 * 1024 * 1024);
    spec.resources.pids = Some(64);
    let launched = fx.runtime.launch(&spec).await.unwrap();
    let stats = fx.runtime.container_stats(&launched.id).await.unwrap();
    assert_eq!(stats.memory_limit_bytes, 64 * 1024 * 1024);
    assert!(fx.runtime.node_stats().await.unwrap().containers >= 1);
    Outcome::Passed
}

/// Concurrent launches all succeed with distinct ids.
pub async fn concurrent_launches_are_distinct(fx: RuntimeFixture) -> Outcome {
    let launches: Vec<_> = (0..6)
        .map(|_| {
            let runtime = fx.runtime.clone();
            let spec = fx.spec();
            tokio::spawn(async move { runtime.launch(&spec).await.unwrap().id })
        })
        .collect();
    let mut ids = std::collections::BTreeSet::new();
    for launch in launches {
        assert!(ids.insert(launch.await.unwrap()), "two launches got one id");
    }
    assert_eq!(fx.runtime.list(&fx.filter()).await.unwrap().len(), 6);
    Outcome::Passed
}
