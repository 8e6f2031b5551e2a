//! Aggregate roots: the entities that register domain events.

use crate::event::{DomainEvent, DomainEvents};

/// An entity that records domain events while its state changes.
///
/// Implement it with `#[derive(AggregateRoot)]`, marking the id field `#[aggregate(id)]` and a
/// [`DomainEvents`] field `#[aggregate(events)]`.
///
/// Mark an integer field `#[aggregate(version)]` (a column of the aggregate's table) to make its
/// saves optimistic: a backend then refuses a save whose stored version moved since the
/// aggregate was loaded, instead of overwriting a change it never saw, and numbers the events
/// from the version. Without it, saves are last-writer-wins. A new aggregate starts at version 0;
/// the backend sets the version after each committed save ([`AggregateRoot::set_version`]).
///
/// ```
/// use outbox_core::{AggregateRoot, DomainEvents};
///
/// #[derive(Debug, AggregateRoot)]
/// #[aggregate(name = "Account")]
/// struct Account {
///     #[aggregate(id)]
///     id: i64,
///     #[aggregate(version)]
///     version: i64,
///     #[aggregate(events)]
///     events: DomainEvents,
/// }
///
/// let account = Account { id: 7, version: 0, events: DomainEvents::new() };
/// assert!(Account::VERSIONED);
/// assert_eq!(account.version(), Some(0));
/// ```
///
/// The version must be an integer:
///
/// ```compile_fail
/// use outbox_core::{AggregateRoot, DomainEvents};
///
/// #[derive(Debug, AggregateRoot)]
/// struct Account {
///     #[aggregate(id)]
///     id: i64,
///     #[aggregate(version)]
///     version: String,
///     #[aggregate(events)]
///     events: DomainEvents,
/// }
/// ```
///
/// ```
/// use outbox_core::{AggregateRoot, DomainEvent, DomainEvents};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
/// struct AccountOpened { owner: String }
///
/// #[derive(Debug, Default, AggregateRoot)]
/// #[aggregate(name = "Account")]
/// struct Account {
///     #[aggregate(id)]
///     id: i64,
///     #[aggregate(events)]
///     events: DomainEvents,
/// }
///
/// let mut account = Account { id: 7, ..Default::default() };
/// account.register_event(AccountOpened { owner: "ada".into() });
/// assert_eq!(Account::AGGREGATE_TYPE, "Account");
/// assert_eq!(account.aggregate_id(), "7");
/// assert_eq!(account.pending_events().len(), 1);
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an aggregate root",
    label = "not an aggregate root",
    note = "add `#[derive(AggregateRoot)]` to `{Self}`, with `#[aggregate(id)]` and `#[aggregate(events)]` fields"
)]
pub trait AggregateRoot {
    /// The aggregate's routing name (`"Order"`): the outbox's aggregate type and the default topic.
    const AGGREGATE_TYPE: &'static str;

    /// Whether the aggregate has an `#[aggregate(version)]` field: its saves are then refused
    /// when the stored version moved since it was loaded (optimistic concurrency), and its
    /// events are numbered from the version.
    const VERSIONED: bool = false;

    /// The name of the `#[aggregate(version)]` field, so a backend finds its column.
    const VERSION_FIELD: Option<&'static str> = None;

    /// The largest version the `#[aggregate(version)]` field's type holds.
    const MAX_VERSION: i64 = i64::MAX;

    /// The aggregate's id, as stored in the outbox and used as the Kafka message key.
    fn aggregate_id(&self) -> String;

    /// The version the aggregate was loaded at (0: never saved), or `None` when it is not
    /// versioned.
    ///
    /// The version counts the changes saved: each event moves it by one, and a save that writes
    /// the aggregate without any event moves it by one too.
    fn version(&self) -> Option<i64> {
        None
    }

    /// Sets the version once a save committed. The backend calls it; application code should
    /// leave the version alone (it is what the next save compares with). Does nothing on an
    /// aggregate that is not versioned.
    fn set_version(&mut self, version: i64) {
        let _ = version;
    }

    /// The events registered and not saved yet.
    fn pending_events(&self) -> &DomainEvents;

    /// Mutable access to the pending events.
    fn pending_events_mut(&mut self) -> &mut DomainEvents;

    /// Records a domain event; the next save writes it to the outbox in the same transaction.
    fn register_event<E: DomainEvent>(&mut self, event: E)
    where
        Self: Sized,
    {
        self.pending_events_mut().push(event);
    }

    /// Removes and returns the pending events.
    fn take_events(&mut self) -> DomainEvents
    where
        Self: Sized,
    {
        std::mem::take(self.pending_events_mut())
    }
}
