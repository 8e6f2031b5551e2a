//! The past-tense check on event names and the name suggested when it fails.
//!
//! Plain string functions, no tokens: `valid.rs` of `DomainEvent` calls them, and the unit tests
//! at the bottom pin their behaviour.

/// Irregular verbs: base form and the past form an event name uses (the past participle,
/// `OrderPaid`, `ReportWritten`).
const IRREGULAR: &[(&str, &str)] = &[
    ("arise", "arisen"),
    ("bear", "borne"),
    ("beat", "beaten"),
    ("become", "become"),
    ("begin", "begun"),
    ("bend", "bent"),
    ("bet", "bet"),
    ("bid", "bid"),
    ("bind", "bound"),
    ("bite", "bitten"),
    ("bleed", "bled"),
    ("blow", "blown"),
    ("break", "broken"),
    ("breed", "bred"),
    ("bring", "brought"),
    ("broadcast", "broadcast"),
    ("build", "built"),
    ("burst", "burst"),
    ("buy", "bought"),
    ("cast", "cast"),
    ("catch", "caught"),
    ("choose", "chosen"),
    ("cling", "clung"),
    ("come", "come"),
    ("cost", "cost"),
    ("creep", "crept"),
    ("cut", "cut"),
    ("deal", "dealt"),
    ("dig", "dug"),
    ("do", "done"),
    ("draw", "drawn"),
    ("drink", "drunk"),
    ("drive", "driven"),
    ("eat", "eaten"),
    ("fall", "fallen"),
    ("feed", "fed"),
    ("feel", "felt"),
    ("fight", "fought"),
    ("find", "found"),
    ("flee", "fled"),
    ("fly", "flown"),
    ("forbid", "forbidden"),
    ("forecast", "forecast"),
    ("forget", "forgotten"),
    ("forgive", "forgiven"),
    ("freeze", "frozen"),
    ("get", "got"),
    ("give", "given"),
    ("go", "gone"),
    ("grind", "ground"),
    ("grow", "grown"),
    ("hang", "hung"),
    ("hear", "heard"),
    ("hide", "hidden"),
    ("hit", "hit"),
    ("hold", "held"),
    ("hurt", "hurt"),
    ("keep", "kept"),
    ("know", "known"),
    ("lay", "laid"),
    ("lead", "led"),
    ("leave", "left"),
    ("lend", "lent"),
    ("let", "let"),
    ("light", "lit"),
    ("lose", "lost"),
    ("make", "made"),
    ("mean", "meant"),
    ("meet", "met"),
    ("pay", "paid"),
    ("put", "put"),
    ("quit", "quit"),
    ("read", "read"),
    ("ride", "ridden"),
    ("ring", "rung"),
    ("rise", "risen"),
    ("run", "run"),
    ("say", "said"),
    ("see", "seen"),
    ("seek", "sought"),
    ("sell", "sold"),
    ("send", "sent"),
    ("set", "set"),
    ("shake", "shaken"),
    ("shed", "shed"),
    ("shoot", "shot"),
    ("show", "shown"),
    ("shrink", "shrunk"),
    ("shut", "shut"),
    ("sing", "sung"),
    ("sink", "sunk"),
    ("sit", "sat"),
    ("sleep", "slept"),
    ("slide", "slid"),
    ("speak", "spoken"),
    ("speed", "sped"),
    ("spend", "spent"),
    ("spin", "spun"),
    ("split", "split"),
    ("spread", "spread"),
    ("stand", "stood"),
    ("steal", "stolen"),
    ("stick", "stuck"),
    ("sting", "stung"),
    ("strike", "struck"),
    ("swear", "sworn"),
    ("sweep", "swept"),
    ("swim", "swum"),
    ("swing", "swung"),
    ("take", "taken"),
    ("teach", "taught"),
    ("tear", "torn"),
    ("tell", "told"),
    ("think", "thought"),
    ("throw", "thrown"),
    ("understand", "understood"),
    ("wake", "woken"),
    ("wear", "worn"),
    ("win", "won"),
    ("wind", "wound"),
    ("withdraw", "withdrawn"),
    ("withhold", "withheld"),
    ("write", "written"),
];

/// Prefixes that keep an irregular verb irregular: `repay` → `repaid`, `oversell` → `oversold`.
const PREFIXES: &[&str] = &[
    "counter", "under", "over", "with", "fore", "mis", "out", "pre", "re", "un", "up",
];

/// Irregular past forms that are not the participle of the table (simple past, `Sent` is both).
const OTHER_PAST: &[&str] = &[
    "began", "broke", "chose", "did", "drew", "drove", "ate", "fell", "flew", "forgot", "froze",
    "gave", "grew", "knew", "rang", "rode", "rose", "sang", "sank", "saw", "shook", "spoke",
    "stole", "swore", "took", "tore", "went", "woke", "wore", "wrote", "gotten",
];

/// Words that end in "ed" and are not past tense.
const NOT_PAST_ED: &[&str] = &[
    "bed", "breed", "embed", "exceed", "feed", "bleed", "need", "proceed", "red", "seed", "speed",
    "succeed", "shred", "steed", "weed",
];

/// Two-syllable regular verbs stressed on the last syllable: they double the final consonant.
const DOUBLING: &[&str] = &[
    "abet", "acquit", "admit", "commit", "compel", "confer", "control", "debug", "defer", "deter",
    "emit", "equip", "expel", "incur", "infer", "kidnap", "occur", "omit", "overlap", "patrol",
    "permit", "prefer", "propel", "rebut", "recur", "refer", "regret", "remit", "submit",
    "transfer", "transmit", "unzip",
];

/// Regular verbs common in domain event names, so that the suggestion knows which word is the
/// verb (`CreateOrder`: "create" is, `OrderCreate`: "create" is).
const VERBS: &[&str] = &[
    "accept",
    "activate",
    "add",
    "adjust",
    "allocate",
    "append",
    "apply",
    "approve",
    "archive",
    "arrive",
    "assign",
    "attach",
    "authenticate",
    "authorize",
    "ban",
    "block",
    "book",
    "cancel",
    "capture",
    "change",
    "charge",
    "check",
    "checkout",
    "claim",
    "clear",
    "close",
    "collect",
    "complete",
    "confirm",
    "connect",
    "consume",
    "convert",
    "copy",
    "correct",
    "create",
    "credit",
    "deactivate",
    "debit",
    "decline",
    "decrease",
    "delete",
    "deliver",
    "deploy",
    "deposit",
    "detach",
    "detect",
    "disable",
    "dispatch",
    "drop",
    "edit",
    "enable",
    "end",
    "enqueue",
    "enroll",
    "escalate",
    "expire",
    "export",
    "fail",
    "file",
    "finish",
    "flag",
    "fulfil",
    "fulfill",
    "generate",
    "grant",
    "import",
    "increase",
    "invite",
    "invoice",
    "issue",
    "join",
    "list",
    "load",
    "lock",
    "log",
    "login",
    "logout",
    "mark",
    "merge",
    "migrate",
    "modify",
    "move",
    "notify",
    "open",
    "pack",
    "park",
    "pause",
    "place",
    "plan",
    "post",
    "process",
    "publish",
    "purchase",
    "receive",
    "record",
    "redeem",
    "refund",
    "register",
    "reject",
    "release",
    "remove",
    "rename",
    "renew",
    "reopen",
    "replace",
    "reply",
    "request",
    "reserve",
    "resolve",
    "restore",
    "resume",
    "retry",
    "return",
    "revoke",
    "save",
    "schedule",
    "ship",
    "sign",
    "signup",
    "skip",
    "start",
    "stop",
    "store",
    "subscribe",
    "suspend",
    "tag",
    "terminate",
    "track",
    "transfer",
    "unlock",
    "unsubscribe",
    "update",
    "upgrade",
    "upload",
    "use",
    "validate",
    "verify",
    "view",
    "visit",
    "void",
    "withdraw",
];

/// Splits a name into words: at CamelCase boundaries (`OrderCreated`, `HTTPRequestSent`) and at
/// anything that is not a letter or a digit (`order.created`, `order_created`).
pub(crate) fn split_words(name: &str) -> Vec<String> {
    let mut words = Vec::new();
    for part in name.split(|c: char| !c.is_alphanumeric()) {
        let chars: Vec<char> = part.chars().collect();
        let mut current = String::new();
        for (i, &c) in chars.iter().enumerate() {
            let boundary = i > 0 && c.is_uppercase() && {
                let prev = chars[i - 1];
                let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
                prev.is_lowercase() || prev.is_ascii_digit() || (prev.is_uppercase() && next_lower)
            };
            if boundary && !current.is_empty() {
                words.push(std::mem::take(&mut current));
            }
            current.push(c);
        }
        if !current.is_empty() {
            words.push(current);
        }
    }
    words
}

/// Whether the last word of `name` reads as past tense.
pub(crate) fn is_past_tense_name(name: &str) -> bool {
    split_words(name).last().is_some_and(|w| is_past_tense(w))
}

/// Whether one word reads as past tense: a regular "-ed" form or a known irregular one.
pub(crate) fn is_past_tense(word: &str) -> bool {
    let word = word.to_lowercase();
    if is_irregular_past(&word) {
        return true;
    }
    if NOT_PAST_ED.contains(&word.as_str()) {
        return false;
    }
    word.len() > 2 && word.ends_with("ed")
}

fn is_irregular_past(word: &str) -> bool {
    let known = |w: &str| IRREGULAR.iter().any(|&(_, past)| past == w) || OTHER_PAST.contains(&w);
    known(word)
        || PREFIXES.iter().any(|p| {
            word.strip_prefix(p)
                .is_some_and(|rest| rest.len() > 2 && known(rest))
        })
}

/// The irregular past of `verb` (lowercase), prefixes included: `repay` → `repaid`.
fn irregular_past(verb: &str) -> Option<String> {
    if let Some(&(_, past)) = IRREGULAR.iter().find(|&&(base, _)| base == verb) {
        return Some(past.to_owned());
    }
    PREFIXES.iter().find_map(|p| {
        let rest = verb.strip_prefix(p)?;
        let &(_, past) = IRREGULAR
            .iter()
            .find(|&&(base, _)| base == rest && rest.len() > 1)?;
        Some(format!("{p}{past}"))
    })
}

fn is_vowel(c: char) -> bool {
    matches!(c, 'a' | 'e' | 'i' | 'o' | 'u')
}

fn syllables(word: &str) -> usize {
    let mut count = 0;
    let mut in_vowels = false;
    for c in word.chars() {
        let vowel = is_vowel(c) || c == 'y';
        if vowel && !in_vowels {
            count += 1;
        }
        in_vowels = vowel;
    }
    count
}

/// The past tense of a verb (lowercase in, lowercase out), regular rules and the irregular table.
pub(crate) fn past_tense(verb: &str) -> String {
    let verb = verb.to_lowercase();
    if let Some(past) = irregular_past(&verb) {
        return past;
    }
    let chars: Vec<char> = verb.chars().collect();
    let n = chars.len();
    if n == 0 {
        return verb;
    }
    let last = chars[n - 1];
    if last == 'e' {
        return format!("{verb}d");
    }
    if last == 'y' && n > 1 && !is_vowel(chars[n - 2]) {
        return format!("{}ied", &verb[..verb.len() - 1]);
    }
    if last == 'c' && n > 2 {
        return format!("{verb}ked");
    }
    let cvc = n >= 3
        && !is_vowel(last)
        && !matches!(last, 'w' | 'x' | 'y')
        && is_vowel(chars[n - 2])
        && !is_vowel(chars[n - 3]);
    if cvc && (syllables(&verb) == 1 || DOUBLING.contains(&verb.as_str())) {
        return format!("{verb}{last}ed");
    }
    format!("{verb}ed")
}

/// Whether `word` (any case) looks like a verb: a known one, or a typical verb ending.
fn is_verb(word: &str) -> bool {
    let word = word.to_lowercase();
    VERBS.contains(&word.as_str())
        || irregular_past(&word).is_some()
        || ["ize", "ise", "ify", "ate"]
            .iter()
            .any(|suffix| word.len() > suffix.len() + 2 && word.ends_with(suffix))
}

/// Re-capitalizes an inflected word like the word it came from (`Create` → `Created`).
fn like(original: &str, inflected: &str) -> String {
    if original.len() > 1 && original.chars().all(|c| !c.is_lowercase()) {
        return inflected.to_uppercase();
    }
    let mut chars = inflected.chars();
    match chars.next() {
        Some(first) if original.starts_with(char::is_uppercase) => {
            first.to_uppercase().chain(chars).collect()
        }
        Some(first) => std::iter::once(first).chain(chars).collect(),
        None => String::new(),
    }
}

/// A past-tense name for a name that is not: verb-first names become noun + past tense
/// (`CreateOrder` → `OrderCreated`), verb-last names get the past tense (`OrderPay` →
/// `OrderPaid`). `None` when no word of the name reads as a verb.
pub(crate) fn suggest_past_tense(name: &str) -> Option<String> {
    let words = split_words(name);
    let (first, last) = (words.first()?, words.last()?);
    // `order.create` keeps its separator; `OrderCreate` has none.
    let separator: String = name
        .chars()
        .find(|c| !c.is_alphanumeric())
        .map(String::from)
        .unwrap_or_default();
    let join = |rest: &[String], verb: &str| {
        let mut parts: Vec<String> = rest.to_vec();
        parts.push(like(verb, &past_tense(verb)));
        parts.join(&separator)
    };
    let verb_first = words.len() > 1 && is_verb(first);
    if verb_first && !is_verb(last) {
        return Some(join(&words[1..], first));
    }
    if is_verb(last) {
        return Some(join(&words[..words.len() - 1], last));
    }
    verb_first.then(|| join(&words[1..], first))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_camel_case_acronyms_and_separators() {
        assert_eq!(split_words("OrderCreated"), ["Order", "Created"]);
        assert_eq!(split_words("HTTPRequestSent"), ["HTTP", "Request", "Sent"]);
        assert_eq!(split_words("order.created"), ["order", "created"]);
        assert_eq!(
            split_words("order_items_shipped"),
            ["order", "items", "shipped"]
        );
        assert_eq!(split_words("Sha256Computed"), ["Sha256", "Computed"]);
        assert!(split_words("").is_empty());
    }

    #[test]
    fn past_tense_names_pass() {
        for name in [
            "OrderCreated",
            "PaymentPaid",
            "ItemsShipped",
            "StockSold",
            "ReportWritten",
            "InvoiceSent",
            "PasswordReset",
            "InvoiceRepaid",
            "order.created",
            "AccountFed",
        ] {
            assert!(is_past_tense_name(name), "{name} should read as past tense");
        }
    }

    #[test]
    fn present_tense_names_fail() {
        for name in [
            "CreateOrder",
            "OrderCreate",
            "PayOrder",
            "OrderPay",
            "ShipItems",
            "NewsFeed",
            "OrderNeed",
            "Order",
            "",
        ] {
            assert!(
                !is_past_tense_name(name),
                "{name} should not read as past tense"
            );
        }
    }

    #[test]
    fn regular_inflection() {
        assert_eq!(past_tense("create"), "created");
        assert_eq!(past_tense("ship"), "shipped");
        assert_eq!(past_tense("stop"), "stopped");
        assert_eq!(past_tense("plan"), "planned");
        assert_eq!(past_tense("apply"), "applied");
        assert_eq!(past_tense("verify"), "verified");
        assert_eq!(past_tense("deploy"), "deployed");
        assert_eq!(past_tense("submit"), "submitted");
        assert_eq!(past_tense("open"), "opened");
        assert_eq!(past_tense("cancel"), "canceled");
        assert_eq!(past_tense("fix"), "fixed");
        assert_eq!(past_tense("allow"), "allowed");
        assert_eq!(past_tense("panic"), "panicked");
        assert_eq!(past_tense("process"), "processed");
    }

    #[test]
    fn irregular_inflection() {
        assert_eq!(past_tense("pay"), "paid");
        assert_eq!(past_tense("sell"), "sold");
        assert_eq!(past_tense("send"), "sent");
        assert_eq!(past_tense("build"), "built");
        assert_eq!(past_tense("write"), "written");
        assert_eq!(past_tense("repay"), "repaid");
        assert_eq!(past_tense("resend"), "resent");
        assert_eq!(past_tense("override"), "overridden");
        assert_eq!(past_tense("undo"), "undone");
        assert_eq!(past_tense("reset"), "reset");
    }

    #[test]
    fn suggestions_move_a_leading_verb_to_the_end() {
        assert_eq!(
            suggest_past_tense("CreateOrder").as_deref(),
            Some("OrderCreated")
        );
        assert_eq!(suggest_past_tense("PayOrder").as_deref(), Some("OrderPaid"));
        assert_eq!(
            suggest_past_tense("ShipItems").as_deref(),
            Some("ItemsShipped")
        );
        assert_eq!(
            suggest_past_tense("CancelOrderLine").as_deref(),
            Some("OrderLineCanceled")
        );
        assert_eq!(
            suggest_past_tense("SellStock").as_deref(),
            Some("StockSold")
        );
    }

    #[test]
    fn suggestions_inflect_a_trailing_verb() {
        assert_eq!(
            suggest_past_tense("OrderCreate").as_deref(),
            Some("OrderCreated")
        );
        assert_eq!(suggest_past_tense("OrderPay").as_deref(), Some("OrderPaid"));
        assert_eq!(
            suggest_past_tense("ItemsShip").as_deref(),
            Some("ItemsShipped")
        );
        assert_eq!(
            suggest_past_tense("AccountVerify").as_deref(),
            Some("AccountVerified")
        );
        assert_eq!(
            suggest_past_tense("UserAuthorize").as_deref(),
            Some("UserAuthorized")
        );
        assert_eq!(suggest_past_tense("Create").as_deref(), Some("Created"));
        assert_eq!(
            suggest_past_tense("order.create").as_deref(),
            Some("order.created")
        );
    }

    #[test]
    fn no_suggestion_without_a_verb() {
        assert_eq!(suggest_past_tense("OrderStatus"), None);
        assert_eq!(suggest_past_tense(""), None);
    }

    #[test]
    fn suggestions_read_as_past_tense() {
        for name in [
            "CreateOrder",
            "OrderPay",
            "ShipItems",
            "RefundPayment",
            "StockBuild",
        ] {
            let suggestion = suggest_past_tense(name).unwrap_or_default();
            assert!(is_past_tense_name(&suggestion), "{name} -> {suggestion}");
        }
    }
}
