//! [`MemoryRuntime`]: a fake engine in memory.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use ipnet::IpNet;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_stream::wrappers::{BroadcastStream, ReceiverStream};

use super::shell::{self, FakeFs, ShellIo};
use crate::config::ContainerDefaults;
use crate::model::{
    BuildSpec, ContainerEvent, ContainerEventKind, ContainerId, ContainerInfo, ContainerSpec,
    ContainerState, ContainerStats, ExecId, ExecSpec, ExecStatus, ImageInfo, ImageRef, LabelFilter,
    Labels, NetworkAttachment, NetworkId, NetworkInfo, NetworkSpec, NodeStats, Progress, Timestamp,
    TtySize,
};
use crate::sync::lock;
use crate::{
    ByteStream, ContainerRuntime, Error, EventStream, ExecSession, ProgressStream, Result,
    RuntimeCapabilities, collect_bytes,
};

/// Exit code of a process ended by `SIGTERM` (128 + 15), as a stop leaves it.
const TERMINATED: i64 = 143;
/// Exit code of a process ended because its session was dropped (`SIGKILL`).
const KILLED: i64 = 137;
/// Pending events a slow subscriber may lag behind before it gets an error.
const EVENT_BUFFER: usize = 4096;

/// A fake container engine held in memory: containers whose processes are
/// scripts of a tiny shell (`echo`, `cat`, `stty size`, `sleep`, `exit`, ...),
/// networks with subnets and addresses, exec with stdin and terminal sizes,
/// tar file copies, images (build from a Dockerfile's `FROM`/`LABEL`/`CMD`,
/// pull from a simulated registry) and events.
///
/// It keeps the whole [`ContainerRuntime`] contract, so the cluster layer can
/// be tested without Docker; it passes the same conformance suite as the
/// Docker runtime.
#[derive(Debug, Clone)]
pub struct MemoryRuntime {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    events: broadcast::Sender<ContainerEvent>,
    defaults: ContainerDefaults,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    containers: BTreeMap<String, FakeContainer>,
    networks: BTreeMap<String, FakeNetwork>,
    images: BTreeMap<String, FakeImage>,
    registry: BTreeSet<String>,
    execs: HashMap<ExecId, FakeExec>,
}

#[derive(Debug)]
struct FakeContainer {
    info: ContainerInfo,
    image_id: String,
    memory_limit: u64,
    fs: Arc<Mutex<FakeFs>>,
    /// Ends the main process; present while it runs.
    stop: Option<oneshot::Sender<()>>,
    /// Bumped on every start, so a late exit of an old process is ignored.
    generation: u64,
}

#[derive(Debug)]
struct FakeNetwork {
    info: NetworkInfo,
    next_host: u128,
}

#[derive(Debug, Clone)]
struct FakeImage {
    info: ImageInfo,
    command: Option<Vec<String>>,
}

#[derive(Debug)]
struct FakeExec {
    container: String,
    status: ExecStatus,
    tty: Option<watch::Sender<TtySize>>,
}

impl Default for MemoryRuntime {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryRuntime {
    /// An empty engine with the default [`ContainerDefaults`]: no host
    /// mounts allowed.
    pub fn new() -> Self {
        Self::with_defaults(ContainerDefaults::default())
    }

    /// An empty engine that gives containers these limits and mount
    /// allow-list.
    pub fn with_defaults(defaults: ContainerDefaults) -> Self {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                events,
                defaults,
            }),
        }
    }

    /// Makes `image` present on this engine, running `command` by default
    /// (`sleep` for a day when `None`).
    pub fn add_image(&self, image: &ImageRef, command: Option<Vec<String>>) {
        let mut state = self.state();
        let id = state.new_id();
        state.insert_image(&id, image, Labels::new(), command);
    }

    /// Makes `image` available to [`ContainerRuntime::pull_image`], as if a
    /// registry held it.
    pub fn add_registry_image(&self, image: &ImageRef) {
        self.state().registry.insert(image.to_string());
    }

    /// Simulates the kernel's OOM killer ending a running container's main
    /// process: it exits with 137, `oom_killed` is set, and an `Oom` event
    /// and a `Die` event are sent (here in that order; a real engine may
    /// deliver them in either).
    pub fn simulate_oom(&self, container: &ContainerId) -> Result<()> {
        let mut state = self.state();
        let key = state.container_key(container)?;
        let fake = state.containers.get_mut(&key).expect("key exists");
        if fake.info.state != ContainerState::Running {
            return Err(Error::conflict(format!(
                "container {:?} is not running",
                fake.info.name
            )));
        }
        // Dropping the stop sender ends the process; its late exit report is
        // ignored because the state is no longer running.
        fake.stop = None;
        fake.info.state = ContainerState::Exited;
        fake.info.exit_code = Some(KILLED);
        fake.info.oom_killed = true;
        for kind in [
            ContainerEventKind::Oom,
            ContainerEventKind::Die { exit_code: KILLED },
        ] {
            let _ = self.shared.events.send(event_of(&fake.info, kind));
        }
        Ok(())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.shared.state)
    }

    fn container_fs(&self, container: &ContainerId) -> Result<Arc<Mutex<FakeFs>>> {
        let state = self.state();
        let key = state.container_key(container)?;
        Ok(state.containers[&key].fs.clone())
    }

    /// Starts the main process of container `id` and watches for its exit.
    fn start_main(&self, state: &mut State, id: &str, command: Vec<String>) {
        let container = state.containers.get_mut(id).expect("container exists");
        let (stop_tx, stop_rx) = oneshot::channel();
        container.stop = Some(stop_tx);
        container.generation += 1;
        let generation = container.generation;
        let fs = container.fs.clone();
        let runtime = self.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            // The main process's output is discarded, like logs nobody reads.
            let (output, mut sink) = mpsc::channel(16);
            tokio::spawn(async move { while sink.recv().await.is_some() {} });
            let mut io = ShellIo {
                stdin: Box::new(tokio::io::empty()),
                output,
                tty: None,
                fs,
                vars: BTreeMap::new(),
            };
            let code = tokio::select! {
                code = shell::run(&command, &mut io) => code,
                _ = stop_rx => TERMINATED,
            };
            runtime.main_exited(&id, generation, code);
        });
    }

    fn main_exited(&self, id: &str, generation: u64, code: i64) {
        let mut state = self.state();
        let Some(container) = state.containers.get_mut(id) else {
            return;
        };
        if container.generation != generation || container.info.state != ContainerState::Running {
            return;
        }
        container.info.state = ContainerState::Exited;
        container.info.exit_code = Some(code);
        container.stop = None;
        let event = event_of(&container.info, ContainerEventKind::Die { exit_code: code });
        // Nobody listening is fine.
        let _ = self.shared.events.send(event);
    }
}

fn event_of(info: &ContainerInfo, kind: ContainerEventKind) -> ContainerEvent {
    ContainerEvent {
        container: info.id.clone(),
        kind,
        labels: info.labels.clone(),
        time: Timestamp::now(),
    }
}

/// The `n`th address of `subnet` (0 is the network address).
fn nth_host(subnet: &IpNet, n: u128) -> Option<IpAddr> {
    match subnet {
        IpNet::V4(net) => {
            let base = u32::from(net.network());
            let addr = u32::try_from(n).ok().and_then(|n| base.checked_add(n))?;
            let addr = std::net::Ipv4Addr::from(addr);
            (net.contains(&addr) && addr != net.broadcast()).then_some(IpAddr::V4(addr))
        }
        IpNet::V6(net) => {
            let addr = std::net::Ipv6Addr::from(u128::from(net.network()).checked_add(n)?);
            net.contains(&addr).then_some(IpAddr::V6(addr))
        }
    }
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

impl State {
    fn new_id(&mut self) -> String {
        self.next_id += 1;
        // Shaped like the engine's 64-hex ids, unique within this runtime.
        format!(
            "{:016x}{:048x}",
            self.next_id,
            u128::from(self.next_id).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        )
    }

    fn insert_image(
        &mut self,
        id: &str,
        image: &ImageRef,
        labels: Labels,
        command: Option<Vec<String>>,
    ) {
        let tag = image.to_string();
        // A tag points at one image: move it off any other.
        for other in self.images.values_mut() {
            other.info.tags.retain(|t| t != &tag);
        }
        self.images.insert(
            id.to_owned(),
            FakeImage {
                info: ImageInfo {
                    id: format!("sha256:{id}"),
                    tags: vec![tag],
                    size_bytes: 1024 * 1024,
                    created_at: Timestamp::now(),
                    labels,
                },
                command,
            },
        );
    }

    fn find_image(&self, reference: &str) -> Option<(&String, &FakeImage)> {
        let with_latest = format!("{reference}:latest");
        self.images.iter().find(|(id, image)| {
            image.info.id == reference
                || id.as_str() == reference
                || image
                    .info
                    .tags
                    .iter()
                    .any(|t| t == reference || *t == with_latest)
        })
    }

    fn container_key(&self, container: &ContainerId) -> Result<String> {
        let wanted = container.as_str();
        if self.containers.contains_key(wanted) {
            return Ok(wanted.to_owned());
        }
        self.containers
            .iter()
            .find(|(_, c)| c.info.name == wanted)
            .map(|(id, _)| id.clone())
            .ok_or_else(|| Error::not_found("container", wanted))
    }

    fn network_key(&self, network: &str) -> Option<String> {
        if self.networks.contains_key(network) {
            return Some(network.to_owned());
        }
        self.networks
            .iter()
            .find(|(_, n)| n.info.name == network)
            .map(|(id, _)| id.clone())
    }

    fn free_auto_subnet(&self) -> Result<IpNet> {
        let pool: IpNet = "10.255.0.0/16".parse().expect("valid pool");
        pool.subnets(24)
            .expect("valid prefix")
            .find(|candidate| {
                !self
                    .networks
                    .values()
                    .any(|n| n.info.subnet.is_some_and(|s| overlaps(&s, candidate)))
            })
            .ok_or_else(|| {
                Error::exhausted(
                    "the memory runtime's automatic subnets 10.255.0.0/16 are all used",
                )
            })
    }
}

fn normalize_in(dir: &str, name: &str) -> Result<String> {
    let mut path = PathBuf::from(dir);
    for component in Path::new(name).components() {
        match component {
            Component::Normal(part) => path.push(part),
            Component::CurDir => {}
            _ => {
                return Err(Error::invalid(
                    "archive",
                    format!("entry {name:?} leaves the target directory"),
                ));
            }
        }
    }
    Ok(path.to_string_lossy().into_owned())
}

fn tar_error(error: impl std::fmt::Display) -> Error {
    Error::invalid("archive", format!("not a tar archive: {error}"))
}

#[async_trait]
impl ContainerRuntime for MemoryRuntime {
    fn name(&self) -> &str {
        "memory"
    }

    fn capabilities(&self) -> RuntimeCapabilities {
        RuntimeCapabilities {
            overlay_networks: true,
            oom_events: false,
            image_pull: true,
            image_build: true,
        }
    }

    async fn create_network(&self, spec: &NetworkSpec) -> Result<NetworkInfo> {
        spec.validate()?;
        let mut state = self.state();
        if state.network_key(&spec.name).is_some() {
            return Err(Error::already_exists("network", &spec.name));
        }
        let subnet = match spec.subnet {
            Some(subnet) => {
                if let Some(other) = state
                    .networks
                    .values()
                    .find(|n| n.info.subnet.is_some_and(|s| overlaps(&s, &subnet)))
                {
                    return Err(Error::conflict(format!(
                        "subnet {subnet} overlaps {} of network {:?}",
                        other.info.subnet.expect("checked"),
                        other.info.name
                    )));
                }
                subnet.trunc()
            }
            None => state.free_auto_subnet()?,
        };
        let gateway = spec.gateway.or_else(|| nth_host(&subnet, 1));
        let id = state.new_id();
        let info = NetworkInfo {
            id: NetworkId::new(id.clone()),
            name: spec.name.clone(),
            subnet: Some(subnet),
            gateway,
            driver: spec.driver,
            internal: spec.internal,
            labels: spec.kisara_labels(),
            containers: Vec::new(),
        };
        state.networks.insert(
            id,
            FakeNetwork {
                info: info.clone(),
                next_host: 2,
            },
        );
        Ok(info)
    }

    async fn inspect_network(&self, network: &NetworkId) -> Result<NetworkInfo> {
        let state = self.state();
        state
            .network_key(network.as_str())
            .map(|key| state.networks[&key].info.clone())
            .ok_or_else(|| Error::not_found("network", network.as_str()))
    }

    async fn list_networks(&self, filter: &LabelFilter) -> Result<Vec<NetworkInfo>> {
        Ok(self
            .state()
            .networks
            .values()
            .filter(|n| filter.matches(&n.info.labels))
            .map(|n| n.info.clone())
            .collect())
    }

    async fn remove_network(&self, network: &NetworkId) -> Result<()> {
        let mut state = self.state();
        let Some(key) = state.network_key(network.as_str()) else {
            return Ok(());
        };
        let attached = &state.networks[&key].info.containers;
        if !attached.is_empty() {
            let names: Vec<String> = attached
                .iter()
                .filter_map(|id| state.containers.get(id.as_str()))
                .map(|c| c.info.name.clone())
                .collect();
            return Err(Error::conflict(format!(
                "network {:?} still has containers attached: {}",
                network.as_str(),
                names.join(", ")
            )));
        }
        state.networks.remove(&key);
        Ok(())
    }

    async fn launch(&self, spec: &ContainerSpec) -> Result<ContainerInfo> {
        spec.validate()?;
        self.shared.defaults.check_mounts(spec)?;
        let mut state = self.state();
        let (image_id, default_command) = state
            .find_image(spec.image.as_str())
            .map(|(id, image)| (id.clone(), image.command.clone()))
            .ok_or_else(|| Error::not_found("image", spec.image.as_str()))?;
        let network_keys = spec
            .networks
            .iter()
            .map(|name| {
                state
                    .network_key(name)
                    .ok_or_else(|| Error::not_found("network", name))
            })
            .collect::<Result<Vec<_>>>()?;
        let id = state.new_id();
        let name = spec
            .name
            .clone()
            .unwrap_or_else(|| format!("kisara-{}", &id[..12]));
        if state.containers.values().any(|c| c.info.name == name) {
            return Err(Error::already_exists("container", name));
        }
        let mut networks = BTreeMap::new();
        for key in &network_keys {
            let network = state.networks.get_mut(key).expect("looked up above");
            let subnet = network
                .info
                .subnet
                .expect("memory networks always have a subnet");
            let ip = nth_host(&subnet, network.next_host).ok_or_else(|| {
                Error::exhausted(format!(
                    "network {:?} has no free address",
                    network.info.name
                ))
            })?;
            network.next_host += 1;
            network.info.containers.push(ContainerId::new(id.clone()));
            networks.insert(
                network.info.name.clone(),
                NetworkAttachment {
                    network_id: key.clone(),
                    ip: Some(ip),
                },
            );
        }
        let info = ContainerInfo {
            id: ContainerId::new(id.clone()),
            name: name.clone(),
            image: spec.image.to_string(),
            state: ContainerState::Running,
            exit_code: None,
            oom_killed: false,
            labels: spec.kisara_labels(),
            networks,
            ports: spec.ports.clone(),
            created_at: Timestamp::now(),
        };
        state.containers.insert(
            id.clone(),
            FakeContainer {
                info: info.clone(),
                image_id,
                memory_limit: spec
                    .resources
                    .memory_bytes
                    .unwrap_or(self.shared.defaults.memory_bytes),
                fs: Arc::new(Mutex::new(FakeFs::new(&name))),
                stop: None,
                generation: 0,
            },
        );
        for kind in [ContainerEventKind::Create, ContainerEventKind::Start] {
            let _ = self.shared.events.send(event_of(&info, kind));
        }
        let command = spec
            .command
            .clone()
            .or(default_command)
            .unwrap_or_else(|| vec!["sleep".to_owned(), "86400".to_owned()]);
        self.start_main(&mut state, &id, command);
        Ok(info)
    }

    async fn stop(&self, container: &ContainerId, _grace: Duration) -> Result<()> {
        // The fake's processes always honour the stop signal, so the grace
        // period is never needed.
        let stop = {
            let mut state = self.state();
            let key = state.container_key(container)?;
            state
                .containers
                .get_mut(&key)
                .expect("key exists")
                .stop
                .take()
        };
        if let Some(stop) = stop {
            let _ = stop.send(());
            // Wait for the process to be reaped so inspect shows it exited.
            while self.inspect(container).await?.state == ContainerState::Running {
                tokio::task::yield_now().await;
            }
        }
        Ok(())
    }

    async fn remove(&self, container: &ContainerId) -> Result<()> {
        match self.stop(container, Duration::ZERO).await {
            Err(Error::NotFound { .. }) => return Ok(()),
            other => other?,
        }
        let mut state = self.state();
        let Ok(key) = state.container_key(container) else {
            return Ok(());
        };
        let removed = state.containers.remove(&key).expect("key exists");
        for network in state.networks.values_mut() {
            network.info.containers.retain(|c| c.as_str() != key);
        }
        state.execs.retain(|_, exec| exec.container != key);
        let _ = self
            .shared
            .events
            .send(event_of(&removed.info, ContainerEventKind::Destroy));
        Ok(())
    }

    async fn inspect(&self, container: &ContainerId) -> Result<ContainerInfo> {
        let state = self.state();
        let key = state.container_key(container)?;
        Ok(state.containers[&key].info.clone())
    }

    async fn list(&self, filter: &LabelFilter) -> Result<Vec<ContainerInfo>> {
        Ok(self
            .state()
            .containers
            .values()
            .filter(|c| filter.matches(&c.info.labels))
            .map(|c| c.info.clone())
            .collect())
    }

    async fn exec(&self, container: &ContainerId, spec: &ExecSpec) -> Result<ExecSession> {
        if spec.command.is_empty() {
            return Err(Error::invalid("exec command", "the command is empty"));
        }
        let mut state = self.state();
        let key = state.container_key(container)?;
        let fake = &state.containers[&key];
        if fake.info.state != ContainerState::Running {
            return Err(Error::conflict(format!(
                "container {:?} is not running, cannot exec in it",
                fake.info.name
            )));
        }
        let fs = fake.fs.clone();
        let id = ExecId::new(state.new_id());
        let (tty_tx, tty_rx) = if spec.tty {
            let size = spec.size.unwrap_or(TtySize { rows: 24, cols: 80 });
            let (tx, rx) = watch::channel(size);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let (stdin, process_stdin): (
            Option<std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>>,
            _,
        ) = if spec.stdin {
            let (client, process) = tokio::io::duplex(64 * 1024);
            let reader: Box<dyn tokio::io::AsyncBufRead + Send + Sync + Unpin> =
                Box::new(tokio::io::BufReader::new(process));
            (Some(Box::pin(client)), reader)
        } else {
            (None, Box::new(tokio::io::empty()))
        };
        state.execs.insert(
            id.clone(),
            FakeExec {
                container: key,
                status: ExecStatus {
                    running: true,
                    exit_code: None,
                },
                tty: tty_tx,
            },
        );
        drop(state);

        let (output, receiver) = mpsc::channel(64);
        let mut io = ShellIo {
            stdin: process_stdin,
            output: output.clone(),
            tty: tty_rx,
            fs,
            vars: spec.env.clone(),
        };
        let command = spec.command.clone();
        let runtime = self.clone();
        let exec_id = id.clone();
        tokio::spawn(async move {
            let code = tokio::select! {
                code = shell::run(&command, &mut io) => code,
                // The session was dropped: end the process.
                () = output.closed() => KILLED,
            };
            if let Some(exec) = runtime.state().execs.get_mut(&exec_id) {
                exec.status = ExecStatus {
                    running: false,
                    exit_code: Some(code),
                };
            }
            // Dropping `io` and `output` here ends the output stream, after
            // the status is set, so readers see the exit code at once.
        });
        Ok(ExecSession {
            id,
            stdin,
            output: Box::pin(ReceiverStream::new(receiver)),
        })
    }

    async fn resize_exec(&self, exec: &ExecId, size: TtySize) -> Result<()> {
        let state = self.state();
        let fake = state
            .execs
            .get(exec)
            .ok_or_else(|| Error::not_found("exec", exec.as_str()))?;
        match &fake.tty {
            Some(tty) => {
                tty.send_replace(size);
                Ok(())
            }
            None => Err(Error::invalid(
                "resize",
                format!("exec {exec} has no terminal"),
            )),
        }
    }

    async fn exec_status(&self, exec: &ExecId) -> Result<ExecStatus> {
        self.state()
            .execs
            .get(exec)
            .map(|fake| fake.status)
            .ok_or_else(|| Error::not_found("exec", exec.as_str()))
    }

    async fn copy_to(&self, container: &ContainerId, dir: &str, archive: ByteStream) -> Result<()> {
        let fs = self.container_fs(container)?;
        let bytes = collect_bytes(archive).await?;
        let dir = dir.trim_end_matches('/');
        let dir = if dir.is_empty() { "/" } else { dir };
        if !lock(&fs).dirs.contains(dir) {
            return Err(Error::not_found("directory", dir));
        }
        // Unpack fully before touching the file system: all or nothing.
        let mut files = Vec::new();
        let mut dirs = Vec::new();
        let mut tar = tar::Archive::new(bytes.as_slice());
        for entry in tar.entries().map_err(tar_error)? {
            let mut entry = entry.map_err(tar_error)?;
            let name = entry
                .path()
                .map_err(tar_error)?
                .to_string_lossy()
                .into_owned();
            let path = normalize_in(dir, &name)?;
            if entry.header().entry_type().is_dir() {
                dirs.push(path);
            } else {
                let mut content = Vec::new();
                entry.read_to_end(&mut content).map_err(tar_error)?;
                files.push((path, content));
            }
        }
        let mut fs = lock(&fs);
        fs.dirs.extend(dirs);
        fs.files.extend(files);
        Ok(())
    }

    async fn copy_from(&self, container: &ContainerId, path: &str) -> Result<ByteStream> {
        let fs = self.container_fs(container)?;
        let path = path.trim_end_matches('/');
        let base = Path::new(path)
            .file_name()
            .map_or_else(|| "/".to_owned(), |n| n.to_string_lossy().into_owned());
        let fs = lock(&fs);
        let mut builder = tar::Builder::new(Vec::new());
        let append = |builder: &mut tar::Builder<Vec<u8>>, name: &str, content: &[u8]| {
            let mut header = tar::Header::new_gnu();
            header.set_size(content.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, name, content)
                .map_err(|e| Error::invalid("archive", e.to_string()))
        };
        if let Some(content) = fs.files.get(path) {
            append(&mut builder, &base, content)?;
        } else if fs.dirs.contains(path) {
            let prefix = format!("{path}/");
            for (file, content) in fs
                .files
                .range(prefix.clone()..)
                .take_while(|(f, _)| f.starts_with(&prefix))
            {
                append(
                    &mut builder,
                    &format!("{base}/{}", &file[prefix.len()..]),
                    content,
                )?;
            }
        } else {
            return Err(Error::not_found("path", path));
        }
        let archive = builder
            .into_inner()
            .map_err(|e| Error::invalid("archive", e.to_string()))?;
        Ok(crate::bytes_stream(archive))
    }

    async fn pull_image(&self, image: &ImageRef) -> Result<ProgressStream> {
        let mut state = self.state();
        if !state.registry.contains(image.as_str()) {
            return Err(Error::not_found("image in registry", image.as_str()));
        }
        let id = state.new_id();
        state.insert_image(&id, image, Labels::new(), None);
        let steps = vec![
            Ok(Progress::status(format!("Pulling from {}", image.name()))),
            Ok(Progress {
                id: Some(id[..12].to_owned()),
                status: "Downloading".to_owned(),
                current: Some(1024 * 1024),
                total: Some(1024 * 1024),
            }),
            Ok(Progress::status(format!(
                "Status: Downloaded newer image for {image}"
            ))),
        ];
        Ok(Box::pin(futures::stream::iter(steps)))
    }

    async fn build_image(&self, spec: &BuildSpec, context: ByteStream) -> Result<ProgressStream> {
        let bytes = collect_bytes(context).await?;
        let mut dockerfile = None;
        let mut tar = tar::Archive::new(bytes.as_slice());
        for entry in tar.entries().map_err(tar_error)? {
            let mut entry = entry.map_err(tar_error)?;
            let name = entry
                .path()
                .map_err(tar_error)?
                .to_string_lossy()
                .into_owned();
            if name.trim_start_matches("./") == spec.dockerfile {
                let mut text = String::new();
                entry
                    .read_to_string(&mut text)
                    .map_err(|e| Error::invalid("Dockerfile", e.to_string()))?;
                dockerfile = Some(text);
            }
        }
        let dockerfile = dockerfile.ok_or_else(|| {
            Error::not_found("Dockerfile in build context", spec.dockerfile.as_str())
        })?;
        let instructions: Vec<&str> = dockerfile
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .collect();
        let mut labels = spec.labels.clone();
        let mut command = None;
        let mut base_found = false;
        let mut steps = Vec::new();
        let mut state = self.state();
        for (i, line) in instructions.iter().enumerate() {
            steps.push(Ok(Progress::status(format!(
                "Step {}/{} : {line}",
                i + 1,
                instructions.len()
            ))));
            let (instruction, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            match instruction.to_ascii_uppercase().as_str() {
                "FROM" => {
                    let base = rest.split_whitespace().next().unwrap_or_default();
                    let (_, image) = state
                        .find_image(base)
                        .ok_or_else(|| Error::not_found("image", base))?;
                    command = image.command.clone();
                    labels.extend(image.info.labels.clone());
                    base_found = true;
                }
                "LABEL" => {
                    for pair in rest.split_whitespace() {
                        if let Some((key, value)) = pair.split_once('=') {
                            labels.insert(key.to_owned(), value.trim_matches('"').to_owned());
                        }
                    }
                }
                "CMD" => {
                    command = Some(serde_json::from_str(rest.trim()).map_err(|e| {
                        Error::invalid(
                            "Dockerfile",
                            format!("CMD {rest:?} is not a JSON array: {e}"),
                        )
                    })?);
                }
                // Other instructions change nothing the fake can observe.
                _ => {}
            }
        }
        if !base_found {
            return Err(Error::invalid("Dockerfile", "no FROM instruction"));
        }
        let id = state.new_id();
        state.insert_image(&id, &spec.tag, labels, command);
        steps.push(Ok(Progress::status(format!(
            "Successfully tagged {}",
            spec.tag
        ))));
        Ok(Box::pin(futures::stream::iter(steps)))
    }

    async fn list_images(&self) -> Result<Vec<ImageInfo>> {
        Ok(self
            .state()
            .images
            .values()
            .map(|i| i.info.clone())
            .collect())
    }

    async fn remove_image(&self, image: &str) -> Result<()> {
        let mut state = self.state();
        let Some((id, _)) = state.find_image(image) else {
            return Ok(());
        };
        let id = id.clone();
        if let Some(user) = state.containers.values().find(|c| c.image_id == id) {
            return Err(Error::conflict(format!(
                "image {image:?} is used by container {:?}",
                user.info.name
            )));
        }
        state.images.remove(&id);
        Ok(())
    }

    async fn events(&self, filter: &LabelFilter) -> Result<EventStream> {
        let filter = filter.clone();
        let stream = BroadcastStream::new(self.shared.events.subscribe()).filter_map(move |item| {
            let item = match item {
                Ok(event) => filter.matches(&event.labels).then_some(Ok(event)),
                Err(lagged) => Some(Err(Error::unavailable(format!(
                    "event subscriber fell behind: {lagged}"
                )))),
            };
            futures::future::ready(item)
        });
        Ok(Box::pin(stream))
    }

    async fn container_stats(&self, container: &ContainerId) -> Result<ContainerStats> {
        let state = self.state();
        let key = state.container_key(container)?;
        let fake = &state.containers[&key];
        let running = fake.info.state == ContainerState::Running;
        let execs = state
            .execs
            .values()
            .filter(|e| e.container == key && e.status.running)
            .count() as u64;
        Ok(ContainerStats {
            cpu_millis: 0,
            memory_bytes: if running { 1024 * 1024 } else { 0 },
            memory_limit_bytes: fake.memory_limit,
            pids: if running { 1 + execs } else { 0 },
            network_rx_bytes: 0,
            network_tx_bytes: 0,
        })
    }

    async fn node_stats(&self) -> Result<NodeStats> {
        let state = self.state();
        let running = state
            .containers
            .values()
            .filter(|c| c.info.state == ContainerState::Running)
            .count();
        Ok(NodeStats {
            containers: u32::try_from(running).unwrap_or(u32::MAX),
            ..NodeStats::default()
        })
    }
}
