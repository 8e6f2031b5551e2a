//! The handler function, reduced to what registration needs.

use proc_macro2::TokenStream;
use syn::{FnArg, ItemFn, PathArguments, Type};

use super::attr::{self, HandlerAttrs};
use crate::ctxt::Ctxt;

pub(crate) struct Input {
    /// The function as it is emitted: as written, except that `&EventContext` in the
    /// parameters gets its anonymous lifetime, `&EventContext<'_>`, which an `async fn` needs.
    pub(crate) func: ItemFn,
    pub(crate) attrs: HandlerAttrs,
}

impl Input {
    pub(crate) fn from_syn(cx: &Ctxt, args: TokenStream, func: &ItemFn) -> Self {
        let mut func = func.clone();
        for arg in &mut func.sig.inputs {
            if let FnArg::Typed(typed) = arg {
                fill_context_lifetime(&mut typed.ty);
            }
        }
        Input {
            func,
            attrs: attr::parse(cx, args),
        }
    }
}

/// `&EventContext` → `&EventContext<'_>`; any other type is left alone.
fn fill_context_lifetime(ty: &mut Type) {
    let Type::Reference(reference) = ty else {
        return;
    };
    let Type::Path(path) = &mut *reference.elem else {
        return;
    };
    let Some(last) = path.path.segments.last_mut() else {
        return;
    };
    if last.ident == "EventContext" && matches!(last.arguments, PathArguments::None) {
        let lifetime = syn::Lifetime::new("'_", last.ident.span());
        last.arguments = PathArguments::AngleBracketed(syn::parse_quote!(<#lifetime>));
    }
}
