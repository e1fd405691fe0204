//! The forwarding sidecar (`kisara-sidecar`) for containers the Docker host
//! cannot reach, such as those on Swarm overlay networks: its image, built
//! `FROM scratch` from the static binary, and its container spec.

use std::fmt;
use std::hash::Hasher;
use std::net::SocketAddr;
use std::path::Path;

use kisara_core::model::{BuildSpec, ContainerPort, ContainerSpec, ImageRef};
use kisara_core::{ContainerRuntime, Error, Result, bytes_stream, drain_progress};

use crate::DockerRuntime;
use crate::error::is_not_found;

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
    // std's hasher, for want of a cryptographic one outside the `testing`
    // feature: the tag only has to change with the content, and if a
    // toolchain hashed differently the cost is one rebuild.
    let mut hasher = std::hash::DefaultHasher::new();
    hasher.write(DOCKERFILE.as_bytes());
    hasher.write(&content);
    let image = ImageRef::parse(&format!("{SIDECAR_REPOSITORY}:{:016x}", hasher.finish()))?;
    match runtime.docker().inspect_image(image.as_str()).await {
        Ok(_) => return Ok(image),
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(runtime.err(e, "image", image.as_str())),
    }
    let mut context = tar::Builder::new(Vec::new());
    for (name, data, mode) in [
        ("Dockerfile", DOCKERFILE.as_bytes(), 0o644),
        ("kisara-sidecar", content.as_slice(), 0o755),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_cksum();
        context
            .append_data(&mut header, name, data)
            .map_err(|e| Error::invalid("sidecar image", format!("packing {name}: {e}")))?;
    }
    let context = context
        .into_inner()
        .map_err(|e| Error::invalid("sidecar image", format!("packing the context: {e}")))?;
    let progress = runtime
        .build_image(&BuildSpec::new(image.clone()), bytes_stream(context))
        .await?;
    drain_progress(progress).await?;
    tracing::info!(%image, "sidecar image built");
    Ok(image)
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
        crate::testing::is_static_elf(&bytes),
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
