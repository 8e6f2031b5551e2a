//! The derive input, reduced to what `AggregateRoot` needs.

use syn::{Data, DeriveInput, Fields, Generics, Ident, Type};

use super::attr::{self, FieldAttrs, TypeAttrs};
use crate::ctxt::Ctxt;

pub(crate) struct Input<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) generics: &'a Generics,
    pub(crate) attrs: TypeAttrs,
    /// The named fields; `None` when the type is not a struct with named fields (reported).
    pub(crate) fields: Option<Vec<Field<'a>>>,
}

pub(crate) struct Field<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) ty: &'a Type,
    pub(crate) attrs: FieldAttrs,
}

impl<'a> Input<'a> {
    pub(crate) fn from_syn(cx: &Ctxt, input: &'a DeriveInput) -> Self {
        let attrs = attr::parse_type(cx, &input.attrs);
        const SHAPE: &str = "`AggregateRoot` can only be derived for a struct with named fields \
                             (two of them marked `#[aggregate(id)]` and `#[aggregate(events)]`)";
        let fields = match &input.data {
            Data::Struct(data) => match &data.fields {
                Fields::Named(named) => Some(
                    named
                        .named
                        .iter()
                        .filter_map(|field| {
                            Some(Field {
                                ident: field.ident.as_ref()?,
                                ty: &field.ty,
                                attrs: attr::parse_field(cx, &field.attrs),
                            })
                        })
                        .collect(),
                ),
                Fields::Unnamed(unnamed) => {
                    cx.error_spanned_by(unnamed, SHAPE);
                    None
                }
                Fields::Unit => {
                    cx.error_spanned_by(&input.ident, SHAPE);
                    None
                }
            },
            Data::Enum(data) => {
                cx.error_spanned_by(data.enum_token, SHAPE);
                None
            }
            Data::Union(data) => {
                cx.error_spanned_by(data.union_token, SHAPE);
                None
            }
        };
        Input {
            ident: &input.ident,
            generics: &input.generics,
            attrs,
            fields,
        }
    }

    /// The aggregate type name: `name = "..."`, else the type's name.
    pub(crate) fn name(&self) -> String {
        match &self.attrs.name {
            Some(lit) => lit.value(),
            None => self.ident.to_string(),
        }
    }
}
