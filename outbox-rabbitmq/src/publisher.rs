//! [`RabbitPublisher`]: the relay's way to RabbitMQ.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Channel, Confirmation, Connection, PublisherConfirm};
use outbox_core::{Envelope, PublishError, Publisher};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::error::{DeliveryError, SetupError};
use crate::link::{self, ExchangeType, QueueSpec};
use crate::properties;

type Router = Arc<dyn Fn(&Envelope) -> String + Send + Sync>;

/// The default routing key of `envelope`: `<aggregate type>.<event name>` (`Order.OrderCreated`).
///
/// ```
/// let order_created = outbox_core::Envelope::builder("OrderCreated", "Order", "o-1").build();
/// assert_eq!(outbox_rabbitmq::default_routing_key(&order_created), "Order.OrderCreated");
/// ```
pub fn default_routing_key(envelope: &Envelope) -> String {
    format!("{}.{}", envelope.aggregate_type(), envelope.event_name())
}

/// A connection and its one channel in confirm mode.
struct Link {
    connection: Connection,
    channel: Channel,
}

impl Link {
    fn usable(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }
}

/// Publishes envelopes to a RabbitMQ exchange, with publisher confirms.
///
/// * exchange: durable, declared at start (default `outbox`, a topic exchange; see
///   [`RabbitPublisherBuilder::exchange`], [`RabbitPublisherBuilder::exchange_type`]);
/// * routing key: the router's choice when one is set ([`RabbitPublisherBuilder::router`]),
///   else [`default_routing_key`] (`<aggregate type>.<event name>`);
/// * message: persistent (`delivery_mode` 2), `mandatory`, `message_id` = event id, body the
///   event's JSON, properties and headers as in [`crate::properties`] (the envelope headers
///   shared with Kafka, and the CloudEvents AMQP binding's `cloudEvents:*` properties);
/// * a batch is published in order on one channel without waiting, then every confirm is
///   awaited, all within [`RabbitPublisherBuilder::confirm_timeout`] (default 25 s): an
///   envelope is `Ok` only on a positive acknowledgement of a message that was routed. A
///   `basic.nack`, a `basic.return` (no queue bound for the key), a lost channel or the timeout
///   is an error, always retryable ([`DeliveryError`]), so the relay keeps the row pending;
/// * order per aggregate (the [`Publisher`] contract): once an event of an aggregate fails
///   before it left the process, the later events of that aggregate in the batch are not
///   published and come back [`PublishError::NotAttempted`];
/// * connection loss: the publisher notices a dead connection or channel, or drops it after an
///   error or a confirm timeout, and opens a new one before the next batch, up to
///   [`RabbitPublisherBuilder::reconnect_attempts`] tries (default 3), each bounded by
///   [`RabbitPublisherBuilder::connect_timeout`] (default 10 s); when all fail, the whole batch
///   fails as retryable and the next batch tries again.
///
/// # Order: what a consumer can rely on
///
/// * One channel, messages published in batch order: RabbitMQ routes a channel's messages in
///   the order they were published, and confirms them in that order.
/// * A single queue delivers in the order it received, so one queue bound for an aggregate's
///   events holds them in order, and a consumer that processes one message at a time with
///   manual acknowledgements (as [`crate::RabbitConsumer`] does) applies them in order.
///   Messages a consumer had not acknowledged when its connection dropped go back to the queue
///   at their original place.
/// * Several queues for one stream of events (competing consumers on one queue, or several
///   queues): use [`ExchangeType::ConsistentHashOnAggregateId`]: each aggregate's events go to
///   one queue, always the same while the bindings stay.
/// * Not guaranteed: a message that fails after later messages of its aggregate were already
///   published (a nack, a return or a lost channel while they were in flight) cannot be taken
///   back: those later messages may reach the queue before the failed one is sent again. The
///   publisher reports them `Ok`, logs it at error level and counts it in
///   `outbox_rabbitmq_out_of_order_total`; the relay sends the failed one again, so nothing is
///   lost, but a consumer can see event k+1 before k. A returned (unroutable) message usually
///   has unroutable followers too (same routing key), which fail the same way.
///
/// ```no_run
/// # async fn run() -> Result<(), outbox_rabbitmq::SetupError> {
/// use outbox_rabbitmq::RabbitPublisher;
///
/// let publisher = RabbitPublisher::builder("amqp://guest:guest@127.0.0.1:5672/%2f")
///     .exchange("shop")
///     .declare_queue("billing", ["Order.*"])
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
pub struct RabbitPublisher {
    uri: String,
    exchange: String,
    exchange_type: ExchangeType,
    router: Option<Router>,
    source: Option<String>,
    queues: Vec<QueueSpec>,
    connect_timeout: Duration,
    confirm_timeout: Duration,
    reconnect_attempts: u32,
    link: Mutex<Option<Link>>,
}

impl fmt::Debug for RabbitPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitPublisher")
            .field("uri", &link::redact(&self.uri))
            .field("exchange", &self.exchange)
            .field("exchange_type", &self.exchange_type)
            .field("router", &self.router.is_some())
            .finish_non_exhaustive()
    }
}

/// Builds a [`RabbitPublisher`]; see [`RabbitPublisher::builder`].
#[must_use]
pub struct RabbitPublisherBuilder {
    uri: String,
    exchange: String,
    exchange_type: ExchangeType,
    router: Option<Router>,
    source: Option<String>,
    queues: Vec<QueueSpec>,
    connect_timeout: Duration,
    confirm_timeout: Duration,
    reconnect_attempts: u32,
}

impl fmt::Debug for RabbitPublisherBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitPublisherBuilder")
            .field("uri", &link::redact(&self.uri))
            .field("exchange", &self.exchange)
            .finish_non_exhaustive()
    }
}

impl RabbitPublisherBuilder {
    /// Publishes to exchange `name` (default `outbox`).
    pub fn exchange(mut self, name: impl Into<String>) -> Self {
        self.exchange = name.into();
        self
    }
    /// Sets the exchange's type (default [`ExchangeType::Topic`]).
    pub fn exchange_type(mut self, kind: ExchangeType) -> Self {
        self.exchange_type = kind;
        self
    }
    /// Routes every envelope with `router` (its routing key) instead of
    /// [`default_routing_key`].
    pub fn router(mut self, router: impl Fn(&Envelope) -> String + Send + Sync + 'static) -> Self {
        self.router = Some(Arc::new(router));
        self
    }
    /// Sets the CloudEvents `cloudEvents:source` of every message (default
    /// `/outbox/<aggregate type>`).
    pub fn cloudevents_source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }
    /// Declares durable queue `queue` at start (and after each reconnection), bound to the
    /// exchange with each of `binding_keys`.
    pub fn declare_queue<I, S>(mut self, queue: impl Into<String>, binding_keys: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.queues.push(QueueSpec {
            queue: queue.into(),
            keys: binding_keys.into_iter().map(Into::into).collect(),
        });
        self
    }
    /// How long one attempt to connect, open the channel and declare may take (default 10 s);
    /// past it the attempt fails as retryable.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
    /// How long a batch may wait for its publisher confirms, from its first publish (default
    /// 25 s); past it the unconfirmed messages fail as retryable and the channel is replaced.
    ///
    /// With the defaults a batch takes at most about 55 s (3 connection attempts of 10 s, then
    /// 25 s of confirms), under the relay's `publish_timeout` (60 s); keep it so when changing
    /// them, or the relay gives the batch up first (also retryable).
    pub fn confirm_timeout(mut self, timeout: Duration) -> Self {
        self.confirm_timeout = timeout;
        self
    }
    /// How many times a batch tries to open a connection before it fails as a whole (default 3,
    /// at least 1), 100 ms apart, doubling.
    pub fn reconnect_attempts(mut self, attempts: u32) -> Self {
        self.reconnect_attempts = attempts.max(1);
        self
    }

    /// Connects, switches the channel to confirm mode and declares the exchange (and the asked
    /// queues and bindings).
    ///
    /// # Errors
    /// [`SetupError::Connect`] or [`SetupError::Timeout`] when the broker cannot be reached
    /// within the connect timeout, [`SetupError::Declare`] when it refuses a declaration.
    pub async fn build(self) -> Result<RabbitPublisher, SetupError> {
        let publisher = RabbitPublisher {
            uri: self.uri,
            exchange: self.exchange,
            exchange_type: self.exchange_type,
            router: self.router,
            source: self.source,
            queues: self.queues,
            connect_timeout: self.connect_timeout,
            confirm_timeout: self.confirm_timeout,
            reconnect_attempts: self.reconnect_attempts,
            link: Mutex::new(None),
        };
        let link = publisher.open().await?;
        *publisher.link.lock().await = Some(link);
        tracing::debug!(publisher = ?publisher, "RabbitMQ publisher connected");
        Ok(publisher)
    }
}

impl RabbitPublisher {
    /// Starts a publisher for `uri` (`amqp://user:password@host:port/vhost`, the vhost URL-encoded:
    /// `%2f` for `/`).
    pub fn builder(uri: impl Into<String>) -> RabbitPublisherBuilder {
        RabbitPublisherBuilder {
            uri: uri.into(),
            exchange: "outbox".to_owned(),
            exchange_type: ExchangeType::Topic,
            router: None,
            source: None,
            queues: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            confirm_timeout: Duration::from_secs(25),
            reconnect_attempts: 3,
        }
    }

    /// The exchange events are published to.
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// The routing key of `envelope`.
    pub fn routing_key(&self, envelope: &Envelope) -> String {
        match &self.router {
            Some(router) => router(envelope),
            None => default_routing_key(envelope),
        }
    }

    /// Declares durable queue `queue` bound to the exchange with each of `binding_keys`, now,
    /// within the connect timeout.
    ///
    /// # Errors
    /// [`SetupError`] when the connection or the declaration fails.
    pub async fn declare_queue(
        &self,
        queue: &str,
        binding_keys: &[&str],
    ) -> Result<(), SetupError> {
        let spec = QueueSpec {
            queue: queue.to_owned(),
            keys: binding_keys.iter().map(|k| (*k).to_owned()).collect(),
        };
        let mut guard = self.link.lock().await;
        let channel = self.usable(&mut guard).await?;
        link::bounded(
            "declaring a queue",
            self.connect_timeout,
            link::declare_queue(&channel, &self.exchange, &spec),
        )
        .await
    }

    /// Closes the connection (waiting at most the connect timeout); a later publish opens a new
    /// one.
    pub async fn close(&self) {
        if let Some(link) = self.link.lock().await.take() {
            let _ = tokio::time::timeout(
                self.connect_timeout,
                link.connection.close(200, "publisher closed".into()),
            )
            .await;
        }
    }

    fn source_for(&self, envelope: &Envelope) -> String {
        match &self.source {
            Some(source) => source.clone(),
            None => format!("/outbox/{}", envelope.aggregate_type()),
        }
    }

    /// One attempt: connection, channel in confirm mode, declarations.
    async fn open(&self) -> Result<Link, SetupError> {
        link::bounded(
            "opening the publisher's channel",
            self.connect_timeout,
            async {
                let connection =
                    link::connect(&self.uri, "outbox-publisher", self.connect_timeout).await?;
                let channel = connection
                    .create_channel()
                    .await
                    .map_err(SetupError::Connect)?;
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await
                    .map_err(SetupError::Connect)?;
                link::declare_exchange(&channel, &self.exchange, &self.exchange_type).await?;
                for spec in &self.queues {
                    link::declare_queue(&channel, &self.exchange, spec).await?;
                }
                Ok(Link {
                    connection,
                    channel,
                })
            },
        )
        .await
    }

    /// The channel of a usable link, opening a new one (with bounded retries) when there is none
    /// or it was lost.
    async fn usable(&self, link: &mut Option<Link>) -> Result<Channel, SetupError> {
        if let Some(current) = link.as_ref() {
            if current.usable() {
                return Ok(current.channel.clone());
            }
            tracing::warn!(uri = %link::redact(&self.uri), "RabbitMQ connection lost; reconnecting");
            if let Some(lost) = link.take() {
                link::close_later(lost.connection);
            }
        }
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            match self.open().await {
                Ok(fresh) => {
                    let channel = fresh.channel.clone();
                    *link = Some(fresh);
                    metrics::counter!("outbox_rabbitmq_connections_total").increment(1);
                    return Ok(channel);
                }
                Err(error) if attempt < self.reconnect_attempts && error.is_retryable() => {
                    tracing::warn!(attempt, error = %outbox_core::error_chain(&error),
                        "RabbitMQ connection attempt failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    fn confirmed(
        &self,
        routing_key: &str,
        confirmation: Confirmation,
    ) -> Result<(), DeliveryError> {
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
                Err(DeliveryError::Unroutable {
                    exchange: self.exchange.clone(),
                    routing_key: routing_key.to_owned(),
                    reply_code: returned.reply_code,
                    reply_text: returned.reply_text.to_string(),
                })
            }
            Confirmation::Nack(None) | Confirmation::NotRequested => Err(DeliveryError::Nacked {
                exchange: self.exchange.clone(),
            }),
        }
    }
}

/// An aggregate: its type and id.
type AggregateKey<'a> = (&'a str, &'a str);

fn aggregate(envelope: &Envelope) -> AggregateKey<'_> {
    (envelope.aggregate_type(), envelope.aggregate_id())
}

/// The outcomes of one batch, and the aggregates that have a failed envelope in it.
struct Outcomes<'a> {
    batch: &'a [Envelope],
    results: Vec<Option<Result<(), PublishError>>>,
    failed: HashSet<AggregateKey<'a>>,
}

impl<'a> Outcomes<'a> {
    fn new(batch: &'a [Envelope]) -> Self {
        Outcomes {
            batch,
            results: (0..batch.len()).map(|_| None).collect(),
            failed: HashSet::new(),
        }
    }

    fn blocked(&self, i: usize) -> bool {
        self.failed.contains(&aggregate(&self.batch[i]))
    }

    /// Records the outcome of envelope `i`, in batch order.
    fn settle(&mut self, i: usize, result: Result<(), DeliveryError>) {
        let envelope = &self.batch[i];
        let key = aggregate(envelope);
        let result = match result {
            Ok(()) if self.failed.contains(&key) => {
                tracing::error!(event_id = %envelope.id(), aggregate_type = key.0,
                    aggregate_id = key.1, sequence = envelope.sequence(),
                    "event reached RabbitMQ after an earlier event of its aggregate failed");
                metrics::counter!("outbox_rabbitmq_out_of_order_total").increment(1);
                Ok(())
            }
            Err(_) if self.failed.contains(&key) => Err(PublishError::NotAttempted),
            Err(error) => {
                self.failed.insert(key);
                Err(PublishError::transient(error))
            }
            Ok(()) => Ok(()),
        };
        self.results[i] = Some(result);
    }

    fn finish(self) -> Vec<Result<(), PublishError>> {
        self.results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(PublishError::transient(DeliveryError::ChannelLost))))
            .collect()
    }
}

#[async_trait]
impl Publisher for RabbitPublisher {
    async fn publish(&self, batch: &[Envelope]) -> Vec<Result<(), PublishError>> {
        let mut guard = self.link.lock().await;
        let channel = match self.usable(&mut guard).await {
            Ok(channel) => channel,
            Err(error) => {
                tracing::warn!(error = %outbox_core::error_chain(&error),
                    "RabbitMQ unreachable; the batch stays pending");
                let error = Arc::new(error);
                return batch
                    .iter()
                    .map(|_| {
                        Err(PublishError::transient(DeliveryError::Connect(Arc::clone(
                            &error,
                        ))))
                    })
                    .collect();
            }
        };
        let deadline = Instant::now() + self.confirm_timeout;
        let mut outcomes = Outcomes::new(batch);
        let mut pending: Vec<(usize, String, PublisherConfirm)> = Vec::with_capacity(batch.len());
        let mut lost = false;
        for (i, envelope) in batch.iter().enumerate() {
            if outcomes.blocked(i) {
                outcomes.settle(i, Err(DeliveryError::ChannelLost));
                continue;
            }
            if lost {
                outcomes.settle(i, Err(DeliveryError::ChannelLost));
                continue;
            }
            let routing_key = self.routing_key(envelope);
            let properties = properties::encode(envelope, &self.source_for(envelope));
            let sent = tokio::time::timeout_at(
                deadline,
                channel.basic_publish(
                    self.exchange.as_str().into(),
                    routing_key.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    envelope.payload().as_bytes(),
                    properties,
                ),
            )
            .await;
            match sent {
                Ok(Ok(confirm)) => pending.push((i, routing_key, confirm)),
                Ok(Err(source)) => {
                    lost = true;
                    outcomes.settle(
                        i,
                        Err(DeliveryError::Publish {
                            exchange: self.exchange.clone(),
                            source,
                        }),
                    );
                }
                Err(_) => {
                    lost = true;
                    outcomes.settle(
                        i,
                        Err(DeliveryError::ConfirmTimeout {
                            after: self.confirm_timeout,
                        }),
                    );
                }
            }
        }
        for (i, routing_key, confirm) in pending {
            let result = match tokio::time::timeout_at(deadline, confirm).await {
                Ok(Ok(confirmation)) => self.confirmed(&routing_key, confirmation),
                Ok(Err(source)) => {
                    lost = true;
                    Err(DeliveryError::Publish {
                        exchange: self.exchange.clone(),
                        source,
                    })
                }
                Err(_) => {
                    lost = true;
                    Err(DeliveryError::ConfirmTimeout {
                        after: self.confirm_timeout,
                    })
                }
            };
            if let Err(error) = &result {
                tracing::warn!(event_id = %batch[i].id(), routing_key,
                    error = %outbox_core::error_chain(error), "event not published");
            }
            outcomes.settle(i, result);
        }
        if lost && let Some(dropped) = guard.take() {
            link::close_later(dropped.connection);
        }
        outcomes.finish()
    }
}
