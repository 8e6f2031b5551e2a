//! Macros of the outbox framework. Use them through `outbox-core`, which re-exports them.
use proc_macro::TokenStream;

/// Derives `DomainEvent`.
#[proc_macro_derive(DomainEvent, attributes(event))]
pub fn derive_domain_event(_input: TokenStream) -> TokenStream {
    TokenStream::new()
}

/// Derives `AggregateRoot`.
#[proc_macro_derive(AggregateRoot, attributes(aggregate))]
pub fn derive_aggregate_root(_input: TokenStream) -> TokenStream {
    TokenStream::new()
}

/// Registers an event handler.
#[proc_macro_attribute]
pub fn event_handler(_args: TokenStream, input: TokenStream) -> TokenStream {
    input
}

/// Names the handler registered by `#[event_handler]` on a function.
#[proc_macro]
pub fn handler(_input: TokenStream) -> TokenStream {
    TokenStream::new()
}
