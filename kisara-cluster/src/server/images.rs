//! [`Server`]: images on one node or on every online node.

use super::*;

impl Server {
    /// The images on the node named, or on every online node, with their
    /// nodes.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] for an unknown node, [`Error::Unavailable`] for
    /// an offline one; a node's own failure, naming the node.
    pub async fn list_images(&self, node: Option<&NodeId>) -> Result<Vec<(NodeId, ImageInfo)>> {
        Self::gather(self.targets(node)?, |runtime| async move {
            runtime.list_images().await
        })
        .await
    }

    /// Pulls `image` from its registry onto the node named, or onto every
    /// online node, and streams each node's progress.
    ///
    /// The pulls start when the stream is first polled and run
    /// concurrently; each node's items keep their order and end with one
    /// [`PullEvent::Done`], whose error (the registry has no such image, the
    /// node's engine failed) names the node. One node failing does not stop
    /// the others. Dropping the stream stops waiting for the pulls.
    /// [`drain_pull`] reads it to the end.
    ///
    /// # Errors
    ///
    /// Before anything is pulled: [`Error::NotFound`] for an unknown node,
    /// [`Error::Unavailable`] for an offline one or when no node is online.
    pub fn pull_image(&self, image: &ImageRef, node: Option<&NodeId>) -> Result<PullStream> {
        let targets = self.targets(node)?;
        if targets.is_empty() {
            return Err(Error::unavailable(format!(
                "no online node to pull image {image} on"
            )));
        }
        let pulls = targets
            .into_iter()
            .map(|(node, runtime)| Box::pin(pull_on(node, runtime, image.clone())));
        Ok(Box::pin(futures::stream::select_all(pulls)))
    }

    /// Removes `image` from the node named, or from every online node; `Ok`
    /// where it is missing.
    ///
    /// Every node is tried even when one fails.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] for an unknown node, [`Error::Unavailable`] for
    /// an offline one; otherwise the first node's failure, naming the node
    /// (e.g. [`Error::Conflict`] when a container uses the image there).
    pub async fn remove_image(&self, image: &ImageRef, node: Option<&NodeId>) -> Result<()> {
        let mut first = None;
        for (node, runtime) in self.targets(node)? {
            match runtime.remove_image(image.as_str()).await {
                Ok(()) => tracing::info!(%node, %image, "image removed"),
                Err(error) => {
                    let error = on_node(error, &node);
                    tracing::warn!(%error, %image, "image removal failed");
                    first.get_or_insert(error);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}
