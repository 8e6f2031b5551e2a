//! Dead letters: a message that cannot be applied, copied to `<topic><suffix>` with headers
//! that say why.

use std::time::Duration;

use rdkafka::Message;
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use outbox_core::RetryPolicy;
use outbox_seaorm::inbox::DeadLetterReason;

pub use outbox_core::wire::dlt;

/// Where dead letters go.
pub(crate) struct DeadLetters {
    pub(crate) producer: FutureProducer,
    pub(crate) suffix: String,
    pub(crate) group: String,
}

impl DeadLetters {
    /// Sends `message` to its dead-letter topic, retrying failures with `retry`'s delays;
    /// returns whether the broker acknowledged it (false only once `cancel` fired). Each send
    /// waits at most 5 s for the broker's acknowledgement, then counts as failed.
    pub(crate) async fn send(
        &self,
        message: &OwnedMessage,
        letter: &DeadLetterReason,
        retry: &RetryPolicy,
        cancel: &CancellationToken,
    ) -> bool {
        let topic = format!("{}{}", message.topic(), self.suffix);
        let partition = message.partition().to_string();
        let offset = message.offset().to_string();
        let attempts = letter.attempts.to_string();
        let mut failures = 0u32;
        loop {
            let mut out = OwnedHeaders::new();
            if let Some(original) = message.headers() {
                for h in original.iter() {
                    out = out.insert(Header {
                        key: h.key,
                        value: h.value,
                    });
                }
            }
            let mut extra: Vec<(&str, &str)> = vec![
                (dlt::REASON, &letter.reason),
                (dlt::ERROR, &letter.error),
                (dlt::ATTEMPTS, &attempts),
                (dlt::ORIGINAL_TOPIC, message.topic()),
                (dlt::ORIGINAL_PARTITION, &partition),
                (dlt::ORIGINAL_OFFSET, &offset),
                (dlt::GROUP, &self.group),
            ];
            if let Some(handler) = letter.handler {
                extra.push((dlt::HANDLER, handler));
            }
            for (key, value) in extra {
                out = out.insert(Header {
                    key,
                    value: Some(value),
                });
            }
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic).headers(out);
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            if let Some(payload) = message.payload() {
                record = record.payload(payload);
            }
            let sent = tokio::select! {
                () = cancel.cancelled() => return false,
                r = self.producer.send(record, Duration::from_secs(5)) => r,
            };
            match sent {
                Ok(_) => {
                    tracing::warn!(group = %self.group, topic = %topic, reason = %letter.reason,
                        error = %letter.error, "message dead-lettered");
                    return true;
                }
                Err((kafka, _)) => {
                    failures += 1;
                    tracing::warn!(group = %self.group, topic = %topic, error = %kafka,
                        "dead-letter produce failed; retrying");
                    let delay = retry.delay_after(failures.min(20));
                    tokio::select! {
                        () = cancel.cancelled() => return false,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}
