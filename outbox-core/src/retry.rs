//! Retry policy: exponential backoff with jitter and a bounded number of attempts.

use std::time::Duration;

/// How often and how far apart a failed delivery is tried again.
///
/// The delay before attempt `n + 1` is `initial * multiplier^(n - 1)`, capped at `max`, with up
/// to `jitter` of it taken off at random so that failed rows do not retry in lockstep. After
/// `max_attempts` attempts the delivery is dead-lettered.
///
/// ```
/// use std::time::Duration;
/// use outbox_core::RetryPolicy;
///
/// let policy = RetryPolicy::default()
///     .with_max_attempts(5)
///     .with_initial_delay(Duration::from_millis(100))
///     .with_jitter(0.0);
/// assert_eq!(policy.delay_after(1), Duration::from_millis(100));
/// assert_eq!(policy.delay_after(3), Duration::from_millis(400));
/// assert!(policy.should_retry(4));
/// assert!(!policy.should_retry(5));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    max_attempts: u32,
    initial: Duration,
    max: Duration,
    multiplier: f64,
    jitter: f64,
}

impl Default for RetryPolicy {
    /// 10 attempts, 1 s doubling up to 5 min, 20% jitter.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// Sets how many attempts in all (at least 1) before dead-lettering.
    #[must_use]
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }
    /// Sets the delay after the first failure.
    #[must_use]
    pub fn with_initial_delay(mut self, delay: Duration) -> Self {
        self.initial = delay;
        self
    }
    /// Sets the longest delay.
    #[must_use]
    pub fn with_max_delay(mut self, delay: Duration) -> Self {
        self.max = delay;
        self
    }
    /// Sets the growth factor (at least 1).
    #[must_use]
    pub fn with_multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = if multiplier.is_finite() {
            multiplier.max(1.0)
        } else {
            1.0
        };
        self
    }
    /// Sets the share of each delay taken off at random, from 0 to 1.
    #[must_use]
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// How many attempts in all.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Whether another attempt follows after `attempts` failed ones.
    pub fn should_retry(&self, attempts: u32) -> bool {
        attempts < self.max_attempts
    }

    /// The delay after the `attempts`-th failure (from 1).
    pub fn delay_after(&self, attempts: u32) -> Duration {
        let exp = attempts.saturating_sub(1).min(64) as i32;
        let base = self.initial.as_secs_f64() * self.multiplier.powi(exp);
        let capped = base.min(self.max.as_secs_f64());
        let jittered = capped * (1.0 - self.jitter * fastrand::f64());
        Duration::try_from_secs_f64(jittered).unwrap_or(self.max)
    }
}
