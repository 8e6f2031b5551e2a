//! Traces across the broker (feature `opentelemetry`).
//!
//! An event carries the W3C `traceparent` of the context it was saved in
//! ([`EventMetadata::traceparent`](crate::EventMetadata::traceparent)). With the feature on:
//!
//! * saving stamps the current context into every envelope that has no `traceparent` yet
//!   ([`stamp_current`]): the current `tracing` span's OpenTelemetry context (through
//!   `tracing-opentelemetry`), else `opentelemetry::Context::current()`. The caller does nothing.
//! * the relays wrap their publisher in a [`TracedPublisher`]: one `outbox.publish` span per
//!   envelope, a child of the context the event was saved in, open until the broker answered.
//! * consumers run each handler in [`handler_span`]: an `outbox.handle` span whose parent is
//!   the producing context, so the handler joins the trace that saved the event.
//!
//! Without the feature the spans are plain `tracing` spans and nothing is stamped.
//!
//! The spans reach an OpenTelemetry exporter through a `tracing_opentelemetry` layer on the
//! service's subscriber, as any other `tracing` span does.

use async_trait::async_trait;
use tracing::Span;

use crate::envelope::Envelope;
use crate::publish::{PublishError, Publisher};

/// The span a consumer runs `handler` for `envelope` in: `outbox.handle`, a child of the
/// context the event was saved in (feature `opentelemetry`; without it, of the current span).
pub fn handler_span(envelope: &Envelope, handler: &str) -> Span {
    let span = tracing::info_span!(
        "outbox.handle",
        otel.kind = "consumer",
        handler = %handler,
        event_id = %envelope.id(),
        event_name = %envelope.event_name(),
        aggregate_type = %envelope.aggregate_type(),
        aggregate_id = %envelope.aggregate_id(),
        sequence = envelope.sequence(),
    );
    #[cfg(feature = "opentelemetry")]
    otel::adopt_parent(&span, envelope);
    span
}

/// The span the relay publishes `envelope` in: `outbox.publish`, a child of the context the
/// event was saved in (feature `opentelemetry`).
pub fn publish_span(envelope: &Envelope) -> Span {
    let span = tracing::info_span!(
        "outbox.publish",
        otel.kind = "producer",
        event_id = %envelope.id(),
        event_name = %envelope.event_name(),
        aggregate_type = %envelope.aggregate_type(),
        aggregate_id = %envelope.aggregate_id(),
        sequence = envelope.sequence(),
        outcome = tracing::field::Empty,
    );
    #[cfg(feature = "opentelemetry")]
    otel::adopt_parent(&span, envelope);
    span
}

/// Sets `envelope`'s `traceparent` to the current context's when it has none and the current
/// context is a valid, sampled-or-not OpenTelemetry span context (feature `opentelemetry`;
/// without it this does nothing).
pub fn stamp_current(envelope: &mut Envelope) {
    #[cfg(feature = "opentelemetry")]
    if envelope.metadata().traceparent().is_none()
        && let Some(traceparent) = otel::current_traceparent()
    {
        let metadata = std::mem::take(envelope.metadata_mut());
        *envelope.metadata_mut() = metadata.with_traceparent(traceparent);
    }
    #[cfg(not(feature = "opentelemetry"))]
    let _ = envelope;
}

/// A [`Publisher`] that publishes each envelope of a batch inside its own [`publish_span`],
/// recording the outcome on it. The relays wrap their publisher in it (feature
/// `opentelemetry`); it adds nothing else.
#[derive(Debug)]
pub struct TracedPublisher<P> {
    inner: P,
}

impl<P> TracedPublisher<P> {
    /// Wraps `inner`.
    pub fn new(inner: P) -> Self {
        TracedPublisher { inner }
    }
}

#[async_trait]
impl<P: Publisher> Publisher for TracedPublisher<P> {
    async fn publish(&self, batch: &[Envelope]) -> Vec<Result<(), PublishError>> {
        // Only events saved in a trace get a span: a relay draining untraced events pays
        // nothing per event.
        let spans: Vec<Option<Span>> = batch
            .iter()
            .map(|e| e.metadata().traceparent().map(|_| publish_span(e)))
            .collect();
        let outcomes = self.inner.publish(batch).await;
        for (span, outcome) in spans.iter().zip(&outcomes) {
            if let Some(span) = span {
                let text = match outcome {
                    Ok(()) => "published",
                    Err(e) if e.is_not_attempted() => "not attempted",
                    Err(e) if e.is_retryable() => "retry",
                    Err(_) => "rejected",
                };
                span.record("outcome", text);
            }
        }
        outcomes
    }
}

#[cfg(feature = "opentelemetry")]
mod otel {
    use std::collections::HashMap;

    use opentelemetry::Context;
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use tracing::Span;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use crate::envelope::Envelope;

    const TRACEPARENT: &str = "traceparent";

    /// The current span's context as a `traceparent`, when there is a valid one.
    pub(super) fn current_traceparent() -> Option<String> {
        let from_span = Span::current().context();
        let cx = if from_span.span().span_context().is_valid() {
            from_span
        } else {
            Context::current()
        };
        if !cx.span().span_context().is_valid() {
            return None;
        }
        let mut carrier = HashMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut carrier);
        carrier.remove(TRACEPARENT)
    }

    /// Makes the context `envelope` was saved in the parent of `span` (nothing when the
    /// envelope carries no valid `traceparent`).
    pub(super) fn adopt_parent(span: &Span, envelope: &Envelope) {
        let Some(traceparent) = envelope.metadata().traceparent() else {
            return;
        };
        let mut carrier = HashMap::new();
        carrier.insert(TRACEPARENT.to_owned(), traceparent.to_owned());
        let cx = TraceContextPropagator::new().extract(&carrier);
        if cx.span().span_context().is_valid() {
            // Fails only when no OpenTelemetry layer records the span: nothing to join then.
            let _ = span.set_parent(cx);
        }
    }
}
