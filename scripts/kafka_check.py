#!/usr/bin/env python3
"""An independent check of the messages the outbox relay puts on Kafka.

Reads one topic from the beginning with kafka-python (a pure-Python client that shares no
code with librdkafka), produces nothing, and checks every message:

* key = the `aggregate_id` header;
* the documented headers: event_id (a UUID), event_name, event_version (an integer),
  aggregate_type, aggregate_id, sequence (an integer >= 1), occurred_at, content-type =
  application/json;
* CloudEvents binary mode: ce_specversion = 1.0, ce_id = event_id, ce_type = event_name,
  ce_source (non-empty), ce_time = occurred_at (RFC 3339), ce_subject = aggregate_id;
* the payload is valid JSON;
* per aggregate, sequences grow in offset order and all sit in one partition.

Prints "kafka_check: read N messages from TOPIC" then "kafka_check: N passed, 0 failed", and exits 1 when a message fails (or when
fewer than --expect messages were read), 2 on bad usage.

    scripts/kafka_check.py TOPIC [--brokers 127.0.0.1:9092] [--expect N] [--timeout 20]

Run with any python3: it installs kafka-python (pinned) into a virtual environment under the
tool cache ($OUTBOX_TOOLS, default ~/.cache/outbox-tools, in pyenv/) the first time, then
re-executes itself there.
"""

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import datetime

KAFKA_PYTHON = "3.0.12"
TOOLS = os.environ.get("OUTBOX_TOOLS") or os.path.expanduser("~/.cache/outbox-tools")
VENV = os.path.join(TOOLS, "pyenv")
VENV_PYTHON = os.path.join(VENV, "bin", "python")


def ensure_client():
    """Re-executes in the tool-cache venv, creating it first when kafka-python is missing."""
    if os.path.realpath(sys.prefix) == os.path.realpath(VENV):
        try:
            import kafka  # noqa: F401

            if kafka.__version__ == KAFKA_PYTHON:
                return
        except ImportError:
            pass
    if not os.path.exists(VENV_PYTHON):
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    probe = subprocess.run(
        [VENV_PYTHON, "-c", "import kafka; print(kafka.__version__)"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0 or probe.stdout.strip() != KAFKA_PYTHON:
        print(f"kafka_check: installing kafka-python {KAFKA_PYTHON} into {VENV}", file=sys.stderr)
        subprocess.run(
            [VENV_PYTHON, "-m", "pip", "install", "--quiet", f"kafka-python=={KAFKA_PYTHON}"],
            check=True,
        )
    os.execv(VENV_PYTHON, [VENV_PYTHON, os.path.abspath(__file__), *sys.argv[1:]])


REQUIRED = [
    "event_id",
    "event_name",
    "event_version",
    "aggregate_type",
    "aggregate_id",
    "sequence",
    "occurred_at",
    "content-type",
    "ce_specversion",
    "ce_id",
    "ce_type",
    "ce_source",
    "ce_time",
    "ce_subject",
]


def rfc3339(value):
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return "T" in value


def problems(message):
    """What is wrong with one message (an empty list when nothing is)."""
    out = []
    headers = {}
    for key, value in message.headers or []:
        if key in headers:
            out.append(f"header {key} appears twice")
        try:
            headers[key] = value.decode("utf-8") if value is not None else ""
        except UnicodeDecodeError:
            out.append(f"header {key} is not UTF-8")
            headers[key] = ""
    missing = [h for h in REQUIRED if h not in headers]
    if missing:
        out.append(f"missing headers: {', '.join(missing)}")
        return out, headers
    key = message.key.decode("utf-8", "replace") if message.key is not None else None
    if key != headers["aggregate_id"]:
        out.append(f"key {key!r} is not the aggregate id {headers['aggregate_id']!r}")
    try:
        uuid.UUID(headers["event_id"])
    except ValueError:
        out.append(f"event_id {headers['event_id']!r} is not a UUID")
    if not headers["event_version"].isdigit():
        out.append(f"event_version {headers['event_version']!r} is not an integer")
    if not headers["sequence"].isdigit() or int(headers["sequence"]) < 1:
        out.append(f"sequence {headers['sequence']!r} is not a positive integer")
    if headers["content-type"] != "application/json":
        out.append(f"content-type is {headers['content-type']!r}")
    for ce, plain in [
        ("ce_id", "event_id"),
        ("ce_type", "event_name"),
        ("ce_subject", "aggregate_id"),
        ("ce_time", "occurred_at"),
    ]:
        if headers[ce] != headers[plain]:
            out.append(f"{ce} {headers[ce]!r} differs from {plain} {headers[plain]!r}")
    if headers["ce_specversion"] != "1.0":
        out.append(f"ce_specversion is {headers['ce_specversion']!r}, not 1.0")
    if not headers["ce_source"]:
        out.append("ce_source is empty")
    if not rfc3339(headers["ce_time"]):
        out.append(f"ce_time {headers['ce_time']!r} is not RFC 3339")
    if "ce_sequence" in headers and headers["ce_sequence"] != headers["sequence"]:
        out.append("ce_sequence differs from sequence")
    if not headers["event_name"] or not headers["aggregate_type"] or not headers["aggregate_id"]:
        out.append("an empty event name, aggregate type or aggregate id")
    try:
        json.loads((message.value or b"").decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        out.append(f"payload is not JSON: {e}")
    return out, headers


def read_all(brokers, topic, expect, timeout):
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=brokers.split(","),
        group_id=None,
        enable_auto_commit=False,
        client_id="outbox-kafka-check",
    )
    try:
        deadline = time.monotonic() + timeout
        partitions = None
        while time.monotonic() < deadline:
            partitions = consumer.partitions_for_topic(topic)
            if partitions:
                break
            time.sleep(0.2)
        if not partitions:
            raise SystemExit(f"kafka_check: topic {topic} not found on {brokers}")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        # A lower bound only: tansu 0.6.0 answers ListOffsets(latest) with the last batch's base
        # offset + 1, not the last record's, so --expect is what makes the reader wait for all.
        end = consumer.end_offsets(tps)
        messages = []
        while time.monotonic() < deadline:
            done = all(consumer.position(tp) >= end[tp] for tp in tps)
            if done and len(messages) >= expect:
                break
            for batch in consumer.poll(timeout_ms=200).values():
                messages.extend(batch)
        return messages, sum(end.values())
    finally:
        consumer.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("topic")
    parser.add_argument("--brokers", default=os.environ.get("OUTBOX_TEST_KAFKA_BROKERS") or "127.0.0.1:9092")
    parser.add_argument("--expect", type=int, default=1, help="at least this many messages (default 1)")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds to read for")
    args = parser.parse_args()
    ensure_client()

    messages, end = read_all(args.brokers, args.topic, args.expect, args.timeout)
    failed = 0
    last = {}  # aggregate id -> (partition, sequence)
    for m in sorted(messages, key=lambda m: (m.partition, m.offset)):
        errors, headers = problems(m)
        aggregate = headers.get("aggregate_id")
        sequence = headers.get("sequence", "")
        if not errors and aggregate is not None and sequence.isdigit():
            seq = int(sequence)
            if aggregate in last:
                partition, previous = last[aggregate]
                if partition != m.partition:
                    errors.append(f"aggregate {aggregate} in partitions {partition} and {m.partition}")
                elif seq < previous:
                    errors.append(f"aggregate {aggregate}: sequence {seq} after {previous}")
            last[aggregate] = (m.partition, seq)
        if errors:
            failed += 1
            print(f"kafka_check: {m.topic}/{m.partition}@{m.offset}: {'; '.join(errors)}", file=sys.stderr)
    total = len(messages)
    # The last line is in the plain "N passed, N failed" form test runners are read by.
    print(f"kafka_check: read {total} messages from {args.topic}")
    print(f"kafka_check: {total - failed} passed, {failed} failed", flush=True)
    if total < args.expect or total < end:
        print(
            f"kafka_check: read {total} messages, expected at least {max(args.expect, end)}",
            file=sys.stderr,
        )
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
