//! A `metrics` recorder for tests that keeps the last value of every counter and gauge by name.
//! A recorder is process-wide: install it once per test binary.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString,
    Unit,
};

/// The values recorded so far, by metric name (labels are not told apart).
pub type Values = Arc<Mutex<HashMap<String, f64>>>;

/// Installs the recorder for this process and returns its values.
///
/// # Panics
/// When another recorder is installed already.
pub fn install() -> Values {
    let values: Values = Arc::default();
    metrics::set_global_recorder(TestRecorder {
        values: values.clone(),
    })
    .expect("the only recorder of this test binary");
    values
}

struct Cell {
    name: String,
    values: Values,
}

impl Cell {
    fn update(&self, f: impl FnOnce(f64) -> f64) {
        let mut values = self.values.lock().expect("metrics lock");
        let value = values.entry(self.name.clone()).or_insert(0.0);
        *value = f(*value);
    }
}

impl CounterFn for Cell {
    fn increment(&self, value: u64) {
        self.update(|v| v + value as f64);
    }
    fn absolute(&self, value: u64) {
        self.update(|v| v.max(value as f64));
    }
}

impl GaugeFn for Cell {
    fn increment(&self, value: f64) {
        self.update(|v| v + value);
    }
    fn decrement(&self, value: f64) {
        self.update(|v| v - value);
    }
    fn set(&self, value: f64) {
        self.update(|_| value);
    }
}

struct TestRecorder {
    values: Values,
}

impl TestRecorder {
    fn cell(&self, key: &Key) -> Arc<Cell> {
        Arc::new(Cell {
            name: key.name().to_owned(),
            values: self.values.clone(),
        })
    }
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.cell(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.cell(key))
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}
