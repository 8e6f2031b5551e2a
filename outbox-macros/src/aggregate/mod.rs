//! `#[derive(AggregateRoot)]`.

mod ast;
mod attr;
mod expand;
mod valid;

use proc_macro2::TokenStream;
use syn::DeriveInput;

use crate::ctxt::{Ctxt, with_errors};

/// Parses, validates and expands; on any error, the errors plus a stub impl.
pub(crate) fn derive(input: &DeriveInput) -> TokenStream {
    let cx = Ctxt::new();
    let ast = ast::Input::from_syn(&cx, input);
    let checked = valid::check(&cx, &ast);
    match (cx.check(), checked) {
        (Ok(()), Some(checked)) => expand::derive(&ast, &checked),
        (Err(err), _) => with_errors(err, expand::fallback(&ast)),
        (Ok(()), None) => expand::fallback(&ast),
    }
}
