//! `#[event_handler(group = "...")]`.

use proc_macro2::TokenStream;
use syn::LitStr;
use syn::parse::Parser;

use crate::ctxt::{self, Ctxt, Slot};

const ATTR: &str = "event_handler";

pub(crate) struct HandlerAttrs {
    pub(crate) group: Option<LitStr>,
}

pub(crate) fn parse(cx: &Ctxt, args: TokenStream) -> HandlerAttrs {
    let mut group = Slot::new(ATTR, "group");
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("group") {
            if let Some(lit) = ctxt::lit_str(cx, ATTR, &meta)? {
                group.set(cx, &meta.path, lit);
            }
        } else {
            ctxt::unknown_key(cx, ATTR, &meta, &["group"]);
            ctxt::skip_value(&meta)?;
        }
        Ok(())
    });
    if let Err(err) = parser.parse2(args) {
        cx.syn_error(err);
    }
    HandlerAttrs { group: group.get() }
}
