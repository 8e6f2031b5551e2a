//! [`RabbitConsumer`]: a RabbitMQ queue → a consumer group's handlers, exactly once per event.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, Consumer};
use outbox_core::wire::{MalformedMessage, dlt};
use outbox_core::{Envelope, EventType, Handler, HandlerRegistry, RetryPolicy, error_chain};
use outbox_seaorm::inbox::{Inbox, InboxError, Processed};
use sea_orm::DatabaseConnection;

use crate::error::SetupError;
use crate::link::{self, ExchangeType, QueueSpec};
use crate::properties;

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
}

/// The connection, the consuming channel and the dead-letter channel (in confirm mode).
struct Link {
    connection: Connection,
    consumer: Consumer,
    dead_letters: Channel,
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
/// For each message, one at a time in queue order: the envelope is decoded strictly from the
/// properties and headers (see [`crate::properties::decode`]); each handler of the group for
/// the event runs through [`Inbox::process`] with consumer key `"<group>/<handler id>"` (so a
/// redelivered event is skipped); a failing handler is retried with the [`RetryPolicy`]
/// (default: 5 attempts, from 200 ms up to 10 s), then the message is published to the
/// dead-letter exchange with the [`dlt`] headers added to its own (`dlt_reason`
/// `handler-failed`, or `handler-permanent` for `HandlerError::permanent`). A message that
/// does not decode, or whose event name no type in this binary declares, is dead-lettered at
/// once (`malformed:<kind>`, see [`MalformedMessage::reason`]); one of a declared event type
/// that no handler of the group handles is acknowledged and counted as ignored. The message is
/// acknowledged only once every handler's inbox transaction committed, or the broker confirmed
/// the dead letter. A database error is retried until it goes away (or shutdown): it never
/// dead-letters.
///
/// Bounds: each handler run by its own timeout (`#[event_handler(timeout = "...")]`), else
/// [`RabbitConsumerBuilder::handler_timeout`] (default 30 s), past which the attempt fails as
/// retryable; unacknowledged messages in flight by [`RabbitConsumerBuilder::prefetch`]
/// (`basic.qos`, default 32); connecting, declaring, acknowledging and each dead-letter confirm
/// by [`RabbitConsumerBuilder::operation_timeout`] (default 10 s). A lost connection is opened
/// again, 100 ms to 5 s apart, until shutdown: the broker puts the unacknowledged messages back
/// in the queue, at their place, and they come again (the inbox skips what was applied).
/// Shutdown stops after the message in hand (a message being retried is left unacknowledged
/// and comes again) and closes the connection within the operation timeout.
pub struct RabbitConsumer {
    uri: String,
    group: String,
    exchange: String,
    exchange_type: ExchangeType,
    queue: QueueSpec,
    dlx: String,
    dlq: String,
    db: DatabaseConnection,
    registry: HandlerRegistry,
    retry: RetryPolicy,
    prefetch: u16,
    handler_timeout: Duration,
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
            .field("retry", &self.retry)
            .field("prefetch", &self.prefetch)
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
    prefetch: u16,
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
    /// Sets how many unacknowledged messages the broker hands over ahead (`basic.qos`, default
    /// 32, at least 1).
    pub fn prefetch(mut self, messages: u16) -> Self {
        self.prefetch = messages.max(1);
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
        let consumer = RabbitConsumer {
            uri: self.uri,
            dlq: format!("{queue}.dlq"),
            queue: QueueSpec { queue, keys },
            group: self.group,
            exchange: self.exchange,
            exchange_type: self.exchange_type,
            dlx,
            db: self.db,
            registry: self.registry,
            retry: self.retry,
            prefetch: self.prefetch,
            handler_timeout: self.handler_timeout,
            operation_timeout: self.operation_timeout,
            first: tokio::sync::Mutex::new(None),
        };
        let link = consumer.open().await?;
        *consumer.first.lock().await = Some(link);
        tracing::info!(consumer = ?consumer, "RabbitMQ consumer ready");
        Ok(consumer)
    }
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

/// What the consuming loop does after a message.
enum Next {
    Keep,
    Reconnect,
    Stop,
}

/// Where a decoded message goes.
enum Route<'a> {
    Handlers(Vec<&'a Handler>),
    Ignored,
    Unknown,
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
            prefetch: 32,
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
                .basic_qos(self.prefetch, BasicQosOptions::default())
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
                consumer,
                dead_letters,
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

    /// Consumes until `shutdown` completes, then returns what was done.
    ///
    /// # Errors
    /// None so far: broker errors are logged and the connection opened again. The `Result`
    /// leaves room for fatal ones.
    pub async fn run_until<F: Future<Output = ()>>(
        &self,
        shutdown: F,
    ) -> Result<ConsumerStats, SetupError> {
        let mut stats = ConsumerStats::default();
        tokio::pin!(shutdown);
        let mut current = self.first.lock().await.take();
        loop {
            let mut link = match current.take() {
                Some(link) => link,
                None => match self.reopen(&mut shutdown).await {
                    Some(link) => {
                        stats.reconnects += 1;
                        link
                    }
                    None => break,
                },
            };
            let next = tokio::select! {
                () = &mut shutdown => {
                    self.close(link).await;
                    break;
                }
                next = link.consumer.next() => next,
            };
            let delivery = match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(error)) => {
                    tracing::warn!(group = %self.group, error = %error, "RabbitMQ consumer lost; reconnecting");
                    link::close_later(link.connection);
                    continue;
                }
                None => {
                    tracing::warn!(group = %self.group, "RabbitMQ consumer cancelled; reconnecting");
                    link::close_later(link.connection);
                    continue;
                }
            };
            stats.messages += 1;
            match self.one(&link, &delivery, &mut stats, &mut shutdown).await {
                Next::Keep => current = Some(link),
                Next::Reconnect => link::close_later(link.connection),
                Next::Stop => {
                    self.close(link).await;
                    break;
                }
            }
        }
        Ok(stats)
    }

    async fn close(&self, link: Link) {
        let _ = tokio::time::timeout(
            self.operation_timeout,
            link.connection.close(200, "consumer stopped".into()),
        )
        .await;
    }

    /// Processes one message (with retries and dead letters) and acknowledges it.
    async fn one<F: Future<Output = ()> + Unpin>(
        &self,
        link: &Link,
        delivery: &Delivery,
        stats: &mut ConsumerStats,
        shutdown: &mut F,
    ) -> Next {
        let done = match self.handle(delivery, stats, shutdown).await {
            Outcome::Shutdown => return Next::Stop,
            Outcome::Done => true,
            Outcome::DeadLetter {
                reason,
                error,
                attempts,
                handler,
            } => {
                let sent = self
                    .dead_letter(link, delivery, &reason, &error, attempts, handler)
                    .await;
                if sent {
                    stats.dead_lettered += 1;
                    metrics::counter!("outbox_consumer_dead_lettered_total", "group" => self.group.clone()).increment(1);
                }
                sent
            }
        };
        if done {
            match tokio::time::timeout(
                self.operation_timeout,
                delivery.acker.ack(BasicAckOptions::default()),
            )
            .await
            {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    tracing::warn!(group = %self.group, error = %error,
                        "acknowledgement failed; the message comes again and the inbox skips it");
                }
                Err(_) => tracing::warn!(group = %self.group,
                    "acknowledgement timed out; the message comes again and the inbox skips it"),
            }
            Next::Keep
        } else {
            // Not dead-lettered: a new connection gets it back at once, before its successors.
            Next::Reconnect
        }
    }

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
        delivery: &Delivery,
        stats: &mut ConsumerStats,
        shutdown: &mut F,
    ) -> Outcome {
        let envelope =
            match properties::decode(&delivery.properties, &delivery.data, &self.queue.queue) {
                Ok(e) => e,
                Err(error) => return malformed(error),
            };
        let handlers = match self.route(&envelope) {
            Route::Handlers(handlers) => handlers,
            Route::Ignored => {
                stats.ignored += 1;
                metrics::counter!("outbox_consumer_ignored_total", "group" => self.group.clone())
                    .increment(1);
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
        let handler = &handler.with_timeout(handler.timeout_or(self.handler_timeout));
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
                        handler = handler.id(), attempt, error = %error_chain(&error),
                        "handler failed; retrying");
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

    /// Publishes `delivery` to the dead-letter exchange with the [`dlt`] headers and waits for
    /// the broker's confirm (bounded by the operation timeout). False when it did not confirm:
    /// the message is then left unacknowledged and the connection opened again, so that it comes
    /// again before the messages after it.
    async fn dead_letter(
        &self,
        link: &Link,
        delivery: &Delivery,
        reason: &str,
        error: &str,
        attempts: u32,
        handler: Option<&'static str>,
    ) -> bool {
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        let attempts = attempts.to_string();
        let mut extra: Vec<(&str, &str)> = vec![
            (dlt::REASON, reason),
            (dlt::ERROR, error),
            (dlt::ATTEMPTS, &attempts),
            (dlt::ORIGINAL_TOPIC, delivery.exchange.as_str()),
            (dlt::ORIGINAL_ROUTING_KEY, delivery.routing_key.as_str()),
            (dlt::ORIGINAL_QUEUE, &self.queue.queue),
            (dlt::GROUP, &self.group),
        ];
        if let Some(handler) = handler {
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
        let sent = tokio::time::timeout(self.operation_timeout, async {
            let confirm = link
                .dead_letters
                .basic_publish(
                    self.dlx.as_str().into(),
                    self.queue.queue.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &delivery.data,
                    properties,
                )
                .await?;
            confirm.await
        })
        .await;
        match sent {
            Ok(Ok(Confirmation::Ack(None))) => {
                tracing::warn!(group = %self.group, queue = %self.dlq, reason, error,
                    "message dead-lettered");
                true
            }
            other => {
                tracing::warn!(group = %self.group, queue = %self.dlq, outcome = ?other.map(|r| r.map(|c| c.is_ack())),
                    "dead letter not confirmed; the message stays unacknowledged");
                false
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
