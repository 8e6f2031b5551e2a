//! [`KafkaPublisher`]: the relay's way to Kafka.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use outbox_core::{Envelope, PublishError, Publisher};
use rdkafka::ClientContext;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

use crate::admin::provision_topics;
use crate::config::KafkaConfig;
use crate::error::{DeliveryError, SetupError};
use crate::headers;
use crate::reports::{MAX_TALLY, Pending, Report, Reports};

/// The producer, with the publisher's context; shared by the batches in flight.
type SharedProducer = Arc<ThreadedProducer<PublisherContext>>;

/// The producer's context.
///
/// * librdkafka's log lines go where rdkafka's default context sends them, except librdkafka's
///   configuration warning that `enable.gapless.guarantee` is experimental. The publisher sets
///   that property on purpose (it keeps a partition gap-free after a failed request), so the
///   warning is logged at debug level instead of at every start.
/// * Delivery reports go to the tally of their batch ([`Reports`]): no channel and no future per
///   message, and one wake-up of the publishing task per batch.
#[derive(Clone, Debug, Default)]
struct PublisherContext {
    reports: Arc<Reports>,
}

impl ProducerContext for PublisherContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, ticket: usize) {
        let report = match result {
            Ok(_) => Ok(()),
            Err((error, _)) => Err(error.clone()),
        };
        self.reports.record(ticket, report);
    }
}

impl ClientContext for PublisherContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        if fac == "CONFWARN" && log_message.contains("enable.gapless.guarantee") {
            tracing::debug!(target: "librdkafka", "librdkafka: {fac} {log_message}");
            return;
        }
        DefaultClientContext.log(level, fac, log_message);
    }
}

type Router = Arc<dyn Fn(&Envelope) -> String + Send + Sync>;

/// The default topic of aggregate type `aggregate_type`: `prefix` followed by the type in
/// kebab case, lower case: `"Order"` → `"order"`, `"OrderLine"` → `"order-line"`,
/// `"order_line"` → `"order-line"`, `"HTTPRequest"` → `"httprequest"`.
///
/// A dash goes before an upper-case letter that follows a lower-case letter or a digit; `_`,
/// spaces and dots become dashes.
///
/// ```
/// assert_eq!(outbox_kafka::default_topic("", "Order"), "order");
/// assert_eq!(outbox_kafka::default_topic("shop.", "OrderLine"), "shop.order-line");
/// ```
pub fn default_topic(prefix: &str, aggregate_type: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + aggregate_type.len() + 4);
    out.push_str(prefix);
    let mut prev_lower = false;
    for c in aggregate_type.chars() {
        if matches!(c, '_' | ' ' | '.' | '-') {
            out.push('-');
            prev_lower = false;
            continue;
        }
        if c.is_uppercase() && prev_lower {
            out.push('-');
        }
        prev_lower = c.is_lowercase() || c.is_ascii_digit();
        out.extend(c.to_lowercase());
    }
    out
}

/// Publishes envelopes to Kafka with an idempotent producer.
///
/// * key: the aggregate id, so all events of an aggregate land in one partition, in order;
/// * topic: the router's choice when one is set ([`KafkaPublisherBuilder::router`]), else the
///   event type's topic ([`Envelope::topic`], from `#[event(topic = "...")]`), else
///   [`default_topic`]`(prefix, aggregate type)`;
/// * payload: the event's JSON; headers: see [`crate::headers`] (CloudEvents binary mode
///   included);
/// * a batch is produced in order without waiting, then every delivery report is awaited: an
///   envelope is `Ok` only once the broker acknowledged it. Errors keep the Kafka error
///   ([`DeliveryError`]) and are classified retryable or rejected;
/// * order per aggregate (the [`Publisher`] contract): once an event of an aggregate fails, the
///   later events of that aggregate in the batch are not produced and come back
///   [`PublishError::NotAttempted`]; see *Order and gaps* below;
/// * a producer that cannot go on is replaced by a new one before the next batch: after a fatal
///   librdkafka error, or once the broker answered that it is fenced (`ProducerFenced`,
///   `InvalidProducerEpoch`; seen after a broker outage, when the broker does not accept the
///   producer's epoch bump). The batch that met the error fails as retryable, so the relay
///   sends it again with the new producer.
///
/// # Order and gaps
///
/// What holds, per aggregate (= per key, so per partition while the topic's partition count
/// stays the same), with the default settings:
///
/// * **An event refused before it leaves the process** (larger than the producer's
///   `message.max.bytes`, an unknown topic, a full queue past the queue timeout): none of its
///   aggregate's later events of the batch is produced. The relay records the failure and
///   sends the later events after it: under the relay's default `DeadLetterPolicy::Block`,
///   nothing after a dead event ever reaches the topic.
/// * **An event whose delivery fails after it was produced**: its aggregate's later events of
///   the batch are already queued, some perhaps in flight. The producer is idempotent
///   (`enable.idempotence=true`, which implies `acks=all`, at most 5 requests in flight per
///   connection and retries without limit inside `message.timeout.ms`): librdkafka keeps the
///   produce order per partition through its own retries, without duplicates. With
///   `enable.gapless.guarantee=true` (set by default here) a permanent broker error (a message
///   over the topic's `max.message.bytes`, say) stops the producer instead of sending the
///   partition's later messages: every message still queued fails, the publisher reports the
///   aggregate's later events [`PublishError::NotAttempted`] (they were not written) and
///   replaces the producer before the next batch. Requests already in flight when the error
///   comes back are the broker's to refuse: a Kafka broker refuses them as out of sequence,
///   librdkafka's mock cluster writes them.
/// * **Not guaranteed**: a later event that was written although an earlier one of its
///   aggregate failed (in flight as above, or after a message timeout: messages that time out,
///   `message.timeout.ms`, 30 s by default, while the broker is unreachable are outside
///   librdkafka's gapless guarantee, and one timed out in flight may have been written
///   anyway). The publisher reports it `Ok`, logs it at error level and counts it in
///   `outbox_kafka_out_of_order_total`; the relay still sends it again after the failed event,
///   so nothing is lost, but a consumer can see event k+1 before event k (and k+1 twice).
///   Consumers that must never apply out of order check the `sequence` header (the project's
///   consumer dedupes by event id). Keep `message.timeout.ms` large to make it rare.
/// * Overriding `enable.idempotence`, `acks` or `enable.gapless.guarantee` with
///   [`KafkaPublisherBuilder::set`] gives these guarantees up.
///
/// ```no_run
/// # async fn run() -> Result<(), outbox_kafka::SetupError> {
/// use outbox_kafka::KafkaPublisher;
///
/// let publisher = KafkaPublisher::builder("127.0.0.1:9092")
///     .topic_prefix("shop.")
///     .set("compression.type", "zstd")
///     .build()?;
/// publisher.provision_topics(&["shop.order"], 3, 1).await?;
/// # Ok(()) }
/// ```
pub struct KafkaPublisher {
    /// Replaced by a new one when librdkafka reports a fatal error or the broker fences it
    /// (see [`Self::producer`]).
    producer: Mutex<SharedProducer>,
    /// The delivery tallies of the batches in flight, shared with every producer's context.
    reports: Arc<Reports>,
    /// Set when a delivery failed because the broker fenced the producer.
    fenced: AtomicBool,
    config: KafkaConfig,
    prefix: String,
    router: Option<Router>,
    source: Option<String>,
    queue_timeout: Duration,
    provision: Option<(i32, i32)>,
    provisioned: Mutex<HashSet<String>>,
}

impl fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaPublisher")
            .field("config", &self.config)
            .field("prefix", &self.prefix)
            .field("router", &self.router.is_some())
            .finish_non_exhaustive()
    }
}

/// Builds a [`KafkaPublisher`]; see [`KafkaPublisher::builder`].
#[must_use]
pub struct KafkaPublisherBuilder {
    config: KafkaConfig,
    prefix: String,
    router: Option<Router>,
    source: Option<String>,
    queue_timeout: Duration,
    provision: Option<(i32, i32)>,
}

impl fmt::Debug for KafkaPublisherBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaPublisherBuilder")
            .field("config", &self.config)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl KafkaPublisher {
    /// Starts a publisher for `brokers` (librdkafka's `bootstrap.servers`).
    ///
    /// Defaults: `enable.idempotence=true`, `acks=all`,
    /// `max.in.flight.requests.per.connection=5`, `enable.gapless.guarantee=true`,
    /// `message.timeout.ms=30000`, `linger.ms=0`; override any of them with
    /// [`KafkaPublisherBuilder::set`] (the first four keep the order per aggregate: see
    /// [`KafkaPublisher`], *Order and gaps*).
    ///
    /// `linger.ms=0` (librdkafka's own default is 5): the relay hands over a whole batch at once
    /// and waits for its acknowledgements, so lingering for more messages only delays them;
    /// messages queued together still go out in one request. In `examples/bench` against the
    /// tansu broker it cut the commit-to-acknowledgement p99 from about 20 ms to about 9 ms at
    /// 1,000 events/s, and did not slow the drain of a backlog.
    pub fn builder(brokers: impl Into<String>) -> KafkaPublisherBuilder {
        KafkaPublisherBuilder {
            config: KafkaConfig::new(brokers),
            prefix: String::new(),
            router: None,
            source: None,
            queue_timeout: Duration::from_secs(30),
            provision: None,
        }
    }

    /// The topic `envelope` is published to.
    pub fn topic_for(&self, envelope: &Envelope) -> String {
        if let Some(router) = &self.router {
            return router(envelope);
        }
        match envelope.topic() {
            Some(topic) => topic.to_owned(),
            None => default_topic(&self.prefix, envelope.aggregate_type()),
        }
    }

    /// Creates the `topics` that do not exist yet (see [`crate::provision_topics`]).
    ///
    /// # Errors
    /// See [`crate::provision_topics`].
    pub async fn provision_topics(
        &self,
        topics: &[&str],
        partitions: i32,
        replication: i32,
    ) -> Result<(), SetupError> {
        provision_topics(&self.config, topics, partitions, replication).await
    }

    /// The producer to publish with: the current one, or a new one when the current one met a
    /// fatal error or was fenced (librdkafka does not recover from either: the instance must be
    /// replaced).
    fn producer(&self) -> SharedProducer {
        let mut current = self.producer.lock().unwrap_or_else(|p| p.into_inner());
        let fatal = current.client().fatal_error();
        let fenced = self.fenced.load(Ordering::Acquire);
        if fatal.is_some() || fenced {
            match create(&self.config, &self.reports) {
                Ok(fresh) => {
                    tracing::warn!(
                        ?fatal,
                        fenced,
                        "Kafka producer cannot go on; replaced by a new one"
                    );
                    metrics::counter!("outbox_kafka_producer_replaced_total").increment(1);
                    *current = Arc::new(fresh);
                    self.fenced.store(false, Ordering::Release);
                }
                Err(error) => {
                    tracing::error!(?fatal, fenced, error = %error,
                        "Kafka producer cannot go on and could not be replaced");
                }
            }
        }
        Arc::clone(&current)
    }

    /// Remembers that the broker fenced the producer, so that the next batch gets a new one.
    fn note(&self, error: &KafkaError) {
        use RDKafkaErrorCode as C;
        if matches!(
            error.rdkafka_error_code(),
            Some(C::ProducerFenced | C::InvalidProducerEpoch | C::Fenced)
        ) {
            self.fenced.store(true, Ordering::Release);
        }
    }

    fn source_for(&self, aggregate_type: &str) -> String {
        match &self.source {
            Some(source) => source.clone(),
            None => format!("/outbox/{aggregate_type}"),
        }
    }

    async fn provision_new(&self, topics: &[String]) {
        let Some((partitions, replication)) = self.provision else {
            return;
        };
        let missing: Vec<&str> = {
            let known = self.provisioned.lock().unwrap_or_else(|p| p.into_inner());
            let mut seen = HashSet::new();
            topics
                .iter()
                .filter(|t| !known.contains(*t) && seen.insert(t.as_str()))
                .map(String::as_str)
                .collect()
        };
        if missing.is_empty() {
            return;
        }
        match provision_topics(&self.config, &missing, partitions, replication).await {
            Ok(()) => {
                let mut known = self.provisioned.lock().unwrap_or_else(|p| p.into_inner());
                known.extend(missing.iter().map(|t| (*t).to_owned()));
            }
            Err(error) => {
                tracing::warn!(error = %error, "provisioning topics failed; publishing anyway");
            }
        }
    }
}

impl KafkaPublisherBuilder {
    /// Sets librdkafka property `key` (TLS, SASL, compression, timeouts, ...). Secret values are
    /// never logged.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config = self.config.set(key, value);
        self
    }

    /// Prefixes the default topic names (not the event types' own topics, nor the router's).
    pub fn topic_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Routes every envelope with `router` instead of the default rules.
    pub fn router(mut self, router: impl Fn(&Envelope) -> String + Send + Sync + 'static) -> Self {
        self.router = Some(Arc::new(router));
        self
    }

    /// Sets the CloudEvents `ce_source` of every message (default `/outbox/<aggregate type>`).
    pub fn cloudevents_source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// How long to wait for room in a full local producer queue before failing (default 30 s).
    pub fn queue_timeout(mut self, timeout: Duration) -> Self {
        self.queue_timeout = timeout;
        self
    }

    /// Creates each topic the first time the publisher sends to it (existing topics are left
    /// alone), with `partitions` partitions and `replication` replicas.
    pub fn provision_topics(mut self, partitions: i32, replication: i32) -> Self {
        self.provision = Some((partitions, replication));
        self
    }

    /// Creates the producer.
    ///
    /// # Errors
    /// [`SetupError::Client`] when librdkafka refuses the configuration.
    pub fn build(self) -> Result<KafkaPublisher, SetupError> {
        let config = self
            .config
            .set_default("enable.idempotence", "true")
            .set_default("acks", "all")
            .set_default("max.in.flight.requests.per.connection", "5")
            .set_default("enable.gapless.guarantee", "true")
            .set_default("message.timeout.ms", "30000")
            .set_default("linger.ms", "0");
        let reports = Arc::new(Reports::default());
        let producer = create(&config, &reports).map_err(SetupError::Client)?;
        tracing::debug!(config = ?config, "Kafka publisher created");
        Ok(KafkaPublisher {
            producer: Mutex::new(Arc::new(producer)),
            reports,
            fenced: AtomicBool::new(false),
            config,
            prefix: self.prefix,
            router: self.router,
            source: self.source,
            queue_timeout: self.queue_timeout,
            provision: self.provision,
            provisioned: Mutex::new(HashSet::new()),
        })
    }
}

/// A producer with `config` whose delivery reports go to `reports`.
fn create(
    config: &KafkaConfig,
    reports: &Arc<Reports>,
) -> Result<ThreadedProducer<PublisherContext>, KafkaError> {
    let context = PublisherContext {
        reports: Arc::clone(reports),
    };
    config.to_client_config().create_with_context(context)
}

fn failure(topic: &str, error: KafkaError) -> PublishError {
    let error = DeliveryError::new(topic, error);
    if error.is_retryable() {
        PublishError::transient(error)
    } else {
        PublishError::rejected(error)
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

    /// Whether an earlier envelope of the aggregate of envelope `i` failed.
    fn blocked(&self, i: usize) -> bool {
        self.failed.contains(&aggregate(&self.batch[i]))
    }

    /// Records the outcome of envelope `i`, in batch order.
    fn settle(&mut self, i: usize, result: Result<(), PublishError>) {
        let envelope = &self.batch[i];
        let key = aggregate(envelope);
        let result = match result {
            Ok(()) if self.failed.contains(&key) => {
                // Handed over before the earlier failure was known, and written: the partition
                // now holds this event without the failed one (see the type's docs).
                tracing::error!(event_id = %envelope.id(), aggregate_type = key.0,
                    aggregate_id = key.1, sequence = envelope.sequence(),
                    "event reached Kafka after an earlier event of its aggregate failed");
                metrics::counter!("outbox_kafka_out_of_order_total").increment(1);
                Ok(())
            }
            // It failed behind the earlier failure (purged, or refused out of sequence): the
            // failure is the earlier event's, not this one's.
            Err(_) if self.failed.contains(&key) => Err(PublishError::NotAttempted),
            Err(error) => {
                self.failed.insert(key);
                Err(error)
            }
            Ok(()) => Ok(()),
        };
        self.results[i] = Some(result);
    }

    fn finish(self) -> Vec<Result<(), PublishError>> {
        self.results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(failure("", KafkaError::Canceled))))
            .collect()
    }
}

#[async_trait]
impl Publisher for KafkaPublisher {
    async fn publish(&self, batch: &[Envelope]) -> Vec<Result<(), PublishError>> {
        let routes = Routes::new(self, batch);
        self.provision_new(&routes.topics).await;
        let producer = self.producer();
        let mut outcomes = Outcomes::new(batch);
        let mut start = 0;
        while start < batch.len() {
            let end = batch.len().min(start + MAX_TALLY);
            self.publish_range(&producer, &routes, &mut outcomes, start..end)
                .await;
            start = end;
        }
        outcomes.finish()
    }
}

impl KafkaPublisher {
    /// Produces the envelopes of `range` (at most [`MAX_TALLY`]) without waiting, then awaits
    /// their delivery reports and settles them in batch order.
    async fn publish_range(
        &self,
        producer: &SharedProducer,
        routes: &Routes,
        outcomes: &mut Outcomes<'_>,
        range: Range<usize>,
    ) {
        let batch = outcomes.batch;
        let topic = |i: usize| routes.topics[routes.topic_of[i]].as_str();
        let Some(tally) = self.reports.open(range.len()) else {
            for i in range {
                let error = PublishError::transient("too many batches in flight");
                outcomes.settle(i, Err(error));
            }
            return;
        };
        let first = range.start;
        // Indices handed to librdkafka whose outcome is not settled yet, in batch order.
        let mut sent: VecDeque<usize> = VecDeque::new();
        for i in range {
            let envelope = &batch[i];
            if outcomes.blocked(i) {
                // An earlier event of this aggregate failed: sending this one would overtake it.
                outcomes.settle(i, Err(PublishError::NotAttempted));
                continue;
            }
            let source = routes.sources[routes.source_of[i]].as_str();
            let mut record = BaseRecord::with_opaque_to(topic(i), tally.ticket(i - first))
                .key(envelope.aggregate_id())
                .payload(envelope.payload())
                .headers(headers::encode(envelope, source))
                .timestamp(envelope.occurred_at().timestamp_millis());
            let deadline = Instant::now() + self.queue_timeout;
            let refused = loop {
                tally.sending();
                match producer.send(record) {
                    Ok(()) => break None,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                        if Instant::now() < deadline =>
                    {
                        tally.unsent();
                        record = back;
                        // Make room: wait for a report of this batch, or a while when none is
                        // outstanding (the queue is full of other batches' messages).
                        match tally.waiting() {
                            0 => tokio::time::sleep(Duration::from_millis(10)).await,
                            waiting => tally.wait_until(waiting - 1).await,
                        }
                        self.settle_ready(&tally, first, &mut sent, outcomes, topic);
                    }
                    Err((error, _)) => {
                        tally.unsent();
                        self.note(&error);
                        break Some(failure(topic(i), error));
                    }
                }
            };
            match refused {
                None => sent.push_back(i),
                Some(error) => {
                    tracing::warn!(event_id = %envelope.id(), topic = %topic(i),
                        error = %outbox_core::error_chain(&error), "could not enqueue event");
                    outcomes.settle(i, Err(error));
                }
            }
        }
        self.settle_ready(&tally, first, &mut sent, outcomes, topic);
        let mut results = tally.finish().await;
        for i in sent {
            let report = results.get_mut(i - first).and_then(Option::take);
            outcomes.settle(i, self.settle(topic(i), report));
        }
    }

    /// Settles, in batch order, the leading messages of `sent` whose reports came.
    fn settle_ready<'t>(
        &self,
        tally: &Pending,
        first: usize,
        sent: &mut VecDeque<usize>,
        outcomes: &mut Outcomes<'_>,
        topic: impl Fn(usize) -> &'t str,
    ) {
        while let Some(&i) = sent.front() {
            let Some(report) = tally.take(i - first) else {
                break;
            };
            sent.pop_front();
            outcomes.settle(i, self.settle(topic(i), Some(report)));
        }
    }

    /// The outcome of a delivery `report` (`None`: the report never came).
    fn settle(&self, topic: &str, report: Option<Report>) -> Result<(), PublishError> {
        match report {
            Some(Ok(())) => Ok(()),
            Some(Err(error)) => {
                self.note(&error);
                Err(failure(topic, error))
            }
            None => Err(failure(topic, KafkaError::Canceled)),
        }
    }
}

/// Where each envelope of a batch goes: its topic (an index into `topics`, which has no
/// repeats) and its CloudEvents source (an index into `sources`). Worked out once per aggregate
/// type and topic of the batch rather than once per event: a batch is mostly a few aggregate
/// types, and the default topic and source are strings built from them.
struct Routes {
    topics: Vec<String>,
    topic_of: Vec<usize>,
    sources: Vec<String>,
    source_of: Vec<usize>,
}

impl Routes {
    fn new(publisher: &KafkaPublisher, batch: &[Envelope]) -> Routes {
        let mut routes = Routes {
            topics: Vec::new(),
            topic_of: Vec::with_capacity(batch.len()),
            sources: Vec::new(),
            source_of: Vec::with_capacity(batch.len()),
        };
        let mut topic_index: HashMap<String, usize> = HashMap::new();
        // Without a router the route depends on the aggregate type and the event's topic only.
        let mut by_type: HashMap<(&str, Option<&str>), usize> = HashMap::new();
        let mut source_index: HashMap<&str, usize> = HashMap::new();
        for envelope in batch {
            let ty = envelope.aggregate_type();
            let mut route = || {
                let name = publisher.topic_for(envelope);
                index_of(&mut routes.topics, &mut topic_index, name)
            };
            let topic = if publisher.router.is_some() {
                route()
            } else {
                *by_type.entry((ty, envelope.topic())).or_insert_with(route)
            };
            routes.topic_of.push(topic);
            let source = *source_index.entry(ty).or_insert_with(|| {
                routes.sources.push(publisher.source_for(ty));
                routes.sources.len() - 1
            });
            routes.source_of.push(source);
        }
        routes
    }
}

/// The index of `name` in `list`, appending it the first time.
fn index_of(list: &mut Vec<String>, index: &mut HashMap<String, usize>, name: String) -> usize {
    if let Some(&i) = index.get(&name) {
        return i;
    }
    list.push(name.clone());
    index.insert(name, list.len() - 1);
    list.len() - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(aggregate_type: &str, topic: Option<&str>) -> Envelope {
        Envelope::builder("Happened", aggregate_type, "a-1")
            .topic(topic.map(str::to_owned))
            .build()
    }

    fn batch() -> Vec<Envelope> {
        vec![
            envelope("Order", None),
            envelope("OrderLine", None),
            envelope("Order", Some("audit")),
            envelope("Order", None),
            envelope("OrderLine", None),
        ]
    }

    /// Each envelope's route is what `topic_for` and the default source say, with no topic or
    /// source listed twice.
    fn check(publisher: &KafkaPublisher, batch: &[Envelope], topics: usize) {
        let routes = Routes::new(publisher, batch);
        for (i, e) in batch.iter().enumerate() {
            assert_eq!(routes.topics[routes.topic_of[i]], publisher.topic_for(e));
            assert_eq!(
                routes.sources[routes.source_of[i]],
                publisher.source_for(e.aggregate_type())
            );
        }
        assert_eq!(routes.topics.len(), topics, "{:?}", routes.topics);
        assert_eq!(routes.sources.len(), 2, "{:?}", routes.sources);
    }

    #[test]
    fn routes_are_worked_out_once_per_topic() {
        let batch = batch();
        let plain = KafkaPublisher::builder("127.0.0.1:1")
            .topic_prefix("shop.")
            .build()
            .expect("publisher");
        check(&plain, &batch, 3);
        // A router decides per event; equal answers still share one topic entry.
        let routed = KafkaPublisher::builder("127.0.0.1:1")
            .router(|e| format!("routed.{}", e.aggregate_type().to_lowercase()))
            .build()
            .expect("publisher");
        check(&routed, &batch, 2);
    }
}
