//! Images: pull and build with progress, list, remove, garbage collection.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bollard::models::{BuildInfo, CreateImageInfo, ImageSummary};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateImageOptions, ListImagesOptions, RemoveImageOptions,
};
use futures::StreamExt;
use kisara_core::model::{BuildSpec, ImageInfo, ImageRef, LabelFilter, Progress, Timestamp};
use kisara_core::{ByteStream, Error, ProgressStream, Result};

use crate::error::status_of;
use crate::runtime::DockerRuntime;

/// What [`DockerRuntime::collect_garbage_images`] removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageGc {
    /// Only images created longer ago than this.
    pub older_than: Duration,
    /// Only images whose labels match (every image when it matches all).
    pub labels: LabelFilter,
    /// Only images with a tag starting with one of these (any when empty).
    pub name_prefixes: Vec<String>,
}

impl ImageGc {
    /// Images older than `older_than`, of any name.
    pub fn older_than(older_than: Duration) -> Self {
        Self {
            older_than,
            labels: LabelFilter::all(),
            name_prefixes: Vec::new(),
        }
    }
}

fn info_of(image: ImageSummary) -> ImageInfo {
    ImageInfo {
        id: image.id,
        tags: image
            .repo_tags
            .into_iter()
            .filter(|t| t != "<none>:<none>")
            .collect(),
        size_bytes: u64::try_from(image.size).unwrap_or(0),
        created_at: Timestamp::from_unix_secs(u64::try_from(image.created).unwrap_or(0)),
        labels: image.labels.into_iter().collect(),
    }
}

/// An error from a pull, naming the image.
fn pull_error(image: &ImageRef, status: Option<u16>, message: &str) -> Error {
    let lower = message.to_ascii_lowercase();
    if status == Some(404) || lower.contains("not found") || lower.contains("manifest unknown") {
        Error::not_found("image", image.as_str())
    } else if lower.contains("connection refused")
        || lower.contains("dial tcp")
        || lower.contains("no such host")
        || lower.contains("timeout")
        || lower.contains("i/o timeout")
    {
        Error::unavailable(format!(
            "cannot pull image {image}: its registry does not answer: {message}"
        ))
    } else if lower.contains("denied") || lower.contains("unauthorized") {
        Error::permission_denied(format!("pull of image {image} refused: {message}"))
    } else {
        Error::Backend {
            backend: "docker",
            message: format!("pull of image {image} failed: {message}"),
            source: None,
        }
    }
}

fn progress_of(
    id: Option<String>,
    status: Option<String>,
    detail: Option<(Option<i64>, Option<i64>)>,
) -> Progress {
    let (current, total) = detail.unwrap_or((None, None));
    Progress {
        id,
        status: status.unwrap_or_default(),
        current: current.and_then(|c| u64::try_from(c).ok()),
        total: total.and_then(|t| u64::try_from(t).ok()),
    }
}

/// Polls the first item now, so an operation that fails at once fails the
/// call instead of the stream.
async fn eager(mut stream: ProgressStream) -> Result<ProgressStream> {
    match stream.next().await {
        None => Ok(Box::pin(futures::stream::empty())),
        Some(Err(e)) => Err(e),
        Some(Ok(first)) => Ok(Box::pin(
            futures::stream::once(async { Ok(first) }).chain(stream),
        )),
    }
}

impl DockerRuntime {
    pub(crate) async fn pull_image_impl(&self, image: &ImageRef) -> Result<ProgressStream> {
        let (from_image, tag) = match (image.digest(), image.tag()) {
            (Some(digest), _) => (format!("{}@{digest}", image.name()), None),
            (None, tag) => (image.name().to_owned(), tag.map(str::to_owned)),
        };
        let options = CreateImageOptions {
            from_image: Some(from_image),
            tag,
            ..CreateImageOptions::default()
        };
        let image = image.clone();
        let stream =
            self.docker
                .create_image(Some(options), None, None)
                .map(move |item| match item {
                    Ok(CreateImageInfo {
                        id,
                        status,
                        progress_detail,
                        ..
                    }) => Ok(progress_of(
                        id,
                        status,
                        progress_detail.map(|d| (d.current, d.total)),
                    )),
                    Err(e) => Err(match status_of(&e) {
                        Some((code, message)) => pull_error(&image, Some(code), message),
                        None => match &e {
                            bollard::errors::Error::DockerStreamError { error } => {
                                pull_error(&image, None, error)
                            }
                            _ => crate::error::map(e, "", "image", image.as_str()),
                        },
                    }),
                });
        eager(Box::pin(stream)).await
    }

    pub(crate) async fn build_image_impl(
        &self,
        spec: &BuildSpec,
        context: ByteStream,
    ) -> Result<ProgressStream> {
        let buildargs: HashMap<String, String> = spec.build_args.clone().into_iter().collect();
        let image_labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
        let options = BuildImageOptionsBuilder::default()
            .dockerfile(&spec.dockerfile)
            .t(spec.tag.as_str())
            .rm(true)
            .forcerm(true)
            .buildargs(&buildargs)
            .labels(&image_labels)
            .build();
        let body =
            bollard::body_try_stream(context.map(|chunk| chunk.map_err(std::io::Error::other)));
        let tag = spec.tag.to_string();
        let endpoint = self.endpoint.clone();
        let docker = self.docker.clone();
        // The engine's stream borrows the client: drive it on a task of its
        // own so the returned stream owns everything.
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let stream = docker.build_image(options, None, Some(body));
            futures::pin_mut!(stream);
            while let Some(item) = stream.next().await {
                if tx.send(item).await.is_err() {
                    break;
                }
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })
        .map(move |item| match item {
            Ok(BuildInfo {
                error_detail: Some(detail),
                ..
            }) => Err(Error::invalid(
                "image build",
                format!("building {tag}: {}", detail.message.unwrap_or_default()),
            )),
            Ok(BuildInfo {
                id,
                stream,
                status,
                progress_detail,
                ..
            }) => {
                let status = stream.map(|s| s.trim_end().to_owned()).or(status);
                Ok(progress_of(
                    id,
                    status,
                    progress_detail.map(|d| (d.current, d.total)),
                ))
            }
            Err(bollard::errors::Error::DockerStreamError { error }) => Err(Error::invalid(
                "image build",
                format!("building {tag}: {error}"),
            )),
            Err(e) => Err(match status_of(&e) {
                Some((code @ (400 | 500), message)) => Error::invalid(
                    "image build",
                    format!("building {tag}: engine answered {code}: {message}"),
                ),
                _ => crate::error::map(e, &endpoint, "image build", &tag),
            }),
        });
        // Drop blank lines the builder emits between steps.
        let stream = stream.filter(|p| {
            futures::future::ready(!matches!(p, Ok(p) if p.status.is_empty() && p.id.is_none()))
        });
        eager(Box::pin(stream)).await
    }

    pub(crate) async fn list_images_impl(&self) -> Result<Vec<ImageInfo>> {
        let list = self
            .docker
            .list_images(Some(ListImagesOptions::default()))
            .await
            .map_err(|e| self.err(e, "image", "*"))?;
        Ok(list.into_iter().map(info_of).collect())
    }

    pub(crate) async fn remove_image_impl(&self, image: &str) -> Result<()> {
        match self
            .docker
            .remove_image(image, None::<RemoveImageOptions>, None)
            .await
        {
            Ok(_) => {
                tracing::info!(image, "image removed");
                Ok(())
            }
            Err(e) => match status_of(&e) {
                Some((404, _)) => Ok(()),
                Some((409, message)) => Err(Error::conflict(format!(
                    "image {image:?} is in use: {message}"
                ))),
                _ => Err(self.err(e, "image", image)),
            },
        }
    }

    /// Removes images that no Kisara container (running or not) uses and
    /// that were created longer ago than `gc.older_than`, among those `gc`
    /// selects. Images other containers still use are skipped. Returns the
    /// ids removed.
    ///
    /// The engine does not record when an image was last used, so age is
    /// counted from the image's creation.
    pub async fn collect_garbage_images(&self, gc: &ImageGc) -> Result<Vec<String>> {
        let containers = self.list_summaries(&LabelFilter::managed(), true).await?;
        let in_use: HashSet<String> = containers.into_iter().filter_map(|c| c.image_id).collect();
        let cutoff = Timestamp::now()
            .unix_millis()
            .saturating_sub(u64::try_from(gc.older_than.as_millis()).unwrap_or(u64::MAX));
        let mut removed = Vec::new();
        for image in self.list_images_impl().await? {
            let selected = gc.labels.matches(&image.labels)
                && (gc.name_prefixes.is_empty()
                    || image
                        .tags
                        .iter()
                        .any(|t| gc.name_prefixes.iter().any(|p| t.starts_with(p.as_str()))));
            if !selected || in_use.contains(&image.id) || image.created_at.unix_millis() > cutoff {
                continue;
            }
            // Untag each tag (the last one deletes it), or remove by id when
            // untagged; never forced, so images other containers use stay.
            let names = if image.tags.is_empty() {
                vec![image.id.clone()]
            } else {
                image.tags.clone()
            };
            let mut gone = true;
            for name in &names {
                match self
                    .docker
                    .remove_image(name, None::<RemoveImageOptions>, None)
                    .await
                {
                    Ok(_) => {}
                    Err(e) => match status_of(&e) {
                        Some((404, _)) => {}
                        Some((409, _)) => gone = false,
                        _ => return Err(self.err(e, "image", name)),
                    },
                }
            }
            if gone {
                removed.push(image.id);
            }
        }
        tracing::info!(removed = removed.len(), "image garbage collected");
        Ok(removed)
    }
}
