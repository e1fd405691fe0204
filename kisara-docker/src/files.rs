//! Files: tar archives into and out of containers.

use bollard::query_parameters::{
    ContainerArchiveInfoOptions, DownloadFromContainerOptions, UploadToContainerOptions,
};
use futures::StreamExt;
use kisara_core::{ByteStream, Error, Result};

use crate::error::status_of;
use crate::runtime::DockerRuntime;

impl DockerRuntime {
    /// Whether `container` exists; `NotFound` naming it otherwise.
    async fn require_container(&self, container: &str) -> Result<()> {
        self.docker
            .inspect_container(
                container,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .map(drop)
            .map_err(|e| self.err(e, "container", container))
    }

    pub(crate) async fn copy_to_impl(
        &self,
        container: &str,
        dir: &str,
        archive: ByteStream,
    ) -> Result<()> {
        self.require_container(container).await?;
        let body = archive.map(|chunk| chunk.map_err(std::io::Error::other));
        self.docker
            .upload_to_container(
                container,
                Some(UploadToContainerOptions {
                    path: dir.to_owned(),
                    ..UploadToContainerOptions::default()
                }),
                bollard::body_try_stream(body),
            )
            .await
            .map_err(|e| match status_of(&e) {
                Some((404, _)) => Error::not_found("directory", dir),
                Some((400 | 500, m)) => Error::invalid(
                    "archive",
                    format!("copy into {dir:?} of {container:?}: {m}"),
                ),
                Some((403, m)) => {
                    Error::permission_denied(format!("copy into {dir:?} of {container:?}: {m}"))
                }
                _ => self.err(e, "container", container),
            })?;
        tracing::debug!(container, dir, "archive copied in");
        Ok(())
    }

    pub(crate) async fn copy_from_impl(&self, container: &str, path: &str) -> Result<ByteStream> {
        self.require_container(container).await?;
        // Ask first, so a missing path fails here and not mid-stream.
        self.docker
            .get_container_archive_info(
                container,
                Some(ContainerArchiveInfoOptions {
                    path: path.to_owned(),
                }),
            )
            .await
            .map_err(|e| match status_of(&e) {
                Some((404, _)) => Error::not_found("path", path),
                _ => self.err(e, "container", container),
            })?;
        let endpoint = self.endpoint.clone();
        let container = container.to_owned();
        let stream = self
            .docker
            .download_from_container(
                &container,
                Some(DownloadFromContainerOptions {
                    path: path.to_owned(),
                }),
            )
            .map(move |chunk| {
                chunk.map_err(|e| crate::error::map(e, &endpoint, "container", &container))
            });
        Ok(Box::pin(stream))
    }
}
