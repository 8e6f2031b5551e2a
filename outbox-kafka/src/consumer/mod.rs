//! [`KafkaConsumer`]: Kafka → a consumer group's handlers, exactly once per event, several keys
//! at a time.
//!
//! One job a file: [`group`] owns the partitions and their offsets across rebalances,
//! [`offsets`] computes how far a partition may be committed, [`dispatch`] queues messages per
//! key and forms runs, [`worker`] applies a run's messages, [`dead_letter`] sends what cannot
//! be applied.

mod dead_letter;
mod dispatch;
mod group;
mod offsets;
mod worker;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;

use outbox_core::{Handler, HandlerRegistry, RetryPolicy};
use outbox_seaorm::inbox::{ApplyStats, GroupInbox};
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::FutureProducer;
use sea_orm::DatabaseConnection;
use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::MissedTickBehavior;

use crate::admin::provision_topics;
use crate::config::KafkaConfig;
use crate::error::SetupError;

use dead_letter::DeadLetters;
pub use dead_letter::dlt;
use dispatch::{KeyId, KeyQueues, Queued};
use group::GroupContext;
use worker::{RunOutcome, Worker};

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

impl ConsumerStats {
    fn add(&mut self, other: &ConsumerStats) {
        self.messages += other.messages;
        self.applied += other.applied;
        self.duplicates += other.duplicates;
        self.dead_lettered += other.dead_lettered;
        self.retries += other.retries;
        self.ignored += other.ignored;
        self.batches += other.batches;
    }

    fn add_applied(&mut self, other: &ApplyStats) {
        self.applied += other.applied;
        self.duplicates += other.duplicates;
        self.retries += other.retries;
        self.ignored += other.ignored;
        self.batches += other.batches;
    }
}

/// Runs the handlers of one consumer group on the events of their topics.
///
/// For each message: the envelope is decoded from the headers and payload (see
/// [`crate::headers`]); each handler of the group for the event runs through
/// [`Inbox::process`](outbox_seaorm::inbox::Inbox::process) with consumer key `"<group>/<handler id>"` (so a redelivered event is
/// skipped); a failing handler is retried with the [`RetryPolicy`] (default: 5 attempts, from
/// 200 ms up to 10 s), then the message goes to `<topic><suffix>` (default suffix `.dlt`) with
/// the [`dlt`] headers. A message of an event type this binary declares (a
/// `#[derive(DomainEvent)]` type, see [`EventType`](outbox_core::EventType)) that no handler of the group handles is
/// skipped and counted as ignored: topics usually carry several event types. A message that
/// cannot be decoded, or whose event name no type here declares, goes to the dead-letter topic
/// at once, and so does one whose handler fails with
/// `HandlerError::permanent` (a payload that does not deserialize, for one). The offset is
/// committed only once every handler's inbox transaction committed, or the dead letter was
/// acknowledged. A database error is retried until it goes away (or shutdown): it never
/// dead-letters.
///
/// # Ordering and concurrency
///
/// Messages are applied in offset order per Kafka message key (the publisher's key is the
/// aggregate id, so per aggregate), and never two messages of one key at once; messages
/// without a key are applied in order per partition. Different keys, of one partition or
/// of several, are applied concurrently: up to [`KafkaConsumerBuilder::concurrency`] runs at
/// once (default 8), each in its own inbox transaction, so give the database pool at least
/// that many connections. A run takes messages already received: those of one key, and, while
/// more wait, those of further keys of the same partition, up to
/// [`KafkaConsumerBuilder::max_batch`] (the messages waiting are spread over the free runs), and
/// applies them together in one transaction, each key's in offset order. When that transaction
/// fails, a run of one key applies its messages one at a time (with retries and dead letters);
/// a run of several keys hands its messages back and each of those keys runs alone, so a
/// failing message never holds back another key for longer than one failed batch. A key whose
/// message is being retried holds back its later messages only;
/// the other keys go on, until [`KafkaConsumerBuilder::max_buffered`] messages are received
/// and not done: then the consumer pauses its partitions (and keeps polling, so the group
/// membership and rebalances go on) until half of them are done.
///
/// # Offsets
///
/// Per partition, the offset committed is the oldest message not done yet (or the one after
/// the newest received, when all are done): never past a message not applied, skipped,
/// ignored or dead-lettered, whatever order the keys finish in. Commits are asynchronous,
/// every 100 ms while messages get done, and for revoked partitions when a rebalance takes
/// them. A revoked partition's messages still being applied are abandoned: their runs stop at
/// their next retry wait, what they finish is never committed by this member (each
/// assignment of a partition has its own generation), and the next owner applies them again
/// (the inbox skips what was applied). Retries run beside the poll loop, which goes on
/// polling, so a long retry does not exceed `max.poll.interval.ms`.
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
    worker: Arc<Worker>,
    topics: Vec<String>,
    max_batch: usize,
    concurrency: usize,
    max_buffered: usize,
}

impl fmt::Debug for KafkaConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConsumer")
            .field("group", &self.worker.group())
            .field("topics", &self.topics)
            .field("retry", self.worker.inbox.retry())
            .field("handler_timeout", &self.worker.inbox.handler_timeout())
            .field("max_batch", &self.max_batch)
            .field("concurrency", &self.concurrency)
            .field("max_buffered", &self.max_buffered)
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
    concurrency: usize,
    max_buffered: usize,
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
    /// Default of [`KafkaConsumerBuilder::concurrency`]: below the 10 connections of a default
    /// SQLx pool.
    pub const DEFAULT_CONCURRENCY: usize = 8;
    /// Default of [`KafkaConsumerBuilder::max_buffered`].
    pub const DEFAULT_MAX_BUFFERED: usize = 1024;

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
    /// Messages applied together in one inbox transaction, at most (default 64; 1 applies each
    /// message in its own). A batch takes consecutive messages of one or more keys of one
    /// partition already received, never waits for more, and is applied with [`Inbox::process_batch`](outbox_seaorm::inbox::Inbox::process_batch): one query, one multi-row inbox
    /// insert, the handlers in order, one commit. If anything in it fails, or a message of it
    /// cannot be decoded, its messages are processed one at a time instead, with the retries and
    /// dead letters described on [`KafkaConsumer`].
    pub fn max_batch(mut self, messages: usize) -> Self {
        self.max_batch = messages.clamp(1, MAX_BATCH);
        self
    }
    /// Runs (inbox transactions) in flight at once, at most (default
    /// [`KafkaConsumerBuilder::DEFAULT_CONCURRENCY`]; 1 applies one run at a time, across all
    /// partitions). Each runs its own inbox
    /// transaction: keep it at most the database pool's size. Messages of one key are never
    /// applied concurrently, whatever this is (see [`KafkaConsumer`]).
    pub fn concurrency(mut self, keys: usize) -> Self {
        self.concurrency = keys.clamp(1, MAX_CONCURRENCY);
        self
    }
    /// Messages received and not done yet, at most (default
    /// [`KafkaConsumerBuilder::DEFAULT_MAX_BUFFERED`]): when reached, the consumer pauses its
    /// partitions until half of them are done. It bounds the memory held and how far one slow
    /// key lets the others run ahead.
    pub fn max_buffered(mut self, messages: usize) -> Self {
        self.max_buffered = messages.max(1);
        self
    }
    /// Sets how long a handler without its own timeout (`#[event_handler(timeout = "...")]`)
    /// may run before it is cancelled and its attempt fails as retryable (default 30 s).
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
            .create_with_context(GroupContext::new(self.group.clone()))
            .map_err(SetupError::Client)?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&names).map_err(SetupError::Client)?;
        tracing::info!(group = %self.group, ?topics, config = ?consumer_config, "consumer subscribed");
        let worker = Worker {
            dead_letters: DeadLetters {
                producer,
                suffix: self.dlt_suffix,
                group: self.group.clone(),
            },
            inbox: GroupInbox::new(
                self.db,
                self.group,
                self.registry,
                self.retry,
                self.handler_timeout,
            ),
        };
        Ok(KafkaConsumer {
            consumer: Arc::new(consumer),
            worker: Arc::new(worker),
            topics,
            max_batch: self.max_batch,
            concurrency: self.concurrency,
            max_buffered: self.max_buffered,
        })
    }
}

/// Upper bound of [`KafkaConsumerBuilder::max_batch`] (three bind parameters per message stay
/// far below every backend's limit).
const MAX_BATCH: usize = 1000;

/// Upper bound of [`KafkaConsumerBuilder::concurrency`].
const MAX_CONCURRENCY: usize = 1024;

/// How often offsets that moved are committed (asynchronously).
const COMMIT_INTERVAL: Duration = Duration::from_millis(100);

/// How long shutdown waits for the runs in flight to finish the message they are applying.
const SHUTDOWN_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long shutdown waits for the final offset commit.
const SHUTDOWN_COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a key's run reports back.
struct RunDone {
    generation: u64,
    done: Vec<i64>,
    /// Messages handed back unapplied (see [`RunOutcome::HandedBack`]).
    back: Vec<OwnedMessage>,
    stats: ConsumerStats,
}

/// The runs in flight, and the keys each one applies.
#[derive(Default)]
struct Runs {
    tasks: JoinSet<RunDone>,
    keys: HashMap<Id, Vec<KeyId>>,
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
            concurrency: KafkaConsumerBuilder::DEFAULT_CONCURRENCY,
            max_buffered: KafkaConsumerBuilder::DEFAULT_MAX_BUFFERED,
            handler_timeout: Handler::DEFAULT_TIMEOUT,
        }
    }

    /// The topics subscribed to.
    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    fn group(&self) -> &str {
        self.worker.group()
    }

    /// Consumes until `shutdown` completes, then returns what was done. Call it once per
    /// consumer.
    ///
    /// At shutdown, the runs in flight stop at their next retry wait and get up to 10 s to
    /// finish the message they are applying; those still running then are cancelled (their
    /// inbox transactions roll back). What is done is committed (waited for up to 10 s more);
    /// the rest is delivered again later, and the inbox skips what was applied.
    ///
    /// # Errors
    /// None so far: Kafka errors are logged and retried. The `Result` leaves room for fatal ones.
    pub async fn run_until<F: Future<Output = ()>>(
        &self,
        shutdown: F,
    ) -> Result<ConsumerStats, SetupError> {
        let mut stats = ConsumerStats::default();
        let mut queues = KeyQueues::default();
        let mut runs = Runs::default();
        let mut paused = false;
        let mut commit_tick = tokio::time::interval(COMMIT_INTERVAL);
        commit_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let context = self.consumer.context();
        tokio::pin!(shutdown);
        loop {
            self.start_runs(&mut queues, &mut runs);
            paused = self.flow_control(paused);
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(joined) = runs.tasks.join_next_with_id() => {
                    self.finish_run(joined, &mut queues, &mut runs, &mut stats);
                }
                _ = commit_tick.tick() => {
                    context.commit(&*self.consumer, None, CommitMode::Async);
                }
                received = self.consumer.recv() => match received {
                    Ok(message) => {
                        self.receive(message.detach(), &mut queues, &mut stats);
                        // What else is here already joins the queues before runs start, so
                        // runs take several messages (never waits for more).
                        for _ in 1..self.max_batch {
                            match self.consumer.recv().now_or_never() {
                                Some(Ok(message)) => {
                                    self.receive(message.detach(), &mut queues, &mut stats);
                                }
                                Some(Err(error)) => {
                                    tracing::warn!(group = %self.group(), error = %error, "receive failed");
                                    break;
                                }
                                None => break,
                            }
                        }
                    }
                    Err(error) => {
                        tracing::warn!(group = %self.group(), error = %error, "receive failed");
                        tokio::select! {
                            () = &mut shutdown => break,
                            () = tokio::time::sleep(Duration::from_millis(100)) => {}
                        }
                    }
                },
            }
            self.purge_revoked(&mut queues);
        }
        context.shutdown.cancel();
        let drained = tokio::time::timeout(SHUTDOWN_DRAIN_TIMEOUT, async {
            while let Some(joined) = runs.tasks.join_next_with_id().await {
                self.finish_run(joined, &mut queues, &mut runs, &mut stats);
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(group = %self.group(), runs = runs.tasks.len(), timeout = ?SHUTDOWN_DRAIN_TIMEOUT,
                "runs still applying at shutdown are cancelled; their messages come again");
            runs.tasks.abort_all();
            while let Some(joined) = runs.tasks.join_next_with_id().await {
                self.finish_run(joined, &mut queues, &mut runs, &mut stats);
            }
        }
        self.commit_at_shutdown().await;
        Ok(stats)
    }

    /// Records a message received on an owned partition and queues it behind its key.
    fn receive(&self, message: OwnedMessage, queues: &mut KeyQueues, stats: &mut ConsumerStats) {
        stats.messages += 1;
        let tp = (message.topic().to_owned(), message.partition());
        let mut assignment = self.consumer.context().assignment();
        let Some(owned) = assignment.owned.get_mut(&tp) else {
            tracing::debug!(group = %self.group(), topic = %tp.0, partition = tp.1,
                "message of a partition not owned; dropped");
            return;
        };
        owned.tracker.received(message.offset());
        let generation = owned.generation;
        drop(assignment);
        queues.push(
            KeyId::of(&message),
            Queued {
                message,
                generation,
            },
        );
    }

    /// Starts runs of the keys ready, up to the concurrency. A run takes the messages waiting
    /// spread over all run slots, at most [`KafkaConsumerBuilder::max_batch`]: slow handlers
    /// stay parallel, fast ones get batches.
    fn start_runs(&self, queues: &mut KeyQueues, runs: &mut Runs) {
        while runs.tasks.len() < self.concurrency {
            let size = queues
                .queued()
                .div_ceil(self.concurrency)
                .clamp(1, self.max_batch);
            let Some(run) = queues.next_run(size, KeyId::same_partition) else {
                return;
            };
            let Some(first) = run.keys.first() else {
                continue;
            };
            let current = {
                let assignment = self.consumer.context().assignment();
                assignment
                    .owned
                    .get(&(first.topic.clone(), first.partition))
                    .map(|o| (o.generation, o.cancel.clone()))
            };
            let Some((generation, cancel)) = current else {
                // Revoked since: the next owner applies them.
                for id in &run.keys {
                    queues.finished(id);
                }
                continue;
            };
            let several_keys = run.keys.len() > 1;
            let messages: Vec<OwnedMessage> = run
                .items
                .into_iter()
                .filter(|q| q.generation == generation)
                .map(|q| q.message)
                .collect();
            let worker = Arc::clone(&self.worker);
            let task = runs.tasks.spawn(async move {
                let mut stats = ConsumerStats::default();
                let refs: Vec<&OwnedMessage> = messages.iter().collect();
                let outcome = worker.run(&refs, several_keys, &cancel, &mut stats).await;
                drop(refs);
                let (done, back) = match outcome {
                    RunOutcome::Done(done) => (done, Vec::new()),
                    RunOutcome::HandedBack => (Vec::new(), messages),
                };
                RunDone {
                    generation,
                    done,
                    back,
                    stats,
                }
            });
            runs.keys.insert(task.id(), run.keys);
        }
    }

    /// Takes a run's result: its offsets count as done if its partition is still owned in the
    /// same generation, messages it handed back are queued again, and its keys' next messages
    /// may run.
    fn finish_run(
        &self,
        joined: Result<(Id, RunDone), JoinError>,
        queues: &mut KeyQueues,
        runs: &mut Runs,
        stats: &mut ConsumerStats,
    ) {
        let (task, result) = match joined {
            Ok((task, done)) => (task, Some(done)),
            Err(error) => {
                if !error.is_cancelled() {
                    tracing::error!(group = %self.group(), error = %error,
                        "a run failed; its messages stay uncommitted and come again after a restart or rebalance");
                }
                (error.id(), None)
            }
        };
        let Some(keys) = runs.keys.remove(&task) else {
            return;
        };
        if let (Some(done), Some(first)) = (result, keys.first()) {
            stats.add(&done.stats);
            let tp = (first.topic.clone(), first.partition);
            let mut assignment = self.consumer.context().assignment();
            let owned = assignment.complete(&tp, done.generation, &done.done);
            drop(assignment);
            if !owned {
                // Its messages are another assignment's now: nothing to commit or hand back.
                tracing::debug!(group = %self.group(), topic = %first.topic, partition = first.partition,
                    "result of a revoked partition; not committed");
            }
            let generation = done.generation;
            if owned {
                queues.give_back(
                    done.back
                        .into_iter()
                        .map(|message| {
                            (
                                KeyId::of(&message),
                                Queued {
                                    message,
                                    generation,
                                },
                            )
                        })
                        .collect(),
                );
            }
        }
        for id in &keys {
            queues.finished(id);
        }
    }

    /// Drops the queued messages of partitions revoked since the last look.
    fn purge_revoked(&self, queues: &mut KeyQueues) {
        let mut assignment = self.consumer.context().assignment();
        for (topic, partition) in std::mem::take(&mut assignment.revoked) {
            let keep = assignment
                .owned
                .get(&(topic.clone(), partition))
                .map(|o| o.generation);
            let dropped = dispatch::purge(queues, &topic, partition, keep);
            if dropped > 0 {
                tracing::debug!(group = %self.group(), %topic, partition, dropped,
                    "queued messages of a revoked partition dropped");
            }
        }
    }

    /// Pauses the owned partitions when [`KafkaConsumerBuilder::max_buffered`] messages are in
    /// flight (again after an assignment, whose partitions start unpaused), resumes them when
    /// half are done; returns whether they are paused.
    fn flow_control(&self, paused: bool) -> bool {
        let (in_flight, assigned) = {
            let mut assignment = self.consumer.context().assignment();
            (
                assignment.in_flight(),
                std::mem::take(&mut assignment.assigned),
            )
        };
        let pause = if in_flight >= self.max_buffered {
            true
        } else if in_flight <= self.max_buffered / 2 {
            false
        } else {
            paused
        };
        // Newly assigned partitions start unpaused: after an assignment, set the state on all.
        if pause == paused && !(assigned && paused) {
            return paused;
        }
        let partitions = match self.consumer.assignment() {
            Ok(partitions) => partitions,
            Err(error) => {
                tracing::warn!(group = %self.group(), error = %error, "assignment unknown; flow control skipped");
                return paused;
            }
        };
        let result = if pause {
            self.consumer.pause(&partitions)
        } else {
            self.consumer.resume(&partitions)
        };
        match result {
            Ok(()) => {
                tracing::debug!(group = %self.group(), pause, in_flight, "flow control");
                pause
            }
            Err(error) => {
                tracing::warn!(group = %self.group(), error = %error, pause, "pause/resume failed");
                paused
            }
        }
    }

    /// Commits, synchronously, what was done on the partitions still owned: on a blocking
    /// thread, waited for at most [`SHUTDOWN_COMMIT_TIMEOUT`]. A commit that does not come back
    /// in time is logged; its messages are delivered again later, and the inbox skips them.
    async fn commit_at_shutdown(&self) {
        let consumer = Arc::clone(&self.consumer);
        let commit = tokio::task::spawn_blocking(move || {
            consumer
                .context()
                .commit(&*consumer, None, CommitMode::Sync);
        });
        match tokio::time::timeout(SHUTDOWN_COMMIT_TIMEOUT, commit).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(group = %self.group(), error = %error, "final offset commit failed");
            }
            Err(_) => tracing::warn!(
                group = %self.group(),
                timeout = ?SHUTDOWN_COMMIT_TIMEOUT,
                "final offset commit did not finish in time; those messages come again, and the inbox skips them"
            ),
        }
    }
}
