//! [`MemoryRecordingStore`]: the recording contract's reference, for tests.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::model::Timestamp;
use crate::sync::{Mutex, lock};
use crate::traits::recording::{already_finished, check_event_order, truncation_marker};
use crate::{
    Error, EventData, Recording, RecordingCapabilities, RecordingEvent, RecordingFilter,
    RecordingId, RecordingInfo, RecordingRequest, RecordingStore, RecordingWriter, Result,
};

#[derive(Debug)]
struct Entry {
    info: RecordingInfo,
    events: Vec<RecordingEvent>,
}

type Recordings = Arc<Mutex<Vec<Entry>>>;

/// A [`RecordingStore`] that keeps recordings in memory, byte for byte.
///
/// Its size is the bytes of output, input and marker labels (a resize
/// counts as 4, two `u16`s); with a cap it truncates as the contract says.
#[derive(Debug, Default)]
pub struct MemoryRecordingStore {
    recordings: Recordings,
    size_cap: Option<u64>,
}

impl MemoryRecordingStore {
    /// An empty store without a size cap.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store that truncates each recording at `cap` bytes.
    pub fn with_size_cap(cap: u64) -> Self {
        Self {
            size_cap: Some(cap),
            ..Self::default()
        }
    }
}

fn data_len(data: &EventData) -> u64 {
    match data {
        EventData::Output(bytes) | EventData::Input(bytes) => bytes.len() as u64,
        EventData::Resize(_) => 4,
        EventData::Marker(label) => label.len() as u64,
    }
}

#[async_trait]
impl RecordingStore for MemoryRecordingStore {
    fn capabilities(&self) -> RecordingCapabilities {
        RecordingCapabilities {
            raw_bytes: true,
            size_cap: self.size_cap,
        }
    }

    async fn create(&self, request: RecordingRequest) -> Result<Box<dyn RecordingWriter>> {
        let id = RecordingId::generate();
        let info = RecordingInfo::starting(id.clone(), request);
        lock(&self.recordings).push(Entry {
            info,
            events: Vec::new(),
        });
        Ok(Box::new(MemoryRecordingWriter {
            id,
            recordings: self.recordings.clone(),
            size_cap: self.size_cap,
            last_time: Duration::ZERO,
        }))
    }

    async fn open(&self, id: &RecordingId) -> Result<Recording> {
        let recordings = lock(&self.recordings);
        let entry = recordings
            .iter()
            .find(|entry| entry.info.id == *id)
            .ok_or_else(|| Error::not_found("recording", id.as_str()))?;
        let events: Vec<Result<RecordingEvent>> = entry.events.iter().cloned().map(Ok).collect();
        Ok(Recording {
            info: entry.info.clone(),
            events: Box::pin(futures::stream::iter(events)),
        })
    }

    async fn list(&self, filter: &RecordingFilter) -> Result<Vec<RecordingInfo>> {
        let mut infos: Vec<RecordingInfo> = lock(&self.recordings)
            .iter()
            .map(|entry| entry.info.clone())
            .filter(|info| filter.matches(info))
            .collect();
        infos.sort_by_key(|info| info.started);
        Ok(infos)
    }
}

#[derive(Debug)]
struct MemoryRecordingWriter {
    id: RecordingId,
    recordings: Recordings,
    size_cap: Option<u64>,
    last_time: Duration,
}

impl MemoryRecordingWriter {
    fn with_entry<T>(&self, f: impl FnOnce(&mut Entry) -> Result<T>) -> Result<T> {
        let mut recordings = lock(&self.recordings);
        let entry = recordings
            .iter_mut()
            .find(|entry| entry.info.id == self.id)
            .ok_or_else(|| Error::not_found("recording", self.id.as_str()))?;
        f(entry)
    }
}

#[async_trait]
impl RecordingWriter for MemoryRecordingWriter {
    fn id(&self) -> &RecordingId {
        &self.id
    }

    async fn append(&mut self, event: RecordingEvent) -> Result<()> {
        check_event_order(&self.id, self.last_time, &event)?;
        self.last_time = event.time;
        let cap = self.size_cap;
        self.with_entry(|entry| {
            if entry.info.ended.is_some() {
                return Err(already_finished(&entry.info.id));
            }
            if entry.info.truncated {
                return Ok(());
            }
            let len = data_len(&event.data);
            if let Some(cap) = cap {
                let marker = truncation_marker(cap);
                // Room for the marker is kept so that the marker fits too.
                if entry.info.size_bytes + len + marker.len() as u64 > cap {
                    entry.info.size_bytes += marker.len() as u64;
                    entry.info.truncated = true;
                    entry.events.push(RecordingEvent {
                        time: event.time,
                        data: EventData::Marker(marker),
                    });
                    return Ok(());
                }
            }
            entry.info.size_bytes += len;
            entry.events.push(event);
            Ok(())
        })
    }

    async fn finish(&mut self, reason: &str) -> Result<RecordingInfo> {
        self.with_entry(|entry| {
            if entry.info.ended.is_some() {
                return Err(already_finished(&entry.info.id));
            }
            entry.info.ended = Some(Timestamp::now());
            entry.info.end_reason = Some(reason.to_owned());
            Ok(entry.info.clone())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::recording;

    #[tokio::test]
    async fn memory_store_passes_the_recording_suite() {
        recording::all(|| async {
            recording::RecordingFixture {
                store: Arc::new(MemoryRecordingStore::new()),
            }
        })
        .await;
    }

    #[tokio::test]
    async fn capped_memory_store_passes_the_recording_suite() {
        recording::all(|| async {
            recording::RecordingFixture {
                store: Arc::new(MemoryRecordingStore::with_size_cap(64 * 1024)),
            }
        })
        .await;
    }
}
