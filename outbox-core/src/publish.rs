//! Publishers: where the relay sends committed events.

use async_trait::async_trait;

use crate::envelope::Envelope;
use crate::handler::BoxError;

/// Why one envelope was not published.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The destination could not take it now (unreachable, timed out, throttled): retry later.
    #[error("publishing failed for now")]
    Transient {
        /// The underlying error.
        #[source]
        source: BoxError,
    },
    /// The destination refused it for good (too large, not authorized, unknown topic).
    #[error("publishing was refused")]
    Rejected {
        /// The underlying error.
        #[source]
        source: BoxError,
    },
    /// Not handed to the destination: an earlier envelope of the same aggregate failed in this
    /// batch, and sending this one would let it overtake that one. Retryable; the relay sends it
    /// again after the failed one and counts no attempt against it.
    #[error("not published: an earlier event of the aggregate failed in this batch")]
    NotAttempted,
}

impl PublishError {
    /// A transient failure.
    pub fn transient(source: impl Into<BoxError>) -> Self {
        PublishError::Transient {
            source: source.into(),
        }
    }

    /// A permanent refusal.
    pub fn rejected(source: impl Into<BoxError>) -> Self {
        PublishError::Rejected {
            source: source.into(),
        }
    }

    /// Whether a later attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            PublishError::Transient { .. } | PublishError::NotAttempted
        )
    }

    /// Whether the envelope was never handed to the destination ([`PublishError::NotAttempted`]):
    /// the failure belongs to an earlier envelope of its aggregate, not to this one.
    pub fn is_not_attempted(&self) -> bool {
        matches!(self, PublishError::NotAttempted)
    }
}

/// Sends committed envelopes to a broker (Kafka, or the in-memory one in `outbox_core::testing`).
///
/// The relay hands over a batch in order and expects one outcome per envelope, in the same order.
/// An envelope counts as published only on `Ok`: return it only once the broker has acknowledged
/// the message.
///
/// # Order per aggregate
///
/// A batch holds the events of an aggregate in their order. Once an envelope of an aggregate
/// fails, a publisher hands **none of that aggregate's later envelopes of the batch** to the
/// broker: it answers [`PublishError::NotAttempted`] for each of them. Otherwise a consumer would
/// see event k+1 of an aggregate without event k (and, once the relay sends k again, k after
/// k+1). The relay relies on it: it records the failure of the first envelope (an attempt, a
/// retry or a dead letter) and leaves the not-attempted ones pending, without counting an
/// attempt against them, so they go out after the failed one. Envelopes of other aggregates are
/// unaffected and may succeed in the same batch.
///
/// A failure the publisher learns of only after it handed later envelopes over (a failed
/// acknowledgement while later messages were in flight) cannot be taken back; what a publisher
/// guarantees then is its own to document (see `outbox_kafka::KafkaPublisher`).
#[async_trait]
pub trait Publisher: Send + Sync {
    /// Publishes `batch`; the result has exactly one entry per envelope, in order.
    async fn publish(&self, batch: &[Envelope]) -> Vec<Result<(), PublishError>>;
}

#[async_trait]
impl<P: Publisher + ?Sized> Publisher for std::sync::Arc<P> {
    async fn publish(&self, batch: &[Envelope]) -> Vec<Result<(), PublishError>> {
        (**self).publish(batch).await
    }
}
