//! The envelope an event travels in: ids, names, order and the JSON payload.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::Error;
use crate::event::DomainEvent;

/// Correlation, causation and tracing data carried beside the payload.
///
/// When a handler runs for an event, events registered inside it inherit the correlation id and
/// take the handled event's id as their causation id (see [`crate::context`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    correlation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    causation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    extra: BTreeMap<String, String>,
}

impl EventMetadata {
    /// Empty metadata.
    pub fn new() -> Self {
        Self::default()
    }

    /// The id shared by every event of one business flow.
    pub fn correlation_id(&self) -> Option<&str> {
        self.correlation_id.as_deref()
    }

    /// The id of the event (or command) that caused this one.
    pub fn causation_id(&self) -> Option<&str> {
        self.causation_id.as_deref()
    }

    /// The W3C `traceparent` of the span that registered the event.
    pub fn traceparent(&self) -> Option<&str> {
        self.traceparent.as_deref()
    }

    /// Further key/value pairs (published as message headers).
    pub fn extra(&self) -> &BTreeMap<String, String> {
        &self.extra
    }

    /// Sets the correlation id.
    #[must_use]
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// Sets the causation id.
    #[must_use]
    pub fn with_causation_id(mut self, id: impl Into<String>) -> Self {
        self.causation_id = Some(id.into());
        self
    }

    /// Sets the W3C `traceparent`.
    #[must_use]
    pub fn with_traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.traceparent = Some(traceparent.into());
        self
    }

    /// Adds a key/value pair.
    #[must_use]
    pub fn with_extra(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.correlation_id.is_none()
            && self.causation_id.is_none()
            && self.traceparent.is_none()
            && self.extra.is_empty()
    }

    /// The metadata of events caused by the event in `envelope`: same correlation (or the
    /// event's own id when it had none), causation = the event's id, same trace.
    pub fn caused_by(envelope: &Envelope) -> Self {
        let parent = envelope.metadata();
        EventMetadata {
            correlation_id: Some(
                parent
                    .correlation_id
                    .clone()
                    .unwrap_or_else(|| envelope.id().to_string()),
            ),
            causation_id: Some(envelope.id().to_string()),
            traceparent: parent.traceparent.clone(),
            extra: BTreeMap::new(),
        }
    }
}

/// A saved domain event with everything needed to route, order and decode it.
///
/// Built by the backends from outbox rows or message headers; users read it through
/// [`crate::EventContext::envelope`].
#[derive(Clone, PartialEq)]
pub struct Envelope {
    id: Uuid,
    event_name: String,
    event_version: u32,
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    occurred_at: DateTime<Utc>,
    payload: String,
    metadata: EventMetadata,
    topic: Option<String>,
}

impl Envelope {
    /// Starts an envelope for event `event_name` of aggregate `aggregate_type`/`aggregate_id`.
    ///
    /// Unset fields default to: a new UUIDv7 id, version 1, sequence 0, occurred now, payload
    /// `null`, empty metadata, no topic override.
    pub fn builder(
        event_name: impl Into<String>,
        aggregate_type: impl Into<String>,
        aggregate_id: impl Into<String>,
    ) -> EnvelopeBuilder {
        EnvelopeBuilder {
            envelope: Envelope {
                id: Uuid::now_v7(),
                event_name: event_name.into(),
                event_version: 1,
                aggregate_type: aggregate_type.into(),
                aggregate_id: aggregate_id.into(),
                sequence: 0,
                occurred_at: Utc::now(),
                payload: "null".to_owned(),
                metadata: EventMetadata::default(),
                topic: None,
            },
        }
    }

    /// The event id (UUIDv7), unique across all events.
    pub fn id(&self) -> Uuid {
        self.id
    }
    /// The event name ([`DomainEvent::NAME`]).
    pub fn event_name(&self) -> &str {
        &self.event_name
    }
    /// The payload's schema version.
    pub fn event_version(&self) -> u32 {
        self.event_version
    }
    /// The aggregate's routing name.
    pub fn aggregate_type(&self) -> &str {
        &self.aggregate_type
    }
    /// The aggregate's id.
    pub fn aggregate_id(&self) -> &str {
        &self.aggregate_id
    }
    /// The event's position among its aggregate's events, from 1, without gaps.
    pub fn sequence(&self) -> i64 {
        self.sequence
    }
    /// The same envelope at position `sequence`: what a backend does once the database has
    /// numbered the aggregate's events (the payload is moved, not copied).
    #[must_use]
    pub fn with_sequence(mut self, sequence: i64) -> Self {
        self.sequence = sequence;
        self
    }
    /// When the event was registered.
    pub fn occurred_at(&self) -> DateTime<Utc> {
        self.occurred_at
    }
    /// The JSON payload.
    pub fn payload(&self) -> &str {
        &self.payload
    }
    /// Correlation, causation and trace ids.
    pub fn metadata(&self) -> &EventMetadata {
        &self.metadata
    }
    /// The metadata, to stamp a trace context on it ([`crate::trace::stamp_current`]).
    #[cfg(feature = "opentelemetry")]
    pub(crate) fn metadata_mut(&mut self) -> &mut EventMetadata {
        &mut self.metadata
    }
    /// The topic set on the event type, if it overrides the default routing.
    pub fn topic(&self) -> Option<&str> {
        self.topic.as_deref()
    }

    /// Whether this envelope carries an event of type `E`.
    pub fn is<E: DomainEvent>(&self) -> bool {
        self.event_name == E::NAME
    }

    /// Deserializes the payload as `E`, upcasting it when the envelope's version is older than
    /// `E`'s ([`DomainEvent::read_payload`]).
    ///
    /// # Errors
    /// [`Error::WrongEvent`] when the envelope holds another event; [`Error::VersionTooNew`] or
    /// [`Error::VersionUnreachable`] when `E` cannot read the envelope's version;
    /// [`Error::Decode`] when the payload does not deserialize.
    pub fn decode<E: DomainEvent>(&self) -> Result<E, Error> {
        if !self.is::<E>() {
            return Err(Error::WrongEvent {
                expected: E::NAME,
                found: self.event_name.clone(),
            });
        }
        crate::event::check_version::<E>(self.event_version)?;
        E::read_payload(self.event_version, &self.payload)
    }
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("id", &self.id)
            .field("event", &self.event_name)
            .field("version", &self.event_version)
            .field("aggregate_type", &self.aggregate_type)
            .field("aggregate_id", &self.aggregate_id)
            .field("sequence", &self.sequence)
            .field("occurred_at", &self.occurred_at)
            .finish_non_exhaustive()
    }
}

/// Builds an [`Envelope`]; see [`Envelope::builder`].
#[derive(Debug)]
#[must_use]
pub struct EnvelopeBuilder {
    envelope: Envelope,
}

impl EnvelopeBuilder {
    /// Sets the event id.
    pub fn id(mut self, id: Uuid) -> Self {
        self.envelope.id = id;
        self
    }
    /// Sets the payload version.
    pub fn version(mut self, version: u32) -> Self {
        self.envelope.event_version = version;
        self
    }
    /// Sets the per-aggregate sequence number.
    pub fn sequence(mut self, sequence: i64) -> Self {
        self.envelope.sequence = sequence;
        self
    }
    /// Sets the time the event occurred.
    pub fn occurred_at(mut self, at: DateTime<Utc>) -> Self {
        self.envelope.occurred_at = at;
        self
    }
    /// Sets the JSON payload.
    pub fn payload(mut self, json: impl Into<String>) -> Self {
        self.envelope.payload = json.into();
        self
    }
    /// Sets the metadata.
    pub fn metadata(mut self, metadata: EventMetadata) -> Self {
        self.envelope.metadata = metadata;
        self
    }
    /// Sets (or clears) the topic override.
    pub fn topic(mut self, topic: Option<String>) -> Self {
        self.envelope.topic = topic;
        self
    }
    /// Finishes the envelope.
    pub fn build(self) -> Envelope {
        self.envelope
    }
}
