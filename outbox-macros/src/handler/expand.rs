//! The function, unchanged, then its `Handler` const and its `inventory` submission.

use proc_macro2::{Ident, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Path, PathArguments};

use super::ast::Input;
use super::valid::Checked;

/// The const `#[event_handler]` declares next to function `name`; `handler!` names it too.
fn const_ident(name: &Ident) -> Ident {
    format_ident!("__outbox_handler_{}", name, span = name.span())
}

pub(crate) fn event_handler(input: &Input, checked: &Checked<'_>) -> TokenStream {
    let func = &input.func;
    let vis = &func.vis;
    let name = &func.sig.ident;
    let name_str = name.to_string();
    let konst = const_ident(name);
    let event = checked.event;
    let group = match &input.attrs.group {
        Some(group) => quote!(::core::option::Option::Some(#group)),
        None => quote!(::core::option::Option::None),
    };

    // Each check is spanned at the user's tokens it is about, so a type error points there.
    let event_span = event.span();
    let assert_event = quote_spanned! {event_span=>
        const _: () = ::outbox_core::__private::assert_domain_event::<#event>();
    };
    let decode = quote_spanned! {event_span=>
        ::outbox_core::__private::decode::<#event>(envelope)
    };
    let meta = |item: &str| {
        let item = Ident::new(item, event_span);
        quote_spanned! {event_span=> <#event as ::outbox_core::__private::DomainEvent>::#item }
    };
    let (event_name, event_version, event_topic) = (meta("NAME"), meta("VERSION"), meta("TOPIC"));
    let ctx = quote_spanned! {checked.context.span()=> ctx };
    let output_span = checked.output.span();
    let result = quote_spanned! {output_span=>
        let result: ::outbox_core::__private::Result<(), ::outbox_core::__private::HandlerError> =
            future.await;
    };

    quote! {
        #func

        #[doc(hidden)]
        #[allow(non_upper_case_globals)]
        #vis const #konst: ::outbox_core::__private::Handler = {
            #assert_event

            fn __outbox_call<'a>(
                envelope: &'a ::outbox_core::__private::Envelope,
                ctx: &'a ::outbox_core::__private::EventContext<'a>,
            ) -> ::outbox_core::__private::BoxFuture<
                'a,
                ::outbox_core::__private::Result<(), ::outbox_core::__private::HandlerError>,
            > {
                ::outbox_core::__private::Box::pin(async move {
                    let event = match #decode {
                        ::outbox_core::__private::Result::Ok(event) => event,
                        ::outbox_core::__private::Result::Err(err) => {
                            return ::outbox_core::__private::Result::Err(err);
                        }
                    };
                    let future = #name(&event, #ctx);
                    #result
                    result
                })
            }

            ::outbox_core::__private::Handler::new(
                ::core::concat!(::core::module_path!(), "::", #name_str),
                #event_name,
                #event_version,
                #event_topic,
                #group,
                __outbox_call,
            )
        };

        ::outbox_core::__private::inventory::submit! { #konst }
    }
}

/// The function and a stub const (not submitted), so `handler!(name)` still resolves.
pub(crate) fn fallback(input: &Input) -> TokenStream {
    let func = &input.func;
    let vis = &func.vis;
    let name_str = func.sig.ident.to_string();
    let konst = const_ident(&func.sig.ident);
    quote! {
        #func

        #[doc(hidden)]
        #[allow(non_upper_case_globals)]
        #vis const #konst: ::outbox_core::__private::Handler = {
            fn __outbox_call<'a>(
                _: &'a ::outbox_core::__private::Envelope,
                _: &'a ::outbox_core::__private::EventContext<'a>,
            ) -> ::outbox_core::__private::BoxFuture<
                'a,
                ::outbox_core::__private::Result<(), ::outbox_core::__private::HandlerError>,
            > {
                ::core::unreachable!()
            }
            ::outbox_core::__private::Handler::new(
                ::core::concat!(::core::module_path!(), "::", #name_str),
                "",
                0,
                ::core::option::Option::None,
                ::core::option::Option::None,
                __outbox_call,
            )
        };
    }
}

/// `path::to::name` → `path::to::__outbox_handler_name`.
pub(crate) fn handler_path(path: &Path) -> syn::Result<TokenStream> {
    let mut path = path.clone();
    let Some(last) = path.segments.last_mut() else {
        return Err(syn::Error::new_spanned(
            &path,
            "expected the path of an `#[event_handler]` function",
        ));
    };
    if !matches!(last.arguments, PathArguments::None) {
        return Err(syn::Error::new_spanned(
            &last.arguments,
            "expected the path of an `#[event_handler]` function, without generic arguments",
        ));
    }
    last.ident = const_ident(&last.ident);
    Ok(quote!(#path))
}
