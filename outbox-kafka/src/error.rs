//! Errors of the Kafka backend.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// A message the broker did not take: the topic and rdkafka's error.
#[derive(Debug, thiserror::Error)]
#[error("delivery to topic `{topic}` failed")]
pub struct DeliveryError {
    topic: String,
    #[source]
    source: KafkaError,
}

impl DeliveryError {
    pub(crate) fn new(topic: impl Into<String>, source: KafkaError) -> Self {
        DeliveryError {
            topic: topic.into(),
            source,
        }
    }
    /// The topic the message was for.
    pub fn topic(&self) -> &str {
        &self.topic
    }
    /// rdkafka's error.
    pub fn kafka_error(&self) -> &KafkaError {
        &self.source
    }
    /// Whether a later attempt may succeed (see [`is_retryable`]).
    pub fn is_retryable(&self) -> bool {
        is_retryable(&self.source)
    }
}

/// Whether a produce error may go away by itself: a full local queue, timeouts, brokers down or
/// moving leaders are; a message too large, an unknown or invalid topic and authorization
/// failures are not. Unknown codes count as retryable (the relay dead-letters after its last
/// attempt anyway).
pub fn is_retryable(error: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    match error.rdkafka_error_code() {
        Some(
            C::MessageSizeTooLarge
            | C::InvalidMessageSize
            | C::InvalidMessage
            | C::UnknownTopic
            | C::UnknownTopicOrPartition
            | C::UnknownPartition
            | C::InvalidTopic
            | C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::TransactionalIdAuthorizationFailed
            | C::SaslAuthenticationFailed
            | C::Authentication
            | C::InvalidRecord
            | C::UnsupportedForMessageFormat
            | C::InvalidArgument,
        ) => false,
        _ => !matches!(
            error,
            KafkaError::ClientConfig(..) | KafkaError::Nul(_) | KafkaError::ClientCreation(_)
        ),
    }
}

/// Why a Kafka client could not be set up, or a topic could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// librdkafka refused the configuration or could not create the client.
    #[error("invalid Kafka client configuration")]
    Client(#[source] KafkaError),
    /// Creating topic `topic` failed.
    #[error("creating topic `{topic}` failed: {code}")]
    CreateTopic {
        /// The topic.
        topic: String,
        /// The broker's answer.
        code: RDKafkaErrorCode,
    },
    /// The admin request failed as a whole.
    #[error("admin request failed")]
    Admin(#[source] KafkaError),
    /// Two different handlers of the registry share an id (see
    /// [`outbox_core::HandlerRegistry::check`]); give one of them its own
    /// `#[event_handler(id = "...")]`.
    #[error(transparent)]
    DuplicateHandlerId(#[from] outbox_core::DuplicateHandlerId),
    /// A consumer group's event has no topic to subscribe to.
    #[error(
        "event `{event}` of consumer group `{group}` (handler `{handler}`) has no topic: set \
         #[event(topic = \"...\")] on the event or pass the topics with `.topics(..)`"
    )]
    NoTopic {
        /// The consumer group.
        group: String,
        /// The event name.
        event: &'static str,
        /// The handler id.
        handler: &'static str,
    },
    /// The consumer group has no handler.
    #[error("consumer group `{group}` has no handler in the registry")]
    NoHandlers {
        /// The consumer group.
        group: String,
    },
}
