//! Errors of the core.

/// What can go wrong in the core: turning events into envelopes and back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The event could not be serialized; nothing was written.
    #[error("event `{event}` cannot be serialized to JSON")]
    Serialize {
        /// The event name.
        event: &'static str,
        /// serde's error.
        #[source]
        source: serde_json::Error,
    },
    /// The payload does not deserialize into the event type.
    #[error("payload of event `{event}` does not deserialize")]
    Decode {
        /// The event name found in the envelope.
        event: String,
        /// serde's error.
        #[source]
        source: serde_json::Error,
    },
    /// The envelope's version is newer than the newest this type knows: no upcast goes down.
    #[error(
        "event `{event}` version {found} is newer than version {newest} of `{type_name}`, the newest this binary reads; deploy the consumers of a new version before its producers"
    )]
    VersionTooNew {
        /// The event name.
        event: String,
        /// The version the envelope carries.
        found: u32,
        /// The newest version the type reads ([`crate::DomainEvent::VERSION`]).
        newest: u32,
        /// The Rust type asked for.
        type_name: &'static str,
    },
    /// The envelope's version is older than the oldest an upcast of this type reaches.
    #[error(
        "event `{event}` version {found} cannot be read: no upcast reaches it (`{type_name}` reads versions {oldest} to {newest}); declare the version-{found} shape with `#[event(version = {found})]` and name it in `upcast_from` of the version after it"
    )]
    VersionUnreachable {
        /// The event name.
        event: String,
        /// The version the envelope carries.
        found: u32,
        /// The oldest version the type's upcast chain reaches
        /// ([`crate::DomainEvent::OLDEST_VERSION`]).
        oldest: u32,
        /// The newest version the type reads ([`crate::DomainEvent::VERSION`]).
        newest: u32,
        /// The Rust type asked for.
        type_name: &'static str,
    },
    /// The envelope carries another event than the one asked for.
    #[error("expected event `{expected}`, found `{found}`")]
    WrongEvent {
        /// The event name asked for.
        expected: &'static str,
        /// The event name in the envelope.
        found: String,
    },
}

impl Error {
    /// Whether trying the same thing again can succeed (never, for these errors).
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// An error and its sources, joined with `: ` (what logs and dead-letter headers carry).
///
/// ```
/// use std::io;
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("publishing failed")]
/// struct Outer(#[source] io::Error);
///
/// let error = Outer(io::Error::other("broker down"));
/// assert_eq!(outbox_core::error_chain(&error), "publishing failed: broker down");
/// ```
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
