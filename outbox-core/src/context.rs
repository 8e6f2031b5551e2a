//! The metadata scope: which correlation and causation ids new events inherit.
//!
//! Handlers run inside a scope derived from the event they handle, so an event registered by a
//! handler carries the flow's correlation id and names its cause. Code that handles a command can
//! open a scope itself:
//!
//! ```
//! use outbox_core::context::{current_metadata, with_metadata};
//! use outbox_core::EventMetadata;
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let meta = EventMetadata::new().with_correlation_id("req-42");
//! let seen = with_metadata(meta, async { current_metadata() }).await;
//! assert_eq!(seen.correlation_id(), Some("req-42"));
//! assert!(current_metadata().correlation_id().is_none());
//! # });
//! ```

use std::future::Future;

use crate::envelope::EventMetadata;

tokio::task_local! {
    static METADATA: EventMetadata;
}

/// Runs `fut` with `metadata` as the metadata new events inherit.
pub async fn with_metadata<F: Future>(metadata: EventMetadata, fut: F) -> F::Output {
    METADATA.scope(metadata, fut).await
}

/// The metadata new events inherit here (empty outside any scope).
pub fn current_metadata() -> EventMetadata {
    METADATA.try_with(EventMetadata::clone).unwrap_or_default()
}
