//! SeaORM backend of the outbox framework.
//!
//! (Crate docs with a runnable example: written with the save path.)

pub mod schema;
mod shard;
pub mod time;

pub use shard::shard_of;

pub mod cleanup;
pub mod relay;
pub use cleanup::{Cleanup, CleanupBuilder, CleanupError, CleanupReport};
pub use relay::{CycleReport, DeadLetterPolicy, Relay, RelayBuilder, RelayError, RelayStats};
mod context;

pub use context::{NoTransaction, TransactionExt, with_transaction};

pub mod inbox;
pub use inbox::{Inbox, InboxError, Processed};

mod delivery;
mod error;
mod outbox;
mod uow;
mod write;

pub use delivery::DeliveryWorker;
pub use error::Error;
pub use outbox::{Outbox, OutboxBuilder};
pub use uow::UnitOfWork;
pub use write::{NOTIFY_CHANNEL, Written, write_events};
