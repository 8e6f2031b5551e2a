//! The content of a logical decoding message that carries one event (capture mode
//! [`Capture::Messages`](crate::Capture::Messages)).
//!
//! The save emits, in its transaction, `pg_logical_emit_message(true, 'outbox', content)` per
//! event, where `content` is one UTF-8 JSON object:
//!
//! ```json
//! {"sequence":3,"id":"0192…","aggregate_type":"Order","aggregate_id":"42",
//!  "event_type":"OrderPlaced","version":1,"occurred_at":"2026-12-02T01:02:03.123456Z",
//!  "topic":null,"metadata":{"correlation_id":"…"},"payload":{…}}
//! ```
//!
//! `sequence` comes first: the save computes it in SQL and prepends it to the rest, which is
//! serialized here (`encode_rest`). `payload` is the event's JSON as is (not a string);
//! `metadata` is the envelope's metadata (`{}` when empty); `topic` overrides the routed topic.
//! Debezium's PostgreSQL connector reads these messages too: it turns each into a record with
//! prefix `outbox` and this JSON as its content.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use outbox_core::{Envelope, EventMetadata};
use serde::Deserialize;
use serde_json::value::RawValue;
use uuid::Uuid;

/// The prefix of the logical decoding messages that carry events.
pub const MESSAGE_PREFIX: &str = "outbox";

/// The JSON of `envelope` after its `sequence`: everything but the opening
/// `{"sequence":N,`, closing brace included.
///
/// # Errors
/// When the payload is not JSON or the metadata does not serialize.
pub(crate) fn encode_rest(envelope: &Envelope) -> Result<String, serde_json::Error> {
    let payload: &RawValue = serde_json::from_str(envelope.payload())?;
    let rest = Rest {
        id: envelope.id(),
        aggregate_type: envelope.aggregate_type(),
        aggregate_id: envelope.aggregate_id(),
        event_type: envelope.event_name(),
        version: envelope.event_version(),
        occurred_at: outbox_core::wire::time(envelope.occurred_at()),
        topic: envelope.topic(),
        metadata: envelope.metadata(),
        payload,
    };
    let json = serde_json::to_string(&rest)?;
    // `json` is `{...}`: drop its `{`, the caller writes `{"sequence":N,` before it.
    Ok(json[1..].to_owned())
}

/// The whole content for `envelope`, sequence included (what the save emits, assembled in SQL).
///
/// # Errors
/// As `encode_rest`.
pub fn encode(envelope: &Envelope) -> Result<String, serde_json::Error> {
    Ok(format!(
        "{{\"sequence\":{},{}",
        envelope.sequence(),
        encode_rest(envelope)?
    ))
}

/// Decodes a message's content into its envelope.
///
/// # Errors
/// When `content` is not the JSON [`encode`] writes.
pub fn decode(content: &[u8]) -> Result<Envelope, serde_json::Error> {
    use serde::de::Error as _;
    // One check of the whole content: parsing a `str` then checks no string on its own.
    let text = std::str::from_utf8(content).map_err(serde_json::Error::custom)?;
    let m: Message<'_> = serde_json::from_str(text)?;
    // RFC 3339's own parser: much cheaper than the general one `DateTime`'s `Deserialize` uses.
    let occurred_at = DateTime::parse_from_rfc3339(&m.occurred_at)
        .map_err(|e| serde_json::Error::custom(format!("occurred_at: {e}")))?
        .with_timezone(&Utc);
    Ok(
        Envelope::builder(m.event_type, m.aggregate_type, m.aggregate_id)
            .id(m.id)
            .version(m.version)
            .sequence(m.sequence)
            .occurred_at(occurred_at)
            .payload(m.payload.get().to_owned())
            .metadata(m.metadata)
            .topic(m.topic)
            .build(),
    )
}

#[derive(serde::Serialize)]
struct Rest<'a> {
    id: Uuid,
    aggregate_type: &'a str,
    aggregate_id: &'a str,
    event_type: &'a str,
    version: u32,
    occurred_at: String,
    topic: Option<&'a str>,
    metadata: &'a EventMetadata,
    payload: &'a RawValue,
}

#[derive(Deserialize)]
struct Message<'a> {
    sequence: i64,
    id: Uuid,
    aggregate_type: String,
    aggregate_id: String,
    event_type: String,
    version: u32,
    #[serde(borrow)]
    occurred_at: Cow<'a, str>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    metadata: EventMetadata,
    #[serde(borrow)]
    payload: &'a RawValue,
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{SecondsFormat, SubsecRound};

    #[test]
    fn round_trips_an_envelope() {
        let envelope = Envelope::builder("OrderPlaced", "Order", "42")
            .sequence(7)
            .version(2)
            .payload(r#"{"total":"9.50","lines":[1,2]}"#)
            .metadata(EventMetadata::new().with_correlation_id("c-1"))
            .topic(Some("orders".to_owned()))
            .build();
        let content = encode(&envelope).unwrap();
        assert!(content.starts_with(r#"{"sequence":7,"id":""#), "{content}");
        assert!(content.contains(r#""payload":{"total":"9.50","lines":[1,2]}"#));
        let back = decode(content.as_bytes()).unwrap();
        assert_eq!(back.id(), envelope.id());
        assert_eq!(back.sequence(), 7);
        assert_eq!(back.event_version(), 2);
        assert_eq!(back.aggregate_type(), "Order");
        assert_eq!(back.aggregate_id(), "42");
        assert_eq!(back.event_name(), "OrderPlaced");
        assert_eq!(back.payload(), r#"{"total":"9.50","lines":[1,2]}"#);
        assert_eq!(back.metadata().correlation_id(), Some("c-1"));
        assert_eq!(back.topic(), Some("orders"));
        assert_eq!(back.occurred_at(), envelope.occurred_at().trunc_subsecs(6));
    }

    #[test]
    fn round_trips_escaped_and_non_ascii_text_and_an_offset() {
        let envelope = Envelope::builder("Bestellung\u{e4}", "Ord\"er", "4\\2 \u{1f600}\n").build();
        let back = decode(encode(&envelope).unwrap().as_bytes()).unwrap();
        assert_eq!(back.event_name(), "Bestellung\u{e4}");
        assert_eq!(back.aggregate_type(), "Ord\"er");
        assert_eq!(back.aggregate_id(), "4\\2 \u{1f600}\n");
        // Another writer's offset and escaped digits are read as the same instant.
        let content = br#"{"sequence":1,"id":"0192f5d4-9a0b-7c3d-8e4f-a1b2c3d4e5f6","aggregate_type":"A","aggregate_id":"1","event_type":"E","version":1,"occurred_at":"2026-12-02T02:02:03.5\u0030+01:00","payload":{}}"#;
        let back = decode(content).unwrap();
        assert_eq!(
            back.occurred_at().to_rfc3339(),
            "2026-12-02T01:02:03.500+00:00"
        );
    }

    #[test]
    fn refuses_what_it_did_not_write() {
        assert!(decode(b"not json").is_err());
        assert!(decode(br#"{"sequence":1}"#).is_err());
        let envelope = Envelope::builder("A", "B", "c").build();
        let good = encode(&envelope).unwrap();
        let bad_time = good.replace(
            &envelope
                .occurred_at()
                .to_rfc3339_opts(SecondsFormat::Micros, true),
            "yesterday",
        );
        assert!(decode(bad_time.as_bytes()).is_err(), "{bad_time}");
        let mut not_utf8 = good.into_bytes();
        let at = not_utf8.len() - 3;
        not_utf8[at] = 0xff;
        assert!(decode(&not_utf8).is_err());
        let payload_not_json = Envelope::builder("A", "B", "c").payload("{oops").build();
        assert!(encode(&payload_not_json).is_err());
    }
}
