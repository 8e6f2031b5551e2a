//! The log relay (PostgreSQL): publishes committed events read from the write-ahead log through
//! a logical replication slot, in commit order, with no polling and no row marking.
//!
//! (Being written; see the crate README.)

pub mod message;

pub use message::MESSAGE_PREFIX;
