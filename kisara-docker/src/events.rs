//! Events: the engine's container events as core events.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use bollard::models::EventMessage;
use bollard::query_parameters::EventsOptions;
use futures::StreamExt;
use kisara_core::model::{
    ContainerEvent, ContainerEventKind, ContainerId, LabelFilter, Labels, Timestamp,
};
use kisara_core::{EventStream, Result};

use crate::runtime::{DockerRuntime, label_filters};

/// Attributes the engine adds to a container event besides its labels.
const NOT_LABELS: &[&str] = &[
    "name",
    "image",
    "exitCode",
    "signal",
    "execID",
    "execDuration",
];

/// The core event of an engine event, when Kisara maps its action.
pub(crate) fn event_of(message: EventMessage) -> Option<ContainerEvent> {
    let actor = message.actor?;
    let attributes = actor.attributes.unwrap_or_default();
    let kind = match message.action.as_deref()? {
        "create" => ContainerEventKind::Create,
        "start" => ContainerEventKind::Start,
        "die" => ContainerEventKind::Die {
            exit_code: attributes
                .get("exitCode")
                .and_then(|c| c.parse().ok())
                .unwrap_or(-1),
        },
        "oom" => ContainerEventKind::Oom,
        "destroy" => ContainerEventKind::Destroy,
        _ => return None,
    };
    let labels: Labels = attributes
        .into_iter()
        .filter(|(key, _)| !NOT_LABELS.contains(&key.as_str()))
        .collect();
    let time = message
        .time_nano
        .and_then(|n| u64::try_from(n / 1_000_000).ok())
        .or_else(|| {
            message
                .time
                .and_then(|s| u64::try_from(s).ok())
                .map(|s| s * 1000)
        })
        .map_or_else(Timestamp::now, Timestamp::from_unix_millis);
    Some(ContainerEvent {
        container: ContainerId::new(actor.id.unwrap_or_default()),
        kind,
        labels,
        time,
    })
}

impl DockerRuntime {
    pub(crate) fn events_impl(&self, filter: &LabelFilter) -> Result<EventStream> {
        // From the moment of the call on: the engine replays what happened
        // between now and the stream's first poll, so nothing is lost.
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut filters = HashMap::from([
            ("type".to_owned(), vec!["container".to_owned()]),
            (
                "event".to_owned(),
                ["create", "start", "die", "oom", "destroy"]
                    .map(str::to_owned)
                    .to_vec(),
            ),
        ]);
        let labels = label_filters(filter);
        if !labels.is_empty() {
            filters.insert("label".to_owned(), labels);
        }
        let options = EventsOptions {
            since: Some(format!("{}.{:09}", since.as_secs(), since.subsec_nanos())),
            until: None,
            filters: Some(filters),
        };
        let filter = filter.clone();
        let endpoint = self.endpoint.clone();
        let stream = self.docker.events(Some(options)).filter_map(move |item| {
            let out = match item {
                Ok(message) => event_of(message)
                    .filter(|e| filter.matches(&e.labels))
                    .map(Ok),
                Err(e) => Some(Err(crate::error::map(
                    e,
                    &endpoint,
                    "event stream",
                    "container",
                ))),
            };
            futures::future::ready(out)
        });
        Ok(Box::pin(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::EventActor;

    #[test]
    fn die_events_carry_exit_code_and_only_labels() {
        let message = EventMessage {
            action: Some("die".into()),
            actor: Some(EventActor {
                id: Some("abc".into()),
                attributes: Some(HashMap::from([
                    ("exitCode".to_owned(), "7".to_owned()),
                    ("name".to_owned(), "web".to_owned()),
                    ("image".to_owned(), "busybox".to_owned()),
                    ("io.kisara.owner".to_owned(), "7".to_owned()),
                ])),
            }),
            time_nano: Some(1_700_000_000_123_000_000),
            ..EventMessage::default()
        };
        let event = event_of(message).unwrap();
        assert_eq!(event.kind, ContainerEventKind::Die { exit_code: 7 });
        assert_eq!(event.labels.len(), 1);
        assert_eq!(event.labels["io.kisara.owner"], "7");
        assert_eq!(event.time.unix_millis(), 1_700_000_000_123);
    }
}
