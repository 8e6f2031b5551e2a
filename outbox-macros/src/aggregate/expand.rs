//! The `AggregateRoot` impl.

use proc_macro2::Ident;
use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};

use super::ast::Input;
use super::valid::Checked;
use crate::ctxt::first_last_spans;

pub(crate) fn derive(input: &Input<'_>, checked: &Checked<'_, '_>) -> TokenStream {
    let ident = input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let name = input.name();
    let id = checked.id.ident;
    let events = checked.events.ident;
    // Spanned over the field's type (first token to last): a field that is not `DomainEvents`,
    // or an id that is not `Display`, is reported there, once.
    let (first, last) = first_last_spans(checked.events.ty);
    let events = Ident::new(&events.to_string(), last);
    let events_ref = quote_spanned! {first=>
        ::outbox_core::__private::EventsField::events(&self.#events)
    };
    let events_mut = quote_spanned! {first=>
        ::outbox_core::__private::EventsField::events_mut(&mut self.#events)
    };
    let (first, last) = first_last_spans(checked.id.ty);
    let id = Ident::new(&id.to_string(), last);
    let aggregate_id = quote_spanned! {first=>
        ::outbox_core::__private::aggregate_id(&self.#id)
    };
    let versioned = checked.version.map(|field| {
        // Spanned at the field's type: a field that is not an integer is reported there, once.
        let (first, last) = first_last_spans(field.ty);
        let ty = field.ty;
        let field_name = field.ident.to_string();
        let ident = Ident::new(&field_name, last);
        let max = quote_spanned! {first=>
            <#ty as ::outbox_core::__private::VersionField>::MAX
        };
        let get = quote_spanned! {first=>
            ::outbox_core::__private::VersionField::get(&self.#ident)
        };
        let set = quote_spanned! {first=>
            ::outbox_core::__private::VersionField::set(&mut self.#ident, version)
        };
        quote! {
            const VERSIONED: bool = true;
            const VERSION_FIELD: ::core::option::Option<&'static str> =
                ::core::option::Option::Some(#field_name);
            const MAX_VERSION: i64 = #max;

            fn version(&self) -> ::core::option::Option<i64> {
                ::core::option::Option::Some(#get)
            }

            fn set_version(&mut self, version: i64) {
                #set
            }
        }
    });
    quote! {
        #[automatically_derived]
        impl #impl_generics ::outbox_core::__private::AggregateRoot for #ident #ty_generics #where_clause {
            const AGGREGATE_TYPE: &'static str = #name;

            #versioned

            fn aggregate_id(&self) -> ::outbox_core::__private::String {
                #aggregate_id
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
