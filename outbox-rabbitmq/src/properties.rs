//! An event as an AMQP message: properties, application headers and body, and back.
//!
//! | AMQP | value |
//! |---|---|
//! | body | the event's JSON |
//! | `delivery_mode` | 2 (persistent) |
//! | `message_id` | event id |
//! | `timestamp` | occurred at, in seconds (AMQP 0-9-1 resolution) |
//! | `content_type` | `application/json` |
//! | `type` | event name |
//! | headers | the envelope headers of [`outbox_core::wire`], as long strings: `event_id`, `event_name`, ..., `meta_<key>`, and the CloudEvents AMQP binding's application properties `cloudEvents:specversion`, `cloudEvents:id`, `cloudEvents:source`, `cloudEvents:type`, `cloudEvents:subject`, `cloudEvents:time`, `cloudEvents:sequence` (and `cloudEvents:traceparent`) |
//!
//! The CloudEvents binding is binary mode: the body is the event data, `content_type` its
//! `datacontenttype`, each attribute an application property named `cloudEvents:<attribute>`
//! with the attribute's canonical string form.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use outbox_core::Envelope;
use outbox_core::wire::{
    self, AMQP_CLOUDEVENTS_PREFIX, HeaderSource, HeaderValue, MalformedMessage,
};

/// The `delivery_mode` of a persistent message.
pub const PERSISTENT: u8 = 2;

/// The properties (with the headers) of `envelope`, with CloudEvents source `source`.
pub fn encode(envelope: &Envelope, source: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (key, value) in wire::encode(envelope, source, AMQP_CLOUDEVENTS_PREFIX) {
        headers.insert(
            ShortString::from(key.into_owned()),
            AMQPValue::LongString(LongString::from(value.into_owned())),
        );
    }
    let seconds = u64::try_from(envelope.occurred_at().timestamp()).unwrap_or(0);
    BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_message_id(ShortString::from(envelope.id().to_string()))
        .with_timestamp(seconds)
        .with_content_type(ShortString::from(wire::JSON))
        .with_type(ShortString::from(envelope.event_name()))
        .with_headers(headers)
}

/// AMQP application headers, as [`wire::decode`] reads them: long and short strings are text,
/// every other AMQP type is not.
struct Amqp<'h>(&'h FieldTable);

fn text(value: &AMQPValue) -> HeaderValue<'_> {
    match value {
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(v) => HeaderValue::Text(v),
            Err(_) => HeaderValue::NotText,
        },
        AMQPValue::ShortString(s) => HeaderValue::Text(s.as_str()),
        _ => HeaderValue::NotText,
    }
}

impl<'h> HeaderSource<'h> for Amqp<'h> {
    fn get(&self, key: &str) -> Option<HeaderValue<'h>> {
        self.0.inner().get(key).map(text)
    }
    fn texts(&self) -> Vec<(&'h str, &'h str)> {
        self.0
            .inner()
            .iter()
            .filter_map(|(k, v)| match text(v) {
                HeaderValue::Text(v) => Some((k.as_str(), v)),
                _ => None,
            })
            .collect()
    }
}

/// Rebuilds the envelope of a delivered message from its properties, headers and body;
/// `source` (the queue) becomes [`Envelope::topic`].
///
/// Strict: the headers as in [`wire::decode`] (`event_id`, `event_name`, `aggregate_type`,
/// `aggregate_id` required, or their CloudEvents stand-ins; every present header must be a
/// string and parse), the body must be JSON, and when set, `content_type` must be
/// `application/json` and `message_id` the event id.
///
/// # Errors
/// [`MalformedMessage`] naming what is wrong.
pub fn decode(
    properties: &BasicProperties,
    body: &[u8],
    source: &str,
) -> Result<Envelope, MalformedMessage> {
    let payload = if body.is_empty() { None } else { Some(body) };
    let envelope = wire::decode(
        properties.headers().as_ref().map(Amqp),
        payload,
        source,
        AMQP_CLOUDEVENTS_PREFIX,
    )?;
    if let Some(content_type) = properties.content_type()
        && content_type.as_str() != wire::JSON
    {
        return Err(MalformedMessage::InvalidHeader {
            header: "content_type",
        });
    }
    if let Some(id) = properties.message_id()
        && id.as_str() != envelope.id().to_string()
    {
        return Err(MalformedMessage::InvalidHeader {
            header: "message_id",
        });
    }
    Ok(envelope)
}

#[cfg(test)]
mod tests {
    use lapin::types::{AMQPValue, ShortString};
    use outbox_core::Envelope;
    use outbox_core::wire::MalformedMessage;

    use super::{decode, encode};

    fn envelope() -> Envelope {
        Envelope::builder("Made", "Thing", "t-1")
            .sequence(3)
            .payload("{}")
            .build()
    }

    #[test]
    fn round_trip_keeps_the_envelope() {
        let e = envelope();
        let p = encode(&e, "/things");
        let back = decode(&p, b"{}", "q").unwrap();
        assert_eq!(back.id(), e.id());
        assert_eq!(back.sequence(), 3);
        assert_eq!(back.topic(), Some("q"));
        assert_eq!(
            p.message_id().as_ref().map(ShortString::as_str),
            Some(e.id().to_string().as_str())
        );
    }

    #[test]
    fn a_header_of_another_type_or_a_conflicting_property_is_invalid() {
        let e = envelope();
        let p = encode(&e, "/things");
        let mut headers = p.headers().clone().unwrap();
        headers.insert("event_version".into(), AMQPValue::LongInt(2));
        assert_eq!(
            decode(&p.clone().with_headers(headers), b"{}", "q").unwrap_err(),
            MalformedMessage::InvalidHeader {
                header: "event_version"
            }
        );
        let other_id = p.clone().with_message_id("something-else".into());
        assert_eq!(
            decode(&other_id, b"{}", "q").unwrap_err(),
            MalformedMessage::InvalidHeader {
                header: "message_id"
            }
        );
        let text = p.clone().with_content_type("text/plain".into());
        assert_eq!(
            decode(&text, b"{}", "q").unwrap_err(),
            MalformedMessage::InvalidHeader {
                header: "content_type"
            }
        );
        assert_eq!(
            decode(&p, b"", "q").unwrap_err(),
            MalformedMessage::NoPayload
        );
    }

    #[test]
    fn short_strings_count_as_text() {
        let e = envelope();
        let p = encode(&e, "/things");
        let mut headers = p.headers().clone().unwrap();
        headers.insert("aggregate_id".into(), AMQPValue::ShortString("t-1".into()));
        let back = decode(&p.with_headers(headers), b"{}", "q").unwrap();
        assert_eq!(back.aggregate_id(), "t-1");
    }
}
