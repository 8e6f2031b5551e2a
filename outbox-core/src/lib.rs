//! Domain events for SeaORM services that must never lose one.
//!
//! Aggregates record past-tense [`DomainEvent`]s with [`AggregateRoot::register_event`]; a backend
//! (`outbox-seaorm`) writes them to an outbox table in the same transaction as the aggregate,
//! runs the in-process [`event_handler`]s after the commit, and a relay publishes them
//! (`outbox-kafka`) at least once, in order per aggregate. This crate holds the parts that name no
//! database and no broker: the event model, the [`Envelope`], the [`HandlerRegistry`], the
//! [`Dispatcher`] and [`Publisher`] traits, the [`RetryPolicy`], the per-key run queues that
//! broker consumers share ([`keyed`]) and (feature `testing`) the `testing` helpers.
//!
//! ```
//! use outbox_core::{AggregateRoot, DomainEvent, DomainEvents, EventContext, HandlerError};
//! use outbox_core::event_handler;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
//! #[event(name = "OrderCreated", version = 1)]
//! pub struct OrderCreated { pub order_id: u64, pub amount_cents: i64 }
//!
//! #[derive(Debug, AggregateRoot)]
//! #[aggregate(name = "Order")]
//! pub struct Order {
//!     #[aggregate(id)]
//!     pub id: u64,
//!     pub amount_cents: i64,
//!     #[aggregate(events)]
//!     pub events: DomainEvents,
//! }
//!
//! impl Order {
//!     pub fn place(id: u64, amount_cents: i64) -> Self {
//!         let mut order = Order { id, amount_cents, events: DomainEvents::new() };
//!         order.register_event(OrderCreated { order_id: id, amount_cents });
//!         order
//!     }
//! }
//!
//! #[event_handler]
//! async fn log_order(event: &OrderCreated, ctx: &EventContext) -> Result<(), HandlerError> {
//!     assert_eq!(ctx.aggregate_id(), event.order_id.to_string());
//!     Ok(())
//! }
//!
//! let mut order = Order::place(1, 1250);
//! let pending = order.take_events();
//! let envelope = pending.as_slice()[0]
//!     .to_envelope(Order::AGGREGATE_TYPE, &order.aggregate_id(), 1)
//!     .unwrap();
//! assert_eq!(envelope.event_name(), "OrderCreated");
//! assert_eq!(envelope.decode::<OrderCreated>().unwrap().amount_cents, 1250);
//!
//! let registry = outbox_core::HandlerRegistry::from_inventory();
//! assert_eq!(registry.local("OrderCreated").count(), 1);
//! ```

mod aggregate;
pub mod context;
mod dispatch;
mod envelope;
mod error;
mod event;
mod handler;
pub mod keyed;
mod publish;
mod retry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod trace;
pub mod wire;

pub use aggregate::AggregateRoot;
pub use dispatch::{
    DeferredDispatcher, DispatchJob, Dispatcher, InlineDispatcher, SpawnDispatcher,
};
pub use envelope::{Envelope, EnvelopeBuilder, EventMetadata};
pub use error::{Error, error_chain};
pub use event::{DomainEvent, DomainEvents, EventType, PendingEvent};
pub use handler::{
    BoxError, BoxFuture, DuplicateHandlerId, EventContext, Handler, HandlerError, HandlerErrorKind,
    HandlerFn, HandlerPanicked, HandlerRegistry, HandlerTimedOut,
};
pub use publish::{PublishError, Publisher};
pub use retry::RetryPolicy;

#[cfg(feature = "macros")]
pub use outbox_macros::{AggregateRoot, DomainEvent, event_handler, handler};

/// Not public API: what the macros' generated code calls.
#[doc(hidden)]
pub mod __private {
    pub use inventory;
    pub use std::boxed::Box;
    pub use std::result::Result;
    pub use std::string::String;
    pub use std::time::Duration;

    pub use crate::aggregate::AggregateRoot;
    pub use crate::envelope::Envelope;
    pub use crate::event::{DomainEvent, DomainEvents, EventType};
    pub use crate::handler::{BoxFuture, EventContext, Handler, HandlerError};

    pub use crate::error::Error;

    /// Decodes the envelope for a handler, upcasting an older version; a payload that does not
    /// fit, or a version no upcast reaches, is a permanent failure (dead-lettered with the
    /// reason).
    pub fn decode<E: DomainEvent>(envelope: &Envelope) -> Result<E, HandlerError> {
        envelope.decode::<E>().map_err(HandlerError::permanent)
    }

    /// `read_payload` of an event declared with `upcast_from = P`.
    pub fn upcast<E, P>(version: u32, payload: &str) -> Result<E, Error>
    where
        E: DomainEvent + From<P>,
        P: DomainEvent,
    {
        crate::event::upcast::<E, P>(version, payload)
    }

    /// Links an event version to the one after it: the derive of the newer type implements it
    /// for the older one, so two types upcasting from one version do not compile (conflicting
    /// implementations).
    pub trait UpcastsInto {
        /// The version after this one.
        type Next;
    }

    /// Checks, at compile time, that `upcast_from` names the version right before this one of
    /// the same event.
    pub const fn check_upcast(name: &str, version: u32, from_name: &str, from_version: u32) {
        if !const_str_eq(name, from_name) {
            panic!(
                "`upcast_from` names a type of another event: an upcast reads an older version of the same event name"
            );
        }
        if from_version >= version {
            panic!("`upcast_from` must name an older version: its `version` is not below this one");
        }
        if from_version + 1 != version {
            panic!(
                "`upcast_from` skips a version: name the type of version `version - 1`, so the chain has no gap"
            );
        }
    }

    const fn const_str_eq(a: &str, b: &str) -> bool {
        let (a, b) = (a.as_bytes(), b.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        let mut i = 0;
        while i < a.len() {
            if a[i] != b[i] {
                return false;
            }
            i += 1;
        }
        true
    }

    /// Renders an aggregate id.
    pub fn aggregate_id<T: std::fmt::Display + ?Sized>(id: &T) -> String {
        id.to_string()
    }

    /// Checks, at the user's field, that the events field is a `DomainEvents`.
    pub const fn assert_events_field(_: &DomainEvents) {}

    /// Checks, at the user's parameter, that a handler's event type is a domain event.
    pub const fn assert_domain_event<E: DomainEvent>() {}

    /// The `#[aggregate(events)]` field: the derive reaches the events through it, spanned at
    /// the field's type, so a field of another type is reported once, there.
    #[diagnostic::on_unimplemented(
        message = "the `#[aggregate(events)]` field must be `DomainEvents`, not `{Self}`",
        label = "expected `DomainEvents`",
        note = "declare it `events: outbox_core::DomainEvents` (and `#[sea_orm(ignore)]` on a SeaORM model)"
    )]
    pub trait EventsField {
        /// The events.
        fn events(&self) -> &DomainEvents;
        /// The events, mutably.
        fn events_mut(&mut self) -> &mut DomainEvents;
    }

    impl EventsField for DomainEvents {
        fn events(&self) -> &DomainEvents {
            self
        }
        fn events_mut(&mut self) -> &mut DomainEvents {
            self
        }
    }

    /// The `#[aggregate(version)]` field: an integer type the version is read from and written
    /// to, spanned at the field's type so a field of another type is reported once, there.
    #[diagnostic::on_unimplemented(
        message = "the `#[aggregate(version)]` field must be an integer, not `{Self}`",
        label = "expected an integer type (`i64`, `i32`, `u32`, ...)",
        note = "declare it `version: i64` (a column of the aggregate's table)"
    )]
    pub trait VersionField {
        /// The largest version the type holds (at most `i64::MAX`).
        const MAX: i64;
        /// The version; a negative value or one above `i64::MAX` reads as `-1` (refused by the
        /// save).
        fn get(&self) -> i64;
        /// Stores `version`, which the save checked to be within `0..=MAX`.
        fn set(&mut self, version: i64);
    }

    macro_rules! version_field {
        ($($t:ty),*) => {$(
            impl VersionField for $t {
                const MAX: i64 = if (<$t>::MAX as u128) > (i64::MAX as u128) {
                    i64::MAX
                } else {
                    <$t>::MAX as i64
                };
                fn get(&self) -> i64 {
                    i64::try_from(*self).unwrap_or(-1)
                }
                #[allow(irrefutable_let_patterns)]
                fn set(&mut self, version: i64) {
                    if let Ok(v) = <$t>::try_from(version) {
                        *self = v;
                    }
                }
            }
        )*};
    }
    version_field!(i16, i32, i64, u16, u32, u64, isize, usize);

    /// The supertraits of [`DomainEvent`], for the stub impl the derive emits next to its errors.
    pub trait EventBounds:
        serde::Serialize
        + serde::de::DeserializeOwned
        + Clone
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
    {
    }

    impl<T> EventBounds for T where
        T: serde::Serialize
            + serde::de::DeserializeOwned
            + Clone
            + std::fmt::Debug
            + Send
            + Sync
            + 'static
    {
    }
}
