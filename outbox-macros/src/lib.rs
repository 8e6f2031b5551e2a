//! Macros of the outbox framework. Use them through `outbox-core`, which re-exports them and
//! documents them with examples.
//!
//! Each macro is one pipeline (the layout of thiserror's and serde's derives): `ast.rs` and
//! `attr.rs` parse the input into a small form that keeps the user's tokens, `valid.rs` checks it
//! and collects every error (`ctxt.rs`), `expand.rs` writes the code, or a stub next to the errors
//! so one mistake does not cascade. This file only holds the entry points.

mod aggregate;
mod ctxt;
mod event;
mod handler;
mod words;

use proc_macro::TokenStream;
use syn::{DeriveInput, ItemFn, Path, parse_macro_input};

/// Derives `DomainEvent`.
///
/// `#[event(name = "OrderCreated", version = 1, topic = "orders", upcast_from = Older)]`, every key
/// optional: the name defaults to the type's name, the version to 1, the topic to none (the
/// aggregate's), `upcast_from` to none (the type reads its own version only). The
/// name must read as past tense (`OrderCreated`, `InvoicePaid`, `UserLoggedIn`,
/// `OrderPaidInFull`; the rule is in `words.rs`), and the error suggests one when it does not; `#[event(allow_non_past_tense)]` opts out for a name that is
/// right as it is.
///
/// ```
/// use outbox_core::DomainEvent;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
/// #[event(version = 2, topic = "payments")]
/// struct PaymentCaptured { cents: i64 }
///
/// // A name other services already consume, kept as it is.
/// #[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
/// #[event(name = "LegacyOrderSnapshot", allow_non_past_tense)]
/// struct Snapshot { cents: i64 }
///
/// assert_eq!(PaymentCaptured::NAME, "PaymentCaptured");
/// assert_eq!(PaymentCaptured::TOPIC, Some("payments"));
/// assert_eq!(Snapshot::NAME, "LegacyOrderSnapshot");
/// ```
///
/// `upcast_from = OlderType` makes the type read payloads of older versions: `OlderType` is the
/// same event at `version - 1` (itself a `DomainEvent`, with its own `upcast_from` or none), and
/// `impl From<OlderType> for ThisType` converts. See `DomainEvent::read_payload`.
///
/// ```compile_fail
/// // error: `upcast_from` skips a version (version 3 upcasts from version 1)
/// # use outbox_core::DomainEvent;
/// #[derive(Clone, Debug, serde::Serialize, serde::Deserialize, DomainEvent)]
/// #[event(name = "OrderCreated", version = 1)]
/// struct OrderCreatedV1 { id: u64 }
///
/// #[derive(Clone, Debug, serde::Serialize, serde::Deserialize, DomainEvent)]
/// #[event(name = "OrderCreated", version = 3, upcast_from = OrderCreatedV1)]
/// struct OrderCreated { id: u64 }
///
/// impl From<OrderCreatedV1> for OrderCreated {
///     fn from(v1: OrderCreatedV1) -> Self { OrderCreated { id: v1.id } }
/// }
/// ```
///
/// A command-like name is rejected, with a suggestion (here: "name it `OrderCreated`"):
///
/// ```compile_fail
/// #[derive(Clone, Debug, serde::Serialize, serde::Deserialize, outbox_core::DomainEvent)]
/// struct CreateOrder { id: u64 }
/// ```
#[proc_macro_derive(DomainEvent, attributes(event))]
pub fn derive_domain_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    event::derive(&input).into()
}

/// Derives `AggregateRoot`.
///
/// On a struct with named fields: `#[aggregate(id)]` on the id field (rendered with `Display`),
/// `#[aggregate(events)]` on a `DomainEvents` field, `#[aggregate(name = "Order")]` on the type
/// (defaults to the type's name, and is required on a SeaORM `Model`).
///
/// ```compile_fail
/// // error: `Order` has no `#[aggregate(events)]` field
/// #[derive(outbox_core::AggregateRoot)]
/// struct Order {
///     #[aggregate(id)]
///     id: u64,
/// }
/// ```
#[proc_macro_derive(AggregateRoot, attributes(aggregate))]
pub fn derive_aggregate_root(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    aggregate::derive(&input).into()
}

/// Registers an event handler.
///
/// On `async fn name(event: &E, ctx: &EventContext) -> Result<(), HandlerError>`;
/// `#[event_handler(group = "payment-service")]` runs it in that consumer group instead of in
/// process after the commit. The function is kept as written (a bare `&EventContext` gets the
/// `<'_>` an `async fn` needs), followed by a hidden `Handler` const that `handler!` names and
/// that is submitted to the registry's inventory.
///
/// ```compile_fail
/// # use outbox_core::{DomainEvent, EventContext, HandlerError};
/// # #[derive(Clone, Debug, serde::Serialize, serde::Deserialize, DomainEvent)]
/// # struct OrderCreated { id: u64 }
/// // error: an event handler must be an `async fn`
/// #[outbox_core::event_handler]
/// fn send(event: &OrderCreated, ctx: &EventContext) -> Result<(), HandlerError> { Ok(()) }
/// ```
#[proc_macro_attribute]
pub fn event_handler(args: TokenStream, input: TokenStream) -> TokenStream {
    let func = parse_macro_input!(input as ItemFn);
    handler::event_handler(args.into(), &func).into()
}

/// Names the handler registered by `#[event_handler]` on a function: `handler!(path::to::name)`
/// is its `Handler`, for explicit registration (the linker may drop the inventory entries of a
/// crate nothing else references).
///
/// ```
/// use outbox_core::{DomainEvent, HandlerRegistry, handler};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
/// struct OrderCreated { id: u64 }
///
/// mod mail {
///     #[outbox_core::event_handler]
///     pub async fn send(
///         event: &super::OrderCreated,
///         ctx: &outbox_core::EventContext,
///     ) -> Result<(), outbox_core::HandlerError> {
///         Ok(())
///     }
/// }
///
/// fn main() {
///     let registry = HandlerRegistry::new().with(handler!(mail::send));
///     assert_eq!(registry.local("OrderCreated").count(), 1);
/// }
/// ```
#[proc_macro]
pub fn handler(input: TokenStream) -> TokenStream {
    let path = parse_macro_input!(input as Path);
    handler::handler_path(&path)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
