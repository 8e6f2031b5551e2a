//! Error collection (serde's `Ctxt`): every check reports here and the macro goes on, so the
//! user sees all mistakes of one input at once.

use std::cell::RefCell;
use std::fmt::Display;

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::meta::ParseNestedMeta;
use syn::{Expr, Lit, LitInt, LitStr, Token};

/// The errors found so far.
#[derive(Default)]
pub(crate) struct Ctxt {
    errors: RefCell<Vec<syn::Error>>,
}

impl Ctxt {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Reports `msg` at the tokens of `obj`.
    pub(crate) fn error_spanned_by<A: ToTokens, T: Display>(&self, obj: A, msg: T) {
        self.errors
            .borrow_mut()
            .push(syn::Error::new_spanned(obj.into_token_stream(), msg));
    }

    /// Reports an error syn produced.
    pub(crate) fn syn_error(&self, err: syn::Error) {
        self.errors.borrow_mut().push(err);
    }

    /// All errors, combined into one, or `Ok` when there were none.
    pub(crate) fn check(self) -> syn::Result<()> {
        let mut errors = self.errors.into_inner().into_iter();
        let Some(mut combined) = errors.next() else {
            return Ok(());
        };
        for rest in errors {
            combined.combine(rest);
        }
        Err(combined)
    }
}

/// One attribute key's value: set once, a second occurrence is reported where it appears.
pub(crate) struct Slot<T> {
    attr: &'static str,
    key: &'static str,
    value: Option<T>,
}

impl<T> Slot<T> {
    pub(crate) fn new(attr: &'static str, key: &'static str) -> Self {
        Slot {
            attr,
            key,
            value: None,
        }
    }

    /// Stores `value`, or reports a duplicate at `at` when the key was already given.
    pub(crate) fn set<A: ToTokens>(&mut self, cx: &Ctxt, at: A, value: T) {
        if self.value.is_some() {
            cx.error_spanned_by(
                at,
                format_args!(
                    "duplicate `#[{}({})]` attribute: `{}` is already set",
                    self.attr, self.key, self.key
                ),
            );
        } else {
            self.value = Some(value);
        }
    }

    pub(crate) fn get(self) -> Option<T> {
        self.value
    }
}

/// Consumes the value of a key that was rejected, so parsing goes on with the next key.
pub(crate) fn skip_value(meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    if meta.input.peek(Token![=]) {
        meta.value()?.parse::<Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        meta.parse_nested_meta(|nested| skip_value(&nested))?;
    }
    Ok(())
}

/// Reports an unknown key of `#[attr(...)]`, listing the keys that are valid there.
pub(crate) fn unknown_key(cx: &Ctxt, attr: &str, meta: &ParseNestedMeta<'_>, valid: &[&str]) {
    let key = meta.path.to_token_stream().to_string().replace(' ', "");
    let valid: Vec<String> = valid.iter().map(|k| format!("`{k}`")).collect();
    cx.error_spanned_by(
        &meta.path,
        format_args!(
            "unknown `#[{attr}(...)]` key `{key}`; expected {}",
            one_of(&valid)
        ),
    );
}

fn one_of(items: &[String]) -> String {
    match items {
        [] => String::from("nothing"),
        [one] => one.clone(),
        [init @ .., last] => format!("one of {}, {last}", init.join(", ")),
    }
}

/// Parses `key = "string"`; reports and returns `None` on anything else.
pub(crate) fn lit_str(
    cx: &Ctxt,
    attr: &str,
    meta: &ParseNestedMeta<'_>,
) -> syn::Result<Option<LitStr>> {
    let key = meta.path.to_token_stream().to_string();
    if !meta.input.peek(Token![=]) {
        cx.error_spanned_by(
            &meta.path,
            format_args!("expected a string: `#[{attr}({key} = \"...\")]`"),
        );
        skip_value(meta)?;
        return Ok(None);
    }
    let expr: Expr = meta.value()?.parse()?;
    match expr {
        Expr::Lit(syn::ExprLit {
            lit: Lit::Str(lit), ..
        }) => Ok(Some(lit)),
        other => {
            cx.error_spanned_by(
                other,
                format_args!("expected a string literal: `#[{attr}({key} = \"...\")]`"),
            );
            Ok(None)
        }
    }
}

/// Parses `key = 123`; reports and returns `None` on anything else.
pub(crate) fn lit_int(
    cx: &Ctxt,
    attr: &str,
    meta: &ParseNestedMeta<'_>,
) -> syn::Result<Option<LitInt>> {
    let key = meta.path.to_token_stream().to_string();
    if !meta.input.peek(Token![=]) {
        cx.error_spanned_by(
            &meta.path,
            format_args!("expected an integer: `#[{attr}({key} = 1)]`"),
        );
        skip_value(meta)?;
        return Ok(None);
    }
    let expr: Expr = meta.value()?.parse()?;
    match expr {
        Expr::Lit(syn::ExprLit {
            lit: Lit::Int(lit), ..
        }) => Ok(Some(lit)),
        other => {
            cx.error_spanned_by(
                other,
                format_args!("expected a positive integer literal: `#[{attr}({key} = 1)]`"),
            );
            Ok(None)
        }
    }
}

/// Parses a bare flag `key`; reports a value given to it.
pub(crate) fn flag(cx: &Ctxt, attr: &str, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    if meta.input.peek(Token![=]) || meta.input.peek(syn::token::Paren) {
        let key = meta.path.to_token_stream().to_string();
        cx.error_spanned_by(
            &meta.path,
            format_args!("`{key}` takes no value: write `#[{attr}({key})]`"),
        );
        skip_value(meta)?;
    }
    Ok(())
}

/// The tokens of `err`, followed by `tokens` (a stub impl, so one mistake does not cascade).
pub(crate) fn with_errors(err: syn::Error, tokens: TokenStream) -> TokenStream {
    let errors = err.to_compile_error();
    quote::quote! {
        #errors
        #tokens
    }
}

/// The spans of the first and last tokens of `tokens` (syn's `new_spanned` trick): an expression
/// whose first token has the first span and whose last token has the last span is reported over
/// the whole of `tokens`, on stable Rust too.
pub(crate) fn first_last_spans<T: ToTokens>(tokens: &T) -> (proc_macro2::Span, proc_macro2::Span) {
    let mut iter = tokens.to_token_stream().into_iter();
    let first = iter
        .next()
        .map_or_else(proc_macro2::Span::call_site, |t| t.span());
    let last = iter.last().map_or(first, |t| t.span());
    (first, last)
}
