//! The derive input, reduced to what `DomainEvent` needs.

use syn::{Data, DeriveInput, Generics, Ident};

use super::attr::{self, EventAttrs};
use crate::ctxt::Ctxt;

pub(crate) struct Input<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) generics: &'a Generics,
    pub(crate) attrs: EventAttrs,
}

impl<'a> Input<'a> {
    pub(crate) fn from_syn(cx: &Ctxt, input: &'a DeriveInput) -> Self {
        if let Data::Union(data) = &input.data {
            cx.error_spanned_by(
                data.union_token,
                "`DomainEvent` cannot be derived for a union; use a struct or an enum",
            );
        }
        Input {
            ident: &input.ident,
            generics: &input.generics,
            attrs: attr::parse(cx, &input.attrs),
        }
    }

    /// The name the event is stored under: `name = "..."`, else the type's name.
    pub(crate) fn name(&self) -> String {
        match &self.attrs.name {
            Some(lit) => lit.value(),
            None => self.ident.to_string(),
        }
    }
}
