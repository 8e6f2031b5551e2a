//! What the person running the example sees: the event flow of the first orders, the progress
//! bar, the summary and the checks. The framework's counters (duplicates skipped, dead letters)
//! are read through a small `metrics` recorder.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use uuid::Uuid;

/// One step of an order's flow: who did what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    by: String,
    what: String,
}

impl Step {
    /// `by` (a service) did `what` (registered an event, sent a notice).
    pub fn new(by: impl Into<String>, what: impl Into<String>) -> Self {
        Step {
            by: by.into(),
            what: what.into(),
        }
    }
}

/// The flows of the orders being followed.
#[derive(Default)]
struct Flows {
    /// In the order they were placed: (order, headline, steps, printed).
    orders: Vec<(Uuid, String, Vec<Step>, bool)>,
}

fn flows() -> &'static Mutex<Flows> {
    static FLOWS: OnceLock<Mutex<Flows>> = OnceLock::new();
    FLOWS.get_or_init(Mutex::default)
}

/// Follows `order`'s flow (the first few orders of a run), starting with `headline`.
pub fn follow(order: Uuid, headline: String) {
    let mut flows = flows().lock().unwrap_or_else(|p| p.into_inner());
    flows.orders.push((order, headline, Vec::new(), false));
}

/// Records that `step` happened for `order`, if it is followed. Handlers call it after their
/// writes; a handler whose transaction then rolls back and runs again records the same step
/// again, which is kept once.
pub fn step(order: Uuid, step: Step) {
    let mut flows = flows().lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, _, steps, _)) = flows.orders.iter_mut().find(|(id, ..)| *id == order)
        && !steps.contains(&step)
    {
        steps.push(step);
    }
}

/// The flows of followed orders that `done` says are complete and were not printed yet,
/// rendered; `all` takes every unprinted one (at the end of a run).
pub fn take_finished(done: impl Fn(&[Step]) -> bool, all: bool) -> Vec<String> {
    let mut flows = flows().lock().unwrap_or_else(|p| p.into_inner());
    let mut out = Vec::new();
    for (_, headline, steps, printed) in &mut flows.orders {
        if *printed || !(all || done(steps)) {
            continue;
        }
        *printed = true;
        let mut text = headline.clone();
        let mut cancelled = false;
        for s in steps.iter() {
            let late = if COMPENSATIONS.contains(&s.what.as_str()) {
                "  (compensation: the order is cancelled)"
            } else if cancelled {
                "  (late: the order is cancelled already)"
            } else {
                ""
            };
            text.push_str(&format!("\n    -> {:<18} {}{late}", s.by, s.what));
            cancelled |= s.what == "OrderCancelled";
        }
        out.push(text);
    }
    out
}

/// The events that undo a step of a cancelled order.
const COMPENSATIONS: [&str; 2] = ["PaymentRefunded", "StockReleased"];

/// Whether a flow ended: both services replied, and the order was confirmed and its notice
/// sent, or cancelled and what was captured or reserved for it given back.
pub fn flow_complete(steps: &[Step]) -> bool {
    let replied = |by: &str| steps.iter().any(|s| s.by == by);
    let did = |what: &str| steps.iter().any(|s| s.what == what);
    let compensated = (!did("PaymentCaptured") || did("PaymentRefunded"))
        && (!did("InventoryReserved") || did("StockReleased"));
    replied(crate::payment::GROUP)
        && replied(crate::inventory::GROUP)
        && ((did("OrderCancelled") && compensated) || replied("after commit"))
}

/// Cents as money: `1250` → `12.50`.
pub fn money(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, (cents % 100).abs())
}

/// The first and last characters of an id, as people read them: `0193a2…9f3c`.
pub fn short(id: Uuid) -> String {
    let s = id.to_string();
    format!("{}…{}", &s[..6], &s[s.len() - 4..])
}

/// Counters the framework reports through `metrics`, summed over their labels.
#[derive(Clone, Default)]
pub struct Counters {
    values: Arc<Mutex<HashMap<String, Arc<AtomicU64>>>>,
}

impl Counters {
    /// Installs a recorder that keeps counters (gauges and histograms are dropped) and returns
    /// them; `None` when another recorder is installed already.
    pub fn install() -> Option<Counters> {
        let counters = Counters::default();
        metrics::set_global_recorder(CountingRecorder(counters.clone())).ok()?;
        Some(counters)
    }

    /// The total of counter `name` over all labels.
    pub fn get(&self, name: &str) -> u64 {
        let values = self.values.lock().unwrap_or_else(|p| p.into_inner());
        values
            .iter()
            .filter(|(k, _)| k.split('{').next() == Some(name))
            .map(|(_, v)| v.load(Ordering::Relaxed))
            .sum()
    }
}

impl fmt::Debug for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Counters").finish_non_exhaustive()
    }
}

struct CountingRecorder(Counters);

impl Recorder for CountingRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        let mut values = self.0.values.lock().unwrap_or_else(|p| p.into_inner());
        let value = values.entry(name).or_default().clone();
        Counter::from_arc(value)
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

/// The result of one self-check.
#[derive(Debug)]
pub struct Check {
    /// Whether it held.
    pub ok: bool,
    /// What was checked, with the numbers.
    pub what: String,
}

impl Check {
    /// A check of `what` that holds when `ok`.
    pub fn new(ok: bool, what: impl Into<String>) -> Self {
        Check {
            ok,
            what: what.into(),
        }
    }
}

/// Renders checks, one a line.
pub fn render_checks(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        out.push_str(&format!(
            "  {}  {}\n",
            if c.ok { "ok  " } else { "FAIL" },
            c.what
        ));
    }
    out
}
