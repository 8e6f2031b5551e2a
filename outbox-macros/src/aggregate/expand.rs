//! The `AggregateRoot` impl.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;

use super::ast::Input;
use super::valid::Checked;

pub(crate) fn derive(input: &Input<'_>, checked: &Checked<'_, '_>) -> TokenStream {
    let ident = input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let name = input.name();
    let id = checked.id.ident;
    let events = checked.events.ident;
    // Spanned at the field's type: a field that is not `DomainEvents` is reported there.
    let span = checked.events.ty.span();
    let events_ref = quote_spanned! {span=>
        ::outbox_core::__private::EventsField::events(&self.#events)
    };
    let events_mut = quote_spanned! {span=>
        ::outbox_core::__private::EventsField::events_mut(&mut self.#events)
    };
    quote! {
        #[automatically_derived]
        impl #impl_generics ::outbox_core::__private::AggregateRoot for #ident #ty_generics #where_clause {
            const AGGREGATE_TYPE: &'static str = #name;

            fn aggregate_id(&self) -> ::outbox_core::__private::String {
                ::outbox_core::__private::aggregate_id(&self.#id)
            }

            fn pending_events(&self) -> &::outbox_core::__private::DomainEvents {
                #events_ref
            }

            fn pending_events_mut(&mut self) -> &mut ::outbox_core::__private::DomainEvents {
                #events_mut
            }
        }
    }
}

/// The impl emitted next to the errors, so the type's uses as an aggregate do not fail too.
pub(crate) fn fallback(input: &Input<'_>) -> TokenStream {
    let ident = input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let name = input.name();
    quote! {
        #[automatically_derived]
        impl #impl_generics ::outbox_core::__private::AggregateRoot for #ident #ty_generics #where_clause {
            const AGGREGATE_TYPE: &'static str = #name;

            fn aggregate_id(&self) -> ::outbox_core::__private::String {
                ::core::unreachable!()
            }

            fn pending_events(&self) -> &::outbox_core::__private::DomainEvents {
                ::core::unreachable!()
            }

            fn pending_events_mut(&mut self) -> &mut ::outbox_core::__private::DomainEvents {
                ::core::unreachable!()
            }
        }
    }
}
