//! The past-tense check on event names and the name suggested when it fails.
//!
//! Plain string functions, no tokens: `valid.rs` of `DomainEvent` calls them, and the unit tests
//! at the bottom pin their behaviour.
//!
//! # The rule
//!
//! A name is split into words (`CartCheckedOut` → cart, checked, out) and reads as past tense
//! when one of its words is the predicate, a past form (a participle or a simple past), with at
//! most these after it:
//!
//! 1. up to two particles (`UserLoggedIn`, `ItemsSetAside`, `ShipmentHeldBack`);
//! 2. then at most one short phrase that opens with a preposition, one to four words after it
//!    (`OrderPaidInFull`, `EmailSentToCustomer`, `OrderMarkedAsPaid`,
//!    `FundsTransferredFromCheckingToSavings`);
//! 3. then at most one adverb (`PaymentCompletedSuccessfully`, `LoanPaidOffEarly`).
//!
//! Trailing `Event` and version words are not part of the sentence (`OrderCreatedEvent`,
//! `order.created.v2`). A bare noun after the past form does not pass: `CreatedOrder`,
//! `FailedLoginAttempt` and `OrderShippedNotification` name things, not facts.
//!
//! Past forms are regular `-ed` words of four letters or more (`Created`, `Shipped`, `Applied`)
//! and the irregular forms of [`IRREGULAR`], alone or after a prefix of [`PREFIXES`]
//! (`Rewritten`, `Overpaid`, `Withdrawn`, `Mislaid`, `Upset`). Three rules keep commands and
//! nouns out:
//!
//! - a word that is also a verb's base form (`Set`, `Reset`, `Read`, `Put`) is a command at the
//!   start of a name (`ResetPassword`, `SetAside`); after a subject it is a participle
//!   (`PasswordReset`, `ItemsSetAside`);
//! - a past form straight after `as` is a complement, not the predicate (`MarkAsRead`);
//! - words that look past and are not never count: nouns in `-ed` (`Bed`, `Hundred`, `Shed`,
//!   [`ED_NOT_PAST`]; `NewsFeed`, `CarSpeed`, the `-eed` endings of [`NOT_PAST_ENDINGS`]) and
//!   nouns that read as irregular forms (`Output`, `Outcome`, `Relay`, [`NOUNS_LIKE_PAST`]).
//!   These are small judged lists, not a dictionary; a name they get wrong opts out with
//!   `#[event(allow_non_past_tense)]`.
//!
//! Commands with no past form at all (`CreateOrder`, `CheckOut`, `LogIn`, `UserLogin`) fail
//! because nothing in them is a predicate.
//!
//! # The suggestion
//!
//! The object goes first and the verb follows in the past tense, particle and phrase after it:
//! `PayInvoice` → `InvoicePaid`, `CheckOutCart` → `CartCheckedOut`, `TransferFundsToSavings` →
//! `FundsTransferredToSavings`, `OrderCreate` → `OrderCreated`, `UserLogin` → `UserLoggedIn`
//! (a phrasal verb written as one word, [`PHRASAL_COMPOUNDS`]). A word counts as a verb only when
//! its past is known: the irregular table, the regular verbs of [`VERBS`], or an `-ize`/`-ify`
//! ending. With no verb, no object (`LogIn`, `CheckOut`), or two readings as likely as each other
//! (`ProcessUpdate`), there is no suggestion and the error gives the generic hint.

/// Irregular verbs: base form, simple past, past participle. An event name uses the participle
/// (`OrderPaid`, `ReportWritten`); both past forms pass the check, and a suggestion uses the
/// participle. Left out on purpose: `lie` (its past `lay` is the base of `lay`), `cost` and
/// `forecast` (nouns far more often than events), `shed` (a noun in names), `dive` (`dove`).
const IRREGULAR: &[(&str, &str, &str)] = &[
    ("arise", "arose", "arisen"),
    ("awake", "awoke", "awoken"),
    ("bear", "bore", "borne"),
    ("beat", "beat", "beaten"),
    ("become", "became", "become"),
    ("begin", "began", "begun"),
    ("bend", "bent", "bent"),
    ("bet", "bet", "bet"),
    ("bid", "bid", "bid"),
    ("bind", "bound", "bound"),
    ("bite", "bit", "bitten"),
    ("bleed", "bled", "bled"),
    ("blow", "blew", "blown"),
    ("break", "broke", "broken"),
    ("breed", "bred", "bred"),
    ("bring", "brought", "brought"),
    ("broadcast", "broadcast", "broadcast"),
    ("build", "built", "built"),
    ("burst", "burst", "burst"),
    ("buy", "bought", "bought"),
    ("cast", "cast", "cast"),
    ("catch", "caught", "caught"),
    ("choose", "chose", "chosen"),
    ("cling", "clung", "clung"),
    ("come", "came", "come"),
    ("creep", "crept", "crept"),
    ("cut", "cut", "cut"),
    ("deal", "dealt", "dealt"),
    ("dig", "dug", "dug"),
    ("do", "did", "done"),
    ("draw", "drew", "drawn"),
    ("drink", "drank", "drunk"),
    ("drive", "drove", "driven"),
    ("eat", "ate", "eaten"),
    ("fall", "fell", "fallen"),
    ("feed", "fed", "fed"),
    ("feel", "felt", "felt"),
    ("fight", "fought", "fought"),
    ("find", "found", "found"),
    ("flee", "fled", "fled"),
    ("fling", "flung", "flung"),
    ("fly", "flew", "flown"),
    ("forbid", "forbade", "forbidden"),
    ("forget", "forgot", "forgotten"),
    ("forgive", "forgave", "forgiven"),
    ("forsake", "forsook", "forsaken"),
    ("freeze", "froze", "frozen"),
    ("get", "got", "got"),
    ("give", "gave", "given"),
    ("go", "went", "gone"),
    ("grind", "ground", "ground"),
    ("grow", "grew", "grown"),
    ("hang", "hung", "hung"),
    ("have", "had", "had"),
    ("hear", "heard", "heard"),
    ("hide", "hid", "hidden"),
    ("hit", "hit", "hit"),
    ("hold", "held", "held"),
    ("hurt", "hurt", "hurt"),
    ("keep", "kept", "kept"),
    ("kneel", "knelt", "knelt"),
    ("know", "knew", "known"),
    ("lay", "laid", "laid"),
    ("lead", "led", "led"),
    ("leave", "left", "left"),
    ("lend", "lent", "lent"),
    ("let", "let", "let"),
    ("light", "lit", "lit"),
    ("lose", "lost", "lost"),
    ("make", "made", "made"),
    ("mean", "meant", "meant"),
    ("meet", "met", "met"),
    ("pay", "paid", "paid"),
    ("put", "put", "put"),
    ("quit", "quit", "quit"),
    ("read", "read", "read"),
    ("rid", "rid", "rid"),
    ("ride", "rode", "ridden"),
    ("ring", "rang", "rung"),
    ("rise", "rose", "risen"),
    ("run", "ran", "run"),
    ("say", "said", "said"),
    ("see", "saw", "seen"),
    ("seek", "sought", "sought"),
    ("sell", "sold", "sold"),
    ("send", "sent", "sent"),
    ("set", "set", "set"),
    ("sew", "sewed", "sewn"),
    ("shake", "shook", "shaken"),
    ("shine", "shone", "shone"),
    ("shoot", "shot", "shot"),
    ("show", "showed", "shown"),
    ("shrink", "shrank", "shrunk"),
    ("shut", "shut", "shut"),
    ("sing", "sang", "sung"),
    ("sink", "sank", "sunk"),
    ("sit", "sat", "sat"),
    ("slay", "slew", "slain"),
    ("sleep", "slept", "slept"),
    ("slide", "slid", "slid"),
    ("sling", "slung", "slung"),
    ("slit", "slit", "slit"),
    ("sow", "sowed", "sown"),
    ("speak", "spoke", "spoken"),
    ("speed", "sped", "sped"),
    ("spend", "spent", "spent"),
    ("spin", "spun", "spun"),
    ("spit", "spat", "spat"),
    ("split", "split", "split"),
    ("spread", "spread", "spread"),
    ("spring", "sprang", "sprung"),
    ("stand", "stood", "stood"),
    ("steal", "stole", "stolen"),
    ("stick", "stuck", "stuck"),
    ("sting", "stung", "stung"),
    ("stink", "stank", "stunk"),
    ("stride", "strode", "stridden"),
    ("strike", "struck", "struck"),
    ("string", "strung", "strung"),
    ("strive", "strove", "striven"),
    ("swear", "swore", "sworn"),
    ("sweep", "swept", "swept"),
    ("swell", "swelled", "swollen"),
    ("swim", "swam", "swum"),
    ("swing", "swung", "swung"),
    ("take", "took", "taken"),
    ("teach", "taught", "taught"),
    ("tear", "tore", "torn"),
    ("tell", "told", "told"),
    ("think", "thought", "thought"),
    ("throw", "threw", "thrown"),
    ("thrust", "thrust", "thrust"),
    ("tread", "trod", "trodden"),
    ("wake", "woke", "woken"),
    ("wear", "wore", "worn"),
    ("weave", "wove", "woven"),
    ("weep", "wept", "wept"),
    ("wet", "wet", "wet"),
    ("win", "won", "won"),
    ("wind", "wound", "wound"),
    ("wring", "wrung", "wrung"),
    ("write", "wrote", "written"),
];

/// Other past forms that pass but are never suggested: British and older spellings of verbs
/// whose regular form is the one to suggest (`burnt`, `learnt`), and second participles
/// (`gotten`, `proven`, `born`).
const VARIANT_PAST: &[&str] = &[
    "born", "burnt", "dreamt", "dwelt", "gotten", "leant", "leapt", "learnt", "proven", "smelt",
    "spelt", "spilt", "spoilt", "stricken",
];

/// Prefixes that keep an irregular verb irregular: `repay` → `repaid`, `oversell` → `oversold`,
/// `withdraw` → `withdrawn`, `mislay` → `mislaid`, `uphold` → `upheld`.
const PREFIXES: &[&str] = &[
    "counter", "under", "over", "with", "fore", "mis", "out", "pre", "re", "un", "up",
];

/// Nouns, adjectives and base forms in "-ed" that are not past forms (regular `-ed` words of
/// three letters fail anyway; they are listed to say so). Judged, not complete: a name this list
/// gets wrong opts out.
const ED_NOT_PAST: &[&str] = &[
    "bed", "red", "shed", "sled", "hundred", "kindred", "sacred", "naked", "wicked", "infrared",
    "seabed", "flatbed", "hotbed", "testbed", "sickbed", "sunbed", "riverbed", "reed", "greed",
    "creed", "tweed", "indeed", "embed", "shred",
];

/// Nouns that read as irregular forms, alone or made of a prefix and one (`Output`: out + put).
const NOUNS_LIKE_PAST: &[&str] = &[
    "cost",
    "forecast",
    "output",
    "outcome",
    "outlet",
    "outset",
    "outcast",
    "outlay",
    "outbreak",
    "overlay",
    "underlay",
    "relay",
    "preset",
    "present",
    "relent",
    "foreground",
    "underground",
    "underwear",
    "upkeep",
    "uptake",
    "upswing",
];

/// Endings of words in "-eed" that are never past forms, since no verb ends in "-fee", "-spee",
/// "-nee" and so on: nouns and base forms (`NewsFeed`, `CarSpeed`, `Proceed`, `Need`).
/// `Agreed`, `Freed` and `Guaranteed` end otherwise and pass.
const NOT_PAST_ENDINGS: &[&str] = &[
    "feed", "seed", "speed", "weed", "need", "bleed", "breed", "deed", "heed", "steed", "ceed",
];

/// Particles of phrasal verbs that follow a past form: `LoggedIn`, `CheckedOut`, `SetAside`.
const PARTICLES: &[&str] = &[
    "about", "across", "ahead", "along", "apart", "around", "aside", "away", "back", "behind",
    "by", "down", "forward", "in", "off", "on", "out", "over", "through", "together", "up",
];

/// Particles that are never prepositions: after a verb they make it phrasal, so the words after
/// them are its object (`CheckOutCart`). The others need a known pair ([`PHRASAL_PAIRS`]).
const PURE_PARTICLES: &[&str] = &[
    "ahead", "apart", "aside", "away", "back", "down", "forward", "out", "together", "up",
];

/// Prepositions that open the phrase after a past form: `PaidInFull`, `SentToCustomer`.
const PREPOSITIONS: &[&str] = &[
    "about", "above", "across", "after", "against", "along", "among", "around", "as", "at",
    "before", "behind", "below", "beneath", "between", "beyond", "by", "despite", "during", "for",
    "from", "in", "inside", "into", "of", "off", "on", "onto", "outside", "over", "past", "per",
    "since", "through", "to", "toward", "towards", "under", "until", "upon", "via", "with",
    "within", "without",
];

/// Adverbs that may close a name besides words in "-ly": `EmailSentAgain`, `LoanPaidOffEarly`.
const ADVERBS: &[&str] = &["again", "already", "early", "late", "once", "twice"];

/// Phrasal verbs written as one word: the word, its verb, its particle (`UserLogin` →
/// `UserLoggedIn`, `EmployeeLayoff` → `EmployeeLaidOff`).
const PHRASAL_COMPOUNDS: &[(&str, &str, &str)] = &[
    ("backup", "back", "up"),
    ("buyout", "buy", "out"),
    ("checkin", "check", "in"),
    ("checkout", "check", "out"),
    ("cleanup", "clean", "up"),
    ("cutoff", "cut", "off"),
    ("cutover", "cut", "over"),
    ("dropoff", "drop", "off"),
    ("followup", "follow", "up"),
    ("handoff", "hand", "off"),
    ("handover", "hand", "over"),
    ("kickoff", "kick", "off"),
    ("layoff", "lay", "off"),
    ("lockout", "lock", "out"),
    ("login", "log", "in"),
    ("logoff", "log", "off"),
    ("logon", "log", "on"),
    ("logout", "log", "out"),
    ("lookup", "look", "up"),
    ("optin", "opt", "in"),
    ("optout", "opt", "out"),
    ("payout", "pay", "out"),
    ("pickup", "pick", "up"),
    ("rollback", "roll", "back"),
    ("rollout", "roll", "out"),
    ("rollover", "roll", "over"),
    ("setup", "set", "up"),
    ("shutdown", "shut", "down"),
    ("signin", "sign", "in"),
    ("signoff", "sign", "off"),
    ("signout", "sign", "out"),
    ("signup", "sign", "up"),
    ("startup", "start", "up"),
    ("takeover", "take", "over"),
    ("topup", "top", "up"),
    ("writeoff", "write", "off"),
];

/// Verbs and particles that make a phrasal verb besides [`PHRASAL_COMPOUNDS`]. With `in`,
/// `on`, `off` or `over` a phrase may follow a verb instead (`PutOnHold`), so a suggestion takes
/// them as particles only for a known pair (`WriteOffDebt`, `TurnOnFeature`).
const PHRASAL_PAIRS: &[(&str, &str)] = &[
    ("switch", "off"),
    ("switch", "on"),
    ("turn", "off"),
    ("turn", "on"),
];

/// Irregular verbs never taken as the verb of a suggestion: light verbs whose object-first
/// reading rarely names a fact (`GetQuote`, `GoLive`), and `lead`, more often a noun at the end
/// of a name (`SalesLead`).
const NOT_SUGGESTED: &[&str] = &["become", "come", "get", "go", "have", "lead", "let"];

/// Two-syllable regular verbs stressed on the last syllable: they double the final consonant.
const DOUBLING: &[&str] = &[
    "abet", "acquit", "admit", "commit", "compel", "confer", "control", "debug", "defer", "deter",
    "emit", "equip", "expel", "incur", "infer", "kidnap", "occur", "omit", "overlap", "patrol",
    "permit", "prefer", "propel", "rebut", "recur", "refer", "regret", "remit", "submit",
    "transfer", "transmit", "unzip",
];

/// Regular verbs common in domain event names, so that a suggestion knows which word is the
/// verb (`CreateOrder`: "create" is, `OrderCreate`: "create" is) and can inflect it with
/// confidence. Words that are far more often nouns in names (`invoice`, `file`, `order`) are not
/// here: `PayInvoice` is pay + invoice.
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
    "authorise",
    "authorize",
    "automate",
    "back",
    "ban",
    "block",
    "book",
    "calculate",
    "cancel",
    "capture",
    "carry",
    "change",
    "charge",
    "check",
    "claim",
    "clean",
    "clear",
    "close",
    "collect",
    "comment",
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
    "duplicate",
    "edit",
    "enable",
    "end",
    "enqueue",
    "enroll",
    "escalate",
    "evaluate",
    "expire",
    "export",
    "fail",
    "fill",
    "finalise",
    "finish",
    "fix",
    "flag",
    "follow",
    "fulfil",
    "fulfill",
    "generate",
    "grant",
    "hand",
    "hire",
    "import",
    "increase",
    "initiate",
    "invalidate",
    "invite",
    "issue",
    "join",
    "kick",
    "list",
    "load",
    "lock",
    "log",
    "look",
    "mark",
    "merge",
    "migrate",
    "modify",
    "move",
    "notify",
    "open",
    "opt",
    "pack",
    "park",
    "pause",
    "pick",
    "place",
    "plan",
    "post",
    "process",
    "publish",
    "purchase",
    "rate",
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
    "review",
    "revoke",
    "roll",
    "rotate",
    "save",
    "schedule",
    "share",
    "ship",
    "sign",
    "skip",
    "start",
    "stop",
    "store",
    "submit",
    "subscribe",
    "suspend",
    "switch",
    "tag",
    "terminate",
    "top",
    "track",
    "transfer",
    "translate",
    "turn",
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
    "vote",
];

/// Verbs that are as often nouns in names (`ProcessUpdate`, `RecordUpdate`). When both ends of
/// a name are verbs, one of these at the start does not make it a command, and two of them make
/// the name ambiguous: no suggestion.
const NOUN_TOO: &[&str] = &[
    "block", "book", "change", "charge", "check", "claim", "comment", "copy", "credit", "debit",
    "deposit", "drop", "end", "export", "fix", "flag", "import", "issue", "list", "load", "lock",
    "log", "look", "mark", "pack", "park", "pause", "plan", "post", "process", "purchase", "rate",
    "record", "refund", "release", "reply", "request", "return", "review", "share", "start",
    "stop", "store", "switch", "tag", "top", "transfer", "turn", "update", "upgrade", "upload",
    "use", "view", "visit", "void", "vote",
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

/// A word as the tables spell it: lowercase, without trailing digits (`Sha256` → `sha`).
fn normalize(word: &str) -> String {
    word.to_lowercase()
        .trim_end_matches(|c: char| c.is_ascii_digit())
        .to_owned()
}

/// Words after the sentence that do not count: `Event` and versions (`V2`, `2`).
fn is_suffix(word: &str) -> bool {
    let word = word.to_lowercase();
    let version = word.strip_prefix('v').unwrap_or(&word);
    word == "event" || (!version.is_empty() && version.chars().all(|c| c.is_ascii_digit()))
}

/// How many words of `words` are the sentence, before trailing suffixes.
fn sentence_len<S: AsRef<str>>(words: &[S]) -> usize {
    words
        .iter()
        .rposition(|w| !is_suffix(w.as_ref()))
        .map_or(0, |i| i + 1)
}

/// Whether `name` reads as past tense; the rule is in the module docs.
pub(crate) fn is_past_tense_name(name: &str) -> bool {
    let all = split_words(name);
    let words: Vec<String> = all[..sentence_len(&all)]
        .iter()
        .map(|w| normalize(w))
        .collect();
    (0..words.len()).any(|i| {
        let word = &words[i];
        is_past_tense(word)
            && (i > 0 || !is_base_form(word))
            && (i == 0 || words[i - 1] != "as")
            && tail_reads_right(&words[i + 1..])
    })
}

/// Whether one word is a past form: a regular "-ed" form or an irregular one, and not a word
/// of [`ED_NOT_PAST`], [`NOUNS_LIKE_PAST`] or [`NOT_PAST_ENDINGS`].
pub(crate) fn is_past_tense(word: &str) -> bool {
    let word = normalize(word);
    if is_not_past(&word) {
        return false;
    }
    is_irregular_past(&word) || (word.len() >= 4 && word.ends_with("ed"))
}

fn is_not_past(word: &str) -> bool {
    ED_NOT_PAST.contains(&word)
        || NOUNS_LIKE_PAST.contains(&word)
        || NOT_PAST_ENDINGS.iter().any(|e| word.ends_with(e))
}

/// `word` is a simple past or participle of the table or a variant, alone or after a prefix.
fn is_irregular_past(word: &str) -> bool {
    let known = |w: &str| {
        VARIANT_PAST.contains(&w)
            || IRREGULAR
                .iter()
                .any(|&(_, past, participle)| past == w || participle == w)
    };
    known(word) || with_prefix(word, known)
}

/// Whether `word` is a prefix of [`PREFIXES`] and a rest of more than two letters that `test`
/// accepts (`rewritten`: re + written).
fn with_prefix(word: &str, test: impl Fn(&str) -> bool) -> bool {
    PREFIXES.iter().any(|p| {
        word.strip_prefix(p)
            .is_some_and(|rest| rest.len() > 2 && test(rest))
    })
}

/// Whether `word` is also a verb's base form (`set`, `reset`, `read`): at the start of a name it
/// reads as a command.
fn is_base_form(word: &str) -> bool {
    let base = |w: &str| IRREGULAR.iter().any(|&(b, _, _)| b == w);
    base(word) || with_prefix(word, base)
}

/// Whether the words after the predicate read right: particles, a short phrase, an adverb.
fn tail_reads_right(tail: &[String]) -> bool {
    (0..=tail.len().min(2))
        .any(|k| tail[..k].iter().all(|w| is_particle(w)) && after_particles(&tail[k..]))
}

fn after_particles(rest: &[String]) -> bool {
    let phrase = |p: &[String]| {
        p.is_empty() || (p.len() <= 5 && p.len() >= 2 && PREPOSITIONS.contains(&p[0].as_str()))
    };
    phrase(rest)
        || rest
            .split_last()
            .is_some_and(|(last, init)| is_adverb(last) && phrase(init))
}

fn is_particle(word: &str) -> bool {
    PARTICLES.contains(&word)
}

fn is_adverb(word: &str) -> bool {
    ADVERBS.contains(&word) || (word.len() > 4 && word.ends_with("ly"))
}

/// The irregular participle of `verb` (lowercase), prefixes included: `repay` → `repaid`.
fn irregular_participle(verb: &str) -> Option<String> {
    let find = |w: &str| {
        IRREGULAR
            .iter()
            .find(|&&(base, _, _)| base == w)
            .map(|&(_, _, participle)| participle)
    };
    if let Some(participle) = find(verb) {
        return Some(participle.to_owned());
    }
    PREFIXES.iter().find_map(|p| {
        let rest = verb.strip_prefix(p).filter(|rest| rest.len() > 1)?;
        Some(format!("{p}{}", find(rest)?))
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

/// The past participle of a verb (lowercase in, lowercase out): the irregular table, else the
/// regular spelling rules (`create` → `created`, `ship` → `shipped`, `apply` → `applied`).
pub(crate) fn past_tense(verb: &str) -> String {
    let verb = verb.to_lowercase();
    if let Some(past) = irregular_participle(&verb) {
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

/// A word read as a verb whose past is known.
struct Verb {
    /// The past participle, lowercase.
    past: String,
    /// The particle of a phrasal verb written as one word (`login`: `in`).
    particle: Option<&'static str>,
    /// As often a noun as a verb (`update`, `process`).
    noun_too: bool,
}

/// `word` (any case) as a verb with a known past, or `None`.
fn as_verb(word: &str) -> Option<Verb> {
    let word = normalize(word);
    if is_not_past(&word) || NOT_SUGGESTED.contains(&word.as_str()) {
        return None;
    }
    if let Some(&(_, verb, particle)) = PHRASAL_COMPOUNDS.iter().find(|&&(w, _, _)| w == word) {
        return Some(Verb {
            past: past_tense(verb),
            particle: Some(particle),
            noun_too: true,
        });
    }
    let noun_too = NOUN_TOO.contains(&word.as_str());
    let known = VERBS.contains(&word.as_str())
        || irregular_participle(&word).is_some()
        || ["ize", "ify"]
            .iter()
            .any(|suffix| word.len() > suffix.len() + 2 && word.ends_with(suffix));
    known.then(|| Verb {
        past: past_tense(&word),
        particle: None,
        noun_too,
    })
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

/// The verb's past and particle, spelled like `original` (`Login` → `Logged`, `In`).
fn inflect(original: &str, verb: &Verb) -> Vec<String> {
    let mut words = vec![like(original, &verb.past)];
    words.extend(verb.particle.map(|p| like(original, p)));
    words
}

/// A command read verb first: `PayInvoice`, `CheckOutCart`, `TransferFundsToSavings` (verb,
/// optional particle, object, optional phrase). `None` without an object.
fn verb_first(words: &[String]) -> Option<(Vec<String>, Verb)> {
    let verb = as_verb(words.first()?)?;
    let mut past = inflect(&words[0], &verb);
    let mut rest = &words[1..];
    let base = normalize(&words[0]);
    if verb.particle.is_none()
        && let Some((particle, after)) = rest
            .split_first()
            .filter(|(p, _)| is_phrasal(&base, &p.to_lowercase()))
    {
        past.push(particle.clone());
        rest = after;
    }
    let object = rest
        .iter()
        .position(|w| PREPOSITIONS.contains(&w.to_lowercase().as_str()))
        .unwrap_or(rest.len());
    if object == 0 {
        return None;
    }
    let mut out = rest[..object].to_vec();
    out.extend(past);
    out.extend_from_slice(&rest[object..]);
    Some((out, verb))
}

/// Whether `verb` and `particle` make a phrasal verb whose next words are its object.
fn is_phrasal(verb: &str, particle: &str) -> bool {
    PURE_PARTICLES.contains(&particle)
        || PHRASAL_PAIRS.contains(&(verb, particle))
        || PHRASAL_COMPOUNDS
            .iter()
            .any(|&(_, v, p)| v == verb && p == particle)
}

/// A name read verb last: `OrderCreate`, `UserLogin`, `CartCheckOut` (subject, verb, optional
/// particle). `None` without a subject.
fn verb_last(words: &[String]) -> Option<(Vec<String>, Verb)> {
    let n = words.len();
    let particle_last = n >= 2
        && is_particle(&words[n - 1].to_lowercase())
        && as_verb(&words[n - 2]).is_some_and(|v| v.particle.is_none());
    let at = if particle_last {
        n - 2
    } else {
        n.checked_sub(1)?
    };
    if at == 0 {
        return None;
    }
    let verb = as_verb(&words[at])?;
    let mut out = words[..at].to_vec();
    out.extend(inflect(&words[at], &verb));
    out.extend_from_slice(&words[at + 1..]);
    Some((out, verb))
}

/// A past-tense name for a name that is not: the object first, then the verb in the past tense
/// (`CreateOrder` → `OrderCreated`, `PayInvoice` → `InvoicePaid`, `UserLogin` →
/// `UserLoggedIn`). `None` when unsure; the rule is in the module docs.
pub(crate) fn suggest_past_tense(name: &str) -> Option<String> {
    let all = split_words(name);
    let (words, suffix) = all.split_at(sentence_len(&all));
    let command = words
        .first()
        .and_then(|w| as_verb(w))
        .is_some_and(|v| !v.noun_too);
    let chosen = match (verb_first(words), verb_last(words)) {
        // A command without an object (`PutOnHold`) is not read backwards.
        (None, Some(_)) if command => return None,
        (Some((first, _)), None) => first,
        (None, Some((last, _))) => last,
        (Some((first, v)), Some(_)) if !v.noun_too => first,
        (Some(_), Some((last, v))) if !v.noun_too => last,
        _ => return None,
    };
    // `order.create` keeps its separator; `OrderCreate` has none.
    let separator: String = name
        .chars()
        .find(|c| !c.is_alphanumeric())
        .map(String::from)
        .unwrap_or_default();
    let better = [chosen.as_slice(), suffix].concat().join(&separator);
    (better != name && is_past_tense_name(&better)).then_some(better)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Past-tense event names as they appear in DDD code, by class.
    const REGULAR: &[&str] = &[
        "OrderCreated",
        "OrderPlaced",
        "OrderConfirmed",
        "OrderCancelled",
        "OrderCanceled",
        "OrderCompleted",
        "OrderDelivered",
        "OrderArchived",
        "OrderReturned",
        "PaymentAuthorized",
        "PaymentCaptured",
        "PaymentDeclined",
        "PaymentFailed",
        "PaymentReceived",
        "PaymentRefunded",
        "PaymentSucceeded",
        "InvoiceGenerated",
        "InvoiceIssued",
        "InvoiceApproved",
        "CustomerRegistered",
        "CustomerDeactivated",
        "AccountOpened",
        "AccountClosed",
        "AccountSuspended",
        "AccountLocked",
        "AccountDebited",
        "AccountCredited",
        "MoneyDeposited",
        "ProductAdded",
        "ProductPriceChanged",
        "ProductDiscontinued",
        "StockReserved",
        "StockReleased",
        "StockReplenished",
        "InventoryAllocated",
        "ShipmentDispatched",
        "ShipmentDelayed",
        "BookingRescheduled",
        "SeatAssigned",
        "TicketEscalated",
        "TicketResolved",
        "TaskReopened",
        "UserRegistered",
        "UserInvited",
        "UserRenamed",
        "PasswordChanged",
        "EmailAddressConfirmed",
        "EmailVerificationRequested",
        "SubscriptionRenewed",
        "SubscriptionExpired",
        "TrialEnded",
        "CouponRedeemed",
        "CartAbandoned",
        "LoanDisbursed",
        "ClaimSettled",
        "PolicyLapsed",
        "CreditLimitExceeded",
        "DatabaseSeeded",
        "TermsAgreed",
        "DeliveryGuaranteed",
        "TermsOfServiceAccepted",
        "FailedLoginAttemptRecorded",
        "HTTPRequestTimed",
        "order.created",
        "order_payment_captured",
        "Sha256Computed",
    ];

    const DOUBLED: &[&str] = &[
        "OrderShipped",
        "TimerStopped",
        "PaymentSubmitted",
        "TransactionCommitted",
        "ItemDropped",
        "UserBanned",
        "MessageTagged",
        "PostFlagged",
        "PatientAdmitted",
        "FeeIncurred",
        "DeliveryPlanned",
        "StepSkipped",
        "CardSwapped",
        "MessagePinned",
        "ErrorOccurred",
        "PaymentTransferred",
        "EventEmitted",
        "ArchiveUnzipped",
        "UserReferred",
        "FieldOmitted",
    ];

    const IED: &[&str] = &[
        "DiscountApplied",
        "AccountVerified",
        "CustomerNotified",
        "RecordModified",
        "LeadQualified",
        "ClaimDenied",
        "DataClassified",
        "IdentityVerified",
        "RequestRetried",
        "TicketCopied",
        "BalanceTallied",
        "StockSupplied",
        "CommentReplied",
        "CartEmptied",
    ];

    const IRREGULAR_NAMES: &[&str] = &[
        "OrderPaid",
        "InvoiceSent",
        "ReportWritten",
        "ProjectBuilt",
        "StockSold",
        "FundsHeld",
        "PriceSet",
        "SeatTaken",
        "OptionChosen",
        "AccountFrozen",
        "FundsWithdrawn",
        "PasswordForgotten",
        "WorkBegun",
        "PriceCut",
        "StoreShut",
        "OrderSplit",
        "PolicyBound",
        "ItemFound",
        "ItemLost",
        "PromiseKept",
        "DeadlineMet",
        "MessageRead",
        "BudgetSpent",
        "AuctionWon",
        "CardStolen",
        "VoteCast",
        "MessageBroadcast",
        "UserLeft",
        "StockBought",
        "MeetingHeld",
        "PatientSeen",
        "LinkBroken",
        "PhotoTaken",
        "KeyLost",
        "TargetHit",
        "AccountFed",
        "ChildBorn",
        "StockPriceRose",
        "TemperatureFell",
        "HTTPRequestSent",
        "BidGiven",
        "GoodsBrought",
        "FileHidden",
    ];

    const PHRASAL: &[&str] = &[
        "UserLoggedIn",
        "UserLoggedOut",
        "CartCheckedOut",
        "OrderPickedUp",
        "AccountSignedUp",
        "ItemsSetAside",
        "PaymentCarriedOut",
        "ShipmentHeldBack",
        "GuestCheckedIn",
        "FeatureTurnedOn",
        "FeatureSwitchedOff",
        "DeviceShutDown",
        "CallHungUp",
        "CustomerOptedIn",
        "CustomerOptedOut",
        "EmployeeLaidOff",
        "CompanyBoughtOut",
        "ShiftHandedOver",
        "DebtWrittenOff",
        "DatabaseBackedUp",
        "TransactionRolledBack",
        "FeatureRolledOut",
        "WalletToppedUp",
        "ParcelDroppedOff",
        "ProjectKickedOff",
        "ItemsPutAway",
        "UserSignedIn",
        "FormFilledOut",
        "PromotionCalledOff",
        "SessionTimedOut",
        "OfferTurnedDown",
        "TruckBrokeDown",
        "SaleWentThrough",
        "PaymentFellThrough",
        "AccountLockedOut",
        "PrizeGivenAway",
        "AlarmSetOff",
        "ServerWentDown",
        "LeadFollowedUp",
        "user_logged_in",
    ];

    const WITH_PHRASE: &[&str] = &[
        "OrderPaidInFull",
        "FundsTransferredToSavings",
        "EmailSentToCustomer",
        "ItemAddedToCart",
        "ItemRemovedFromCart",
        "UserAddedToGroup",
        "TaskAssignedToUser",
        "OrderMarkedAsPaid",
        "InvoiceMarkedAsOverdue",
        "TicketMovedToBacklog",
        "DocumentSharedWithTeam",
        "PaymentReceivedFromBank",
        "OrderShippedToCustomer",
        "PackageReturnedToSender",
        "OrderCancelledByCustomer",
        "ReviewFlaggedForModeration",
        "ShipmentHeldAtCustoms",
        "OrderPutOnHold",
        "FundsTransferredFromCheckingToSavings",
        "AccountUpgradedToPremium",
        "ContractSignedByBothParties",
        "UserLoggedInWithGoogle",
        "AccountSignedUpViaReferral",
        "LoanPaidOffEarly",
        "PaymentCompletedSuccessfully",
        "EmailSentAgain",
        "StockLevelFellBelowThreshold",
        "OrderStatusChangedToShipped",
        "AccountLockedAfterThreeFailedAttempts",
        "UserLoggedOutOfAllDevices",
    ];

    const PREFIXED: &[&str] = &[
        "OrderReopened",
        "LoanRepaid",
        "EmailResent",
        "IndexRebuilt",
        "SettingOverridden",
        "ChapterRewritten",
        "ParcelMislaid",
        "ChangeUndone",
        "ConfigUnset",
        "AppealUpheld",
        "RiskUnderwritten",
        "AccountOverdrawn",
        "InvoiceUnderpaid",
        "InvoiceOverpaid",
        "BalancePrepaid",
        "ProductResold",
        "BudgetOverspent",
        "MeterMisread",
        "TaskUndertaken",
        "CustomerUpset",
        "PasswordReset",
        "PaymentWithheld",
        "CompetitorOutbid",
        "FileOverwritten",
        "OrderRedone",
        "SessionRestarted",
        "ShipmentRerouted",
    ];

    const SUFFIXED: &[&str] = &[
        "OrderCreatedV2",
        "OrderCreatedEvent",
        "order.created.v2",
        "OrderShippedEventV3",
    ];

    #[test]
    fn past_tense_names_of_every_class_pass() {
        let classes = [
            REGULAR,
            DOUBLED,
            IED,
            IRREGULAR_NAMES,
            PHRASAL,
            WITH_PHRASE,
            PREFIXED,
            SUFFIXED,
        ];
        assert!(classes.iter().map(|c| c.len()).sum::<usize>() >= 150);
        for name in classes.iter().flat_map(|c| c.iter()) {
            assert!(is_past_tense_name(name), "{name} should read as past tense");
        }
    }

    /// Names that are not past tense and the suggestion each gets (`None`: the generic hint).
    const REJECTED: &[(&str, Option<&str>)] = &[
        // Commands, verb first: the object goes first.
        ("CreateOrder", Some("OrderCreated")),
        ("ShipOrder", Some("OrderShipped")),
        ("StopTimer", Some("TimerStopped")),
        ("ApplyDiscount", Some("DiscountApplied")),
        ("CancelOrderLine", Some("OrderLineCanceled")),
        ("ProcessPayment", Some("PaymentProcessed")),
        ("VerifyEmailAddress", Some("EmailAddressVerified")),
        // Irregular verbs.
        ("PayInvoice", Some("InvoicePaid")),
        ("SendEmail", Some("EmailSent")),
        ("SellStock", Some("StockSold")),
        ("WriteReport", Some("ReportWritten")),
        ("WithdrawFunds", Some("FundsWithdrawn")),
        ("RepayLoan", Some("LoanRepaid")),
        ("OverrideSetting", Some("SettingOverridden")),
        // A base form that is also the participle reads as a command at the start.
        ("ResetPassword", Some("PasswordReset")),
        ("ReadMessage", Some("MessageRead")),
        ("SetPrice", Some("PriceSet")),
        ("Reset", None),
        // Verb last: the verb takes the past tense.
        ("OrderCreate", Some("OrderCreated")),
        ("OrderPay", Some("OrderPaid")),
        ("InvoicePay", Some("InvoicePaid")),
        ("AccountVerify", Some("AccountVerified")),
        ("UserAuthorize", Some("UserAuthorized")),
        ("order.create", Some("order.created")),
        ("ChangeOfAddressRequest", Some("ChangeOfAddressRequested")),
        // Phrasal verbs, as two words or one.
        ("CheckOutCart", Some("CartCheckedOut")),
        ("PickUpOrder", Some("OrderPickedUp")),
        ("SetUpAccount", Some("AccountSetUp")),
        ("ShutDownServer", Some("ServerShutDown")),
        ("CartCheckOut", Some("CartCheckedOut")),
        ("UserLogIn", Some("UserLoggedIn")),
        ("UserLogin", Some("UserLoggedIn")),
        ("user_login", Some("user_logged_in")),
        ("LoginUser", Some("UserLoggedIn")),
        ("CartCheckout", Some("CartCheckedOut")),
        ("UserSignup", Some("UserSignedUp")),
        ("EmployeeLayoff", Some("EmployeeLaidOff")),
        ("DatabaseBackup", Some("DatabaseBackedUp")),
        ("SystemShutdown", Some("SystemShutDown")),
        ("LogInUser", Some("UserLoggedIn")),
        ("WriteOffDebt", Some("DebtWrittenOff")),
        ("TurnOnFeature", Some("FeatureTurnedOn")),
        // An object phrase stays after the verb.
        ("TransferFundsToSavings", Some("FundsTransferredToSavings")),
        ("SendEmailToCustomer", Some("EmailSentToCustomer")),
        ("MarkOrderAsPaid", Some("OrderMarkedAsPaid")),
        ("PutOrderOnHold", Some("OrderPutOnHold")),
        // Suffixes stay at the end.
        ("CreateOrderEvent", Some("OrderCreatedEvent")),
        ("CreateOrderV2", Some("OrderCreatedV2")),
        // No subject, no object, or no verb: the generic hint.
        ("LogIn", None),
        ("CheckOut", None),
        ("SetAside", None),
        ("Login", None),
        ("Create", None),
        ("MarkAsRead", None),
        ("PutOnHold", None),
        ("GetQuote", None),
        ("Order", None),
        ("OrderStatus", None),
        ("", None),
        // Both ends read as verbs and as nouns: unsure.
        ("ProcessUpdate", None),
        // Nouns in -ed and nouns that look like irregular forms.
        ("OrderFeed", None),
        ("NewsFeed", None),
        ("Newsfeed", None),
        ("CarSpeed", None),
        ("OrderNeed", None),
        ("SeedData", None),
        ("ToolShed", None),
        ("Hundred", None),
        ("FlowerBed", None),
        ("ShippingCost", None),
        ("WeatherForecast", None),
        ("SensorOutput", None),
        ("TestOutcome", None),
        ("MessageRelay", None),
        ("ImageOverlay", None),
        ("ThemePreset", None),
        ("AttendeePresent", None),
        // A past form followed by a bare noun names a thing.
        ("CreatedOrder", None),
        ("PaidInvoice", None),
        ("FailedLoginAttempt", None),
        ("OrderShippedNotification", None),
        ("UserChangedEmail", None),
    ];

    #[test]
    fn commands_and_nouns_fail_with_their_suggestion() {
        for &(name, expected) in REJECTED {
            assert!(
                !is_past_tense_name(name),
                "{name} should not read as past tense"
            );
            assert_eq!(suggest_past_tense(name).as_deref(), expected, "for {name}");
        }
    }

    #[test]
    fn suggestions_read_as_past_tense() {
        for &(name, _) in REJECTED {
            if let Some(better) = suggest_past_tense(name) {
                assert!(is_past_tense_name(&better), "{name} -> {better}");
            }
        }
    }

    #[test]
    fn the_opt_out_cases_are_the_rules_edges() {
        // A base form alone at the start is a command; after a subject it is a participle.
        assert!(!is_past_tense_name("SetAside"));
        assert!(is_past_tense_name("ItemsSetAside"));
        // A past form after `as` is a complement.
        assert!(!is_past_tense_name("MarkAsRead"));
        assert!(is_past_tense_name("MessageMarkedAsRead"));
        // Particles and phrases are bounded: a long tail is not a short phrase.
        assert!(!is_past_tense_name("UserLoggedInToTheNewAdminConsoleToday"));
        assert!(!is_past_tense_name("CourierPickedUpOrder"));
    }

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
        assert_eq!(split_words("OrderCreatedV2"), ["Order", "Created", "V2"]);
        assert!(split_words("").is_empty());
    }

    #[test]
    fn single_words() {
        for word in [
            "created",
            "shipped",
            "applied",
            "paid",
            "written",
            "rewritten",
            "upheld",
        ] {
            assert!(is_past_tense(word), "{word}");
        }
        for word in [
            "create", "feed", "bed", "speed", "proceed", "output", "relay", "lay",
        ] {
            assert!(!is_past_tense(word), "{word}");
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
        assert_eq!(past_tense("log"), "logged");
        assert_eq!(past_tense("opt"), "opted");
        assert_eq!(past_tense("top"), "topped");
    }

    #[test]
    fn irregular_inflection() {
        assert_eq!(past_tense("pay"), "paid");
        assert_eq!(past_tense("sell"), "sold");
        assert_eq!(past_tense("send"), "sent");
        assert_eq!(past_tense("build"), "built");
        assert_eq!(past_tense("write"), "written");
        assert_eq!(past_tense("choose"), "chosen");
        assert_eq!(past_tense("freeze"), "frozen");
        assert_eq!(past_tense("repay"), "repaid");
        assert_eq!(past_tense("resend"), "resent");
        assert_eq!(past_tense("override"), "overridden");
        assert_eq!(past_tense("undo"), "undone");
        assert_eq!(past_tense("reset"), "reset");
        assert_eq!(past_tense("withdraw"), "withdrawn");
        assert_eq!(past_tense("mislay"), "mislaid");
        assert_eq!(past_tense("uphold"), "upheld");
    }
}
