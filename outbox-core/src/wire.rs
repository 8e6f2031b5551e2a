//! The headers an event travels with on a broker, and decoding them back into an [`Envelope`]:
//! one source for every broker backend (Kafka record headers, AMQP application headers).
//!
//! | header | value |
//! |---|---|
//! | `event_id` | event id (UUIDv7) |
//! | `event_name` | event name |
//! | `event_version` | payload version |
//! | `aggregate_type` | aggregate routing name |
//! | `aggregate_id` | aggregate id |
//! | `sequence` | per-aggregate sequence number |
//! | `occurred_at` | RFC 3339, UTC, microseconds |
//! | `content-type` | `application/json` |
//! | `correlation_id`, `causation_id`, `traceparent` | when set in the metadata |
//! | `meta_<key>` | each extra metadata entry |
//! | `<ce>specversion` | `1.0` (CloudEvents binary mode) |
//! | `<ce>id`, `<ce>type`, `<ce>subject`, `<ce>time` | event id, event name, aggregate id, occurred at |
//! | `<ce>source` | the publisher's source, by default `/outbox/<aggregate type>` |
//! | `<ce>sequence` | per-aggregate sequence (CloudEvents sequence extension) |
//! | `<ce>traceparent` | when set (CloudEvents distributed tracing extension) |
//!
//! `<ce>` is the CloudEvents prefix of the protocol binding: [`KAFKA_CLOUDEVENTS_PREFIX`]
//! (`ce_`) or [`AMQP_CLOUDEVENTS_PREFIX`] (`cloudEvents:`).
//!
//! ```
//! use outbox_core::Envelope;
//! use outbox_core::wire;
//!
//! let envelope = Envelope::builder("OrderCreated", "Order", "o-1").build();
//! let headers = wire::encode(&envelope, "/shop", wire::AMQP_CLOUDEVENTS_PREFIX);
//! assert!(headers.iter().any(|(k, v)| k == "cloudEvents:type" && v == "OrderCreated"));
//!
//! let pairs: Vec<(String, String)> =
//!     headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
//! let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
//! let back = wire::decode(Some(pairs.as_slice()), Some(b"{}"), "orders",
//!     wire::AMQP_CLOUDEVENTS_PREFIX).unwrap();
//! assert_eq!(back.id(), envelope.id());
//! ```

use std::borrow::Cow;

use chrono::{DateTime, SecondsFormat, Utc};
use uuid::Uuid;

use crate::envelope::{Envelope, EventMetadata};

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
/// CloudEvents attribute prefix of the Kafka protocol binding.
pub const KAFKA_CLOUDEVENTS_PREFIX: &str = "ce_";
/// CloudEvents attribute prefix of the AMQP protocol binding (application properties).
pub const AMQP_CLOUDEVENTS_PREFIX: &str = "cloudEvents:";

/// Header names of a dead letter (besides the original headers and payload), shared by the
/// broker backends.
pub mod dlt {
    /// Why: `malformed:<kind>` (see [`super::MalformedMessage::reason`]),
    /// `handler-failed` or `handler-permanent`.
    pub const REASON: &str = "dlt_reason";
    /// The error, with its full chain of causes.
    pub const ERROR: &str = "dlt_error";
    /// How many attempts were made.
    pub const ATTEMPTS: &str = "dlt_attempts";
    /// The topic (Kafka) or exchange (AMQP) the message came from.
    pub const ORIGINAL_TOPIC: &str = "dlt_original_topic";
    /// Its partition (Kafka).
    pub const ORIGINAL_PARTITION: &str = "dlt_original_partition";
    /// Its offset (Kafka).
    pub const ORIGINAL_OFFSET: &str = "dlt_original_offset";
    /// Its routing key (AMQP).
    pub const ORIGINAL_ROUTING_KEY: &str = "dlt_original_routing_key";
    /// The queue it was consumed from (AMQP).
    pub const ORIGINAL_QUEUE: &str = "dlt_original_queue";
    /// The handler that failed, when one did.
    pub const HANDLER: &str = "dlt_handler";
    /// The consumer group.
    pub const GROUP: &str = "dlt_group";
}

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

/// `at` as the headers carry it: RFC 3339, UTC, microseconds.
pub fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// One header: its name and its value.
pub type Header<'a> = (Cow<'static, str>, Cow<'a, str>);

/// The headers of `envelope`, in a fixed order, with CloudEvents source `source` and the
/// CloudEvents attribute prefix `ce_prefix` of the protocol binding.
pub fn encode<'a>(envelope: &'a Envelope, source: &'a str, ce_prefix: &str) -> Vec<Header<'a>> {
    let mut pairs: Vec<Header<'a>> = Vec::with_capacity(16 + envelope.metadata().extra().len());
    visit(envelope, source, ce_prefix, |name, value| {
        pairs.push((name, Cow::Owned(value.to_owned())));
    });
    pairs
}

/// Hands each header of `envelope` to `header`, in [`encode`]'s order, without building the
/// list: the values of the id, sequence, version and time are formatted on the stack, so a
/// broker backend that copies them into its own message (Kafka's record headers) allocates
/// nothing per header here.
pub fn visit(
    envelope: &Envelope,
    source: &str,
    ce_prefix: &str,
    mut header: impl FnMut(Cow<'static, str>, &str),
) {
    let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let id: &str = envelope.id().hyphenated().encode_lower(&mut id);
    let mut sequence = Stack::<24>::new();
    let sequence = sequence.display(envelope.sequence());
    let mut version = Stack::<12>::new();
    let version = version.display(envelope.event_version());
    let mut occurred = Stack::<40>::new();
    let occurred = occurred.time(envelope.occurred_at());
    let meta = envelope.metadata();
    let ce = |name: &'static str| ce_name(ce_prefix, name);
    header(EVENT_ID.into(), id);
    header(EVENT_NAME.into(), envelope.event_name());
    header(EVENT_VERSION.into(), version);
    header(AGGREGATE_TYPE.into(), envelope.aggregate_type());
    header(AGGREGATE_ID.into(), envelope.aggregate_id());
    header(SEQUENCE.into(), sequence);
    header(OCCURRED_AT.into(), &occurred);
    header(CONTENT_TYPE.into(), JSON);
    header(ce("specversion"), "1.0");
    header(ce("id"), id);
    header(ce("source"), source);
    header(ce("type"), envelope.event_name());
    header(ce("time"), &occurred);
    header(ce("subject"), envelope.aggregate_id());
    header(ce("sequence"), sequence);
    if let Some(v) = meta.correlation_id() {
        header(CORRELATION_ID.into(), v);
    }
    if let Some(v) = meta.causation_id() {
        header(CAUSATION_ID.into(), v);
    }
    if let Some(v) = meta.traceparent() {
        header(TRACEPARENT.into(), v);
        header(ce("traceparent"), v);
    }
    for (k, v) in meta.extra() {
        header(Cow::Owned(format!("{META_PREFIX}{k}")), v);
    }
}

/// A text of at most `N` bytes formatted on the stack.
struct Stack<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Stack<N> {
    fn new() -> Self {
        Stack {
            buf: [0; N],
            len: 0,
        }
    }

    fn as_str(&self) -> &str {
        // Only whole `&str`s are ever copied in (`write_str`), so this cannot fail.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }

    /// `value` as text (a number, here: it fits).
    fn display(&mut self, value: impl std::fmt::Display) -> &str {
        use std::fmt::Write;
        self.len = 0;
        if write!(self, "{value}").is_err() {
            self.len = 0;
        }
        self.as_str()
    }

    /// `at` as [`time`] writes it; through [`time`] itself for what the fast form does not
    /// cover (years outside 0000-9999, leap seconds).
    fn time(&mut self, at: DateTime<Utc>) -> Cow<'_, str> {
        use chrono::{Datelike, Timelike};
        use std::fmt::Write;
        let (year, nanos) = (at.year(), at.nanosecond());
        if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
            return Cow::Owned(time(at));
        }
        self.len = 0;
        let written = write!(
            self,
            "{year:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
            at.month(),
            at.day(),
            at.hour(),
            at.minute(),
            at.second(),
            nanos / 1000
        );
        match written {
            Ok(()) => Cow::Borrowed(self.as_str()),
            Err(_) => Cow::Owned(time(at)),
        }
    }
}

impl<const N: usize> std::fmt::Write for Stack<N> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let slot = self.buf.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        slot.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// The CloudEvents attribute `name` with the binding's prefix: a static name for the two
/// bindings this crate knows (no allocation per message), an owned one for any other prefix.
fn ce_name(ce_prefix: &str, name: &'static str) -> Cow<'static, str> {
    macro_rules! known {
        ($($attr:literal),*) => {
            match (ce_prefix, name) {
                $(
                    (KAFKA_CLOUDEVENTS_PREFIX, $attr) => return Cow::Borrowed(concat!("ce_", $attr)),
                    (AMQP_CLOUDEVENTS_PREFIX, $attr) => {
                        return Cow::Borrowed(concat!("cloudEvents:", $attr))
                    }
                )*
                _ => {}
            }
        };
    }
    known!(
        "specversion",
        "id",
        "source",
        "type",
        "time",
        "subject",
        "sequence",
        "traceparent"
    );
    Cow::Owned(format!("{ce_prefix}{name}"))
}

/// A header value as a message carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderValue<'a> {
    /// A text value.
    Text(&'a str),
    /// A value that is not text (not UTF-8, or of another type).
    NotText,
}

/// The headers of one message, as [`decode`] reads them: a lookup by name (the first value of
/// that name) and every text header in order (for the `meta_` ones).
pub trait HeaderSource<'h> {
    /// The first header named `key`, or `None` when there is none.
    fn get(&self, key: &str) -> Option<HeaderValue<'h>>;
    /// Every header with a text value, in order.
    fn texts(&self) -> Vec<(&'h str, &'h str)>;
}

/// Text headers given as `(name, value)` pairs, in order.
impl<'h> HeaderSource<'h> for &'h [(&'h str, &'h str)] {
    fn get(&self, key: &str) -> Option<HeaderValue<'h>> {
        self.iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| HeaderValue::Text(v))
    }
    fn texts(&self) -> Vec<(&'h str, &'h str)> {
        self.to_vec()
    }
}

fn required<'h>(
    headers: &impl HeaderSource<'h>,
    key: &'static str,
    fallback: &str,
) -> Result<&'h str, MalformedMessage> {
    match headers.get(key).or_else(|| headers.get(fallback)) {
        None => Err(MalformedMessage::MissingHeader(key)),
        Some(HeaderValue::NotText) => Err(MalformedMessage::InvalidHeader { header: key }),
        Some(HeaderValue::Text(v)) => Ok(v),
    }
}

fn optional<'h>(
    headers: &impl HeaderSource<'h>,
    key: &'static str,
) -> Result<Option<&'h str>, MalformedMessage> {
    match headers.get(key) {
        None => Ok(None),
        Some(HeaderValue::NotText) => Err(MalformedMessage::InvalidHeader { header: key }),
        Some(HeaderValue::Text(v)) => Ok(Some(v)),
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
/// `event_id`, `event_name`, `aggregate_type` and `aggregate_id` are required (`<ce>id`,
/// `<ce>type` and `<ce>subject` stand in for the first, second and fourth); the rest default as
/// in [`Envelope::builder`]. The payload must be JSON. `topic` becomes [`Envelope::topic`].
///
/// # Errors
/// [`MalformedMessage`] naming what is wrong: the payload is checked first, then the headers
/// (no headers at all is a missing `event_id`).
pub fn decode<'h>(
    headers: Option<impl HeaderSource<'h>>,
    payload: Option<&[u8]>,
    topic: &str,
    ce_prefix: &str,
) -> Result<Envelope, MalformedMessage> {
    let payload = payload.ok_or(MalformedMessage::NoPayload)?;
    let payload =
        std::str::from_utf8(payload).map_err(|e| MalformedMessage::NotJson(e.to_string()))?;
    serde_json::from_str::<serde::de::IgnoredAny>(payload)
        .map_err(|e| MalformedMessage::NotJson(e.to_string()))?;
    let headers = headers.ok_or(MalformedMessage::MissingHeader(EVENT_ID))?;
    let id: Uuid = required(&headers, EVENT_ID, &format!("{ce_prefix}id"))?
        .parse()
        .map_err(|_| MalformedMessage::InvalidHeader { header: EVENT_ID })?;
    let name = required(&headers, EVENT_NAME, &format!("{ce_prefix}type"))?;
    let aggregate_type = required(&headers, AGGREGATE_TYPE, AGGREGATE_TYPE)?;
    let aggregate_id = required(&headers, AGGREGATE_ID, &format!("{ce_prefix}subject"))?;
    let mut builder = Envelope::builder(name, aggregate_type, aggregate_id)
        .id(id)
        .payload(payload)
        .topic(Some(topic.to_owned()));
    if let Some(v) = parse::<u32>(optional(&headers, EVENT_VERSION)?, EVENT_VERSION)? {
        builder = builder.version(v);
    }
    if let Some(v) = parse::<i64>(optional(&headers, SEQUENCE)?, SEQUENCE)? {
        builder = builder.sequence(v);
    }
    if let Some(v) = optional(&headers, OCCURRED_AT)? {
        let at = DateTime::parse_from_rfc3339(v).map_err(|_| MalformedMessage::InvalidHeader {
            header: OCCURRED_AT,
        })?;
        builder = builder.occurred_at(at.with_timezone(&Utc));
    }
    let mut meta = EventMetadata::new();
    if let Some(v) = optional(&headers, CORRELATION_ID)? {
        meta = meta.with_correlation_id(v);
    }
    if let Some(v) = optional(&headers, CAUSATION_ID)? {
        meta = meta.with_causation_id(v);
    }
    if let Some(v) = optional(&headers, TRACEPARENT)? {
        meta = meta.with_traceparent(v);
    }
    for (key, value) in headers.texts() {
        if let Some(key) = key.strip_prefix(META_PREFIX) {
            meta = meta.with_extra(key, value);
        }
    }
    Ok(builder.metadata(meta).build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloudevents_names_are_the_prefix_and_the_attribute() {
        let attrs = [
            "specversion",
            "id",
            "source",
            "type",
            "time",
            "subject",
            "sequence",
            "traceparent",
        ];
        for prefix in [KAFKA_CLOUDEVENTS_PREFIX, AMQP_CLOUDEVENTS_PREFIX, "x-ce-"] {
            for attr in attrs {
                let name = ce_name(prefix, attr);
                assert_eq!(name, format!("{prefix}{attr}"));
                let known = prefix != "x-ce-";
                assert_eq!(matches!(name, Cow::Borrowed(_)), known, "{prefix}{attr}");
            }
        }
    }

    /// The stack-formatted time is `time`'s text, for every kind of instant.
    #[test]
    fn stack_time_is_the_rfc3339_text() {
        use chrono::TimeZone;
        let instants = [
            Utc.with_ymd_and_hms(2026, 12, 2, 1, 2, 3).unwrap(),
            Utc.timestamp_opt(0, 0).unwrap(),
            Utc.timestamp_opt(1_700_000_000, 999_999_999).unwrap(),
            Utc.timestamp_opt(1_700_000_000, 1_000).unwrap(),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(0, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(-44, 3, 15, 12, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(10_000, 1, 1, 0, 0, 0).unwrap(),
            // A leap second.
            Utc.timestamp_opt(1_483_228_799, 1_500_000_000).unwrap(),
            Utc::now(),
        ];
        for at in instants {
            let mut stack = Stack::<40>::new();
            assert_eq!(stack.time(at), time(at), "{at:?}");
        }
    }

    /// `visit` hands over what `encode` lists, in the same order; numbers as text.
    #[test]
    fn visit_and_encode_agree() {
        let envelope = Envelope::builder("OrderPlaced", "Order", "o-1")
            .sequence(-7)
            .version(u32::MAX)
            .metadata(
                EventMetadata::new()
                    .with_causation_id("c")
                    .with_traceparent("00-a-b-01")
                    .with_extra("tenant", "t"),
            )
            .build();
        let mut visited = Vec::new();
        visit(&envelope, "/src", "x-", |k, v| {
            visited.push((k.into_owned(), v.to_owned()));
        });
        let encoded: Vec<(String, String)> = encode(&envelope, "/src", "x-")
            .into_iter()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        assert_eq!(visited, encoded);
        let value = |name: &str| {
            visited
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(value(SEQUENCE).as_deref(), Some("-7"));
        assert_eq!(value("x-sequence").as_deref(), Some("-7"));
        assert_eq!(value(EVENT_VERSION), Some(u32::MAX.to_string()));
        assert_eq!(value(EVENT_ID), Some(envelope.id().to_string()));
        assert_eq!(value(OCCURRED_AT), Some(time(envelope.occurred_at())));
        assert_eq!(value("meta_tenant").as_deref(), Some("t"));
        assert_eq!(visited.len(), 19);
    }
}
