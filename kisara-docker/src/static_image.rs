//! Images made from statically linked binaries, `FROM scratch`, built on the
//! engine itself because nothing can be assumed pullable: the sidecar image
//! (`kisara-sidecar`) and the busybox image that the dev deployment's demo
//! container and the tests run.
//!
//! Each image is tagged with a hash of its build context, so it is built
//! once per content and reused while the engine has it.

use std::path::{Path, PathBuf};

use kisara_core::model::{BuildSpec, ImageRef};
use kisara_core::{ContainerRuntime, Error, Result, bytes_stream, drain_progress};
use sha2::{Digest, Sha256};

use crate::DockerRuntime;
use crate::error::is_not_found;

/// The repository of the busybox image; its tag is a hash of its content.
pub const BUSYBOX_REPOSITORY: &str = "kisara-test/busybox";

/// Where Debian's `busybox-static` (and other distributions) put busybox.
const BUSYBOX_PATHS: &[&str] = &["/bin/busybox", "/usr/bin/busybox", "/usr/local/bin/busybox"];

const BUSYBOX_DOCKERFILE: &str = "FROM scratch\n\
COPY busybox /bin/busybox\n\
RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
RUN [\"/bin/busybox\", \"mkdir\", \"-p\", \"/tmp\", \"/usr/bin\", \"/sbin\", \"/root\"]\n\
RUN [\"/bin/busybox\", \"chmod\", \"1777\", \"/tmp\"]\n\
CMD [\"/bin/sh\"]\n";

/// One file of a build context: name, content, mode.
pub type ContextFile<'a> = (&'a str, &'a [u8], u32);

/// Builds `repository:<content hash>` from `dockerfile` and `files` unless
/// the engine has it already, and returns its reference.
///
/// # Errors
///
/// A repository that is no valid image name, or a failed build.
pub async fn build_static_image(
    runtime: &DockerRuntime,
    repository: &str,
    dockerfile: &str,
    files: &[ContextFile<'_>],
) -> Result<ImageRef> {
    let mut hasher = Sha256::new();
    hasher.update(dockerfile.as_bytes());
    for &(name, content, mode) in files {
        // Lengths keep `("a", "bc")` and `("ab", "c")` apart.
        for part in [name.as_bytes(), content] {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        hasher.update(mode.to_le_bytes());
    }
    let hash: String = hasher.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let image = ImageRef::parse(&format!("{repository}:{hash}"))?;
    match runtime.docker().inspect_image(image.as_str()).await {
        Ok(_) => return Ok(image),
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(runtime.err(e, "image", image.as_str())),
    }
    let mut context = tar::Builder::new(Vec::new());
    for &(name, data, mode) in [("Dockerfile", dockerfile.as_bytes(), 0o644)]
        .iter()
        .chain(files)
    {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_cksum();
        context
            .append_data(&mut header, name, data)
            .map_err(|e| Error::invalid("image context", format!("packing {name}: {e}")))?;
    }
    let context = context
        .into_inner()
        .map_err(|e| Error::invalid("image context", format!("packing the context: {e}")))?;
    let progress = runtime
        .build_image(&BuildSpec::new(image.clone()), bytes_stream(context))
        .await?;
    drain_progress(progress).await?;
    tracing::info!(%image, "image built");
    Ok(image)
}

/// The path of a statically linked busybox on this host.
///
/// # Errors
///
/// [`Error::NotFound`] when there is none, saying how to install it.
pub fn static_busybox() -> Result<PathBuf> {
    BUSYBOX_PATHS
        .iter()
        .map(Path::new)
        .find(|path| std::fs::read(path).is_ok_and(|bytes| is_static_elf(&bytes)))
        .map(Path::to_owned)
        .ok_or_else(|| {
            Error::not_found(
                "static busybox",
                format!(
                    "none of {BUSYBOX_PATHS:?} is a statically linked busybox: \
                     run `apt-get install busybox-static` (Debian/Ubuntu)"
                ),
            )
        })
}

/// The busybox image (`kisara-test/busybox:<hash>`, `FROM scratch`, busybox
/// installed as `/bin/*`, `/bin/sh` as command), built from this host's
/// static busybox unless the engine has it.
///
/// # Errors
///
/// No static busybox on the host (see [`static_busybox`]), or a failed
/// build.
pub async fn busybox_image(runtime: &DockerRuntime) -> Result<ImageRef> {
    let path = static_busybox()?;
    let busybox = std::fs::read(&path).map_err(|e| {
        Error::invalid(
            "static busybox",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    build_static_image(
        runtime,
        BUSYBOX_REPOSITORY,
        BUSYBOX_DOCKERFILE,
        &[("busybox", &busybox, 0o755)],
    )
    .await
}

/// Whether `bytes` are a 64-bit little-endian ELF executable without an
/// interpreter (`PT_INTERP`), i.e. statically linked.
pub fn is_static_elf(bytes: &[u8]) -> bool {
    let u16_at = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |at: usize| {
        bytes
            .get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    if bytes.get(..4) != Some(b"\x7fELF") || bytes.get(4) != Some(&2) || bytes.get(5) != Some(&1) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    const PT_INTERP: u32 = 3;
    (0..usize::from(phnum)).all(|i| {
        let at = usize::try_from(phoff)
            .unwrap_or(usize::MAX)
            .saturating_add(i * usize::from(phentsize));
        u32_at(at).is_some_and(|kind| kind != PT_INTERP)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_elf_files_without_an_interpreter_are_static() {
        assert!(!is_static_elf(b""));
        assert!(!is_static_elf(b"#!/bin/sh\necho hi\n"));
        assert!(!is_static_elf(b"\x7fELF\x02\x01"), "a truncated header");
        // This test binary is linked dynamically (it names ld.so).
        let me = std::fs::read("/proc/self/exe").unwrap();
        assert!(!is_static_elf(&me));
        let busybox = std::fs::read("/bin/busybox").expect(
            "/bin/busybox: run `apt-get install busybox-static` (scripts/ensure-docker does)",
        );
        assert!(is_static_elf(&busybox));
    }
}
