//! `#[event_handler]` and `handler!`.

mod ast;
mod attr;
mod expand;
mod valid;

use proc_macro2::TokenStream;
use syn::{ItemFn, Path};

use crate::ctxt::{Ctxt, with_errors};

/// Parses, validates and expands; on any error, the function, the errors and a stub handler.
pub(crate) fn event_handler(args: TokenStream, func: &ItemFn) -> TokenStream {
    let cx = Ctxt::new();
    let ast = ast::Input::from_syn(&cx, args, func);
    let checked = valid::check(&cx, &ast);
    match (cx.check(), checked) {
        (Ok(()), Some(checked)) => expand::event_handler(&ast, &checked),
        (Err(err), _) => with_errors(err, expand::fallback(&ast)),
        (Ok(()), None) => expand::fallback(&ast),
    }
}

/// `handler!(path::to::name)`: the path of the handler `#[event_handler]` declared for `name`.
pub(crate) fn handler_path(path: &Path) -> syn::Result<TokenStream> {
    expand::handler_path(path)
}
