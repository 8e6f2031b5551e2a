//! The database transaction a handler writes through.

use outbox_core::{EventContext, HandlerError};
use sea_orm::DatabaseTransaction;

/// Why a handler asked for a transaction it does not have.
#[derive(Debug, thiserror::Error)]
#[error(
    "handler `{handler}` runs without a database transaction; run it through the outbox's dispatcher or the Kafka consumer runtime"
)]
pub struct NoTransaction {
    handler: &'static str,
}

/// Gives handlers the transaction that records their completion.
///
/// A handler run by the outbox (after commit, or by the Kafka consumer runtime) runs inside a
/// transaction that also records that the event was applied (in `outbox_delivery` or
/// `outbox_inbox`). Writing through it makes the handler's effect exactly-once: either both the
/// writes and the record commit, or neither does and the handler runs again.
pub trait TransactionExt {
    /// The transaction shared with the completion record.
    ///
    /// # Errors
    /// [`NoTransaction`] (as a permanent [`HandlerError`]) when the handler was called without one.
    fn transaction(&self) -> Result<&DatabaseTransaction, HandlerError>;
}

impl TransactionExt for EventContext<'_> {
    fn transaction(&self) -> Result<&DatabaseTransaction, HandlerError> {
        self.resource::<DatabaseTransaction>().ok_or_else(|| {
            HandlerError::permanent(NoTransaction {
                handler: self.handler(),
            })
        })
    }
}

/// Attaches `txn` to a handler context (what the dispatcher and the consumer runtime do).
pub fn with_transaction<'a>(
    ctx: EventContext<'a>,
    txn: &'a DatabaseTransaction,
) -> EventContext<'a> {
    ctx.with_resource(txn)
}
