//! Checks on an `AggregateRoot` input: one id field, one events field, at most one version
//! field, a usable name.

use super::ast::{Field, Input};
use crate::ctxt::Ctxt;

/// The marked fields, once found.
pub(crate) struct Checked<'i, 'a> {
    pub(crate) id: &'i Field<'a>,
    pub(crate) events: &'i Field<'a>,
    pub(crate) version: Option<&'i Field<'a>>,
}

pub(crate) fn check<'i, 'a>(cx: &Ctxt, input: &'i Input<'a>) -> Option<Checked<'i, 'a>> {
    check_name(cx, input);
    let fields = input.fields.as_ref()?;
    let mut id: Option<&Field<'a>> = None;
    let mut events: Option<&Field<'a>> = None;
    let mut version: Option<&Field<'a>> = None;
    for field in fields {
        let roles = [
            ("the aggregate id", &field.attrs.id),
            ("the events field", &field.attrs.events),
            ("the version", &field.attrs.version),
        ];
        let mut marked = roles
            .iter()
            .enumerate()
            .filter_map(|(i, (role, key))| Some((i, *role, key.as_ref()?)));
        // A field with two roles keeps its first, so the second is the only error reported.
        let first = marked.next();
        if let (Some((_, first_role, _)), Some((_, second, key))) = (first, marked.next()) {
            cx.error_spanned_by(
                key,
                format_args!(
                    "field `{}` cannot be both {first_role} and {second}",
                    field.ident
                ),
            );
        }
        let role = first.map(|(i, _, _)| i);
        if let (Some(0), Some(key)) = (role, &field.attrs.id) {
            match id {
                Some(first) => cx.error_spanned_by(
                    key,
                    format_args!(
                        "duplicate `#[aggregate(id)]`: field `{}` is already the aggregate id",
                        first.ident
                    ),
                ),
                None => id = Some(field),
            }
        }
        if let (Some(1), Some(key)) = (role, &field.attrs.events) {
            match events {
                Some(first) => cx.error_spanned_by(
                    key,
                    format_args!(
                        "duplicate `#[aggregate(events)]`: field `{}` already holds the events",
                        first.ident
                    ),
                ),
                None => events = Some(field),
            }
        }
        if let (Some(2), Some(key)) = (role, &field.attrs.version) {
            match version {
                Some(first) => cx.error_spanned_by(
                    key,
                    format_args!(
                        "duplicate `#[aggregate(version)]`: field `{}` is already the version",
                        first.ident
                    ),
                ),
                None => version = Some(field),
            }
        }
    }
    // After an unknown key on a field (a typo of `id`?), a missing field is not news.
    let typo = fields.iter().any(|f| f.attrs.unknown);
    if id.is_none() && !typo {
        cx.error_spanned_by(
            input.ident,
            format_args!(
                "`{}` has no `#[aggregate(id)]` field: mark the field that holds the aggregate's id",
                input.ident
            ),
        );
    }
    if events.is_none() && !typo {
        cx.error_spanned_by(
            input.ident,
            format_args!(
                "`{}` has no `#[aggregate(events)]` field: add `#[aggregate(events)] events: DomainEvents` \
                 (with `#[sea_orm(ignore)]` on a SeaORM model)",
                input.ident
            ),
        );
    }
    Some(Checked {
        id: id?,
        events: events?,
        version,
    })
}

fn check_name(cx: &Ctxt, input: &Input<'_>) {
    match &input.attrs.name {
        Some(lit) if lit.value().trim().is_empty() => cx.error_spanned_by(
            lit,
            "the aggregate name must not be empty: it is the outbox's aggregate type and the default topic",
        ),
        Some(_) => {}
        None if input.ident == "Model" => cx.error_spanned_by(
            input.ident,
            "a SeaORM `Model` needs an aggregate name, or every aggregate would be called \"Model\": \
             add `#[aggregate(name = \"Order\")]` (the entity's name)",
        ),
        None => {}
    }
}
