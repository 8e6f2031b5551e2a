//! Connections and declarations, every step bounded.

use std::future::Future;
use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::error::SetupError;

/// `uri` with the password, if any, replaced by `<redacted>` (for logs and `Debug`).
pub(crate) fn redact(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_owned();
    };
    let Some((credentials, host)) = rest.rsplit_once('@') else {
        return uri.to_owned();
    };
    match credentials.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:<redacted>@{host}"),
        None => uri.to_owned(),
    }
}

/// Runs `step`, failing with [`SetupError::Timeout`] after `after`.
pub(crate) async fn bounded<T>(
    step: &'static str,
    after: Duration,
    work: impl Future<Output = Result<T, SetupError>>,
) -> Result<T, SetupError> {
    tokio::time::timeout(after, work)
        .await
        .map_err(|_| SetupError::Timeout { step, after })?
}

/// Opens a connection named `name` to `uri`, within `timeout`.
pub(crate) async fn connect(
    uri: &str,
    name: &str,
    timeout: Duration,
) -> Result<Connection, SetupError> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    bounded("connecting", timeout, async {
        Connection::connect(uri, properties)
            .await
            .map_err(SetupError::Connect)
    })
    .await
}

/// Closes `connection` in the background, waiting at most 5 s for the broker's answer (a
/// connection already lost just goes away).
pub(crate) fn close_later(connection: Connection) {
    tokio::spawn(async move {
        let _ =
            tokio::time::timeout(Duration::from_secs(5), connection.close(200, "bye".into())).await;
    });
}

/// The type of the exchange events are published to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExchangeType {
    /// A topic exchange (the default): queues bind with patterns over the routing key
    /// (`Order.*`, `#.OrderCreated`).
    #[default]
    Topic,
    /// A consistent-hash exchange (`x-consistent-hash`, RabbitMQ plugin
    /// `rabbitmq_consistent_hash_exchange`) hashing on the `aggregate_id` header: each
    /// aggregate's events go to one of the bound queues, always the same while the bindings
    /// stay, so the order per aggregate holds across several queues. Bind queues with a weight
    /// (`"1"`) as binding key.
    ConsistentHashOnAggregateId,
}

impl ExchangeType {
    fn kind(&self) -> ExchangeKind {
        match self {
            ExchangeType::Topic => ExchangeKind::Topic,
            ExchangeType::ConsistentHashOnAggregateId => {
                ExchangeKind::Custom("x-consistent-hash".to_owned())
            }
        }
    }

    fn arguments(&self) -> FieldTable {
        let mut arguments = FieldTable::default();
        if *self == ExchangeType::ConsistentHashOnAggregateId {
            arguments.insert(
                "hash-header".into(),
                lapin::types::AMQPValue::LongString(outbox_core::wire::AGGREGATE_ID.into()),
            );
        }
        arguments
    }
}

/// A durable queue to declare and the binding keys to bind it with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct QueueSpec {
    pub(crate) queue: String,
    pub(crate) keys: Vec<String>,
}

/// Declares durable exchange `exchange` of type `kind`.
pub(crate) async fn declare_exchange(
    channel: &Channel,
    exchange: &str,
    kind: &ExchangeType,
) -> Result<(), SetupError> {
    channel
        .exchange_declare(
            exchange.into(),
            kind.kind(),
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            kind.arguments(),
        )
        .await
        .map_err(|source| SetupError::Declare {
            what: format!("exchange `{exchange}`"),
            source,
        })
}

/// The queue argument that lets one consumer of a queue receive at a time (RabbitMQ's single
/// active consumer): the others stand by, and the broker hands the queue to one of them, the
/// unacknowledged messages first, only once the active one's channel is gone. Without it two
/// consumers of a queue (a restarted instance while the old connection lingers, or two
/// instances of a service) would each apply part of an aggregate's events, out of order.
pub const SINGLE_ACTIVE_CONSUMER: &str = "x-single-active-consumer";

/// Declares durable queue `spec.queue` (with [`SINGLE_ACTIVE_CONSUMER`]) and binds it to
/// `exchange` with each of its keys.
pub(crate) async fn declare_queue(
    channel: &Channel,
    exchange: &str,
    spec: &QueueSpec,
) -> Result<(), SetupError> {
    let mut arguments = FieldTable::default();
    arguments.insert(
        SINGLE_ACTIVE_CONSUMER.into(),
        lapin::types::AMQPValue::Boolean(true),
    );
    channel
        .queue_declare(
            spec.queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .map_err(|source| SetupError::Declare {
            what: format!("queue `{}`", spec.queue),
            source,
        })?;
    for key in &spec.keys {
        channel
            .queue_bind(
                spec.queue.as_str().into(),
                exchange.into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|source| SetupError::Declare {
                what: format!("binding `{key}` of queue `{}`", spec.queue),
                source,
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redacts_the_password_only() {
        assert_eq!(
            redact("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:<redacted>@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://127.0.0.1:5672"), "amqp://127.0.0.1:5672");
        assert_eq!(redact("amqp://user@host"), "amqp://user@host");
    }
}
