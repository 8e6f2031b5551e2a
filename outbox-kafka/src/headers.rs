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
//! The payload is the event's JSON and the key the aggregate id. The names and the encoding
//! are [`outbox_core::wire`]'s, shared with the other broker backends.

use outbox_core::Envelope;
use outbox_core::wire::{self, HeaderSource, HeaderValue, KAFKA_CLOUDEVENTS_PREFIX};
use rdkafka::message::{Header, Headers, OwnedHeaders};

pub use outbox_core::wire::{
    AGGREGATE_ID, AGGREGATE_TYPE, CAUSATION_ID, CONTENT_TYPE, CORRELATION_ID, EVENT_ID, EVENT_NAME,
    EVENT_VERSION, JSON, META_PREFIX, MalformedMessage, OCCURRED_AT, SEQUENCE, TRACEPARENT,
};

/// The headers of `envelope` as [`KafkaPublisher`](crate::KafkaPublisher) writes them, with
/// CloudEvents source `source` (see [`outbox_core::wire`]), copied straight into librdkafka's
/// header list: for a producer of one's own that must write messages the project's consumers
/// read.
pub fn encode(envelope: &Envelope, source: &str) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new_with_capacity(16 + envelope.metadata().extra().len());
    wire::visit(envelope, source, KAFKA_CLOUDEVENTS_PREFIX, |key, value| {
        headers = std::mem::take(&mut headers).insert(Header {
            key: &key,
            value: Some(value),
        });
    });
    headers
}

/// rdkafka's headers, as [`wire::decode`] reads them (a header without a value is empty text).
struct Kafka<'h, H: ?Sized>(&'h H);

impl<'h, H: Headers + ?Sized> HeaderSource<'h> for Kafka<'h, H> {
    fn get(&self, key: &str) -> Option<HeaderValue<'h>> {
        (0..self.0.count())
            .filter_map(|i| self.0.try_get(i))
            .find(|h| h.key == key)
            .map(|h| match std::str::from_utf8(h.value.unwrap_or_default()) {
                Ok(v) => HeaderValue::Text(v),
                Err(_) => HeaderValue::NotText,
            })
    }
    fn texts(&self) -> Vec<(&'h str, &'h str)> {
        (0..self.0.count())
            .filter_map(|i| self.0.try_get(i))
            .filter_map(|h| {
                std::str::from_utf8(h.value.unwrap_or_default())
                    .ok()
                    .map(|v| (h.key, v))
            })
            .collect()
    }
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
    wire::decode(headers.map(Kafka), payload, topic, KAFKA_CLOUDEVENTS_PREFIX)
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use outbox_core::{Envelope, EventMetadata};
    use rdkafka::message::Headers;
    use uuid::Uuid;

    /// The Kafka wire format, header by header, in order: what consumers of other stacks read.
    #[test]
    fn headers_keep_their_names_values_and_order() {
        let id = Uuid::parse_str("0190a6b2-7c1e-7d3a-9f00-0123456789ab").unwrap();
        let envelope = Envelope::builder("OrderPlaced", "Order", "o-7")
            .id(id)
            .version(3)
            .sequence(42)
            .occurred_at(Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap())
            .payload("{}")
            .metadata(
                EventMetadata::new()
                    .with_correlation_id("corr")
                    .with_causation_id("cause")
                    .with_traceparent("00-abc-def-01")
                    .with_extra("tenant", "t1"),
            )
            .build();
        let headers = super::encode(&envelope, "/shop");
        let got: Vec<(String, String)> = headers
            .iter()
            .map(|h| {
                (
                    h.key.to_owned(),
                    String::from_utf8(h.value.unwrap().to_vec()).unwrap(),
                )
            })
            .collect();
        let at = "2026-01-02T03:04:05.000000Z";
        let id = id.to_string();
        let want: Vec<(&str, &str)> = vec![
            ("event_id", &id),
            ("event_name", "OrderPlaced"),
            ("event_version", "3"),
            ("aggregate_type", "Order"),
            ("aggregate_id", "o-7"),
            ("sequence", "42"),
            ("occurred_at", at),
            ("content-type", "application/json"),
            ("ce_specversion", "1.0"),
            ("ce_id", &id),
            ("ce_source", "/shop"),
            ("ce_type", "OrderPlaced"),
            ("ce_time", at),
            ("ce_subject", "o-7"),
            ("ce_sequence", "42"),
            ("correlation_id", "corr"),
            ("causation_id", "cause"),
            ("traceparent", "00-abc-def-01"),
            ("ce_traceparent", "00-abc-def-01"),
            ("meta_tenant", "t1"),
        ];
        let want: Vec<(String, String)> = want
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(got, want);
        let back = super::decode(Some(&headers), Some(b"{}"), "orders").unwrap();
        assert_eq!(back.id(), envelope.id());
        assert_eq!(back.sequence(), 42);
        assert_eq!(back.metadata(), envelope.metadata());
    }
}
