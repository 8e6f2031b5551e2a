//! Checks on a handler's signature: `async fn name(event: &E, ctx: &EventContext) ->
//! Result<(), HandlerError>`.

use syn::{FnArg, GenericParam, LitStr, ReturnType, Type};

use super::ast::Input;
use crate::ctxt::Ctxt;

/// The longest id and inbox consumer key (`"<group>/<id>"`): the columns are `varchar(255)`.
const MAX_KEY_LEN: usize = 255;

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
    /// `timeout = "..."`, in milliseconds.
    pub(crate) timeout_ms: Option<u64>,
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
    if let Some(id) = &input.attrs.id {
        check_id(cx, id, input.attrs.group.as_ref());
    }
    let timeout_ms =
        input
            .attrs
            .timeout
            .as_ref()
            .and_then(|lit| match parse_duration_ms(&lit.value()) {
                Ok(ms) => Some(ms),
                Err(msg) => {
                    cx.error_spanned_by(lit, msg);
                    None
                }
            });
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
        timeout_ms,
    })
}

/// An explicit id is stored as is in `outbox_delivery.handler` and, after `"<group>/"`, in
/// `outbox_inbox.consumer`: it must be a non-empty, trimmed, printable key that fits them.
fn check_id(cx: &Ctxt, id: &LitStr, group: Option<&LitStr>) {
    let value = id.value();
    if value.trim().is_empty() {
        cx.error_spanned_by(
            id,
            "the handler id must not be empty; remove `id` to use the function's path",
        );
    } else if value.trim() != value {
        cx.error_spanned_by(
            id,
            "the handler id must not start or end with whitespace: it is a database key",
        );
    } else if value.chars().any(char::is_control) {
        cx.error_spanned_by(
            id,
            "the handler id must not contain control characters: it is a database key",
        );
    } else if value.len() > MAX_KEY_LEN {
        cx.error_spanned_by(
            id,
            format_args!(
                "the handler id is {} bytes long; at most {MAX_KEY_LEN} fit the `outbox_delivery.handler` column",
                value.len()
            ),
        );
    } else if let Some(group) = group {
        let key = group.value().len() + 1 + value.len();
        if key > MAX_KEY_LEN {
            cx.error_spanned_by(
                id,
                format_args!(
                    "the inbox key `<group>/<id>` of this handler is {key} bytes long; at most {MAX_KEY_LEN} fit the `outbox_inbox.consumer` column: shorten the id"
                ),
            );
        }
    }
}

/// `"500ms"`, `"5s"`, `"2m"`, `"1h"` → milliseconds; a message saying what is wrong otherwise.
fn parse_duration_ms(text: &str) -> Result<u64, String> {
    const FORM: &str =
        "write a whole number and a unit: `\"500ms\"`, `\"5s\"`, `\"2m\"` or `\"1h\"`";
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let factor: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "" if digits > 0 => return Err(format!("the timeout needs a unit; {FORM}")),
        _ if digits == 0 => return Err(format!("expected a timeout; {FORM}")),
        other => return Err(format!("unknown unit `{other}` in the timeout; {FORM}")),
    };
    let ms = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| format!("the timeout is too large; {FORM}"))?;
    if ms == 0 {
        return Err(
            "the timeout must be more than zero: a handler needs some time to run".to_owned(),
        );
    }
    Ok(ms)
}
