//! `#[derive(DomainEvent)]`.

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
    valid::check(&cx, &ast);
    match cx.check() {
        Ok(()) => expand::derive(&ast),
        Err(err) => with_errors(err, expand::fallback(&ast)),
    }
}
