//! Event handlers: the functions `#[event_handler]` registers, their context and errors.

use std::any::Any;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::time::Duration;

use futures::FutureExt;
use tracing::Instrument;
use uuid::Uuid;

use crate::envelope::{Envelope, EventMetadata};

/// A boxed error, `Send + Sync`.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// A boxed, `Send` future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a handler did not complete.
///
/// Any error converts into it with `?` and is retried with backoff; mark an error that no retry
/// can fix with [`HandlerError::permanent`] to dead-letter the event at once.
pub struct HandlerError {
    kind: HandlerErrorKind,
    source: BoxError,
}

/// Whether a [`HandlerError`] is worth retrying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandlerErrorKind {
    /// A passing failure: retried with backoff, then dead-lettered.
    Retryable,
    /// A failure no retry can fix (bad payload, broken invariant): dead-lettered at once.
    Permanent,
}

impl HandlerError {
    /// A retryable error.
    pub fn retryable(error: impl Into<BoxError>) -> Self {
        HandlerError {
            kind: HandlerErrorKind::Retryable,
            source: error.into(),
        }
    }

    /// A permanent error: the event goes to the dead-letter path without further attempts.
    pub fn permanent(error: impl Into<BoxError>) -> Self {
        HandlerError {
            kind: HandlerErrorKind::Permanent,
            source: error.into(),
        }
    }

    /// Whether the event should be retried.
    pub fn is_retryable(&self) -> bool {
        self.kind == HandlerErrorKind::Retryable
    }

    /// The error's kind.
    pub fn kind(&self) -> HandlerErrorKind {
        self.kind
    }

    /// The underlying error.
    pub fn source_error(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.source
    }

    /// The underlying error, owned.
    pub fn into_source(self) -> BoxError {
        self.source
    }
}

impl<E: StdError + Send + Sync + 'static> From<E> for HandlerError {
    fn from(error: E) -> Self {
        HandlerError::retryable(error)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("kind", &self.kind)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)?;
        let mut next = self.source.source();
        while let Some(cause) = next {
            write!(f, ": {cause}")?;
            next = cause.source();
        }
        Ok(())
    }
}

/// What a handler knows besides the event: the envelope, the attempt, and the backend's
/// resources (the database transaction of an idempotent handler, for one).
pub struct EventContext<'a> {
    envelope: &'a Envelope,
    handler: &'static str,
    attempt: u32,
    resource: Option<&'a (dyn Any + Send + Sync)>,
}

impl<'a> EventContext<'a> {
    /// A context for `handler` handling `envelope` at `attempt` (1 for the first).
    pub fn new(envelope: &'a Envelope, handler: &'static str, attempt: u32) -> Self {
        EventContext {
            envelope,
            handler,
            attempt,
            resource: None,
        }
    }

    /// Attaches a backend resource, reachable with [`EventContext::resource`].
    #[must_use]
    pub fn with_resource(mut self, resource: &'a (dyn Any + Send + Sync)) -> Self {
        self.resource = Some(resource);
        self
    }

    /// The envelope of the event being handled.
    pub fn envelope(&self) -> &'a Envelope {
        self.envelope
    }
    /// The event id.
    pub fn event_id(&self) -> Uuid {
        self.envelope.id()
    }
    /// The id of the aggregate that registered the event.
    pub fn aggregate_id(&self) -> &'a str {
        self.envelope.aggregate_id()
    }
    /// The event's per-aggregate sequence number.
    pub fn sequence(&self) -> i64 {
        self.envelope.sequence()
    }
    /// Correlation, causation and trace ids of the event.
    pub fn metadata(&self) -> &'a EventMetadata {
        self.envelope.metadata()
    }
    /// The handler's id: its `#[event_handler(id = "...")]`, else its module path and name.
    pub fn handler(&self) -> &'static str {
        self.handler
    }
    /// Which attempt this is, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
    /// The backend resource of type `T`, when the backend attached one.
    pub fn resource<T: Any>(&self) -> Option<&'a T> {
        self.resource.and_then(|r| r.downcast_ref::<T>())
    }
}

impl fmt::Debug for EventContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventContext")
            .field("event_id", &self.envelope.id())
            .field("handler", &self.handler)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// The type-erased entry point of a handler: decodes the envelope and calls the user's function.
pub type HandlerFn =
    for<'a> fn(&'a Envelope, &'a EventContext<'a>) -> BoxFuture<'a, Result<(), HandlerError>>;

/// A registered handler: what `#[event_handler]` submits, and what [`HandlerRegistry`] holds.
///
/// # Its id
/// The id is the handler's name in the database: the key of its rows in `outbox_delivery`
/// (in-process handlers) and, as `"<group>/<id>"`, in `outbox_inbox` (consumer handlers). By
/// default it is the function's module path and name (`shop::billing::send_receipt`), so moving
/// or renaming the function changes it. Give a handler a stable id with
/// `#[event_handler(id = "billing.send-receipt")]` and it survives any refactoring; the id must
/// be unique among the in-process handlers, and within a consumer group (see
/// [`HandlerRegistry::try_register`]).
///
/// # Renaming a handler
/// Rows written under the old id wait for a handler with that id. A binary without one leaves
/// them pending: the delivery worker does not claim them, counts them in the
/// `outbox_delivery_unknown_handler_rows` gauge and logs them once, with what to do. Either
/// keep the old id (`#[event_handler(id = "old::path::name")]` on the renamed function), or move
/// the rows to the new id in the same deploy, before the new binary starts handling:
/// `outbox_seaorm::rename_handler(&db, None, "old", "new")` for an in-process handler
/// (`UPDATE outbox_delivery SET handler = 'new' WHERE handler = 'old'`), or
/// `rename_handler(&db, Some("group"), "old", "new")` for a consumer handler, whose inbox rows
/// must follow too, or it applies again the events it applied under the old id.
///
/// # Its timeout
/// A run that takes longer than the handler's timeout is cancelled and counts as a retryable
/// failure ([`HandlerTimedOut`]): its transaction rolls back, releasing its row lock and its
/// pooled connection. Set it per handler with `#[event_handler(timeout = "5s")]` (units `ms`,
/// `s`, `m`, `h`) or [`Handler::with_timeout`]; a handler without one gets its runtime's default
/// (`DeliveryWorker::handler_timeout`, `KafkaConsumerBuilder::handler_timeout`), else
/// [`Handler::DEFAULT_TIMEOUT`].
#[derive(Clone, Copy)]
pub struct Handler {
    id: &'static str,
    function: &'static str,
    event: &'static str,
    event_version: u32,
    topic: Option<&'static str>,
    group: Option<&'static str>,
    timeout: Option<Duration>,
    call: HandlerFn,
}

impl Handler {
    /// The timeout of a handler that sets none, where its runtime sets no default either: 30 s.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

    /// A handler with id `id` for event `event` (its [`crate::DomainEvent::NAME`]). `group`
    /// `None` runs it in-process after commit; `Some(group)` runs it in that consumer group.
    ///
    /// Written by `#[event_handler]`; call it yourself only for a handler built by hand.
    pub const fn new(
        id: &'static str,
        event: &'static str,
        event_version: u32,
        topic: Option<&'static str>,
        group: Option<&'static str>,
        call: HandlerFn,
    ) -> Self {
        Handler {
            id,
            function: id,
            event,
            event_version,
            topic,
            group,
            timeout: None,
            call,
        }
    }

    /// Sets the handler's own timeout, which wins over its runtime's default.
    #[must_use]
    pub const fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets the path of the function behind the handler (default: its id). Two registrations of
    /// one id are the same handler when their function paths agree, and a duplicate otherwise.
    #[must_use]
    pub const fn with_function(mut self, function: &'static str) -> Self {
        self.function = function;
        self
    }

    /// The handler's stable id: its `#[event_handler(id = "...")]`, else its module path and
    /// function name. Recorded with each completion; see [the type docs](Handler#its-id).
    pub fn id(&self) -> &'static str {
        self.id
    }
    /// The path of the function (module path and name), whatever the id.
    pub fn function(&self) -> &'static str {
        self.function
    }
    /// The name of the event it handles.
    pub fn event(&self) -> &'static str {
        self.event
    }
    /// The event version it was written for.
    pub fn event_version(&self) -> u32 {
        self.event_version
    }
    /// The topic set on the event type, if any.
    pub fn topic(&self) -> Option<&'static str> {
        self.topic
    }
    /// The consumer group, or `None` for an in-process after-commit handler.
    pub fn group(&self) -> Option<&'static str> {
        self.group
    }
    /// The handler's own timeout (`#[event_handler(timeout = "...")]`), if it sets one.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }
    /// The handler's own timeout, else `default`.
    pub fn timeout_or(&self, default: Duration) -> Duration {
        self.timeout.unwrap_or(default)
    }

    /// Runs the handler on `envelope` inside a metadata scope caused by it, in its
    /// [`crate::trace::handler_span`] (with the `opentelemetry` feature, a child of the context
    /// the event was saved in).
    ///
    /// Unbounded: a runtime calls [`Handler::call_within`].
    pub async fn call(
        &self,
        envelope: &Envelope,
        ctx: &EventContext<'_>,
    ) -> Result<(), HandlerError> {
        let meta = EventMetadata::caused_by(envelope);
        crate::context::with_metadata(meta, (self.call)(envelope, ctx))
            .instrument(crate::trace::handler_span(envelope, self.id))
            .await
    }

    /// [`Handler::call`], bounded: a panic of the handler becomes a retryable
    /// [`HandlerPanicked`], and a run longer than `timeout` is cancelled (its future dropped)
    /// and becomes a retryable [`HandlerTimedOut`]. Either way the caller rolls back the
    /// handler's transaction, as for any failure. Needs a tokio runtime with its timer enabled.
    pub async fn call_within(
        &self,
        envelope: &Envelope,
        ctx: &EventContext<'_>,
        timeout: Duration,
    ) -> Result<(), HandlerError> {
        let run = AssertUnwindSafe(self.call(envelope, ctx)).catch_unwind();
        match tokio::time::timeout(timeout, run).await {
            Ok(Ok(result)) => result,
            Ok(Err(panic)) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a non-string payload".to_owned());
                Err(HandlerError::retryable(HandlerPanicked {
                    handler: self.id,
                    message,
                }))
            }
            Err(_elapsed) => Err(HandlerError::retryable(HandlerTimedOut {
                handler: self.id,
                timeout,
            })),
        }
    }

    /// Whether `other` is this handler registered again (same id, group, event and function).
    fn same_as(&self, other: &Handler) -> bool {
        self.id == other.id
            && self.group == other.group
            && self.function == other.function
            && self.event == other.event
            && self.event_version == other.event_version
    }
}

impl fmt::Debug for Handler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handler")
            .field("id", &self.id)
            .field("function", &self.function)
            .field("event", &self.event)
            .field("group", &self.group)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// A handler ran longer than its timeout and was cancelled; a retryable failure.
#[derive(Clone, Debug, thiserror::Error)]
#[error("handler `{handler}` did not complete within {timeout:?}; it was cancelled")]
#[non_exhaustive]
pub struct HandlerTimedOut {
    /// The handler's id.
    pub handler: &'static str,
    /// The timeout it ran into.
    pub timeout: Duration,
}

/// A handler panicked; a retryable failure.
#[derive(Clone, Debug, thiserror::Error)]
#[error("handler `{handler}` panicked: {message}")]
#[non_exhaustive]
pub struct HandlerPanicked {
    /// The handler's id.
    pub handler: &'static str,
    /// The panic message (`a non-string payload` when it was not a string).
    pub message: String,
}

/// Two different handlers with one id where ids must be unique: among the in-process handlers
/// (`group` `None`), or within one consumer group. Their rows would be indistinguishable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub struct DuplicateHandlerId {
    /// The id both use.
    pub id: &'static str,
    /// Their consumer group, `None` for in-process handlers.
    pub group: Option<&'static str>,
    /// The function of the handler registered first.
    pub first: &'static str,
    /// The function of the handler registered second.
    pub second: &'static str,
}

impl fmt::Display for DuplicateHandlerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "handlers `{}` and `{}` both have id `{}`",
            self.first, self.second, self.id
        )?;
        match self.group {
            Some(group) => write!(f, " in consumer group `{group}`")?,
            None => f.write_str(" among the in-process handlers")?,
        }
        f.write_str(
            "; an id keys a handler's delivery and inbox rows, so give each its own \
             `#[event_handler(id = \"...\")]`",
        )
    }
}

inventory::collect!(Handler);

/// The handlers a service runs, looked up by event name.
///
/// [`HandlerRegistry::from_inventory`] collects every `#[event_handler]` linked into the binary;
/// [`HandlerRegistry::register`] adds one explicitly (use it where the linker may drop a crate
/// that nothing else references, or to pick handlers by hand in a test).
///
/// # Duplicate ids
/// A handler's id keys its rows (see [`Handler`]), so two different handlers may not share one
/// among the in-process handlers, nor within a consumer group. Registering the same handler
/// twice (from the inventory and by hand, say) is harmless; registering another handler under a
/// taken id is a [`DuplicateHandlerId`]:
///
/// * the `try_` methods ([`HandlerRegistry::try_from_inventory`],
///   [`HandlerRegistry::try_register`], [`HandlerRegistry::try_with`]) return it: use them at
///   startup, so a service with two handlers under one id does not start;
/// * the others keep the handler registered first, log the conflict at `error` level and remember
///   it: [`HandlerRegistry::check`] returns it later, and the Kafka consumer refuses to build
///   with it.
#[derive(Clone, Debug, Default)]
pub struct HandlerRegistry {
    handlers: Vec<Handler>,
    conflicts: Vec<DuplicateHandlerId>,
}

impl HandlerRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every handler submitted by `#[event_handler]` in the linked crates; a duplicate id is
    /// logged and kept for [`HandlerRegistry::check`] (see [the type docs](Self#duplicate-ids)).
    pub fn from_inventory() -> Self {
        let mut registry = Self::new();
        for handler in inventory::iter::<Handler> {
            registry.register(*handler);
        }
        registry
    }

    /// Every handler submitted by `#[event_handler]` in the linked crates.
    ///
    /// # Errors
    /// [`DuplicateHandlerId`] when two of them share an id (naming both functions).
    pub fn try_from_inventory() -> Result<Self, DuplicateHandlerId> {
        let mut registry = Self::new();
        for handler in inventory::iter::<Handler> {
            registry.try_register(*handler)?;
        }
        Ok(registry)
    }

    /// Adds `handler`; a second registration of the same handler is ignored.
    ///
    /// # Errors
    /// [`DuplicateHandlerId`] when another handler has its id (in its group); the registry is
    /// left unchanged.
    pub fn try_register(&mut self, handler: Handler) -> Result<&mut Self, DuplicateHandlerId> {
        match self
            .handlers
            .iter()
            .find(|h| h.id == handler.id && h.group == handler.group)
        {
            Some(known) if known.same_as(&handler) => Ok(self),
            Some(known) => Err(DuplicateHandlerId {
                id: handler.id,
                group: handler.group,
                first: known.function,
                second: handler.function,
            }),
            None => {
                self.handlers.push(handler);
                Ok(self)
            }
        }
    }

    /// Adds `handler`, builder style.
    ///
    /// # Errors
    /// As [`HandlerRegistry::try_register`].
    pub fn try_with(mut self, handler: Handler) -> Result<Self, DuplicateHandlerId> {
        self.try_register(handler)?;
        Ok(self)
    }

    /// Adds `handler` (a second registration of the same handler is ignored). A different
    /// handler with a taken id is not added: the conflict is logged at `error` level and
    /// [`HandlerRegistry::check`] reports it.
    pub fn register(&mut self, handler: Handler) -> &mut Self {
        if let Err(conflict) = self.try_register(handler) {
            tracing::error!(
                id = conflict.id,
                group = conflict.group,
                first = conflict.first,
                second = conflict.second,
                "{conflict}; only the first runs"
            );
            if !self.conflicts.contains(&conflict) {
                self.conflicts.push(conflict);
            }
        }
        self
    }

    /// Adds `handler`, builder style, as [`HandlerRegistry::register`] does.
    #[must_use]
    pub fn with(mut self, handler: Handler) -> Self {
        self.register(handler);
        self
    }

    /// Whether every handler offered to the registry is in it.
    ///
    /// # Errors
    /// The first [`DuplicateHandlerId`] that [`HandlerRegistry::register`] (or
    /// [`HandlerRegistry::from_inventory`]) met.
    pub fn check(&self) -> Result<(), DuplicateHandlerId> {
        match self.conflicts.first() {
            Some(conflict) => Err(conflict.clone()),
            None => Ok(()),
        }
    }

    /// All handlers.
    pub fn iter(&self) -> impl Iterator<Item = &Handler> {
        self.handlers.iter()
    }

    /// Whether the registry holds no handler.
    pub fn is_empty(&self) -> bool {
        self.handlers.is_empty()
    }

    /// The in-process (after-commit) handlers of `event`.
    pub fn local<'s>(&'s self, event: &'s str) -> impl Iterator<Item = &'s Handler> {
        self.handlers
            .iter()
            .filter(move |h| h.group.is_none() && h.event == event)
    }

    /// The handlers of consumer group `group` for `event`.
    pub fn in_group<'s>(
        &'s self,
        group: &'s str,
        event: &'s str,
    ) -> impl Iterator<Item = &'s Handler> {
        self.handlers
            .iter()
            .filter(move |h| h.group == Some(group) && h.event == event)
    }

    /// The handlers of consumer group `group`, for every event.
    pub fn group<'s>(&'s self, group: &'s str) -> impl Iterator<Item = &'s Handler> {
        self.handlers.iter().filter(move |h| h.group == Some(group))
    }

    /// A handler by id and group.
    pub fn get(&self, id: &str, group: Option<&str>) -> Option<&Handler> {
        self.handlers
            .iter()
            .find(|h| h.id == id && h.group == group)
    }
}
