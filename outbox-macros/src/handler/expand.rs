//! The function, unchanged, then its `Handler` const and its `inventory` submission.

use proc_macro2::{Ident, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::{Path, PathArguments};

use super::ast::Input;
use super::valid::Checked;
use crate::ctxt::first_last_spans;

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
    let function = quote!(::core::concat!(::core::module_path!(), "::", #name_str));
    let id = match &input.attrs.id {
        Some(id) => quote!(#id),
        None => function.clone(),
    };
    let timeout = checked
        .timeout_ms
        .map(|ms| quote!(.with_timeout(::outbox_core::__private::Duration::from_millis(#ms))));

    // Each use is spanned over the user's tokens it is about, so a type error points there. The
    // uses of the event type are all in one body (the const's, the closure's is part of it), so
    // rustc reports a type that is not a `DomainEvent` once, not once per use.
    let (first, last) = first_last_spans(event);
    let assert_event = quote_spanned! {first=>
        ::outbox_core::__private::assert_domain_event::<#event>();
    };
    let decode = quote_spanned! {first=>
        ::outbox_core::__private::decode::<#event>(envelope)
    };
    let meta = |item: &str| {
        let item = Ident::new(item, last);
        quote_spanned! {first=> <#event as ::outbox_core::__private::DomainEvent>::#item }
    };
    let (event_name, event_version, event_topic) = (meta("NAME"), meta("VERSION"), meta("TOPIC"));
    // One token, so one span: the context type's last token (`EventContext`, `str`).
    let ctx = Ident::new("ctx", first_last_spans(checked.context).1);
    let result = {
        let (first, last) = first_last_spans(checked.output);
        let await_token = syn::token::Await(last);
        quote_spanned! {first=>
            let result: ::outbox_core::__private::Result<(), ::outbox_core::__private::HandlerError> =
                future.#await_token;
        }
    };

    quote! {
        #func

        #[doc(hidden)]
        #[allow(non_upper_case_globals)]
        #vis const #konst: ::outbox_core::__private::Handler = {
            #assert_event
            ::outbox_core::__private::Handler::new(
                #id,
                #event_name,
                #event_version,
                #event_topic,
                #group,
                |envelope, ctx| {
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
                },
            )
            .with_function(#function)
            #timeout
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
