//! [`RabbitConsumer`]: a RabbitMQ queue → a consumer group's handlers, exactly once per event.

mod dispatch;
mod worker;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection, Consumer};
use outbox_core::{Handler, HandlerRegistry, RetryPolicy, error_chain};
use outbox_seaorm::inbox::{ApplyStats, GroupInbox};
use sea_orm::DatabaseConnection;
use tokio::task::{Id, JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::error::SetupError;
use crate::link::{self, ExchangeType, QueueSpec};
use crate::properties;
use dispatch::{Acks, Key, KeyQueues};
use worker::{Received, RunOutcome, RunStats, Worker};

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
    /// Messages sent to the dead-letter queue.
    pub dead_lettered: u64,
    /// Handler attempts that failed and were retried.
    pub retries: u64,
    /// Messages of a known event type that no handler of the group handles, acknowledged.
    pub ignored: u64,
    /// Connections opened after the first one (after a lost connection).
    pub reconnects: u64,
    /// Inbox transactions that applied several messages together
    /// ([`RabbitConsumerBuilder::max_batch`]).
    pub batches: u64,
    /// Messages received and left unacknowledged: queued or being retried when their
    /// connection was lost or the consumer stopped. The broker delivers them again (the inbox
    /// skips what was applied).
    pub abandoned: u64,
}

impl ConsumerStats {
    fn add(&mut self, applied: &ApplyStats, dead_lettered: u64) {
        self.applied += applied.applied;
        self.duplicates += applied.duplicates;
        self.retries += applied.retries;
        self.ignored += applied.ignored;
        self.batches += applied.batches;
        self.dead_lettered += dead_lettered;
    }
}

/// The connection, the consuming channel and the dead-letter channel (in confirm mode).
struct Link {
    connection: Connection,
    channel: Channel,
    consumer: Consumer,
    dead_letters: Arc<Channel>,
}

/// Runs the handlers of one consumer group on the events delivered to its queue.
///
/// At start ([`RabbitConsumerBuilder::build`]) it declares the events' exchange (durable, topic
/// by default, like [`crate::RabbitPublisher`]'s), the group's durable queue (default: the group
/// name) bound with the binding keys (default `#.<event name>` for each event the group
/// handles, which matches the publisher's default routing key `<aggregate type>.<event name>`),
/// and the dead-letter exchange (`<exchange>.dlx`, direct) with the dead-letter queue
/// (`<queue>.dlq`, bound with the queue's name).
///
/// For each message: the envelope is decoded strictly from the properties and headers (see
/// [`crate::properties::decode`]); each handler of the group for the event runs through
/// [`Inbox::process`](outbox_seaorm::inbox::Inbox::process) with consumer key
/// `"<group>/<handler id>"` (so a redelivered event is skipped); a failing handler is retried
/// with the [`RetryPolicy`] (default: 5 attempts, from 200 ms up to 10 s), then the message is
/// published to the dead-letter exchange with the [`dlt`](outbox_core::wire::dlt) headers added
/// to its own (`dlt_reason` `handler-failed`, or `handler-permanent` for
/// `HandlerError::permanent`). A message that does not decode, or whose event name no type in
/// this binary declares, is dead-lettered at once (`malformed:<kind>`, see
/// [`MalformedMessage::reason`](outbox_core::wire::MalformedMessage::reason)); one of a
/// declared event type that no handler of the group handles is acknowledged and counted as
/// ignored. A message is acknowledged only once its inbox transaction committed, or the broker
/// confirmed its dead letter. A database error is retried until it goes away (or shutdown): it
/// never dead-letters. The shared part of this (routing, retries, batches) is
/// [`GroupInbox`], which the Kafka consumer uses too.
///
/// # Ordering and concurrency
///
/// Messages of one aggregate (aggregate type and id, from the message's headers) are applied
/// in delivery order and never two at once; messages that do not decode are dead-lettered one
/// after the other. Different aggregates are applied concurrently: up to
/// [`RabbitConsumerBuilder::concurrency`] runs at once (default 8), each in its own inbox
/// transaction, so give the database pool at least that many connections. A run takes the
/// messages already received of one aggregate and, while more wait, of further aggregates, up
/// to [`RabbitConsumerBuilder::max_batch`], and applies them together in one transaction. When
/// that transaction fails, a run of one aggregate applies its messages one at a time (with
/// retries and dead letters); a run of several hands its messages back and each aggregate runs
/// alone, so a failing message holds back only its own aggregate. The broker hands over at
/// most [`RabbitConsumerBuilder::max_buffered`] unacknowledged messages (`basic.qos`, default
/// 256): that bounds the memory held and how far the other aggregates run ahead of one whose
/// message is being retried.
///
/// Acknowledgements: each delivery is acknowledged once its transaction committed (or its dead
/// letter was confirmed). When every delivery up to one is done, a single `multiple`
/// acknowledgement covers them; a delivery done while an earlier one is not is acknowledged on
/// its own. An acknowledgement never covers a delivery that is not done.
///
/// What order a consumer can rely on: with one consumer on the queue, each aggregate's
/// events are applied in the order the queue holds them (the publisher's order). A lost
/// connection puts every unacknowledged message back in the queue at its place; the consumer
/// drops what it had queued from that connection, lets the runs in flight stop at their next
/// retry wait (an aggregate with a run in flight takes no new message until that run ended),
/// and the messages come again in queue order: those applied before are skipped by the inbox,
/// so each event is applied once and no later event of an aggregate overtakes an earlier one.
/// The inbox itself does not check sequences: it dedupes by event id only. So the queues the
/// consumer declares have [`crate::SINGLE_ACTIVE_CONSUMER`]: several consumers of one queue
/// (instances of a service, a restart while the old connection lingers) take turns, never
/// share it, and the next one starts with the unacknowledged messages of the last. To scale out
/// and keep order, give each consumer its own queue behind
/// [`ExchangeType::ConsistentHashOnAggregateId`] (one aggregate always reaches one queue). A message dead-lettered after its retries is skipped: its aggregate's later events
/// are applied after it. The inbox records applied events only, so a dead-lettered message
/// whose acknowledgement a dropped connection lost comes again and is tried again: a second
/// dead letter, or, if its handler now succeeds, applied after its aggregate's later events.
///
/// Bounds: each handler run by its own timeout (`#[event_handler(timeout = "...")]`), else
/// [`RabbitConsumerBuilder::handler_timeout`] (default 30 s), past which the attempt fails as
/// retryable; connecting, declaring, acknowledging and each dead-letter confirm by
/// [`RabbitConsumerBuilder::operation_timeout`] (default 10 s). A lost connection is opened
/// again, 100 ms to 5 s apart, until shutdown. Shutdown stops taking messages, lets the runs in
/// flight finish the message they are applying for up to 10 s (a message being retried is
/// left unacknowledged and comes again), acknowledges what is done and closes the connection
/// within the operation timeout.
pub struct RabbitConsumer {
    uri: String,
    group: String,
    exchange: String,
    exchange_type: ExchangeType,
    queue: QueueSpec,
    dlx: String,
    dlq: String,
    worker: Arc<Worker>,
    concurrency: usize,
    max_buffered: usize,
    max_batch: usize,
    operation_timeout: Duration,
    first: tokio::sync::Mutex<Option<Link>>,
}

impl fmt::Debug for RabbitConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitConsumer")
            .field("uri", &link::redact(&self.uri))
            .field("group", &self.group)
            .field("exchange", &self.exchange)
            .field("queue", &self.queue)
            .field("retry", self.worker.inbox.retry())
            .field("concurrency", &self.concurrency)
            .field("max_buffered", &self.max_buffered)
            .field("max_batch", &self.max_batch)
            .finish_non_exhaustive()
    }
}

/// Builds a [`RabbitConsumer`]; see [`RabbitConsumer::builder`].
#[must_use]
pub struct RabbitConsumerBuilder {
    uri: String,
    group: String,
    db: DatabaseConnection,
    registry: HandlerRegistry,
    exchange: String,
    exchange_type: ExchangeType,
    queue: Option<String>,
    keys: Vec<String>,
    dead_letter_exchange: Option<String>,
    retry: RetryPolicy,
    concurrency: usize,
    max_buffered: usize,
    max_batch: usize,
    handler_timeout: Duration,
    operation_timeout: Duration,
}

impl fmt::Debug for RabbitConsumerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitConsumerBuilder")
            .field("uri", &link::redact(&self.uri))
            .field("group", &self.group)
            .field("exchange", &self.exchange)
            .finish_non_exhaustive()
    }
}

impl RabbitConsumerBuilder {
    /// Default of [`RabbitConsumerBuilder::concurrency`]: below the 10 connections of a default
    /// SQLx pool.
    pub const DEFAULT_CONCURRENCY: usize = 8;
    /// Default of [`RabbitConsumerBuilder::max_buffered`].
    pub const DEFAULT_MAX_BUFFERED: usize = 256;

    /// Consumes events published to exchange `name` (default `outbox`).
    pub fn exchange(mut self, name: impl Into<String>) -> Self {
        self.exchange = name.into();
        self
    }
    /// The exchange's type, as the publisher declares it (default [`ExchangeType::Topic`]).
    pub fn exchange_type(mut self, kind: ExchangeType) -> Self {
        self.exchange_type = kind;
        self
    }
    /// Consumes from queue `name` (default: the group's name).
    pub fn queue(mut self, name: impl Into<String>) -> Self {
        self.queue = Some(name.into());
        self
    }
    /// Binds the queue with `key` (may be given several times); replaces the default keys
    /// (`#.<event name>` per handled event). Needed with a publisher router, and with
    /// [`ExchangeType::ConsistentHashOnAggregateId`] (a weight such as `"1"`).
    pub fn bind(mut self, key: impl Into<String>) -> Self {
        self.keys.push(key.into());
        self
    }
    /// Sets the dead-letter exchange (default `<exchange>.dlx`).
    pub fn dead_letter_exchange(mut self, name: impl Into<String>) -> Self {
        self.dead_letter_exchange = Some(name.into());
        self
    }
    /// Sets the retry policy of failing handlers.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }
    /// Sets how many unacknowledged messages the broker hands over ahead (`basic.qos`): the
    /// same as [`RabbitConsumerBuilder::max_buffered`].
    pub fn prefetch(self, messages: u16) -> Self {
        self.max_buffered(usize::from(messages))
    }
    /// Messages received and not acknowledged yet, at most (`basic.qos` prefetch, default
    /// [`RabbitConsumerBuilder::DEFAULT_MAX_BUFFERED`], from 1 to 65,535): it bounds the memory
    /// held and how far one slow aggregate lets the others run ahead.
    pub fn max_buffered(mut self, messages: usize) -> Self {
        self.max_buffered = messages.clamp(1, usize::from(u16::MAX));
        self
    }
    /// Runs (inbox transactions) in flight at once, at most (default
    /// [`RabbitConsumerBuilder::DEFAULT_CONCURRENCY`], from 1 to 1,024; 1 applies one run at a
    /// time). Keep it at most the database pool's size. Messages of one aggregate are never
    /// applied concurrently, whatever this is (see [`RabbitConsumer`]).
    pub fn concurrency(mut self, runs: usize) -> Self {
        self.concurrency = runs.clamp(1, MAX_CONCURRENCY);
        self
    }
    /// Messages applied together in one inbox transaction, at most (default 64, from 1 to
    /// 1,000; 1 applies each message in its own). A batch takes messages already received and
    /// never waits for more; see [`GroupInbox::apply_batch`].
    pub fn max_batch(mut self, messages: usize) -> Self {
        self.max_batch = messages.clamp(1, MAX_BATCH);
        self
    }
    /// Sets how long a handler without its own timeout may run before it is cancelled and its
    /// attempt fails as retryable (default 30 s).
    pub fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.handler_timeout = timeout;
        self
    }
    /// Sets the bound of each broker operation: connecting with its declarations, an
    /// acknowledgement, a dead letter's confirm, closing (default 10 s).
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// Checks the registry, connects and declares the exchange, queues and bindings, and
    /// starts consuming (nothing is processed before [`RabbitConsumer::run_until`]).
    ///
    /// # Errors
    /// [`SetupError::DuplicateHandlerId`] when the registry met two handlers with one id,
    /// [`SetupError::NoHandlers`] when the group has none, [`SetupError::Connect`] or
    /// [`SetupError::Timeout`] when the broker cannot be reached in time,
    /// [`SetupError::Declare`] when it refuses a declaration.
    pub async fn build(self) -> Result<RabbitConsumer, SetupError> {
        self.registry.check()?;
        let handlers: Vec<&Handler> = self.registry.group(&self.group).collect();
        if handlers.is_empty() {
            return Err(SetupError::NoHandlers { group: self.group });
        }
        let mut keys = self.keys;
        if keys.is_empty() {
            for handler in &handlers {
                let key = format!("#.{}", handler.event());
                if !keys.contains(&key) {
                    keys.push(key);
                }
            }
        }
        let queue = self.queue.unwrap_or_else(|| self.group.clone());
        let dlx = self
            .dead_letter_exchange
            .unwrap_or_else(|| format!("{}.dlx", self.exchange));
        let worker = Arc::new(Worker {
            inbox: GroupInbox::new(
                self.db,
                self.group.clone(),
                self.registry,
                self.retry,
                self.handler_timeout,
            ),
            queue: queue.clone(),
            dlx: dlx.clone(),
            operation_timeout: self.operation_timeout,
        });
        let consumer = RabbitConsumer {
            uri: self.uri,
            dlq: format!("{queue}.dlq"),
            queue: QueueSpec { queue, keys },
            group: self.group,
            exchange: self.exchange,
            exchange_type: self.exchange_type,
            dlx,
            worker,
            concurrency: self.concurrency,
            max_buffered: self.max_buffered,
            max_batch: self.max_batch,
            operation_timeout: self.operation_timeout,
            first: tokio::sync::Mutex::new(None),
        };
        let link = consumer.open().await?;
        *consumer.first.lock().await = Some(link);
        tracing::info!(consumer = ?consumer, "RabbitMQ consumer ready");
        Ok(consumer)
    }
}

impl RabbitConsumer {
    /// Starts a consumer of group `group` on `uri`, applying events through the inbox in `db`
    /// with the group's handlers from `registry`.
    pub fn builder(
        uri: impl Into<String>,
        group: impl Into<String>,
        db: DatabaseConnection,
        registry: HandlerRegistry,
    ) -> RabbitConsumerBuilder {
        RabbitConsumerBuilder {
            uri: uri.into(),
            group: group.into(),
            db,
            registry,
            exchange: "outbox".to_owned(),
            exchange_type: ExchangeType::Topic,
            queue: None,
            keys: Vec::new(),
            dead_letter_exchange: None,
            retry: RetryPolicy::default()
                .with_max_attempts(5)
                .with_initial_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(10)),
            concurrency: RabbitConsumerBuilder::DEFAULT_CONCURRENCY,
            max_buffered: RabbitConsumerBuilder::DEFAULT_MAX_BUFFERED,
            max_batch: 64,
            handler_timeout: Handler::DEFAULT_TIMEOUT,
            operation_timeout: Duration::from_secs(10),
        }
    }

    /// The queue consumed from.
    pub fn queue(&self) -> &str {
        &self.queue.queue
    }

    /// Its binding keys.
    pub fn binding_keys(&self) -> &[String] {
        &self.queue.keys
    }

    /// The dead-letter queue.
    pub fn dead_letter_queue(&self) -> &str {
        &self.dlq
    }

    /// One attempt to connect, declare and start consuming, within the operation timeout.
    async fn open(&self) -> Result<Link, SetupError> {
        let name = format!("outbox-consumer-{}", self.group);
        link::bounded("opening the consumer", self.operation_timeout, async {
            let connection = link::connect(&self.uri, &name, self.operation_timeout).await?;
            let channel = connection
                .create_channel()
                .await
                .map_err(SetupError::Connect)?;
            link::declare_exchange(&channel, &self.exchange, &self.exchange_type).await?;
            link::declare_queue(&channel, &self.exchange, &self.queue).await?;
            channel
                .exchange_declare(
                    self.dlx.as_str().into(),
                    lapin::ExchangeKind::Direct,
                    lapin::options::ExchangeDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(|source| SetupError::Declare {
                    what: format!("exchange `{}`", self.dlx),
                    source,
                })?;
            let dlq = QueueSpec {
                queue: self.dlq.clone(),
                keys: vec![self.queue.queue.clone()],
            };
            link::declare_queue(&channel, &self.dlx, &dlq).await?;
            channel
                .basic_qos(self.prefetch(), BasicQosOptions::default())
                .await
                .map_err(SetupError::Connect)?;
            let consumer = channel
                .basic_consume(
                    self.queue.queue.as_str().into(),
                    ShortString::from(""),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(SetupError::Connect)?;
            let dead_letters = connection
                .create_channel()
                .await
                .map_err(SetupError::Connect)?;
            dead_letters
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(SetupError::Connect)?;
            Ok(Link {
                connection,
                channel,
                consumer,
                dead_letters: Arc::new(dead_letters),
            })
        })
        .await
    }

    /// Opens a new link, retrying 100 ms to 5 s apart; `None` when shutdown came first.
    async fn reopen<F: Future<Output = ()> + Unpin>(&self, shutdown: &mut F) -> Option<Link> {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.open().await {
                Ok(link) => return Some(link),
                Err(error) => {
                    tracing::warn!(group = %self.group, error = %error_chain(&error),
                        "RabbitMQ consumer could not reconnect; retrying");
                }
            }
            tokio::select! {
                () = &mut *shutdown => return None,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// The `basic.qos` prefetch: [`RabbitConsumerBuilder::max_buffered`].
    fn prefetch(&self) -> u16 {
        u16::try_from(self.max_buffered).unwrap_or(u16::MAX)
    }

    /// Consumes until `shutdown` completes, then returns what was done. Call it once per
    /// consumer.
    ///
    /// At shutdown, no new run starts; the runs in flight stop at their next retry wait and get
    /// up to 10 s to finish the message they are applying, then are cancelled (their inbox
    /// transactions roll back). What is done is acknowledged; the rest is put back in the queue
    /// when the connection closes, and comes again (the inbox skips what was applied).
    ///
    /// # Errors
    /// None so far: broker errors are logged and the connection opened again. The `Result`
    /// leaves room for fatal ones.
    pub async fn run_until<F: Future<Output = ()>>(
        &self,
        shutdown: F,
    ) -> Result<ConsumerStats, SetupError> {
        let mut st = State::default();
        tokio::pin!(shutdown);
        let mut current = self.first.lock().await.take();
        let last = loop {
            let mut link = match current.take() {
                Some(link) => link,
                None => match self.reopen(&mut shutdown).await {
                    Some(link) => {
                        st.stats.reconnects += 1;
                        link
                    }
                    None => break None,
                },
            };
            st.generation += 1;
            st.cancel = CancellationToken::new();
            st.acks = Acks::default();
            let lost = loop {
                self.start_runs(&mut st, &link);
                tokio::select! {
                    biased;
                    () = &mut shutdown => break false,
                    Some(joined) = st.tasks.join_next_with_id() => {
                        self.finish_run(joined, &mut st, Some(&link)).await;
                    }
                    next = link.consumer.next() => {
                        if !self.receive(next, &mut st) {
                            break true;
                        }
                        // What else is here already joins the queues before runs start, so
                        // runs take several messages (never waits for more).
                        let mut lost = false;
                        for _ in 1..self.max_batch {
                            match link.consumer.next().now_or_never() {
                                Some(next) => {
                                    if !self.receive(next, &mut st) {
                                        lost = true;
                                        break;
                                    }
                                }
                                None => break,
                            }
                        }
                        if lost {
                            break true;
                        }
                    }
                }
            };
            if !lost {
                break Some(link);
            }
            // The broker puts this connection's unacknowledged messages back in the queue:
            // drop what is queued from it, and let its runs stop at their next retry wait.
            st.cancel.cancel();
            let generation = st.generation;
            let dropped = st.queues.retain(|_, r| r.generation != generation);
            st.stats.abandoned += dropped as u64;
            tracing::debug!(group = %self.group, dropped, "queued messages of the lost connection dropped");
            link::close_later(link.connection);
        };
        st.cancel.cancel();
        let drained = tokio::time::timeout(SHUTDOWN_DRAIN_TIMEOUT, async {
            while let Some(joined) = st.tasks.join_next_with_id().await {
                self.finish_run(joined, &mut st, last.as_ref()).await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(group = %self.group, runs = st.tasks.len(), timeout = ?SHUTDOWN_DRAIN_TIMEOUT,
                "runs still applying at shutdown are cancelled; their messages come again");
            st.tasks.abort_all();
            while let Some(joined) = st.tasks.join_next_with_id().await {
                self.finish_run(joined, &mut st, last.as_ref()).await;
            }
        }
        st.stats.abandoned += st.queues.queued() as u64;
        if let Some(link) = last {
            self.close(link).await;
        }
        Ok(st.stats)
    }

    /// Takes what the consumer stream gave: a delivery is decoded and queued behind its
    /// aggregate's earlier ones. False when the stream failed or ended (connection lost).
    fn receive(&self, next: Option<lapin::Result<Delivery>>, st: &mut State) -> bool {
        let delivery = match next {
            Some(Ok(delivery)) => delivery,
            Some(Err(error)) => {
                tracing::warn!(group = %self.group, error = %error, "RabbitMQ consumer lost; reconnecting");
                return false;
            }
            None => {
                tracing::warn!(group = %self.group, "RabbitMQ consumer cancelled; reconnecting");
                return false;
            }
        };
        st.stats.messages += 1;
        st.acks.received(delivery.delivery_tag);
        let decoded = properties::decode(&delivery.properties, &delivery.data, &self.queue.queue);
        let received = Received {
            delivery,
            decoded,
            generation: st.generation,
        };
        st.queues.push(received.key(), received);
        true
    }

    /// Starts runs of the aggregates ready, up to the concurrency. A run takes the messages
    /// waiting spread over all run slots, at most [`RabbitConsumerBuilder::max_batch`]: slow
    /// handlers stay parallel, fast ones get batches.
    fn start_runs(&self, st: &mut State, link: &Link) {
        while st.tasks.len() < self.concurrency {
            let size = st
                .queues
                .queued()
                .div_ceil(self.concurrency)
                .clamp(1, self.max_batch);
            let Some(run) = st.queues.next_run(size, dispatch::joins) else {
                return;
            };
            let several_keys = run.keys.len() > 1;
            let generation = st.generation;
            let messages: Vec<Received> = run
                .items
                .into_iter()
                .filter(|r| r.generation == generation)
                .collect();
            let size = messages.len();
            let worker = Arc::clone(&self.worker);
            let dead_letters = Arc::clone(&link.dead_letters);
            let cancel = st.cancel.clone();
            let task = st.tasks.spawn(async move {
                let mut stats = RunStats::default();
                let outcome = worker
                    .run(messages, several_keys, &dead_letters, &cancel, &mut stats)
                    .await;
                let (done, back) = match outcome {
                    RunOutcome::Done(done) => (done, Vec::new()),
                    RunOutcome::HandedBack(back) => (Vec::new(), back),
                };
                RunDone {
                    generation,
                    done,
                    back,
                    stats,
                }
            });
            st.keys.insert(task.id(), (run.keys, size));
        }
    }

    /// Takes a run's result: what it did is acknowledged if it ran on the current connection
    /// (`link`), messages it handed back are queued again, and its aggregates' next messages
    /// may run.
    async fn finish_run(
        &self,
        joined: Result<(Id, RunDone), JoinError>,
        st: &mut State,
        link: Option<&Link>,
    ) {
        let (task, result) = match joined {
            Ok((task, done)) => (task, Some(done)),
            Err(error) => {
                if !error.is_cancelled() {
                    tracing::error!(group = %self.group, error = %error,
                        "a run failed; its messages stay unacknowledged and come again");
                }
                (error.id(), None)
            }
        };
        let Some((keys, size)) = st.keys.remove(&task) else {
            return;
        };
        let Some(done) = result else {
            st.stats.abandoned += size as u64;
            for key in &keys {
                st.queues.finished(key);
            }
            return;
        };
        st.stats.add(&done.stats.applied, done.stats.dead_lettered);
        let kept_back = if done.generation == st.generation {
            done.back.len()
        } else {
            0
        };
        st.stats.abandoned += size.saturating_sub(done.done.len() + kept_back) as u64;
        if done.generation == st.generation {
            let acks = st.acks.done(&done.done);
            if let Some(link) = link {
                self.acknowledge(link, &acks).await;
            }
            st.queues
                .give_back(done.back.into_iter().map(|r| (r.key(), r)).collect());
        }
        for key in &keys {
            st.queues.finished(key);
        }
    }

    /// Sends `acks` on the consuming channel, each bounded by the operation timeout. A failed
    /// one is logged: its messages come again, and the inbox skips them.
    async fn acknowledge(&self, link: &Link, acks: &[dispatch::Ack]) {
        for ack in acks {
            let sent = tokio::time::timeout(
                self.operation_timeout,
                link.channel.basic_ack(
                    ack.tag,
                    BasicAckOptions {
                        multiple: ack.multiple,
                    },
                ),
            )
            .await;
            match sent {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(group = %self.group, error = %error,
                    "acknowledgement failed; the message comes again and the inbox skips it"),
                Err(_) => tracing::warn!(group = %self.group,
                    "acknowledgement timed out; the message comes again and the inbox skips it"),
            }
        }
    }

    async fn close(&self, link: Link) {
        let _ = tokio::time::timeout(
            self.operation_timeout,
            link.connection.close(200, "consumer stopped".into()),
        )
        .await;
    }
}

/// Upper bound of [`RabbitConsumerBuilder::max_batch`].
const MAX_BATCH: usize = 1000;

/// Upper bound of [`RabbitConsumerBuilder::concurrency`].
const MAX_CONCURRENCY: usize = 1024;

/// How long shutdown waits for the runs in flight to finish the message they are applying.
const SHUTDOWN_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What a run reports back.
struct RunDone {
    /// The connection generation it ran on: its delivery tags belong to that channel.
    generation: u64,
    done: Vec<u64>,
    back: Vec<Received>,
    stats: RunStats,
}

/// The consuming loop's state.
#[derive(Default)]
struct State {
    queues: KeyQueues<Received>,
    tasks: JoinSet<RunDone>,
    /// The aggregates each run in flight applies, and its number of messages.
    keys: HashMap<Id, (Vec<Key>, usize)>,
    acks: Acks,
    generation: u64,
    cancel: CancellationToken,
    stats: ConsumerStats,
}
