#!/usr/bin/env bash
# The whole test suite, from a fresh clone: set-up first (databases, the tansu Kafka broker,
# built once and cached), then formatting, lints, the docs and every test of the workspace.
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
# Every intra-doc link resolves (the doctests run with the tests below).
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
cargo test --workspace "$@"

# Crate features: each database driver of outbox-seaorm compiles alone, and neither a
# PostgreSQL-only build nor a broker crate (which chooses no driver) pulls another driver in.
for feature in postgres mysql sqlite; do
  cargo check --quiet -p outbox-seaorm --no-default-features --features "$feature"
done
for spec in "outbox-seaorm --no-default-features --features postgres" "outbox-kafka" "outbox-rabbitmq"; do
  # shellcheck disable=SC2086 # the spec is a package name plus flags
  if cargo tree -e normal -p $spec | grep -E "sqlx-(mysql|sqlite)|libsqlite3-sys|clap "; then
    echo "features: cargo tree -p $spec has a driver or a binary dependency it should not" >&2
    exit 1
  fi
done

# An independent client reads what the relay wrote: kafka_seed saves events on a fresh
# PostgreSQL database and relays them to a new topic; scripts/kafka_check.py (kafka-python,
# installed once into the tool cache) checks the key, headers, CloudEvents attributes and JSON
# of every message, and that it got as many as were published.
check_topic="outbox-e2e-check-$(date +%s)-$$"
# Its last line of output is the count (test logs may come before it).
published="$(cargo run --quiet -p outbox-tests --bin kafka_seed -- "$OUTBOX_TEST_KAFKA_BROKERS" "$check_topic" | tail -n 1)"
python3 scripts/kafka_check.py "$check_topic" --brokers "$OUTBOX_TEST_KAFKA_BROKERS" --expect "$published"

# The log relay tests leave their replication slots (each test drops its own at its next run):
# drop the inactive ones, since a slot nobody reads keeps write-ahead log without bound.
psql -h 127.0.0.1 -U postgres -d postgres -qtAc \
  "SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots \
   WHERE NOT active AND slot_name LIKE 'obx\_%'" >/dev/null

# The RabbitMQ tests name their queues per run (`rb-<what>-<uuid>…`) and leave some of them, dead-letter
# queues mostly; delete those left idle so repeated runs on one broker do not pile up messages.
if command -v rabbitmqctl >/dev/null 2>&1; then
  rabbitmqctl -q list_queues name consumers 2>/dev/null | awk '$1 ~ /^rb-/ && $2 == 0 {print $1}' |
    while read -r queue; do rabbitmqctl -q delete_queue "$queue" </dev/null >/dev/null 2>&1 || true; done
fi
