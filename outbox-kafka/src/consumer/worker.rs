//! One key's run: its queued messages applied through the inbox, in order, with retries and
//! dead letters.

use std::time::Duration;

use outbox_core::{Envelope, EventType, Handler, HandlerRegistry, RetryPolicy, error_chain};
use outbox_seaorm::inbox::{BatchItem, Inbox, InboxError, Processed};
use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;

use super::ConsumerStats;
use super::dead_letter::{DeadLetter, DeadLetters};
use crate::headers::{self, MalformedMessage};

/// What every run shares: the database, the handlers and the dead-letter producer.
pub(crate) struct Worker {
    pub(crate) db: DatabaseConnection,
    pub(crate) registry: HandlerRegistry,
    pub(crate) group: String,
    pub(crate) retry: RetryPolicy,
    pub(crate) handler_timeout: Duration,
    pub(crate) dead_letters: DeadLetters,
}

/// Where a decoded message goes; see [`Worker::route`].
enum Route<'a> {
    Handlers(Vec<&'a Handler>),
    Ignored,
    Unknown,
}

/// What a run did with its messages.
pub(crate) enum RunOutcome {
    /// The offsets done, in order (all of them unless it was cancelled).
    Done(Vec<i64>),
    /// Nothing applied: the batch of several keys failed, and each key goes again alone.
    HandedBack,
}

enum Outcome {
    Done,
    DeadLetter(DeadLetter),
    Cancelled,
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

    /// Processes one message on its own (with retries and dead letters); false when `cancel`
    /// came first.
    async fn one(
        &self,
        message: &OwnedMessage,
        cancel: &CancellationToken,
        stats: &mut ConsumerStats,
    ) -> bool {
        match self.handle(message, cancel, stats).await {
            Outcome::Cancelled => false,
            Outcome::Done => true,
            Outcome::DeadLetter(letter) => {
                let sent = self
                    .dead_letters
                    .send(message, &letter, &self.retry, cancel)
                    .await;
                if sent {
                    stats.dead_lettered += 1;
                    metrics::counter!("outbox_consumer_dead_lettered_total", "group" => self.group.clone()).increment(1);
                }
                sent
            }
        }
    }

    /// `handler`, with this consumer's default timeout when it sets none.
    fn bounded(&self, handler: &Handler) -> Handler {
        handler.with_timeout(handler.timeout_or(self.handler_timeout))
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
        let mut keys: Vec<(String, Handler, &Envelope)> = Vec::new();
        let mut ignored = 0u64;
        for envelope in &envelopes {
            match self.route(envelope) {
                Route::Handlers(handlers) => keys.extend(handlers.into_iter().map(|h| {
                    (
                        format!("{}/{}", self.group, h.id()),
                        self.bounded(h),
                        envelope,
                    )
                })),
                Route::Ignored => ignored += 1,
                Route::Unknown => return false,
            }
        }
        let items: Vec<BatchItem<'_>> = keys
            .iter()
            .map(|(consumer, handler, envelope)| BatchItem {
                consumer,
                handler,
                envelope,
            })
            .collect();
        match Inbox::process_batch(&self.db, &items).await {
            Ok(outcomes) => {
                let applied = outcomes
                    .iter()
                    .filter(|o| **o == Processed::Applied)
                    .count() as u64;
                let duplicates = outcomes.len() as u64 - applied;
                stats.applied += applied;
                stats.duplicates += duplicates;
                stats.ignored += ignored;
                stats.batches += 1;
                let group = self.group.clone();
                metrics::counter!("outbox_consumer_applied_total", "group" => group.clone())
                    .increment(applied);
                metrics::counter!("outbox_consumer_duplicates_total", "group" => group.clone())
                    .increment(duplicates);
                metrics::counter!("outbox_consumer_ignored_total", "group" => group)
                    .increment(ignored);
                true
            }
            Err(error) => {
                tracing::debug!(group = %self.group, messages = batch.len(),
                    error = %error_chain(&error), "batch failed; processing its messages one by one");
                false
            }
        }
    }

    /// Who handles `envelope` in this group. A topic often carries several event types and a
    /// group handles some of them: an event type declared in this binary is skipped; a name
    /// nobody here knows is malformed.
    fn route<'a>(&'a self, envelope: &'a Envelope) -> Route<'a> {
        let handlers: Vec<&Handler> = self
            .registry
            .in_group(&self.group, envelope.event_name())
            .collect();
        if !handlers.is_empty() {
            Route::Handlers(handlers)
        } else if EventType::is_known(envelope.event_name()) {
            Route::Ignored
        } else {
            Route::Unknown
        }
    }

    async fn handle(
        &self,
        message: &OwnedMessage,
        cancel: &CancellationToken,
        stats: &mut ConsumerStats,
    ) -> Outcome {
        let envelope = match headers::decode(message.headers(), message.payload(), message.topic())
        {
            Ok(e) => e,
            Err(error) => return malformed(error),
        };
        let handlers = match self.route(&envelope) {
            Route::Handlers(handlers) => handlers,
            Route::Ignored => {
                stats.ignored += 1;
                metrics::counter!("outbox_consumer_ignored_total", "group" => self.group.clone())
                    .increment(1);
                tracing::debug!(group = %self.group, event = envelope.event_name(), "no handler in this group; skipped");
                return Outcome::Done;
            }
            Route::Unknown => {
                return malformed(MalformedMessage::UnknownEvent {
                    group: self.group.clone(),
                    event: envelope.event_name().to_owned(),
                });
            }
        };
        for handler in handlers {
            match self.apply(handler, &envelope, cancel, stats).await {
                Outcome::Done => {}
                other => return other,
            }
        }
        Outcome::Done
    }

    async fn apply(
        &self,
        handler: &Handler,
        envelope: &Envelope,
        cancel: &CancellationToken,
        stats: &mut ConsumerStats,
    ) -> Outcome {
        let consumer = format!("{}/{}", self.group, handler.id());
        let handler = &self.bounded(handler);
        let mut attempt: u32 = 1;
        let mut db_failures: u32 = 0;
        loop {
            let delay = match Inbox::process(&self.db, &consumer, handler, envelope, attempt).await
            {
                Ok(Processed::Applied) => {
                    stats.applied += 1;
                    metrics::counter!("outbox_consumer_applied_total", "group" => self.group.clone()).increment(1);
                    return Outcome::Done;
                }
                Ok(_) => {
                    stats.duplicates += 1;
                    metrics::counter!("outbox_consumer_duplicates_total", "group" => self.group.clone()).increment(1);
                    return Outcome::Done;
                }
                Err(error @ InboxError::Database(_)) => {
                    db_failures += 1;
                    tracing::warn!(group = %self.group, event_id = %envelope.id(),
                        error = %error_chain(&error), "inbox database error; retrying");
                    self.retry.delay_after(db_failures.min(20))
                }
                Err(error) => {
                    let permanent = !error.is_retryable();
                    if permanent || !self.retry.should_retry(attempt) {
                        tracing::warn!(group = %self.group, event_id = %envelope.id(),
                            handler = handler.id(), attempt, error = %error_chain(&error),
                            "handler failed; dead-lettering");
                        return Outcome::DeadLetter(DeadLetter {
                            reason: if permanent {
                                "handler-permanent".to_owned()
                            } else {
                                "handler-failed".to_owned()
                            },
                            error: error_chain(&error),
                            attempts: attempt,
                            handler: Some(handler.id()),
                        });
                    }
                    tracing::info!(group = %self.group, event_id = %envelope.id(),
                        handler = handler.id(), attempt, error = %error_chain(&error), "handler failed; retrying");
                    stats.retries += 1;
                    let delay = self.retry.delay_after(attempt);
                    attempt += 1;
                    delay
                }
            };
            tokio::select! {
                () = cancel.cancelled() => return Outcome::Cancelled,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }
}

fn malformed(error: MalformedMessage) -> Outcome {
    Outcome::DeadLetter(DeadLetter {
        reason: format!("malformed:{}", error.reason()),
        error: error.to_string(),
        attempts: 0,
        handler: None,
    })
}
