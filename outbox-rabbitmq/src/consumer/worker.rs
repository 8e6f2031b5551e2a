//! One run: deliveries of one or more aggregates applied through the group's inbox, with
//! retries and dead letters.

use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, LongString};
use lapin::{BasicProperties, Channel, Confirmation};
use outbox_core::Envelope;
use outbox_core::wire::{MalformedMessage, dlt};
use outbox_seaorm::inbox::{Applied, ApplyStats, DeadLetterReason, GroupInbox};
use tokio_util::sync::CancellationToken;

use super::dispatch::Key;
use crate::properties;

/// A delivery received, decoded, with the connection generation it came on.
pub(crate) struct Received {
    pub(crate) delivery: Delivery,
    pub(crate) decoded: Result<Envelope, MalformedMessage>,
    pub(crate) generation: u64,
}

impl Received {
    /// Its ordering key: the aggregate of a decoded message.
    pub(crate) fn key(&self) -> Key {
        self.decoded
            .as_ref()
            .ok()
            .map(|e| (e.aggregate_type().to_owned(), e.aggregate_id().to_owned()))
    }
}

/// What every run shares.
pub(crate) struct Worker {
    pub(crate) inbox: GroupInbox,
    pub(crate) queue: String,
    pub(crate) dlx: String,
    pub(crate) operation_timeout: Duration,
}

/// What a run did.
pub(crate) enum RunOutcome {
    /// The delivery tags done (applied, ignored or dead-lettered), in order; all of them unless
    /// the run was cancelled.
    Done(Vec<u64>),
    /// Nothing applied: the batch of several keys failed, and each key goes again alone.
    HandedBack(Vec<Received>),
}

/// What a run counted.
#[derive(Default)]
pub(crate) struct RunStats {
    pub(crate) applied: ApplyStats,
    pub(crate) dead_lettered: u64,
}

impl Worker {
    /// Applies `messages` (each key's in delivery order): several together in one inbox
    /// transaction first; when that fails, one key's one at a time, stopping at the first not
    /// done (`cancel` fired during its retries or dead-lettering); several keys' are handed
    /// back so that each key retries alone and a failing one holds back only itself.
    pub(crate) async fn run(
        &self,
        messages: Vec<Received>,
        several_keys: bool,
        dead_letters: &Channel,
        cancel: &CancellationToken,
        stats: &mut RunStats,
    ) -> RunOutcome {
        if messages.len() > 1 {
            let envelopes: Option<Vec<&Envelope>> =
                messages.iter().map(|m| m.decoded.as_ref().ok()).collect();
            if let Some(envelopes) = envelopes
                && self.inbox.apply_batch(&envelopes, &mut stats.applied).await
            {
                return RunOutcome::Done(
                    messages.iter().map(|m| m.delivery.delivery_tag).collect(),
                );
            }
        }
        if several_keys {
            return RunOutcome::HandedBack(messages);
        }
        let mut done = Vec::with_capacity(messages.len());
        for message in messages {
            if cancel.is_cancelled() {
                break;
            }
            let tag = message.delivery.delivery_tag;
            let outcome = self
                .inbox
                .apply(message.decoded, cancel.cancelled(), &mut stats.applied)
                .await;
            let finished = match outcome {
                Applied::Cancelled => false,
                Applied::DeadLetter(reason) => {
                    let sent = self
                        .dead_letter(dead_letters, &message.delivery, &reason, cancel)
                        .await;
                    if sent {
                        stats.dead_lettered += 1;
                        metrics::counter!("outbox_consumer_dead_lettered_total", "group" => self.inbox.group().to_owned()).increment(1);
                    }
                    sent
                }
                _ => true,
            };
            if !finished {
                break;
            }
            done.push(tag);
        }
        RunOutcome::Done(done)
    }

    /// Publishes `delivery` to the dead-letter exchange with the [`dlt`] headers and waits for
    /// the broker's confirm (each try bounded by the operation timeout), retrying with the
    /// retry policy's delays; false only when `cancel` fired during a wait between tries (the
    /// message then stays unacknowledged and comes again).
    async fn dead_letter(
        &self,
        channel: &Channel,
        delivery: &Delivery,
        letter: &DeadLetterReason,
        cancel: &CancellationToken,
    ) -> bool {
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        let attempts = letter.attempts.to_string();
        let mut extra: Vec<(&str, &str)> = vec![
            (dlt::REASON, &letter.reason),
            (dlt::ERROR, &letter.error),
            (dlt::ATTEMPTS, &attempts),
            (dlt::ORIGINAL_TOPIC, delivery.exchange.as_str()),
            (dlt::ORIGINAL_ROUTING_KEY, delivery.routing_key.as_str()),
            (dlt::ORIGINAL_QUEUE, &self.queue),
            (dlt::GROUP, self.inbox.group()),
        ];
        if let Some(handler) = letter.handler {
            extra.push((dlt::HANDLER, handler));
        }
        for (key, value) in extra {
            headers.insert(key.into(), AMQPValue::LongString(LongString::from(value)));
        }
        let properties: BasicProperties = delivery
            .properties
            .clone()
            .with_headers(headers)
            .with_delivery_mode(properties::PERSISTENT);
        let mut failures = 0u32;
        loop {
            let publish = tokio::time::timeout(self.operation_timeout, async {
                let confirm = channel
                    .basic_publish(
                        self.dlx.as_str().into(),
                        self.queue.as_str().into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..BasicPublishOptions::default()
                        },
                        &delivery.data,
                        properties.clone(),
                    )
                    .await?;
                confirm.await
            });
            // Not cancelled midway: the publish is bounded, and a confirmed letter is acknowledged.
            match publish.await {
                Ok(Ok(Confirmation::Ack(None))) => {
                    tracing::warn!(group = %self.inbox.group(), queue = %self.queue,
                        reason = %letter.reason, error = %letter.error, "message dead-lettered");
                    return true;
                }
                other => {
                    failures += 1;
                    tracing::warn!(group = %self.inbox.group(), outcome = ?other.map(|r| r.map(|c| c.is_ack())),
                        "dead letter not confirmed; retrying");
                }
            }
            let delay = self.inbox.retry().delay_after(failures.min(20));
            tokio::select! {
                () = cancel.cancelled() => return false,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }
}
