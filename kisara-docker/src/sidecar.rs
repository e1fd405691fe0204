//! The forwarding sidecar (`kisara-sidecar`) for containers the Docker host
//! cannot reach, such as those on Swarm overlay networks: its image, built
//! `FROM scratch` from the static binary, its container spec, and
//! [`SidecarTunnel`], which exposes such containers through sidecars.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use kisara_core::model::{
    ContainerId, ContainerInfo, ContainerPort, ContainerSpec, ContainerState, ExposeRequest,
    Exposure, ExposureId, ImageRef, LabelFilter, Labels, NetworkDriver, NetworkSpec, Protocol,
    labels,
};
use kisara_core::{ContainerRuntime, Error, ErrorKind, Result, Tunnel};

use crate::DockerRuntime;
use crate::static_image::build_static_image;

/// The repository of the sidecar image; its tag is a hash of its content.
pub const SIDECAR_REPOSITORY: &str = "kisara/sidecar";

/// Threads the sidecar may run: two per TCP connection, one per UDP peer,
/// far more than the runtime's default pids limit allows.
pub const SIDECAR_PIDS: u64 = 4096;

/// Runs as `nobody` (ports below 1024 still bind: engines since 20.10 set
/// `net.ipv4.ip_unprivileged_port_start=0` in containers). PID 1 ignores
/// `SIGTERM` without a handler and the forwarder keeps no state, so
/// `STOPSIGNAL SIGKILL` makes `docker stop` immediate instead of waiting
/// out the grace period.
const DOCKERFILE: &str = "FROM scratch\n\
COPY kisara-sidecar /kisara-sidecar\n\
USER 65534:65534\n\
STOPSIGNAL SIGKILL\n\
ENTRYPOINT [\"/kisara-sidecar\"]\n";

/// One port the sidecar forwards: `listen` on every address of the
/// sidecar to `target`, with the listen port's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SidecarForward {
    /// The sidecar's port and the protocol of both ends.
    pub listen: ContainerPort,
    /// The container's address on the network only the sidecar reaches.
    pub target: SocketAddr,
}

/// The sidecar's `--forward` value: `8080:10.201.7.2:80/tcp`.
impl fmt::Display for SidecarForward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}/{}",
            self.listen.port, self.target, self.listen.protocol
        )
    }
}

/// Builds the sidecar image from `binary`, a statically linked
/// `kisara-sidecar`, unless the engine has it already:
/// `kisara/sidecar:<hash of the binary and the Dockerfile>`, `FROM
/// scratch`, the binary as entrypoint, running as `nobody`, stopped with
/// `SIGKILL`.
///
/// A dynamically linked binary builds but its containers fail to start
/// (there is no loader in the image).
pub async fn sidecar_image(runtime: &DockerRuntime, binary: &Path) -> Result<ImageRef> {
    let content = std::fs::read(binary).map_err(|e| {
        Error::invalid(
            "sidecar binary",
            format!("cannot read {}: {e}", binary.display()),
        )
    })?;
    build_static_image(
        runtime,
        SIDECAR_REPOSITORY,
        DOCKERFILE,
        &[("kisara-sidecar", &content, 0o755)],
    )
    .await
}

/// The spec of a sidecar running `image` on `networks` (one the host
/// reaches and the ones it does not, in any order; the first is the
/// primary one) with `forwards`.
///
/// Read-only root, [`SIDECAR_PIDS`] threads; everything else at the
/// runtime's secure defaults. Name, owner and labels are the caller's.
pub fn sidecar_spec(
    image: ImageRef,
    networks: impl IntoIterator<Item = impl Into<String>>,
    forwards: &[SidecarForward],
) -> ContainerSpec {
    let mut spec = ContainerSpec::new(image);
    spec.command = Some(
        forwards
            .iter()
            .flat_map(|forward| ["--forward".to_owned(), forward.to_string()])
            .collect(),
    );
    spec.networks = networks.into_iter().map(Into::into).collect();
    spec.ports = forwards.iter().map(|forward| forward.listen).collect();
    spec.read_only_root = true;
    spec.resources.pids = Some(SIDECAR_PIDS);
    spec
}

/// On a sidecar of [`SidecarTunnel`]: the id of the container it forwards
/// to.
///
/// Sidecars carry no [`labels::MANAGED`]: the cluster server lists, counts,
/// watches and re-exposes every managed container as a user's, so a managed
/// sidecar would show in listings, take a slot of the node's capacity and
/// get its own port exposed after a reconnect. This label finds them
/// instead (`docker ps --filter label=io.kisara.sidecar-of`).
pub const SIDECAR_OF: &str = "io.kisara.sidecar-of";

/// On a sidecar of [`SidecarTunnel`]: its forward
/// (`8080:10.201.7.2:8080/tcp`). One found with another forward (its
/// container came back with another address) is replaced.
pub const SIDECAR_FORWARD: &str = "io.kisara.sidecar-forward";

/// On an exposure going through a sidecar: the sidecar's container name, so
/// that withdrawing it finds the sidecar, after an agent restart too.
pub const SIDECAR: &str = "io.kisara.sidecar";

/// A [`Tunnel`] for a node's tunnel client that reaches containers on Swarm
/// overlay networks through sidecars, and everything else directly.
///
/// `expose` looks up the container named by the request's
/// [`labels::CONTAINER`]. When the target is its address on an overlay
/// network, a sidecar joins that overlay and the bridge network (created on
/// first use, labelled [`labels::MANAGED`] by the runtime), forwarding the
/// port, and `inner` exposes the sidecar's address on the bridge with the
/// request's labels plus [`SIDECAR`]. Any other request (no such label, no
/// such container, a bridge network, a protocol `inner` refuses) goes to
/// `inner` unchanged.
///
/// The exposures returned and listed are `inner`'s, so behind a sidecar
/// their `target` is the sidecar's address, where the tunnel client really
/// sends the traffic; the container's address is the sidecar's
/// [`SIDECAR_FORWARD`] label.
///
/// There is one sidecar per container port, named
/// `kisara-sidecar-<container id>-<port>-<protocol>` and labelled
/// [`SIDECAR_OF`] and [`SIDECAR_FORWARD`] (not [`labels::MANAGED`], see
/// [`SIDECAR_OF`]), so exposing again, after a restart too, reuses it.
/// `withdraw` removes it once no exposure goes through it; the cluster
/// server withdraws a container's exposures before removing the container,
/// so removed containers leave no sidecars behind, and [`prune`](Self::prune)
/// removes those an interrupted exposure left.
#[derive(Debug)]
pub struct SidecarTunnel {
    runtime: DockerRuntime,
    inner: Arc<dyn Tunnel>,
    image: ImageRef,
    bridge: String,
    labels: Labels,
    /// Held while a sidecar is started or reused and exposed, or withdrawn
    /// and removed, so a withdrawal that finds a sidecar unused cannot
    /// remove it under an exposure being added.
    lifecycle: tokio::sync::Mutex<()>,
}

impl SidecarTunnel {
    /// Exposes through `inner`, running sidecars of `image` (see
    /// [`sidecar_image`]) that join `bridge_network`, a bridge network the
    /// host reaches; it is created on first use when missing, with a subnet
    /// the engine picks.
    pub fn new(
        runtime: DockerRuntime,
        inner: Arc<dyn Tunnel>,
        image: ImageRef,
        bridge_network: impl Into<String>,
    ) -> Self {
        Self {
            runtime,
            inner,
            image,
            bridge: bridge_network.into(),
            labels: Labels::new(),
            lifecycle: tokio::sync::Mutex::new(()),
        }
    }

    /// Also puts `labels` on the sidecars and on the bridge network when it
    /// creates it (keys under `io.kisara.` are reserved), e.g. for an
    /// operator's or a test's cleanup.
    #[must_use]
    pub fn with_labels(
        mut self,
        labels: impl IntoIterator<Item = (impl Into<String>, impl Into<String>)>,
    ) -> Self {
        self.labels
            .extend(labels.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Every sidecar on the engine ([`SIDECAR_OF`]), running or not,
    /// whichever `SidecarTunnel` started it.
    pub async fn sidecars(&self) -> Result<Vec<ContainerInfo>> {
        self.runtime
            .list(&LabelFilter::all().with_key(SIDECAR_OF))
            .await
    }

    /// Removes the sidecars with this tunnel's labels (see
    /// [`with_labels`](Self::with_labels)) whose container is gone, withdrawing any
    /// exposure still going through them, and returns their names. Such
    /// orphans come from an agent that stopped between starting a sidecar
    /// and exposing it, or from containers removed behind the server's
    /// back. `withdraw` prunes after removing a sidecar; an agent also
    /// prunes when it starts.
    pub async fn prune(&self) -> Result<Vec<String>> {
        let _lifecycle = self.lifecycle.lock().await;
        let mut pruned = Vec::new();
        // Only sidecars with this tunnel's labels: those are its to manage.
        let mine = self.labels.iter().fold(
            LabelFilter::all().with_key(SIDECAR_OF),
            |filter, (key, value)| filter.with(key, value),
        );
        for sidecar in self.runtime.list(&mine).await? {
            let Some(container) = sidecar.labels.get(SIDECAR_OF) else {
                continue;
            };
            match self.runtime.inspect_impl(container).await {
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                other => {
                    other?;
                    continue;
                }
            }
            let through = LabelFilter::all().with(SIDECAR, &sidecar.name);
            for exposure in self.inner.list(&through).await? {
                self.inner.withdraw(&exposure.id).await?;
            }
            self.runtime.remove_impl(sidecar.id.as_str()).await?;
            tracing::info!(sidecar = %sidecar.name, %container, "orphaned sidecar removed");
            pruned.push(sidecar.name);
        }
        Ok(pruned)
    }

    /// The container the request targets and the name of the overlay
    /// network on which the target address is its, when it is one.
    async fn overlay_target(
        &self,
        request: &ExposeRequest,
    ) -> Result<Option<(ContainerInfo, String)>> {
        let Some(container) = request.labels.get(labels::CONTAINER) else {
            return Ok(None);
        };
        let container = match self.runtime.inspect_impl(container).await {
            Ok(container) => container,
            // Not a container of this engine: `inner` reaches it or not.
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some((network, attachment)) = container
            .networks
            .iter()
            .find(|(_, attachment)| attachment.ip == Some(request.target.ip()))
        else {
            return Ok(None);
        };
        let network = network.clone();
        let driver = self
            .runtime
            .inspect_network_impl(&attachment.network_id)
            .await?
            .driver;
        Ok((driver == NetworkDriver::Overlay).then_some((container, network)))
    }

    /// Creates the bridge network unless it exists.
    async fn ensure_bridge(&self) -> Result<()> {
        match self.runtime.inspect_network_impl(&self.bridge).await {
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            found => return found.map(drop),
        }
        let mut spec = NetworkSpec::new(&self.bridge, None);
        spec.labels = self.labels.clone();
        match self.runtime.create_network_impl(&spec).await {
            Ok(_) => {
                tracing::info!(network = %self.bridge, "sidecar bridge network created");
                Ok(())
            }
            // Created meanwhile by another agent process on this engine.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The running sidecar forwarding to `container` on `overlay` with
    /// `forward`, reused or started: its name and address on the bridge.
    async fn sidecar(
        &self,
        container: &ContainerInfo,
        overlay: &str,
        forward: SidecarForward,
    ) -> Result<(String, IpAddr)> {
        let name = sidecar_name(&container.id, forward.listen);
        let wanted = forward.to_string();
        match self.runtime.inspect_impl(&name).await {
            Ok(existing) if !existing.labels.contains_key(SIDECAR_OF) => {
                return Err(Error::conflict(format!(
                    "container {name:?} exists and is not a Kisara sidecar"
                )));
            }
            Ok(existing) => {
                let current = existing.state == ContainerState::Running
                    && existing.labels.get(SIDECAR_FORWARD) == Some(&wanted);
                if let (true, Some(ip)) = (current, existing.ip_on(&self.bridge)) {
                    return Ok((name, ip));
                }
                // Its container came back with another address, or the
                // engine restarted and left it stopped.
                self.runtime.remove_impl(&name).await?;
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.ensure_bridge().await?;
        let mut spec = sidecar_spec(
            self.image.clone(),
            [self.bridge.as_str(), overlay],
            &[forward],
        );
        let mut labels = self.labels.clone();
        labels.insert(SIDECAR_OF.to_owned(), container.id.to_string());
        labels.insert(SIDECAR_FORWARD.to_owned(), wanted);
        spec.name = Some(name.clone());
        let sidecar = self.runtime.launch_labelled(&spec, Some(labels)).await?;
        tracing::info!(sidecar = %name, container = %container.id, %forward, "sidecar started");
        let ip = sidecar.ip_on(&self.bridge).ok_or_else(|| {
            Error::conflict(format!(
                "sidecar {name:?} has no address on network {:?}",
                self.bridge
            ))
        })?;
        Ok((name, ip))
    }

    /// Removes the sidecar `name` unless an exposure still goes through it.
    async fn release(&self, name: &str) -> Result<()> {
        if !self
            .inner
            .list(&LabelFilter::all().with(SIDECAR, name))
            .await?
            .is_empty()
        {
            return Ok(());
        }
        // The name comes from an exposure's labels, which the caller of
        // `expose` could have set: remove only sidecars.
        match self.runtime.inspect_impl(name).await {
            Ok(sidecar) if sidecar.labels.contains_key(SIDECAR_OF) => {
                self.runtime.remove_impl(sidecar.id.as_str()).await?;
                tracing::info!(sidecar = name, "sidecar removed");
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// `kisara-sidecar-<container id, 12 digits>-<port>-<protocol>`: one per
/// container port, found again by name.
fn sidecar_name(container: &ContainerId, port: ContainerPort) -> String {
    let id = container.as_str();
    let short = id.get(..12).unwrap_or(id);
    format!("kisara-sidecar-{short}-{}-{}", port.port, port.protocol)
}

#[async_trait]
impl Tunnel for SidecarTunnel {
    fn supports(&self, protocol: Protocol) -> bool {
        self.inner.supports(protocol)
    }

    async fn expose(&self, request: &ExposeRequest) -> Result<Exposure> {
        // A protocol `inner` refuses needs no sidecar to be refused.
        let overlay = if self.inner.supports(request.protocol) {
            self.overlay_target(request).await?
        } else {
            None
        };
        let Some((container, overlay)) = overlay else {
            return self.inner.expose(request).await;
        };
        let forward = SidecarForward {
            listen: ContainerPort {
                port: request.target.port(),
                protocol: request.protocol,
            },
            target: request.target,
        };
        let _lifecycle = self.lifecycle.lock().await;
        let (name, ip) = self.sidecar(&container, &overlay, forward).await?;
        let mut through = request.clone();
        through.target = SocketAddr::new(ip, forward.listen.port);
        through.labels.insert(SIDECAR.to_owned(), name.clone());
        let exposed = self.inner.expose(&through).await;
        if exposed.is_err()
            && let Err(error) = self.release(&name).await
        {
            tracing::warn!(%error, sidecar = %name, "could not remove the sidecar of a failed exposure");
        }
        exposed
    }

    async fn withdraw(&self, exposure: &ExposureId) -> Result<()> {
        // Found from the exposure's labels, not from memory: the agent may
        // have restarted since it was exposed.
        let sidecar = self
            .inner
            .list(&LabelFilter::all().with_key(SIDECAR))
            .await?
            .into_iter()
            .find(|e| e.id == *exposure)
            .and_then(|mut e| e.labels.remove(SIDECAR));
        let Some(sidecar) = sidecar else {
            return self.inner.withdraw(exposure).await;
        };
        {
            let _lifecycle = self.lifecycle.lock().await;
            self.inner.withdraw(exposure).await?;
            self.release(&sidecar).await?;
        }
        // Best effort: the withdrawal itself succeeded.
        if let Err(error) = self.prune().await {
            tracing::warn!(%error, "could not prune orphaned sidecars");
        }
        Ok(())
    }

    async fn list(&self, filter: &LabelFilter) -> Result<Vec<Exposure>> {
        self.inner.list(filter).await
    }
}

/// Builds `kisara-sidecar` statically linked from the workspace at
/// `workspace` (release, glibc with `crt-static`) in a target directory of
/// its own (`$CARGO_TARGET_DIR/static`, else `<workspace>/target/static`),
/// so normal builds are not invalidated, and returns the binary's path.
///
/// # Panics
///
/// When cargo fails or the binary is not statically linked, saying why.
#[cfg(feature = "testing")]
pub fn build_static_sidecar(workspace: &Path) -> std::path::PathBuf {
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace.join("target"), Into::into)
        .join("static");
    let triple = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let rustflags_var = format!(
        "CARGO_TARGET_{}_RUSTFLAGS",
        triple.to_ascii_uppercase().replace('-', "_")
    );
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = std::process::Command::new(cargo)
        .current_dir(workspace)
        .args([
            "build",
            "-p",
            "kisara-sidecar",
            "--release",
            "--target",
            &triple,
        ])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env(&rustflags_var, "-C target-feature=+crt-static")
        // Either would replace the target's flags above.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .unwrap_or_else(|e| panic!("running cargo to build kisara-sidecar: {e}"));
    assert!(
        output.status.success(),
        "cargo build -p kisara-sidecar --release --target {triple} ({rustflags_var}=\"-C target-feature=+crt-static\") failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let binary = target_dir.join(&triple).join("release/kisara-sidecar");
    let bytes = std::fs::read(&binary)
        .unwrap_or_else(|e| panic!("reading the built {}: {e}", binary.display()));
    assert!(
        crate::static_image::is_static_elf(&bytes),
        "{} is not statically linked (its ELF names an interpreter), so a FROM scratch image cannot run it: \
         does the toolchain link {triple} statically with `-C target-feature=+crt-static`?",
        binary.display()
    );
    binary
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_pass_each_forward_as_an_argument() {
        let image = ImageRef::parse("kisara/sidecar:0123456789abcdef").unwrap();
        let forwards = [
            SidecarForward {
                listen: ContainerPort::tcp(80),
                target: "10.201.7.2:8080".parse().unwrap(),
            },
            SidecarForward {
                listen: ContainerPort::udp(53),
                target: "[fd00::2]:5353".parse().unwrap(),
            },
        ];
        let spec = sidecar_spec(image, ["reachable", "team-7"], &forwards);
        assert_eq!(
            spec.command.unwrap(),
            [
                "--forward",
                "80:10.201.7.2:8080/tcp",
                "--forward",
                "53:[fd00::2]:5353/udp"
            ]
        );
        assert_eq!(spec.networks, ["reachable", "team-7"]);
        assert_eq!(spec.ports, [ContainerPort::tcp(80), ContainerPort::udp(53)]);
        assert!(spec.read_only_root);
        assert_eq!(spec.resources.pids, Some(SIDECAR_PIDS));
    }
}
