//! SeaORM backend of the outbox framework.
//!
//! (Crate docs with a runnable example: written with the save path.)

pub mod schema;
mod shard;
pub mod time;

pub use shard::shard_of;
mod context;

pub use context::{NoTransaction, TransactionExt, with_transaction};

pub mod inbox;
pub use inbox::{Inbox, InboxError, Processed};
