#!/usr/bin/env bash
# The whole test suite, from a fresh clone: set-up first (databases, the tansu Kafka broker,
# built once and cached), then formatting, lints and every test of the workspace.
#
#   scripts/test.sh            everything
#   scripts/test.sh -p NAME    extra arguments go to `cargo test`
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh
scripts/tansu.sh start
export OUTBOX_TEST_KAFKA_BROKERS="${OUTBOX_TEST_KAFKA_BROKERS:-127.0.0.1:9092}"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace "$@"
