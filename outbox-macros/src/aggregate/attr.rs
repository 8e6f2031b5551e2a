//! `#[aggregate(name = "...")]` on the type, `#[aggregate(id)]`, `#[aggregate(events)]` and
//! `#[aggregate(version)]` on fields.

use syn::{Attribute, LitStr, Path};

use crate::ctxt::{self, Ctxt, Slot};

const ATTR: &str = "aggregate";

/// The keys of `#[aggregate(...)]` on the type.
pub(crate) struct TypeAttrs {
    pub(crate) name: Option<LitStr>,
}

/// The keys of `#[aggregate(...)]` on one field; each keeps the key's tokens for errors.
pub(crate) struct FieldAttrs {
    pub(crate) id: Option<Path>,
    pub(crate) events: Option<Path>,
    pub(crate) version: Option<Path>,
    /// Whether a key was not recognized (a typo of `id` would otherwise also report a missing id).
    pub(crate) unknown: bool,
}

pub(crate) fn parse_type(cx: &Ctxt, attrs: &[Attribute]) -> TypeAttrs {
    let mut name = Slot::new(ATTR, "name");
    for attr in attrs.iter().filter(|a| a.path().is_ident(ATTR)) {
        let parsed = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("name") {
                if let Some(lit) = ctxt::lit_str(cx, ATTR, &meta)? {
                    name.set(cx, &meta.path, lit);
                }
            } else if meta.path.is_ident("id")
                || meta.path.is_ident("events")
                || meta.path.is_ident("version")
            {
                cx.error_spanned_by(
                    &meta.path,
                    "`#[aggregate(id)]`, `#[aggregate(events)]` and `#[aggregate(version)]` mark \
                     a field, not the type; on the type, expected `name`",
                );
                ctxt::skip_value(&meta)?;
            } else {
                ctxt::unknown_key(cx, ATTR, &meta, &["name"]);
                ctxt::skip_value(&meta)?;
            }
            Ok(())
        });
        if let Err(err) = parsed {
            cx.syn_error(err);
        }
    }
    TypeAttrs { name: name.get() }
}

pub(crate) fn parse_field(cx: &Ctxt, attrs: &[Attribute]) -> FieldAttrs {
    let mut id = Slot::new(ATTR, "id");
    let mut events = Slot::new(ATTR, "events");
    let mut version = Slot::new(ATTR, "version");
    let mut unknown = false;
    for attr in attrs.iter().filter(|a| a.path().is_ident(ATTR)) {
        let parsed = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("id") {
                ctxt::flag(cx, ATTR, &meta)?;
                id.set(cx, &meta.path, meta.path.clone());
            } else if meta.path.is_ident("events") {
                ctxt::flag(cx, ATTR, &meta)?;
                events.set(cx, &meta.path, meta.path.clone());
            } else if meta.path.is_ident("version") {
                ctxt::flag(cx, ATTR, &meta)?;
                version.set(cx, &meta.path, meta.path.clone());
            } else if meta.path.is_ident("name") {
                cx.error_spanned_by(
                    &meta.path,
                    "`#[aggregate(name = \"...\")]` goes on the type; on a field, expected `id`, `events` or `version`",
                );
                ctxt::skip_value(&meta)?;
            } else {
                unknown = true;
                ctxt::unknown_key(cx, ATTR, &meta, &["id", "events", "version"]);
                ctxt::skip_value(&meta)?;
            }
            Ok(())
        });
        if let Err(err) = parsed {
            cx.syn_error(err);
        }
    }
    FieldAttrs {
        id: id.get(),
        events: events.get(),
        version: version.get(),
        unknown,
    }
}
