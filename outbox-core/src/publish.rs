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
        matches!(self, PublishError::Transient { .. })
    }
}

/// Sends committed envelopes to a broker (Kafka, or the in-memory one in [`crate::testing`]).
///
/// The relay hands over a batch in order and expects one outcome per envelope, in the same order.
/// An envelope counts as published only on `Ok`: return it only once the broker has acknowledged
/// the message.
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
