//! The `DomainEvent` impl.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};

use super::ast::Input;

pub(crate) fn derive(input: &Input<'_>) -> TokenStream {
    let ident = input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let name = input.name();
    let version = match &input.attrs.version {
        Some(lit) => lit.base10_parse::<u32>().unwrap_or(1),
        None => 1,
    };
    let topic = match &input.attrs.topic {
        Some(topic) => quote!(::core::option::Option::Some(#topic)),
        None => quote!(::core::option::Option::None),
    };
    // A generic event is a `DomainEvent` where its serde and thread-safety bounds hold, so the
    // user does not repeat them in a where clause.
    let predicates = where_clause.into_iter().flat_map(|w| w.predicates.iter());
    let generic = input.generics.type_params().next().is_some();
    let bound =
        generic.then(|| quote!(#ident #ty_generics: ::outbox_core::__private::EventBounds,));
    let where_clause = (generic || where_clause.is_some()).then(|| {
        quote! { where #(#predicates,)* #bound }
    });
    // A generic type is not one event type, so only concrete ones are registered.
    let register = (input.generics.params.is_empty()).then(|| {
        quote! {
            ::outbox_core::__private::inventory::submit! {
                ::outbox_core::__private::EventType::of::<#ident>()
            }
        }
    });
    let upcast = input
        .attrs
        .upcast_from
        .as_ref()
        .map(|(_, from)| upcast(ident, from));
    let (upcast_items, upcast_checks) = match upcast {
        Some((items, checks)) => (Some(items), Some(checks)),
        None => (None, None),
    };
    quote! {
        #[automatically_derived]
        impl #impl_generics ::outbox_core::__private::DomainEvent for #ident #ty_generics #where_clause {
            const NAME: &'static str = #name;
            const VERSION: u32 = #version;
            const TOPIC: ::core::option::Option<&'static str> = #topic;
            #upcast_items
        }
        #upcast_checks
        #register
    }
}

/// `upcast_from = From`: the trait items that read older versions through `From`, and the
/// compile-time checks of the chain, each spanned at the user's type.
fn upcast(ident: &syn::Ident, from: &syn::Type) -> (TokenStream, TokenStream) {
    let (first, _) = crate::ctxt::first_last_spans(from);
    let items = quote_spanned! {first=>
        const OLDEST_VERSION: u32 = <#from as ::outbox_core::__private::DomainEvent>::OLDEST_VERSION;
        fn read_payload(
            version: u32,
            payload: &str,
        ) -> ::outbox_core::__private::Result<Self, ::outbox_core::__private::Error> {
            ::outbox_core::__private::upcast::<Self, #from>(version, payload)
        }
    };
    let checks = quote_spanned! {first=>
        // The same event, one version older: a gap or a foreign name does not compile.
        const _: () = ::outbox_core::__private::check_upcast(
            <#ident as ::outbox_core::__private::DomainEvent>::NAME,
            <#ident as ::outbox_core::__private::DomainEvent>::VERSION,
            <#from as ::outbox_core::__private::DomainEvent>::NAME,
            <#from as ::outbox_core::__private::DomainEvent>::VERSION,
        );
        // One version upcasts into one type: a second `upcast_from` of it conflicts here.
        impl ::outbox_core::__private::UpcastsInto for #from {
            type Next = #ident;
        }
    };
    (items, checks)
}

/// The impl emitted next to the errors: the type still is a `DomainEvent`, so its uses do not
/// fail too. The higher-ranked bound keeps a missing supertrait from adding an error of its own.
pub(crate) fn fallback(input: &Input<'_>) -> TokenStream {
    let ident = input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let predicates = where_clause.into_iter().flat_map(|w| w.predicates.iter());
    let name = input.name();
    quote! {
        #[automatically_derived]
        impl #impl_generics ::outbox_core::__private::DomainEvent for #ident #ty_generics
        where
            #(#predicates,)*
            for<'__outbox> #ident #ty_generics: ::outbox_core::__private::EventBounds,
        {
            const NAME: &'static str = #name;
            const VERSION: u32 = 1;
        }
    }
}
