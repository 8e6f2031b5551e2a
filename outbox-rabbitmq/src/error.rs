//! Errors of the RabbitMQ backend.

use std::sync::Arc;
use std::time::Duration;

/// Why a message did not count as published. Every kind is retryable: the relay keeps the row
/// pending and sends it again (and dead-letters it after its last attempt).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// No connection (or no channel in confirm mode) could be opened.
    #[error("could not connect to RabbitMQ")]
    Connect(#[source] Arc<SetupError>),
    /// The client refused the publish or lost the channel while waiting for the confirm.
    #[error("publishing to exchange `{exchange}` failed")]
    Publish {
        /// The exchange.
        exchange: String,
        /// lapin's error.
        #[source]
        source: lapin::Error,
    },
    /// The broker did not confirm in time; the channel is dropped and a new one opened for the
    /// next batch (the message may still have been routed: the relay sends it again, and the
    /// consumers' inbox skips the copy).
    #[error("no publisher confirm within {after:?}")]
    ConfirmTimeout {
        /// The bound that passed.
        after: Duration,
    },
    /// The broker answered with a negative acknowledgement (`basic.nack`): it could not take
    /// the message.
    #[error("the broker refused the message (nack) on exchange `{exchange}`")]
    Nacked {
        /// The exchange.
        exchange: String,
    },
    /// The message was mandatory and no queue is bound for its routing key (`basic.return`).
    #[error(
        "no queue bound for routing key `{routing_key}` on exchange `{exchange}`: {reply_code} {reply_text}"
    )]
    Unroutable {
        /// The exchange.
        exchange: String,
        /// The routing key.
        routing_key: String,
        /// The broker's reply code (312 `NO_ROUTE`).
        reply_code: u16,
        /// The broker's reply text.
        reply_text: String,
    },
    /// The channel was lost earlier in the batch; this message was not sent.
    #[error("the channel was lost earlier in this batch")]
    ChannelLost,
}

impl DeliveryError {
    /// Whether a later attempt may succeed: always, for RabbitMQ (an unroutable message may
    /// become routable once its queue is bound).
    pub fn is_retryable(&self) -> bool {
        true
    }
}

/// Why a connection, a channel or a declaration failed, or a consumer could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// Connecting, opening a channel or switching it to confirm mode failed.
    #[error("RabbitMQ connection failed")]
    Connect(#[source] lapin::Error),
    /// A step did not finish within its bound.
    #[error("{step} did not finish within {after:?}")]
    Timeout {
        /// What was being done.
        step: &'static str,
        /// The bound that passed.
        after: Duration,
    },
    /// Declaring an exchange, a queue or a binding failed (a declaration that conflicts with an
    /// existing one of other settings, say).
    #[error("declaring {what} failed")]
    Declare {
        /// What was declared (`exchange outbox`, `queue payments`, ...).
        what: String,
        /// lapin's error.
        #[source]
        source: lapin::Error,
    },
    /// Two different handlers of the registry share an id (see
    /// [`outbox_core::HandlerRegistry::check`]).
    #[error(transparent)]
    DuplicateHandlerId(#[from] outbox_core::DuplicateHandlerId),
    /// The consumer group has no handler.
    #[error("consumer group `{group}` has no handler in the registry")]
    NoHandlers {
        /// The consumer group.
        group: String,
    },
}

impl SetupError {
    /// Whether a later attempt may succeed: connection failures and timeouts are, a refused
    /// declaration or a bad registry is not.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SetupError::Connect(_) | SetupError::Timeout { .. })
    }
}
