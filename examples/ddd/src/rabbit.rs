//! The example on RabbitMQ (`--broker amqp://...`): one topic exchange and one queue per service,
//! named after the run (`ddd-<run id>`, `ddd-<run id>.payment-service`, ...) and deleted at the
//! end; an audit queue bound with `#` that keeps a copy of every message of the run (the self-check
//! reads it back, chaos re-publishes from it).
//!
//! The relays publish with `RabbitPublisher` (routing key `<aggregate type>.<event name>`), each
//! service consumes its own queue with `RabbitConsumer`. One queue per service keeps each
//! aggregate's events in order (its consumer applies an aggregate's messages one after the
//! other); in chaos mode the order service's two instances compete on its queue, as two copies
//! of a service would.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use outbox_core::HandlerRegistry;
use tokio::task::JoinHandle;

use crate::runtime::BoxError;
use crate::{inventory, order, payment};

/// Bound of each broker operation (connecting, declaring, publishing a copy, deleting).
const OPERATION: Duration = Duration::from_secs(10);

/// The consumer groups, each with its queue.
const GROUPS: [&str; 3] = [order::GROUP, payment::GROUP, inventory::GROUP];

/// Whether `broker` names a RabbitMQ server (an AMQP URL) rather than a Kafka broker.
pub fn is_amqp(broker: &str) -> bool {
    let lower = broker.to_ascii_lowercase();
    lower.starts_with("amqp://") || lower.starts_with("amqps://")
}

/// `uri` with its password replaced, for what is printed.
pub fn redact(uri: &str) -> String {
    match uri.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((credentials, host)) => match credentials.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
                None => uri.to_owned(),
            },
            None => uri.to_owned(),
        },
        None => uri.to_owned(),
    }
}

/// Where a service's relay publishes and its consumers read on RabbitMQ.
#[derive(Clone, Debug)]
pub struct Names {
    /// The server's URL.
    pub uri: String,
    /// The run's exchange (also the prefix of its queues).
    pub exchange: String,
}

impl Names {
    /// The queue of consumer group `group` in this run.
    pub fn queue(&self, group: &str) -> String {
        format!("{}.{group}", self.exchange)
    }
}

/// A message of this run as the audit queue received it.
struct Seen {
    routing_key: String,
    properties: BasicProperties,
    body: Vec<u8>,
    /// Its event id, name and version (`None` when it does not decode).
    event: Option<(String, String, u32)>,
}

/// The run's exchange and queues on a RabbitMQ server, and the audit of its messages.
pub struct Rabbit {
    names: Names,
    connection: Connection,
    channel: Channel,
    seen: Arc<Mutex<Vec<Seen>>>,
    tap: JoinHandle<()>,
}

async fn bounded<T, E: std::fmt::Display>(
    what: &str,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, BoxError> {
    match tokio::time::timeout(OPERATION, work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(format!("RabbitMQ: {what}: {error}").into()),
        Err(_) => Err(format!("RabbitMQ: {what}: no answer within {OPERATION:?}").into()),
    }
}

impl Rabbit {
    /// Connects to `uri` and declares the run's exchange, the services' queues (bound with
    /// `#.<event name>` for each event their handlers take, as `RabbitConsumer` binds by
    /// default) and the audit queue, before anything is published: a message published before
    /// its queue exists would be lost to that queue.
    pub async fn start(uri: &str) -> Result<Rabbit, BoxError> {
        let names = Names {
            uri: uri.to_owned(),
            exchange: format!("ddd-{:08x}", fastrand::u32(..)),
        };
        let properties = ConnectionProperties::default().with_connection_name("ddd-example".into());
        let connection = bounded(
            &format!("connecting to {}", redact(uri)),
            Connection::connect(uri, properties),
        )
        .await?;
        let channel = bounded("opening a channel", connection.create_channel()).await?;
        bounded(
            "confirm mode",
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        // As the publisher and the consumers declare it: durable, topic, no arguments.
        bounded(
            "declaring the exchange",
            channel.exchange_declare(
                names.exchange.as_str().into(),
                lapin::ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            ),
        )
        .await?;
        let registry = HandlerRegistry::from_inventory();
        for group in GROUPS {
            let keys: HashSet<String> = registry
                .group(group)
                .map(|h| format!("#.{}", h.event()))
                .collect();
            declare_queue(&channel, &names.exchange, &names.queue(group), true, keys).await?;
        }
        let audit = names.queue("audit");
        declare_queue(
            &channel,
            &names.exchange,
            &audit,
            false,
            ["#".to_owned()].into(),
        )
        .await?;
        let tap_channel = bounded("opening a channel", connection.create_channel()).await?;
        let mut consumer = bounded(
            "consuming the audit queue",
            tap_channel.basic_consume(
                audit.as_str().into(),
                ShortString::from("ddd-audit"),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            ),
        )
        .await?;
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let tap = tokio::spawn({
            let seen = seen.clone();
            async move {
                // Ends when the connection closes.
                while let Some(Ok(delivery)) = consumer.next().await {
                    let event = outbox_rabbitmq::properties::decode(
                        &delivery.properties,
                        &delivery.data,
                        "ddd-audit",
                    )
                    .ok()
                    .map(|e| {
                        (
                            e.id().to_string(),
                            e.event_name().to_owned(),
                            e.event_version(),
                        )
                    });
                    seen.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(Seen {
                            routing_key: delivery.routing_key.to_string(),
                            properties: delivery.properties,
                            body: delivery.data,
                            event,
                        });
                }
            }
        });
        Ok(Rabbit {
            names,
            connection,
            channel,
            seen,
            tap,
        })
    }

    /// The names the services use.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// How the broker is announced.
    pub fn describe(&self) -> String {
        format!(
            "RabbitMQ at {}, exchange {} (topic), queues {}.{{order,payment,inventory}}-service",
            redact(&self.names.uri),
            self.names.exchange,
            self.names.exchange
        )
    }

    /// Chaos: waits until the broker has dropped every consumer of `group`'s queue (at most
    /// 10 s) before a new consumer starts. The queues are single-active-consumer queues, so a
    /// new consumer would only stand by until then anyway (and then start with the messages
    /// the aborted one held); waiting keeps the chaos rounds' timing the same on both brokers.
    pub async fn wait_released(&self, group: &str) -> Result<(), BoxError> {
        let queue = self.names.queue(group);
        let deadline = Instant::now() + OPERATION;
        loop {
            let declared = bounded(
                &format!("checking queue {queue}"),
                self.channel.queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                ),
            )
            .await?;
            if declared.consumer_count() == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "RabbitMQ: queue {queue} still has {} consumers {OPERATION:?} after they were aborted",
                    declared.consumer_count()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Chaos: re-publishes up to `per_topic` messages of this run of each of the example's
    /// `ddd.orders` and `ddd.payments` events (`OrderCreated`; `PaymentCaptured` and
    /// `PaymentDeclined`) as they are (same routing key, properties and body: the same event
    /// ids), as a publisher retry would. Returns how many copies each got, keyed as on Kafka.
    pub async fn inject_duplicates(
        &self,
        per_topic: usize,
    ) -> Result<HashMap<String, usize>, BoxError> {
        let mut sent = HashMap::new();
        for (topic, events) in [
            ("ddd.orders", &["OrderCreated"][..]),
            ("ddd.payments", &["PaymentCaptured", "PaymentDeclined"][..]),
        ] {
            let n = self
                .republish(per_topic, |_, name, _| events.contains(&name))
                .await?;
            sent.insert(topic.to_owned(), n);
        }
        Ok(sent)
    }

    /// Chaos: re-publishes up to `n` of this run's `OrderCreated` messages of version 1, as a
    /// replay of old messages would. Returns how many copies went out.
    pub async fn reproduce_v1(&self, n: usize) -> Result<usize, BoxError> {
        self.republish(n, |_, name, version| name == "OrderCreated" && version == 1)
            .await
    }

    /// Re-publishes the first `n` distinct events `keep` accepts (waiting up to 3 s for them
    /// to arrive in the audit queue), each confirmed by the broker.
    async fn republish(
        &self,
        n: usize,
        keep: impl Fn(&str, &str, u32) -> bool,
    ) -> Result<usize, BoxError> {
        let deadline = Instant::now() + Duration::from_secs(3);
        let copies = loop {
            let copies: Vec<(String, BasicProperties, Vec<u8>)> = {
                let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
                let mut ids = HashSet::new();
                seen.iter()
                    .filter(|m| {
                        m.event.as_ref().is_some_and(|(id, name, version)| {
                            keep(id, name, *version) && ids.insert(id.clone())
                        })
                    })
                    .take(n)
                    .map(|m| (m.routing_key.clone(), m.properties.clone(), m.body.clone()))
                    .collect()
            };
            if copies.len() >= n || Instant::now() >= deadline {
                break copies;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        for (routing_key, properties, body) in &copies {
            let confirm = bounded(
                "re-publishing a copy",
                self.channel.basic_publish(
                    self.names.exchange.as_str().into(),
                    routing_key.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    body,
                    properties.clone(),
                ),
            )
            .await?;
            match bounded("the confirm of a copy", confirm).await? {
                Confirmation::Ack(None) => {}
                other => {
                    return Err(
                        format!("RabbitMQ refused the copy of a {routing_key}: {other:?}").into(),
                    );
                }
            }
        }
        Ok(copies.len())
    }

    /// The routing keys each event id of this run was seen with in the audit queue, and how
    /// many messages it received: waits until every id of `expected` arrived, for at most
    /// 30 s, then until the queue is quiet for 500 ms (late copies).
    pub async fn seen_routes(
        &self,
        expected: &[String],
    ) -> (HashMap<String, HashSet<String>>, usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let (mut last, mut quiet_since) = (usize::MAX, Instant::now());
        loop {
            let (routes, messages) = {
                let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
                let mut routes: HashMap<String, HashSet<String>> = HashMap::new();
                for m in seen.iter() {
                    if let Some((id, ..)) = &m.event {
                        routes
                            .entry(id.clone())
                            .or_default()
                            .insert(m.routing_key.clone());
                    }
                }
                (routes, seen.len())
            };
            if messages != last {
                (last, quiet_since) = (messages, Instant::now());
            }
            let complete = expected.iter().all(|id| routes.contains_key(id));
            if Instant::now() >= deadline
                || (complete && quiet_since.elapsed() >= Duration::from_millis(500))
            {
                return (routes, messages);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Deletes the run's queues (the services', their dead-letter queues, the audit queue) and
    /// exchanges (the events' and the dead-letter exchange), each within 10 s, and closes the
    /// connection. Returns what could not be deleted.
    pub async fn delete(self) -> Vec<String> {
        let mut failed = Vec::new();
        let mut queues: Vec<String> = GROUPS.iter().map(|g| self.names.queue(g)).collect();
        queues.extend(
            GROUPS
                .iter()
                .map(|g| format!("{}.dlq", self.names.queue(g))),
        );
        queues.push(self.names.queue("audit"));
        for queue in &queues {
            let deleted = bounded(
                &format!("deleting queue {queue}"),
                self.channel
                    .queue_delete(queue.as_str().into(), QueueDeleteOptions::default()),
            )
            .await;
            if let Err(error) = deleted {
                failed.push(error.to_string());
            }
        }
        for exchange in [
            self.names.exchange.clone(),
            format!("{}.dlx", self.names.exchange),
        ] {
            let deleted = bounded(
                &format!("deleting exchange {exchange}"),
                self.channel
                    .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()),
            )
            .await;
            if let Err(error) = deleted {
                failed.push(error.to_string());
            }
        }
        let _ = tokio::time::timeout(
            OPERATION,
            self.connection.close(200, "ddd example done".into()),
        )
        .await;
        self.tap.abort();
        failed
    }
}

/// Declares queue `queue` (durable, or exclusive to this connection) bound to `exchange` with
/// `keys`.
async fn declare_queue(
    channel: &Channel,
    exchange: &str,
    queue: &str,
    durable: bool,
    keys: HashSet<String>,
) -> Result<(), BoxError> {
    bounded(
        &format!("declaring queue {queue}"),
        channel.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable,
                exclusive: !durable,
                ..QueueDeclareOptions::default()
            },
            queue_arguments(durable),
        ),
    )
    .await?;
    for key in keys {
        bounded(
            &format!("binding queue {queue} with {key}"),
            channel.queue_bind(
                queue.into(),
                exchange.into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
    }
    Ok(())
}

/// A service's queue (durable) is declared as `RabbitConsumer` declares it, one active consumer
/// at a time, so the consumer's own declaration matches; the audit queue has no arguments.
fn queue_arguments(durable: bool) -> FieldTable {
    let mut arguments = FieldTable::default();
    if durable {
        arguments.insert(
            outbox_rabbitmq::SINGLE_ACTIVE_CONSUMER.into(),
            lapin::types::AMQPValue::Boolean(true),
        );
    }
    arguments
}

#[cfg(test)]
mod tests {
    use super::{is_amqp, redact};

    #[test]
    fn an_amqp_url_selects_rabbitmq() {
        assert!(is_amqp("amqp://guest:guest@127.0.0.1:5672/%2f"));
        assert!(is_amqp("AMQPS://host"));
        assert!(!is_amqp("127.0.0.1:9092"));
    }

    #[test]
    fn the_password_is_not_printed() {
        assert_eq!(
            redact("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://127.0.0.1"), "amqp://127.0.0.1");
    }
}
