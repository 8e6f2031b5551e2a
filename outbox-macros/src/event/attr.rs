//! `#[event(name = "...", version = N, topic = "...", allow_non_past_tense)]`.

use syn::{Attribute, LitInt, LitStr, Path};

use crate::ctxt::{self, Ctxt, Slot};

const ATTR: &str = "event";
const KEYS: &[&str] = &["name", "version", "topic", "allow_non_past_tense"];

/// The keys of every `#[event(...)]` on the type, as written (literals keep their spans).
pub(crate) struct EventAttrs {
    pub(crate) name: Option<LitStr>,
    pub(crate) version: Option<LitInt>,
    pub(crate) topic: Option<LitStr>,
    pub(crate) allow_non_past_tense: Option<Path>,
}

pub(crate) fn parse(cx: &Ctxt, attrs: &[Attribute]) -> EventAttrs {
    let mut name = Slot::new(ATTR, "name");
    let mut version = Slot::new(ATTR, "version");
    let mut topic = Slot::new(ATTR, "topic");
    let mut allow = Slot::new(ATTR, "allow_non_past_tense");
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
        allow_non_past_tense: allow.get(),
    }
}
