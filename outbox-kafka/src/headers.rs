//! The message headers an event travels with, and decoding them back into an [`Envelope`].
//!
//! | header | value |
//! |---|---|
//! | `event_id` | event id (UUIDv7) |
//! | `event_name` | event name |
//! | `event_version` | payload version |
//! | `aggregate_type` | aggregate routing name |
//! | `aggregate_id` | aggregate id (also the message key) |
//! | `sequence` | per-aggregate sequence number |
//! | `occurred_at` | RFC 3339, UTC, microseconds |
//! | `content-type` | `application/json` |
//! | `correlation_id`, `causation_id`, `traceparent` | when set in the metadata |
//! | `meta_<key>` | each extra metadata entry |
//! | `ce_specversion` | `1.0` (CloudEvents Kafka binding, binary mode) |
//! | `ce_id`, `ce_type`, `ce_subject`, `ce_time` | event id, event name, aggregate id, occurred at |
//! | `ce_source` | the publisher's source, by default `/outbox/<aggregate type>` |
//! | `ce_sequence` | per-aggregate sequence (CloudEvents sequence extension) |
//! | `ce_traceparent` | when set (CloudEvents distributed tracing extension) |
//!
//! The payload is the event's JSON and the key the aggregate id.

use chrono::{DateTime, SecondsFormat, Utc};
use outbox_core::{Envelope, EventMetadata};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use uuid::Uuid;

/// Event id header.
pub const EVENT_ID: &str = "event_id";
/// Event name header.
pub const EVENT_NAME: &str = "event_name";
/// Payload version header.
pub const EVENT_VERSION: &str = "event_version";
/// Aggregate type header.
pub const AGGREGATE_TYPE: &str = "aggregate_type";
/// Aggregate id header.
pub const AGGREGATE_ID: &str = "aggregate_id";
/// Sequence header.
pub const SEQUENCE: &str = "sequence";
/// Occurred-at header (RFC 3339).
pub const OCCURRED_AT: &str = "occurred_at";
/// Content type header (`application/json`).
pub const CONTENT_TYPE: &str = "content-type";
/// Correlation id header.
pub const CORRELATION_ID: &str = "correlation_id";
/// Causation id header.
pub const CAUSATION_ID: &str = "causation_id";
/// W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";
/// Prefix of the extra metadata headers.
pub const META_PREFIX: &str = "meta_";
/// The content type of every payload.
pub const JSON: &str = "application/json";

/// Why a message is not a well-formed event.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MalformedMessage {
    /// The message has no payload.
    #[error("message has no payload")]
    NoPayload,
    /// The payload is not UTF-8 JSON.
    #[error("payload is not JSON: {0}")]
    NotJson(String),
    /// A required header is missing.
    #[error("header `{0}` is missing")]
    MissingHeader(&'static str),
    /// A header's value does not parse.
    #[error("header `{header}` has an invalid value")]
    InvalidHeader {
        /// The header.
        header: &'static str,
    },
    /// No handler of this consumer group handles the event.
    #[error("no handler of consumer group `{group}` handles event `{event}`")]
    UnknownEvent {
        /// The consumer group.
        group: String,
        /// The event name.
        event: String,
    },
}

impl MalformedMessage {
    /// A short, stable name of the reason (the `dlt_reason` header of a dead letter).
    pub fn reason(&self) -> &'static str {
        match self {
            MalformedMessage::NoPayload => "no-payload",
            MalformedMessage::NotJson(_) => "not-json",
            MalformedMessage::MissingHeader(_) => "missing-header",
            MalformedMessage::InvalidHeader { .. } => "invalid-header",
            MalformedMessage::UnknownEvent { .. } => "unknown-event",
        }
    }
}

pub(crate) fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The headers of `envelope`, with CloudEvents source `source`.
pub(crate) fn encode(envelope: &Envelope, source: &str) -> OwnedHeaders {
    let id = envelope.id().to_string();
    let version = envelope.event_version().to_string();
    let sequence = envelope.sequence().to_string();
    let occurred = time(envelope.occurred_at());
    let meta = envelope.metadata();
    let mut pairs: Vec<(String, &str)> = vec![
        (EVENT_ID.into(), &id),
        (EVENT_NAME.into(), envelope.event_name()),
        (EVENT_VERSION.into(), &version),
        (AGGREGATE_TYPE.into(), envelope.aggregate_type()),
        (AGGREGATE_ID.into(), envelope.aggregate_id()),
        (SEQUENCE.into(), &sequence),
        (OCCURRED_AT.into(), &occurred),
        (CONTENT_TYPE.into(), JSON),
        ("ce_specversion".into(), "1.0"),
        ("ce_id".into(), &id),
        ("ce_source".into(), source),
        ("ce_type".into(), envelope.event_name()),
        ("ce_time".into(), &occurred),
        ("ce_subject".into(), envelope.aggregate_id()),
        ("ce_sequence".into(), &sequence),
    ];
    if let Some(v) = meta.correlation_id() {
        pairs.push((CORRELATION_ID.into(), v));
    }
    if let Some(v) = meta.causation_id() {
        pairs.push((CAUSATION_ID.into(), v));
    }
    if let Some(v) = meta.traceparent() {
        pairs.push((TRACEPARENT.into(), v));
        pairs.push(("ce_traceparent".into(), v));
    }
    for (k, v) in meta.extra() {
        pairs.push((format!("{META_PREFIX}{k}"), v));
    }
    let mut headers = OwnedHeaders::new_with_capacity(pairs.len());
    for (key, value) in &pairs {
        headers = headers.insert(Header {
            key,
            value: Some(*value),
        });
    }
    headers
}

/// The first value of header `key`, as UTF-8.
pub(crate) fn get<'h, H: Headers + ?Sized>(
    headers: &'h H,
    key: &str,
) -> Option<Result<&'h str, ()>> {
    (0..headers.count())
        .filter_map(|i| headers.try_get(i))
        .find(|h| h.key == key)
        .map(|h| std::str::from_utf8(h.value.unwrap_or_default()).map_err(|_| ()))
}

fn required<'h, H: Headers + ?Sized>(
    headers: &'h H,
    key: &'static str,
    fallback: &'static str,
) -> Result<&'h str, MalformedMessage> {
    match get(headers, key).or_else(|| get(headers, fallback)) {
        None => Err(MalformedMessage::MissingHeader(key)),
        Some(Err(())) => Err(MalformedMessage::InvalidHeader { header: key }),
        Some(Ok(v)) => Ok(v),
    }
}

fn optional<'h, H: Headers + ?Sized>(
    headers: &'h H,
    key: &'static str,
) -> Result<Option<&'h str>, MalformedMessage> {
    match get(headers, key) {
        None => Ok(None),
        Some(Err(())) => Err(MalformedMessage::InvalidHeader { header: key }),
        Some(Ok(v)) => Ok(Some(v)),
    }
}

fn parse<T: std::str::FromStr>(
    value: Option<&str>,
    header: &'static str,
) -> Result<Option<T>, MalformedMessage> {
    value
        .map(|v| {
            v.parse::<T>()
                .map_err(|_| MalformedMessage::InvalidHeader { header })
        })
        .transpose()
}

/// Rebuilds the envelope of a message from its headers and payload.
///
/// `event_id`, `event_name`, `aggregate_type` and `aggregate_id` are required (`ce_id`, `ce_type`
/// and `ce_subject` stand in for the first, second and fourth); the rest default as in
/// [`Envelope::builder`]. The payload must be JSON.
///
/// # Errors
/// [`MalformedMessage`] naming what is wrong.
pub fn decode<H: Headers + ?Sized>(
    headers: Option<&H>,
    payload: Option<&[u8]>,
    topic: &str,
) -> Result<Envelope, MalformedMessage> {
    let payload = payload.ok_or(MalformedMessage::NoPayload)?;
    let payload =
        std::str::from_utf8(payload).map_err(|e| MalformedMessage::NotJson(e.to_string()))?;
    serde_json::from_str::<serde::de::IgnoredAny>(payload)
        .map_err(|e| MalformedMessage::NotJson(e.to_string()))?;
    let headers = headers.ok_or(MalformedMessage::MissingHeader(EVENT_ID))?;
    let id: Uuid = required(headers, EVENT_ID, "ce_id")?
        .parse()
        .map_err(|_| MalformedMessage::InvalidHeader { header: EVENT_ID })?;
    let name = required(headers, EVENT_NAME, "ce_type")?;
    let aggregate_type = required(headers, AGGREGATE_TYPE, AGGREGATE_TYPE)?;
    let aggregate_id = required(headers, AGGREGATE_ID, "ce_subject")?;
    let mut builder = Envelope::builder(name, aggregate_type, aggregate_id)
        .id(id)
        .payload(payload)
        .topic(Some(topic.to_owned()));
    if let Some(v) = parse::<u32>(optional(headers, EVENT_VERSION)?, EVENT_VERSION)? {
        builder = builder.version(v);
    }
    if let Some(v) = parse::<i64>(optional(headers, SEQUENCE)?, SEQUENCE)? {
        builder = builder.sequence(v);
    }
    if let Some(v) = optional(headers, OCCURRED_AT)? {
        let at = DateTime::parse_from_rfc3339(v).map_err(|_| MalformedMessage::InvalidHeader {
            header: OCCURRED_AT,
        })?;
        builder = builder.occurred_at(at.with_timezone(&Utc));
    }
    let mut meta = EventMetadata::new();
    if let Some(v) = optional(headers, CORRELATION_ID)? {
        meta = meta.with_correlation_id(v);
    }
    if let Some(v) = optional(headers, CAUSATION_ID)? {
        meta = meta.with_causation_id(v);
    }
    if let Some(v) = optional(headers, TRACEPARENT)? {
        meta = meta.with_traceparent(v);
    }
    for i in 0..headers.count() {
        if let Some(h) = headers.try_get(i)
            && let Some(key) = h.key.strip_prefix(META_PREFIX)
            && let Ok(value) = std::str::from_utf8(h.value.unwrap_or_default())
        {
            meta = meta.with_extra(key, value);
        }
    }
    Ok(builder.metadata(meta).build())
}
