//! Checks on a handler's signature: `async fn name(event: &E, ctx: &EventContext) ->
//! Result<(), HandlerError>`.

use syn::{FnArg, GenericParam, ReturnType, Type};

use super::ast::Input;
use crate::ctxt::Ctxt;

const SHAPE: &str =
    "async fn name(event: &OrderCreated, ctx: &EventContext) -> Result<(), HandlerError>";

/// The parts of a valid signature the expansion uses, all pointing into the user's tokens.
pub(crate) struct Checked<'a> {
    /// `E` of `event: &E`.
    pub(crate) event: &'a Type,
    /// The second parameter's type.
    pub(crate) context: &'a Type,
    /// The declared return type.
    pub(crate) output: &'a Type,
}

pub(crate) fn check<'a>(cx: &Ctxt, input: &'a Input) -> Option<Checked<'a>> {
    let sig = &input.func.sig;
    if let Some(group) = &input.attrs.group
        && group.value().trim().is_empty()
    {
        cx.error_spanned_by(
            group,
            "the consumer group must not be empty; remove `group` for an in-process handler",
        );
    }
    if sig.asyncness.is_none() {
        cx.error_spanned_by(
            sig.fn_token,
            format_args!("an event handler must be an `async fn`: `{SHAPE}`"),
        );
    }
    for param in &sig.generics.params {
        match param {
            GenericParam::Lifetime(_) => {}
            GenericParam::Type(_) | GenericParam::Const(_) => cx.error_spanned_by(
                param,
                "an event handler cannot be generic: it is registered for one event type",
            ),
        }
    }
    if let Some(receiver) = sig.receiver() {
        cx.error_spanned_by(
            receiver,
            "an event handler is a free function, not a method: remove `self` and move it out of the `impl`",
        );
    }
    let output = match &sig.output {
        ReturnType::Type(_, ty) => Some(&**ty),
        ReturnType::Default => {
            cx.error_spanned_by(
                &sig.ident,
                "an event handler returns `Result<(), HandlerError>`: add `-> Result<(), HandlerError>`",
            );
            None
        }
    };
    let typed: Vec<&'a syn::PatType> = sig
        .inputs
        .iter()
        .filter_map(|arg| match arg {
            FnArg::Typed(typed) => Some(typed),
            FnArg::Receiver(_) => None,
        })
        .collect();
    if sig.receiver().is_none() && typed.len() != 2 {
        let msg = format!(
            "an event handler takes two parameters, the event and its context, found {}: `{SHAPE}`",
            typed.len()
        );
        if sig.inputs.is_empty() {
            cx.syn_error(syn::Error::new(sig.paren_token.span.join(), msg));
        } else {
            cx.error_spanned_by(&sig.inputs, msg);
        }
    }
    let event = typed.first().and_then(|first| match &*first.ty {
        Type::Reference(reference) if reference.mutability.is_none() => Some(&*reference.elem),
        Type::Reference(reference) => {
            cx.error_spanned_by(
                reference,
                "the event parameter is a shared reference: `event: &OrderCreated`, not `&mut`",
            );
            None
        }
        other => {
            cx.error_spanned_by(
                other,
                "the event parameter is a reference to the event: `event: &OrderCreated`",
            );
            None
        }
    });
    Some(Checked {
        event: event?,
        context: &typed.get(1)?.ty,
        output: output?,
    })
}
