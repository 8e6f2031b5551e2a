//! The status columns' values, one enum per table, so no SQL string spells a bare number.

/// `outbox.status`: where an event stands with the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i16)]
pub(crate) enum EventStatus {
    /// Waiting to be published (or for its retry).
    Pending = 0,
    /// The broker acknowledged it.
    Published = 1,
    /// Given up on: refused, or out of attempts.
    Dead = 2,
    /// Written for the log relay ([`crate::Capture::LogTable`]): it publishes the row from the
    /// write-ahead log, no relay polls or marks it, cleanup deletes it by age.
    Captured = 3,
}

/// `outbox_delivery.status`: where an (event, in-process handler) pair stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i16)]
pub(crate) enum DeliveryStatus {
    /// Waiting for its handler (or for its retry).
    Pending = 0,
    /// The handler completed.
    Done = 1,
    /// Given up on.
    Dead = 2,
}

impl EventStatus {
    /// The stored value.
    pub(crate) const fn value(self) -> i16 {
        self as i16
    }
}

impl DeliveryStatus {
    /// The stored value.
    pub(crate) const fn value(self) -> i16 {
        self as i16
    }
}

impl From<EventStatus> for sea_orm::Value {
    fn from(status: EventStatus) -> Self {
        status.value().into()
    }
}

impl From<DeliveryStatus> for sea_orm::Value {
    fn from(status: DeliveryStatus) -> Self {
        status.value().into()
    }
}
