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
