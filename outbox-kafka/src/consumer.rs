//! [`KafkaConsumer`]: Kafka → a consumer group's handlers, exactly once per event.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use outbox_core::{Envelope, EventType, Handler, HandlerRegistry, RetryPolicy, error_chain};
use outbox_seaorm::inbox::{BatchItem, Inbox, InboxError, Processed};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use sea_orm::DatabaseConnection;

use crate::admin::provision_topics;
use crate::config::KafkaConfig;
use crate::error::SetupError;
use crate::headers::{self, MalformedMessage};

pub use outbox_core::wire::dlt;

/// What a consumer did until it stopped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerStats {
    /// Messages received.
    pub messages: u64,
    /// (message, handler) pairs applied.
    pub applied: u64,
    /// (message, handler) pairs skipped as already applied.
    pub duplicates: u64,
    /// Messages sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// Handler attempts that failed and were retried.
    pub retries: u64,
    /// Messages of a known event type that no handler of the group handles, skipped.
    pub ignored: u64,
    /// Inbox transactions that applied several messages together
    /// ([`KafkaConsumerBuilder::max_batch`]).
    pub batches: u64,
}

/// The offset after the last message done, per (topic, partition) this consumer owns.
type DoneOffsets = HashMap<(String, i32), i64>;

struct GroupContext {
    group: String,
    done: Mutex<DoneOffsets>,
}

impl GroupContext {
    fn done(&self) -> std::sync::MutexGuard<'_, DoneOffsets> {
        self.done
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Commits what was done on `partitions` (all owned ones when `None`) and forgets them:
    /// never a partition's position, which may be past an unprocessed message, and never a
    /// partition another member owns by now. `mode` `Sync` blocks the calling thread until the
    /// broker answers: call it that way only off the async runtime's workers.
    fn commit_done(
        &self,
        consumer: &impl Consumer<Self>,
        partitions: Option<&TopicPartitionList>,
        mode: CommitMode,
    ) {
        let taken: Vec<((String, i32), i64)> = {
            let mut done = self.done();
            match partitions {
                None => done.drain().collect(),
                Some(tpl) => tpl
                    .elements()
                    .iter()
                    .filter_map(|e| {
                        let key = (e.topic().to_owned(), e.partition());
                        done.remove(&key).map(|next| (key, next))
                    })
                    .collect(),
            }
        };
        if taken.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), next) in &taken {
            if let Err(error) = tpl.add_partition_offset(topic, *partition, Offset::Offset(*next)) {
                tracing::warn!(group = %self.group, error = %error, "offset commit skipped");
            }
        }
        if let Err(error) = consumer.commit(&tpl, mode) {
            tracing::warn!(group = %self.group, error = %error, "offset commit failed");
        }
    }
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        tracing::info!(group = %self.group, ?rebalance, "rebalance");
        // Hand revoked partitions over with everything done on them committed, so the next
        // owner starts right after it instead of redelivering what a lost async commit left.
        // This callback runs inside `recv`, on a runtime worker: the commit is asynchronous, and
        // librdkafka finishes the rebalance (and lets the next owner fetch the committed
        // offsets) only once its outstanding commits are answered.
        if let Rebalance::Revoke(revoked) = rebalance {
            self.commit_done(consumer, Some(revoked), CommitMode::Async);
        }
    }
}

/// Runs the handlers of one consumer group on the events of their topics.
///
/// For each message: the envelope is decoded from the headers and payload (see
/// [`crate::headers`]); each handler of the group for the event runs through
/// [`Inbox::process`] with consumer key `"<group>/<handler id>"` (so a redelivered event is
/// skipped); a failing handler is retried with the [`RetryPolicy`] (default: 5 attempts, from
/// 200 ms up to 10 s), then the message goes to `<topic><suffix>` (default suffix `.dlt`) with
/// the [`dlt`] headers. A message of an event type this binary declares (a
/// `#[derive(DomainEvent)]` type, see [`EventType`]) that no handler of the group handles is
/// skipped and counted as ignored: topics usually carry several event types. A message that
/// cannot be decoded, or whose event name no type here declares, goes to the dead-letter topic
/// at once, and so does one whose handler fails with
/// `HandlerError::permanent` (a payload that does not deserialize, for one). The offset is
/// committed only once every handler's inbox transaction committed, or the dead letter was
/// acknowledged. A database error is retried until it goes away (or shutdown): it never
/// dead-letters.
///
/// Messages are processed in order, so the order within a partition is kept: those already
/// received are applied together in one transaction (up to
/// [`KafkaConsumerBuilder::max_batch`]), falling back to one at a time when one of them fails.
/// Keep the total retry time under `max.poll.interval.ms` (default 5 min), or the broker
/// takes the partitions away and the message is processed again elsewhere (harmless: the inbox
/// skips what was applied).
///
/// Each handler run is bounded: by the handler's own timeout (`#[event_handler(timeout =
/// "...")]`), else [`KafkaConsumerBuilder::handler_timeout`] (default 30 s). A handler that runs
/// longer is cancelled, its inbox transaction rolled back, and the attempt fails as retryable;
/// a handler that panics fails the same way. Both are retried, then dead-lettered, like any
/// failure.
///
/// Inbox rows grow with every event; schedule `outbox_seaorm::cleanup` to delete old ones.
pub struct KafkaConsumer {
    consumer: Arc<StreamConsumer<GroupContext>>,
    producer: FutureProducer,
    db: DatabaseConnection,
    registry: HandlerRegistry,
    group: String,
    retry: RetryPolicy,
    dlt_suffix: String,
    topics: Vec<String>,
    max_batch: usize,
    handler_timeout: Duration,
}

impl fmt::Debug for KafkaConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConsumer")
            .field("group", &self.group)
            .field("topics", &self.topics)
            .field("retry", &self.retry)
            .field("handler_timeout", &self.handler_timeout)
            .finish_non_exhaustive()
    }
}

/// Builds a [`KafkaConsumer`]; see [`KafkaConsumer::builder`].
#[must_use]
pub struct KafkaConsumerBuilder {
    config: KafkaConfig,
    group: String,
    db: DatabaseConnection,
    registry: HandlerRegistry,
    retry: RetryPolicy,
    dlt_suffix: String,
    topics: Vec<String>,
    provision: Option<(i32, i32)>,
    max_batch: usize,
    handler_timeout: Duration,
}

impl fmt::Debug for KafkaConsumerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConsumerBuilder")
            .field("config", &self.config)
            .field("group", &self.group)
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

impl KafkaConsumerBuilder {
    /// Sets librdkafka property `key` (consumer and dead-letter producer alike).
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config = self.config.set(key, value);
        self
    }
    /// Sets the retry policy of failing handlers.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }
    /// Messages applied together in one inbox transaction, at most (default 64; 1 applies
    /// each message in its own). A batch takes only messages already received, never waits for
    /// more, and is applied with [`Inbox::process_batch`]: one query, one multi-row inbox
    /// insert, the handlers in order, one commit. If anything in it fails, or a message of it
    /// cannot be decoded, its messages are processed one at a time instead, with the retries and
    /// dead letters described on [`KafkaConsumer`].
    pub fn max_batch(mut self, messages: usize) -> Self {
        self.max_batch = messages.clamp(1, MAX_BATCH);
        self
    }
    /// Sets how long a handler without its own timeout (`#[event_handler(timeout = "...")]`)
    /// may run before it is cancelled and its attempt fails as retryable (default 30 s). Keep
    /// the retries' total under `max.poll.interval.ms` (see [`KafkaConsumer`]).
    pub fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.handler_timeout = timeout;
        self
    }
    /// Sets the suffix of dead-letter topics (default `.dlt`).
    pub fn dead_letter_suffix(mut self, suffix: impl Into<String>) -> Self {
        self.dlt_suffix = suffix.into();
        self
    }
    /// Subscribes to `topics` too; needed for events whose type sets no topic.
    pub fn topics<I, S>(mut self, topics: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.topics.extend(topics.into_iter().map(Into::into));
        self
    }
    /// Creates the subscribed topics and their dead-letter topics at start when missing.
    pub fn provision_topics(mut self, partitions: i32, replication: i32) -> Self {
        self.provision = Some((partitions, replication));
        self
    }

    /// Creates the consumer and subscribes.
    ///
    /// # Errors
    /// [`SetupError::DuplicateHandlerId`] when the registry met two handlers with one id
    /// ([`HandlerRegistry::check`]), [`SetupError::NoHandlers`] when the group has no handler,
    /// [`SetupError::NoTopic`] when
    /// an event of the group has no topic and none was given, [`SetupError::Client`] for a bad
    /// configuration, [`SetupError::CreateTopic`]/[`SetupError::Admin`] when provisioning fails.
    pub async fn build(self) -> Result<KafkaConsumer, SetupError> {
        self.registry.check()?;
        let handlers: Vec<&Handler> = self.registry.group(&self.group).collect();
        if handlers.is_empty() {
            return Err(SetupError::NoHandlers { group: self.group });
        }
        let mut topics: BTreeSet<String> = self.topics.iter().cloned().collect();
        for handler in &handlers {
            match handler.topic() {
                Some(topic) => {
                    topics.insert(topic.to_owned());
                }
                None if self.topics.is_empty() => {
                    return Err(SetupError::NoTopic {
                        group: self.group.clone(),
                        event: handler.event(),
                        handler: handler.id(),
                    });
                }
                None => {}
            }
        }
        let topics: Vec<String> = topics.into_iter().collect();
        if let Some((partitions, replication)) = self.provision {
            let mut all: Vec<String> = topics.clone();
            all.extend(topics.iter().map(|t| format!("{t}{}", self.dlt_suffix)));
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            provision_topics(&self.config, &all, partitions, replication).await?;
        }
        let producer: FutureProducer = self
            .config
            .clone()
            .set_default("enable.idempotence", "true")
            .set_default("acks", "all")
            .set_default("message.timeout.ms", "30000")
            .to_client_config()
            .create()
            .map_err(SetupError::Client)?;
        let consumer_config = self
            .config
            .clone()
            .set("group.id", self.group.clone())
            .set("enable.auto.commit", "false")
            .set_default("auto.offset.reset", "earliest")
            .set_default("enable.partition.eof", "false");
        let consumer: StreamConsumer<GroupContext> = consumer_config
            .to_client_config()
            .create_with_context(GroupContext {
                group: self.group.clone(),
                done: Mutex::new(HashMap::new()),
            })
            .map_err(SetupError::Client)?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&names).map_err(SetupError::Client)?;
        tracing::info!(group = %self.group, ?topics, config = ?consumer_config, "consumer subscribed");
        Ok(KafkaConsumer {
            consumer: Arc::new(consumer),
            producer,
            db: self.db,
            registry: self.registry,
            group: self.group,
            retry: self.retry,
            dlt_suffix: self.dlt_suffix,
            topics,
            max_batch: self.max_batch,
            handler_timeout: self.handler_timeout,
        })
    }
}

/// Upper bound of [`KafkaConsumerBuilder::max_batch`] (three bind parameters per message stay
/// far below every backend's limit).
const MAX_BATCH: usize = 1000;

/// How long shutdown waits for the final offset commit.
const SHUTDOWN_COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a decoded message goes; see [`KafkaConsumer::route`].
enum Route<'a> {
    Handlers(Vec<&'a Handler>),
    Ignored,
    Unknown,
}

enum Outcome {
    Done,
    DeadLetter {
        reason: String,
        error: String,
        attempts: u32,
        handler: Option<&'static str>,
    },
    Shutdown,
}

impl KafkaConsumer {
    /// Starts a consumer of group `group` on `brokers`, applying events through the inbox in
    /// `db` with the group's handlers from `registry`.
    pub fn builder(
        brokers: impl Into<String>,
        group: impl Into<String>,
        db: DatabaseConnection,
        registry: HandlerRegistry,
    ) -> KafkaConsumerBuilder {
        KafkaConsumerBuilder {
            config: KafkaConfig::new(brokers),
            group: group.into(),
            db,
            registry,
            retry: RetryPolicy::default()
                .with_max_attempts(5)
                .with_initial_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(10)),
            dlt_suffix: ".dlt".to_owned(),
            topics: Vec::new(),
            provision: None,
            max_batch: 64,
            handler_timeout: Handler::DEFAULT_TIMEOUT,
        }
    }

    /// The topics subscribed to.
    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    /// Consumes until `shutdown` completes, then returns what was done. A message being retried
    /// when shutdown comes is left uncommitted (it is delivered again later).
    ///
    /// # Errors
    /// None so far: Kafka errors are logged and retried. The `Result` leaves room for fatal ones.
    pub async fn run_until<F: Future<Output = ()>>(
        &self,
        shutdown: F,
    ) -> Result<ConsumerStats, SetupError> {
        let mut stats = ConsumerStats::default();
        tokio::pin!(shutdown);
        loop {
            let message = tokio::select! {
                () = &mut shutdown => break,
                m = self.consumer.recv() => m,
            };
            let message = match message {
                Ok(m) => m,
                Err(error) => {
                    tracing::warn!(group = %self.group, error = %error, "receive failed");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            };
            let mut batch = vec![message];
            while batch.len() < self.max_batch {
                // Only what is already here: a batch never waits.
                match self.consumer.recv().now_or_never() {
                    Some(Ok(m)) => batch.push(m),
                    Some(Err(error)) => {
                        tracing::warn!(group = %self.group, error = %error, "receive failed");
                        break;
                    }
                    None => break,
                }
            }
            stats.messages += batch.len() as u64;
            if batch.len() > 1 && self.apply_batch(&batch, &mut stats).await {
                for message in &batch {
                    self.mark_done(message);
                }
                continue;
            }
            let mut stopped = false;
            for message in &batch {
                if !self.one(message, &mut stats, &mut shutdown).await {
                    stopped = true;
                    break;
                }
            }
            if stopped {
                break;
            }
        }
        self.commit_at_shutdown().await;
        Ok(stats)
    }

    /// Commits, synchronously, what was done on the partitions still owned: on a blocking
    /// thread, waited for at most [`SHUTDOWN_COMMIT_TIMEOUT`]. A commit that does not come back
    /// in time is logged; its messages are delivered again later, and the inbox skips them.
    async fn commit_at_shutdown(&self) {
        let consumer = Arc::clone(&self.consumer);
        let commit = tokio::task::spawn_blocking(move || {
            consumer
                .context()
                .commit_done(&*consumer, None, CommitMode::Sync);
        });
        match tokio::time::timeout(SHUTDOWN_COMMIT_TIMEOUT, commit).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(group = %self.group, error = %error, "final offset commit failed");
            }
            Err(_) => tracing::warn!(
                group = %self.group,
                timeout = ?SHUTDOWN_COMMIT_TIMEOUT,
                "final offset commit did not finish in time; those messages come again, and the inbox skips them"
            ),
        }
    }

    /// `handler`, with this consumer's default timeout when it sets none.
    fn bounded(&self, handler: &Handler) -> Handler {
        handler.with_timeout(handler.timeout_or(self.handler_timeout))
    }

    /// Processes one message on its own (with retries and dead letters) and commits its offset;
    /// false when shutdown came first or the dead letter could not be sent.
    async fn one<F: Future<Output = ()> + Unpin>(
        &self,
        message: &BorrowedMessage<'_>,
        stats: &mut ConsumerStats,
        shutdown: &mut F,
    ) -> bool {
        let outcome = self.handle(message, stats, shutdown).await;
        let committed = match outcome {
            Outcome::Shutdown => return false,
            Outcome::Done => true,
            Outcome::DeadLetter {
                reason,
                error,
                attempts,
                handler,
            } => {
                let sent = self
                    .dead_letter(message, &reason, &error, attempts, handler, shutdown)
                    .await;
                if sent {
                    stats.dead_lettered += 1;
                    metrics::counter!("outbox_consumer_dead_lettered_total", "group" => self.group.clone()).increment(1);
                }
                sent
            }
        };
        if committed {
            self.mark_done(message);
        }
        committed
    }

    /// Records `message` as done and commits its offset (asynchronously).
    fn mark_done(&self, message: &BorrowedMessage<'_>) {
        self.consumer.context().done().insert(
            (message.topic().to_owned(), message.partition()),
            message.offset() + 1,
        );
        if let Err(error) = self.consumer.commit_message(message, CommitMode::Async) {
            tracing::warn!(group = %self.group, error = %error, "offset commit failed");
        }
    }

    /// Applies `batch` in one inbox transaction; false (nothing applied) when a message does not
    /// decode, names an unknown event, or the transaction fails: the caller then processes the
    /// messages one by one.
    async fn apply_batch(&self, batch: &[BorrowedMessage<'_>], stats: &mut ConsumerStats) -> bool {
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

    async fn handle<F: Future<Output = ()> + Unpin>(
        &self,
        message: &BorrowedMessage<'_>,
        stats: &mut ConsumerStats,
        shutdown: &mut F,
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
            match self.apply(handler, &envelope, stats, shutdown).await {
                Outcome::Done => {}
                other => return other,
            }
        }
        Outcome::Done
    }

    async fn apply<F: Future<Output = ()> + Unpin>(
        &self,
        handler: &Handler,
        envelope: &Envelope,
        stats: &mut ConsumerStats,
        shutdown: &mut F,
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
                        return Outcome::DeadLetter {
                            reason: if permanent {
                                "handler-permanent".to_owned()
                            } else {
                                "handler-failed".to_owned()
                            },
                            error: error_chain(&error),
                            attempts: attempt,
                            handler: Some(handler.id()),
                        };
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
                () = &mut *shutdown => return Outcome::Shutdown,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Sends `message` to its dead-letter topic; returns whether the broker acknowledged it
    /// (false only at shutdown: failures are retried).
    async fn dead_letter<F: Future<Output = ()> + Unpin>(
        &self,
        message: &BorrowedMessage<'_>,
        reason: &str,
        error: &str,
        attempts: u32,
        handler: Option<&'static str>,
        shutdown: &mut F,
    ) -> bool {
        let topic = format!("{}{}", message.topic(), self.dlt_suffix);
        let partition = message.partition().to_string();
        let offset = message.offset().to_string();
        let attempts = attempts.to_string();
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
                (dlt::REASON, reason),
                (dlt::ERROR, error),
                (dlt::ATTEMPTS, &attempts),
                (dlt::ORIGINAL_TOPIC, message.topic()),
                (dlt::ORIGINAL_PARTITION, &partition),
                (dlt::ORIGINAL_OFFSET, &offset),
                (dlt::GROUP, &self.group),
            ];
            if let Some(handler) = handler {
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
                () = &mut *shutdown => return false,
                r = self.producer.send(record, Duration::from_secs(5)) => r,
            };
            match sent {
                Ok(_) => {
                    tracing::warn!(group = %self.group, topic = %topic, reason, error,
                        "message dead-lettered");
                    return true;
                }
                Err((kafka, _)) => {
                    failures += 1;
                    tracing::warn!(group = %self.group, topic = %topic, error = %kafka,
                        "dead-letter produce failed; retrying");
                    let delay = self.retry.delay_after(failures.min(20));
                    tokio::select! {
                        () = &mut *shutdown => return false,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

fn malformed(error: MalformedMessage) -> Outcome {
    Outcome::DeadLetter {
        reason: format!("malformed:{}", error.reason()),
        error: error.to_string(),
        attempts: 0,
        handler: None,
    }
}
