//! Passthrough librdkafka configuration, with secrets kept out of logs.

use std::collections::BTreeMap;
use std::fmt;

use rdkafka::ClientConfig;

/// Key fragments whose values are secrets: never logged, `Debug` prints `<redacted>`.
const SECRET_MARKERS: [&str; 5] = [
    "password",
    "secret",
    "jaas",
    "key.pem",
    "oauthbearer.config",
];

/// Whether the value of librdkafka property `key` is a secret.
pub fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_MARKERS.iter().any(|m| key.contains(m))
}

/// librdkafka properties (`bootstrap.servers`, `security.protocol`, `sasl.password`, ...),
/// passed through as given. `Debug` redacts secret values (keys containing `password`, `secret`,
/// `jaas`, `key.pem` or `oauthbearer.config`).
///
/// ```
/// use outbox_kafka::KafkaConfig;
///
/// let config = KafkaConfig::new("127.0.0.1:9092")
///     .set("security.protocol", "SASL_SSL")
///     .set("sasl.password", "hunter2");
/// assert_eq!(config.get("sasl.password"), Some("hunter2"));
/// assert!(!format!("{config:?}").contains("hunter2"));
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaConfig {
    entries: BTreeMap<String, String>,
}

impl KafkaConfig {
    /// A configuration with `bootstrap.servers` set to `brokers` (comma-separated `host:port`).
    pub fn new(brokers: impl Into<String>) -> Self {
        KafkaConfig::default().set("bootstrap.servers", brokers)
    }

    /// Sets librdkafka property `key` (overrides any default this crate sets).
    #[must_use]
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.entries.insert(key.into(), value.into());
        self
    }

    /// Sets `key` only when it is not set yet.
    #[must_use]
    pub(crate) fn set_default(mut self, key: &str, value: &str) -> Self {
        self.entries
            .entry(key.to_owned())
            .or_insert_with(|| value.to_owned());
        self
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(String::as_str)
    }

    /// The properties, as rdkafka's [`ClientConfig`].
    pub fn to_client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (k, v) in &self.entries {
            config.set(k, v);
        }
        config
    }
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (k, v) in &self.entries {
            if is_secret(k) {
                map.entry(k, &"<redacted>");
            } else {
                map.entry(k, v);
            }
        }
        map.finish()
    }
}
