//! Kafka backend.
