//! Time as stored in the outbox tables: microseconds since the Unix epoch, UTC.

use chrono::{DateTime, Utc};

/// Now, in microseconds since the Unix epoch.
pub fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

/// `at` in microseconds since the Unix epoch.
pub fn to_micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

/// Microseconds since the Unix epoch as a time (the epoch itself if out of range).
pub fn from_micros(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}
