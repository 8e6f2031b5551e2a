//! Domain events and the container an aggregate keeps them in until they are saved.

use std::any::Any;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::envelope::{Envelope, EventMetadata};
use crate::error::Error;

/// A fact that happened in the domain, named in the past tense (`OrderCreated`).
///
/// Implement it with `#[derive(DomainEvent)]`; the derive checks the name reads as past tense.
///
/// ```
/// use outbox_core::DomainEvent;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
/// #[event(name = "OrderShipped", version = 2)]
/// struct Shipped { order_id: u64 }
///
/// assert_eq!(<Shipped as DomainEvent>::NAME, "OrderShipped");
/// assert_eq!(<Shipped as DomainEvent>::VERSION, 2);
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a domain event",
    label = "not a domain event",
    note = "add `#[derive(DomainEvent)]` (and serde's `Serialize`, `Deserialize`) to `{Self}`"
)]
pub trait DomainEvent:
    Serialize + DeserializeOwned + Clone + fmt::Debug + Send + Sync + 'static
{
    /// The stable name the event is stored and routed under.
    const NAME: &'static str;
    /// The schema version of the payload, starting at 1.
    const VERSION: u32;
    /// The topic the event is published to, when it overrides the aggregate's default.
    const TOPIC: Option<&'static str> = None;
    /// The oldest payload version this type reads: [`DomainEvent::VERSION`] itself, or the
    /// oldest version its upcast chain reaches (`#[event(upcast_from = ...)]`, see
    /// [`DomainEvent::read_payload`]).
    const OLDEST_VERSION: u32 = Self::VERSION;

    /// Reads a JSON payload written at `version` as this type: at [`DomainEvent::VERSION`] it
    /// deserializes it, at an older version it reads it as the older shape and converts it
    /// with `From`, one version at a time.
    ///
    /// The derive writes it: without `upcast_from` a type reads its own version only; with
    /// `#[event(version = 3, upcast_from = OrderCreatedV2)]` (and `impl From<OrderCreatedV2>`)
    /// it reads version 3 and whatever `OrderCreatedV2` reads, converted. Every place an
    /// envelope becomes a typed event ([`Envelope::decode`], so the handlers of every backend
    /// and the `testing` helpers) goes through it.
    ///
    /// ```
    /// use outbox_core::DomainEvent;
    /// use serde::{Deserialize, Serialize};
    ///
    /// /// What `AddressChanged` looked like before the address was split.
    /// #[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
    /// #[event(name = "AddressChanged", version = 1)]
    /// struct AddressChangedV1 { address: String }
    ///
    /// #[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
    /// #[event(name = "AddressChanged", version = 2, upcast_from = AddressChangedV1)]
    /// struct AddressChanged { street: String, city: String }
    ///
    /// impl From<AddressChangedV1> for AddressChanged {
    ///     fn from(old: AddressChangedV1) -> Self {
    ///         let (street, city) = old.address.split_once(", ").unwrap_or((&old.address, ""));
    ///         AddressChanged { street: street.to_owned(), city: city.to_owned() }
    ///     }
    /// }
    ///
    /// let read = AddressChanged::read_payload(1, r#"{"address":"1 Main St, Springfield"}"#)?;
    /// assert_eq!((read.street.as_str(), read.city.as_str()), ("1 Main St", "Springfield"));
    /// assert_eq!(AddressChanged::OLDEST_VERSION, 1);
    /// assert!(AddressChanged::read_payload(3, "{}").is_err());
    /// # Ok::<(), outbox_core::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::VersionTooNew`] above [`DomainEvent::VERSION`], [`Error::VersionUnreachable`]
    /// below [`DomainEvent::OLDEST_VERSION`] (or at a version the chain skips), [`Error::Decode`]
    /// when the payload does not deserialize as the shape of its version.
    fn read_payload(version: u32, payload: &str) -> Result<Self, Error> {
        read_exact(version, payload)
    }
}

/// Reads `payload` as `E` when `version` is `E`'s own; the default [`DomainEvent::read_payload`].
pub(crate) fn read_exact<E: DomainEvent>(version: u32, payload: &str) -> Result<E, Error> {
    check_version::<E>(version)?;
    if version != E::VERSION {
        return Err(unreachable::<E>(version));
    }
    from_json(payload)
}

/// Deserializes `payload` as `E` (its own version, already checked).
fn from_json<E: DomainEvent>(payload: &str) -> Result<E, Error> {
    serde_json::from_str(payload).map_err(|source| Error::Decode {
        event: E::NAME.to_owned(),
        source,
    })
}

/// Reads `payload` as `E`, converting a payload older than `E` through `P`, the version before.
pub(crate) fn upcast<E, P>(version: u32, payload: &str) -> Result<E, Error>
where
    E: DomainEvent + From<P>,
    P: DomainEvent,
{
    check_version::<E>(version)?;
    if version == E::VERSION {
        from_json(payload)
    } else {
        P::read_payload(version, payload).map(E::from)
    }
}

/// Whether `version` is within what `E` reads.
pub(crate) fn check_version<E: DomainEvent>(version: u32) -> Result<(), Error> {
    if version > E::VERSION {
        Err(Error::VersionTooNew {
            event: E::NAME.to_owned(),
            found: version,
            newest: E::VERSION,
            type_name: std::any::type_name::<E>(),
        })
    } else if version < E::OLDEST_VERSION {
        Err(unreachable::<E>(version))
    } else {
        Ok(())
    }
}

fn unreachable<E: DomainEvent>(version: u32) -> Error {
    Error::VersionUnreachable {
        event: E::NAME.to_owned(),
        found: version,
        oldest: E::OLDEST_VERSION,
        newest: E::VERSION,
        type_name: std::any::type_name::<E>(),
    }
}

/// A type-erased, not yet saved domain event.
trait ErasedEvent: fmt::Debug + Send + Sync {
    fn name(&self) -> &'static str;
    fn version(&self) -> u32;
    fn topic(&self) -> Option<&'static str>;
    fn to_json(&self) -> Result<String, serde_json::Error>;
    fn clone_box(&self) -> Box<dyn ErasedEvent>;
    fn as_any(&self) -> &dyn Any;
}

impl<E: DomainEvent> ErasedEvent for E {
    fn name(&self) -> &'static str {
        E::NAME
    }
    fn version(&self) -> u32 {
        E::VERSION
    }
    fn topic(&self) -> Option<&'static str> {
        E::TOPIC
    }
    fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }
    fn clone_box(&self) -> Box<dyn ErasedEvent> {
        Box::new(self.clone())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// One event registered on an aggregate and not saved yet.
///
/// Its id and occurred-at time are fixed when it is registered, so a retried save writes the
/// same event, not a new one.
pub struct PendingEvent {
    id: Uuid,
    occurred_at: DateTime<Utc>,
    metadata: EventMetadata,
    event: Box<dyn ErasedEvent>,
}

impl PendingEvent {
    fn new<E: DomainEvent>(event: E) -> Self {
        PendingEvent {
            id: Uuid::now_v7(),
            occurred_at: Utc::now(),
            metadata: crate::context::current_metadata(),
            event: Box::new(event),
        }
    }

    /// The event id (a UUIDv7) the envelope will carry.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The event name, [`DomainEvent::NAME`].
    pub fn name(&self) -> &'static str {
        self.event.name()
    }

    /// The event version, [`DomainEvent::VERSION`].
    pub fn version(&self) -> u32 {
        self.event.version()
    }

    /// When the event was registered.
    pub fn occurred_at(&self) -> DateTime<Utc> {
        self.occurred_at
    }

    /// Correlation, causation and trace ids captured when the event was registered.
    pub fn metadata(&self) -> &EventMetadata {
        &self.metadata
    }

    /// The event itself, if it is of type `E`.
    pub fn downcast_ref<E: DomainEvent>(&self) -> Option<&E> {
        self.event.as_any().downcast_ref::<E>()
    }

    /// Serializes the event into the envelope it is stored and published as.
    ///
    /// # Errors
    /// [`Error::Serialize`] when the payload cannot be turned into JSON.
    pub fn to_envelope(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: i64,
    ) -> Result<Envelope, Error> {
        let payload = self.event.to_json().map_err(|source| Error::Serialize {
            event: self.event.name(),
            source,
        })?;
        Ok(
            Envelope::builder(self.event.name(), aggregate_type, aggregate_id)
                .id(self.id)
                .version(self.event.version())
                .sequence(sequence)
                .occurred_at(self.occurred_at)
                .payload(payload)
                .metadata(self.metadata.clone())
                .topic(self.event.topic().map(str::to_owned))
                .build(),
        )
    }
}

impl Clone for PendingEvent {
    fn clone(&self) -> Self {
        PendingEvent {
            id: self.id,
            occurred_at: self.occurred_at,
            metadata: self.metadata.clone(),
            event: self.event.clone_box(),
        }
    }
}

impl fmt::Debug for PendingEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingEvent")
            .field("id", &self.id)
            .field("name", &self.event.name())
            .field("event", &self.event)
            .finish_non_exhaustive()
    }
}

impl PartialEq for PendingEvent {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

/// The events an aggregate has registered and not saved yet.
///
/// It is not a database column: on a SeaORM `Model` mark the field `#[sea_orm(ignore)]` and
/// `#[aggregate(events)]`. It is `Default`, `Clone`, `Debug` and `PartialEq` (two lists are equal
/// when they hold the same event ids in the same order), so it never gets in the way of a
/// model's derives.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DomainEvents {
    pending: Vec<PendingEvent>,
}

impl DomainEvents {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `event`; it is written to the outbox by the next save of the aggregate.
    pub fn push<E: DomainEvent>(&mut self, event: E) {
        self.pending.push(PendingEvent::new(event));
    }

    /// The pending events, oldest first.
    pub fn as_slice(&self) -> &[PendingEvent] {
        &self.pending
    }

    /// How many events are pending.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether no event is pending.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The pending events of type `E`, oldest first.
    pub fn of_type<E: DomainEvent>(&self) -> impl Iterator<Item = &E> {
        self.pending
            .iter()
            .filter_map(PendingEvent::downcast_ref::<E>)
    }

    /// Removes and returns all pending events.
    pub fn drain(&mut self) -> Vec<PendingEvent> {
        std::mem::take(&mut self.pending)
    }

    /// Puts events back in front of the ones pending now (used when a save fails).
    pub fn restore(&mut self, mut events: Vec<PendingEvent>) {
        events.append(&mut self.pending);
        self.pending = events;
    }
}

impl<'a> IntoIterator for &'a DomainEvents {
    type Item = &'a PendingEvent;
    type IntoIter = std::slice::Iter<'a, PendingEvent>;
    fn into_iter(self) -> Self::IntoIter {
        self.pending.iter()
    }
}

/// An event type linked into this binary: `#[derive(DomainEvent)]` registers one for each
/// non-generic event type.
///
/// Consumers use it to tell an event this service knows but does not handle (skipped) from an
/// event name nobody here knows (dead-lettered as unknown).
///
/// ```
/// use outbox_core::{DomainEvent, EventType};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
/// struct InvoiceSent { number: u32 }
///
/// assert!(EventType::is_known("InvoiceSent"));
/// assert!(!EventType::is_known("NeverDeclared"));
/// assert_eq!(EventType::of::<InvoiceSent>().name(), "InvoiceSent");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventType {
    name: &'static str,
    version: u32,
    topic: Option<&'static str>,
}

impl EventType {
    /// An event type (what the derive submits).
    pub const fn new(name: &'static str, version: u32, topic: Option<&'static str>) -> Self {
        EventType {
            name,
            version,
            topic,
        }
    }

    /// The entry of `E`.
    pub const fn of<E: DomainEvent>() -> Self {
        EventType::new(E::NAME, E::VERSION, E::TOPIC)
    }

    /// The event name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The payload version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The topic override.
    pub fn topic(&self) -> Option<&'static str> {
        self.topic
    }

    /// Every event type registered in this binary.
    pub fn all() -> impl Iterator<Item = &'static EventType> {
        inventory::iter::<EventType>.into_iter()
    }

    /// Whether an event type named `name` is registered in this binary.
    pub fn is_known(name: &str) -> bool {
        Self::all().any(|t| t.name == name)
    }
}

inventory::collect!(EventType);
