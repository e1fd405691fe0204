//! The recording conformance suite against `CastStore`, through
//! `Arc<dyn RecordingStore>`, each case in a fresh directory.

use std::sync::Arc;

use kisara_audit::{CastStore, CastStoreOptions};
use kisara_core::testing::recording;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cast_store_passes_the_recording_suite() {
    let parent = tempfile::tempdir().unwrap();
    let root = parent.path().to_owned();
    recording::all(|| {
        let dir = root.join(kisara_core::testing::unique_name("store"));
        async move {
            let options = CastStoreOptions {
                size_cap: 64 * 1024,
                ..CastStoreOptions::default()
            };
            recording::RecordingFixture {
                store: Arc::new(CastStore::open(dir, options).unwrap()),
            }
        }
    })
    .await;
}
