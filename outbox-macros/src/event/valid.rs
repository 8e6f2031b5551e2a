//! Checks on a `DomainEvent` input: the name reads as past tense, the values make sense.

use quote::ToTokens;

use super::ast::Input;
use crate::ctxt::Ctxt;
use crate::words;

pub(crate) fn check(cx: &Ctxt, input: &Input<'_>) {
    check_version(cx, input);
    if let Some(topic) = &input.attrs.topic
        && topic.value().trim().is_empty()
    {
        cx.error_spanned_by(
            topic,
            "the event topic must not be empty; remove `topic` to publish to the aggregate's topic",
        );
    }
    check_name(cx, input);
    check_upcast(cx, input);
}

fn check_upcast(cx: &Ctxt, input: &Input<'_>) {
    let Some((key, _)) = &input.attrs.upcast_from else {
        return;
    };
    if !input.generics.params.is_empty() {
        cx.error_spanned_by(
            key,
            "`upcast_from` is not supported on a generic event: declare the versions of an event as concrete types",
        );
    }
    let version = input
        .attrs
        .version
        .as_ref()
        .and_then(|lit| lit.base10_parse::<u32>().ok());
    if version.is_none_or(|v| v < 2) {
        let at: &dyn ToTokens = match &input.attrs.version {
            Some(lit) => lit,
            None => key,
        };
        cx.error_spanned_by(
            at,
            "an event with `upcast_from` reads an older version, so its own is at least 2: set `version = N`",
        );
    }
}

fn check_version(cx: &Ctxt, input: &Input<'_>) {
    let Some(lit) = &input.attrs.version else {
        return;
    };
    match lit.base10_parse::<u32>() {
        Ok(0) => cx.error_spanned_by(lit, "event versions start at 1: `version = 1`"),
        Ok(_) => {}
        Err(_) => cx.error_spanned_by(
            lit,
            format_args!(
                "the event version must be a positive integer that fits in a `u32`, found `{lit}`"
            ),
        ),
    }
}

fn check_name(cx: &Ctxt, input: &Input<'_>) {
    let name = input.name();
    // Point at the literal when the name was given, else at the type's name.
    let at: &dyn ToTokens = match &input.attrs.name {
        Some(lit) => lit,
        None => input.ident,
    };
    if name.trim().is_empty() {
        cx.error_spanned_by(
            at,
            "the event name must not be empty; remove `name` to use the type's name",
        );
        return;
    }
    if input.attrs.allow_non_past_tense.is_some() || words::is_past_tense_name(&name) {
        return;
    }
    let mut msg = format!(
        "event name `{name}` is not in the past tense: an event records something that already happened"
    );
    match (words::suggest_past_tense(&name), &input.attrs.name) {
        (Some(better), Some(_)) => {
            msg.push_str(&format!(
                "\n\nhelp: name it `{better}`: `#[event(name = \"{better}\")]`"
            ));
        }
        (Some(better), None) => {
            msg.push_str(&format!(
                "\n\nhelp: rename the type `{better}`, or keep it and set `#[event(name = \"{better}\")]`"
            ));
        }
        (None, _) => {
            msg.push_str(
                "\n\nhelp: name the event as a fact in the past tense, what it happened to first: `OrderShipped`, `UserLoggedIn`",
            );
        }
    }
    msg.push_str(
        "\nnote: for a name that is right as it is, opt out with `#[event(allow_non_past_tense)]`",
    );
    cx.error_spanned_by(at, msg);
}
