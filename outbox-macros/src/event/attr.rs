//! `#[event(name = "...", version = N, topic = "...", upcast_from = Type, allow_non_past_tense)]`.

use syn::{Attribute, LitInt, LitStr, Path, Token, Type};

use crate::ctxt::{self, Ctxt, Slot};

const ATTR: &str = "event";
const KEYS: &[&str] = &[
    "name",
    "version",
    "topic",
    "upcast_from",
    "allow_non_past_tense",
];

/// The keys of every `#[event(...)]` on the type, as written (literals keep their spans).
pub(crate) struct EventAttrs {
    pub(crate) name: Option<LitStr>,
    pub(crate) version: Option<LitInt>,
    pub(crate) topic: Option<LitStr>,
    /// The type of the version before this one, with the key's path (for spans).
    pub(crate) upcast_from: Option<(Path, Type)>,
    pub(crate) allow_non_past_tense: Option<Path>,
}

pub(crate) fn parse(cx: &Ctxt, attrs: &[Attribute]) -> EventAttrs {
    let mut name = Slot::new(ATTR, "name");
    let mut version = Slot::new(ATTR, "version");
    let mut topic = Slot::new(ATTR, "topic");
    let mut allow = Slot::new(ATTR, "allow_non_past_tense");
    let mut upcast_from = Slot::new(ATTR, "upcast_from");
    for attr in attrs.iter().filter(|a| a.path().is_ident(ATTR)) {
        let parsed = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("name") {
                if let Some(lit) = ctxt::lit_str(cx, ATTR, &meta)? {
                    name.set(cx, &meta.path, lit);
                }
            } else if meta.path.is_ident("version") {
                if let Some(lit) = ctxt::lit_int(cx, ATTR, &meta)? {
                    version.set(cx, &meta.path, lit);
                }
            } else if meta.path.is_ident("topic") {
                if let Some(lit) = ctxt::lit_str(cx, ATTR, &meta)? {
                    topic.set(cx, &meta.path, lit);
                }
            } else if meta.path.is_ident("upcast_from") {
                if meta.input.peek(Token![=]) {
                    let ty: Type = meta.value()?.parse()?;
                    upcast_from.set(cx, &meta.path, (meta.path.clone(), ty));
                } else {
                    cx.error_spanned_by(
                        &meta.path,
                        "expected the type of the previous version: `#[event(upcast_from = OrderCreatedV1)]`",
                    );
                    ctxt::skip_value(&meta)?;
                }
            } else if meta.path.is_ident("allow_non_past_tense") {
                ctxt::flag(cx, ATTR, &meta)?;
                allow.set(cx, &meta.path, meta.path.clone());
            } else {
                ctxt::unknown_key(cx, ATTR, &meta, KEYS);
                ctxt::skip_value(&meta)?;
            }
            Ok(())
        });
        if let Err(err) = parsed {
            cx.syn_error(err);
        }
    }
    EventAttrs {
        name: name.get(),
        version: version.get(),
        topic: topic.get(),
        upcast_from: upcast_from.get(),
        allow_non_past_tense: allow.get(),
    }
}
