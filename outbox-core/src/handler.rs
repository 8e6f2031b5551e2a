//! Event handlers: the functions `#[event_handler]` registers, their context and errors.

use std::any::Any;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;

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
    /// The handler's id (its path).
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
#[derive(Clone, Copy)]
pub struct Handler {
    id: &'static str,
    event: &'static str,
    event_version: u32,
    topic: Option<&'static str>,
    group: Option<&'static str>,
    call: HandlerFn,
}

impl Handler {
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
            event,
            event_version,
            topic,
            group,
            call,
        }
    }

    /// The handler's stable id (module path and function name), recorded with each completion.
    pub fn id(&self) -> &'static str {
        self.id
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

    /// Runs the handler on `envelope` inside a metadata scope caused by it.
    pub async fn call(
        &self,
        envelope: &Envelope,
        ctx: &EventContext<'_>,
    ) -> Result<(), HandlerError> {
        let meta = EventMetadata::caused_by(envelope);
        crate::context::with_metadata(meta, (self.call)(envelope, ctx)).await
    }
}

impl fmt::Debug for Handler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handler")
            .field("id", &self.id)
            .field("event", &self.event)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

inventory::collect!(Handler);

/// The handlers a service runs, looked up by event name.
///
/// [`HandlerRegistry::from_inventory`] collects every `#[event_handler]` linked into the binary;
/// [`HandlerRegistry::register`] adds one explicitly (use it where the linker may drop a crate
/// that nothing else references, or to pick handlers by hand in a test).
#[derive(Clone, Debug, Default)]
pub struct HandlerRegistry {
    handlers: Vec<Handler>,
}

impl HandlerRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every handler submitted by `#[event_handler]` in the linked crates.
    pub fn from_inventory() -> Self {
        let mut registry = Self::new();
        for handler in inventory::iter::<Handler> {
            registry.register(*handler);
        }
        registry
    }

    /// Adds `handler` (a second registration of the same id and group is ignored).
    pub fn register(&mut self, handler: Handler) -> &mut Self {
        let known = self
            .handlers
            .iter()
            .any(|h| h.id == handler.id && h.group == handler.group);
        if !known {
            self.handlers.push(handler);
        }
        self
    }

    /// Adds `handler`, builder style.
    #[must_use]
    pub fn with(mut self, handler: Handler) -> Self {
        self.register(handler);
        self
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
