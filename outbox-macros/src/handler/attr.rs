//! `#[event_handler(id = "...", group = "...", timeout = "...")]`.

use proc_macro2::TokenStream;
use syn::LitStr;
use syn::parse::Parser;

use crate::ctxt::{self, Ctxt, Slot};

const ATTR: &str = "event_handler";
const KEYS: &[&str] = &["id", "group", "timeout"];

pub(crate) struct HandlerAttrs {
    pub(crate) id: Option<LitStr>,
    pub(crate) group: Option<LitStr>,
    pub(crate) timeout: Option<LitStr>,
}

pub(crate) fn parse(cx: &Ctxt, args: TokenStream) -> HandlerAttrs {
    let mut id = Slot::new(ATTR, "id");
    let mut group = Slot::new(ATTR, "group");
    let mut timeout = Slot::new(ATTR, "timeout");
    let parser = syn::meta::parser(|meta| {
        let slot = if meta.path.is_ident("id") {
            &mut id
        } else if meta.path.is_ident("group") {
            &mut group
        } else if meta.path.is_ident("timeout") {
            &mut timeout
        } else {
            ctxt::unknown_key(cx, ATTR, &meta, KEYS);
            return ctxt::skip_value(&meta);
        };
        if let Some(lit) = ctxt::lit_str(cx, ATTR, &meta)? {
            slot.set(cx, &meta.path, lit);
        }
        Ok(())
    });
    if let Err(err) = parser.parse2(args) {
        cx.syn_error(err);
    }
    HandlerAttrs {
        id: id.get(),
        group: group.get(),
        timeout: timeout.get(),
    }
}
