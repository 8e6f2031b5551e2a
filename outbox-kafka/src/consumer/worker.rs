//! One key's run: its queued messages applied through the inbox, in order, with retries and
//! dead letters.

use outbox_seaorm::inbox::{Applied, ApplyStats, GroupInbox};
use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use tokio_util::sync::CancellationToken;

use super::ConsumerStats;
use super::dead_letter::DeadLetters;
use crate::headers;

/// What every run shares: the group's inbox applier and the dead-letter producer.
pub(crate) struct Worker {
    pub(crate) inbox: GroupInbox,
    pub(crate) dead_letters: DeadLetters,
}

/// What a run did with its messages.
pub(crate) enum RunOutcome {
    /// The offsets done, in order (all of them unless it was cancelled).
    Done(Vec<i64>),
    /// Nothing applied: the batch of several keys failed, and each key goes again alone.
    HandedBack,
}

impl Worker {
    /// Applies `messages` (consecutive messages of one key, or of `several_keys`, each key's
    /// in offset order) and says which offsets are done. Several are tried together in one
    /// inbox transaction first. When that fails, the messages of one key are applied one at a
    /// time, stopping at the first message not done (`cancel` fired, by shutdown or a revoked
    /// partition, during its retries or dead-lettering); those of several keys are handed back,
    /// so that each key is retried on its own and a failing key holds back only itself.
    pub(crate) async fn run(
        &self,
        messages: &[&OwnedMessage],
        several_keys: bool,
        cancel: &CancellationToken,
        stats: &mut ConsumerStats,
    ) -> RunOutcome {
        if messages.len() > 1 && self.apply_batch(messages, stats).await {
            return RunOutcome::Done(messages.iter().map(|m| m.offset()).collect());
        }
        if several_keys {
            return RunOutcome::HandedBack;
        }
        let mut done = Vec::with_capacity(messages.len());
        for message in messages {
            if cancel.is_cancelled() || !self.one(message, cancel, stats).await {
                break;
            }
            done.push(message.offset());
        }
        RunOutcome::Done(done)
    }

    /// The consumer group.
    pub(crate) fn group(&self) -> &str {
        self.inbox.group()
    }

    /// Processes one message on its own (with retries and dead letters); false when `cancel`
    /// came first.
    async fn one(
        &self,
        message: &OwnedMessage,
        cancel: &CancellationToken,
        stats: &mut ConsumerStats,
    ) -> bool {
        let decoded = headers::decode(message.headers(), message.payload(), message.topic());
        let mut applied = ApplyStats::default();
        let outcome = self
            .inbox
            .apply(decoded, cancel.cancelled(), &mut applied)
            .await;
        stats.add_applied(&applied);
        match outcome {
            Applied::Cancelled => false,
            Applied::DeadLetter(letter) => {
                let sent = self
                    .dead_letters
                    .send(message, &letter, self.inbox.retry(), cancel)
                    .await;
                if sent {
                    stats.dead_lettered += 1;
                    metrics::counter!("outbox_consumer_dead_lettered_total", "group" => self.group().to_owned()).increment(1);
                }
                sent
            }
            // Done, and any outcome a later version adds, counts as done.
            _ => true,
        }
    }

    /// Applies `batch` in one inbox transaction; false (nothing applied) when a message does not
    /// decode, names an unknown event, or the transaction fails: the caller then processes the
    /// messages one by one.
    async fn apply_batch(&self, batch: &[&OwnedMessage], stats: &mut ConsumerStats) -> bool {
        let mut envelopes = Vec::with_capacity(batch.len());
        for message in batch {
            match headers::decode(message.headers(), message.payload(), message.topic()) {
                Ok(envelope) => envelopes.push(envelope),
                Err(_) => return false,
            }
        }
        let mut applied = ApplyStats::default();
        let envelopes: Vec<&outbox_core::Envelope> = envelopes.iter().collect();
        let ok = self.inbox.apply_batch(&envelopes, &mut applied).await;
        stats.add_applied(&applied);
        ok
    }
}
