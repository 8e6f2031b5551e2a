#!/usr/bin/env bash
# Installs (once, cached) and starts the tansu Kafka-protocol broker on loopback.
#
#   scripts/tansu.sh install   build tansu into the tool cache if it is not there yet
#   scripts/tansu.sh start     install if needed, start on 127.0.0.1:9092 unless already up
#   scripts/tansu.sh stop      stop the broker started by this script
#
# The cache lives in $OUTBOX_TOOLS (default ~/.cache/outbox-tools); the build takes minutes
# the first time and nothing afterwards.
set -euo pipefail

TANSU_VERSION=0.6.0
TOOLS="${OUTBOX_TOOLS:-$HOME/.cache/outbox-tools}"
BIN="$TOOLS/bin/tansu"
PORT="${TANSU_PORT:-9092}"
PIDFILE="$TOOLS/tansu.pid"
LOG="$TOOLS/tansu.log"

installed() {
  [ -x "$BIN" ] && "$BIN" --version 2>/dev/null | grep -q "$TANSU_VERSION"
}

install() {
  if installed; then
    return 0
  fi
  mkdir -p "$TOOLS"
  echo "tansu: building $TANSU_VERSION into $TOOLS (one time, several minutes)" >&2
  CARGO_TARGET_DIR="$TOOLS/target" cargo install --quiet --root "$TOOLS" --locked \
    --features dynostore --version "$TANSU_VERSION" tansu
  rm -rf "$TOOLS/target"
}

up() {
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null
}

start() {
  install
  if up; then
    echo "tansu: already listening on 127.0.0.1:$PORT" >&2
    return 0
  fi
  nohup "$BIN" broker \
    --listener-url "tcp://127.0.0.1:$PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$PORT" \
    --storage-engine memory://tansu/ >"$LOG" 2>&1 &
  echo $! >"$PIDFILE"
  for _ in $(seq 1 100); do
    if up; then
      echo "tansu: listening on 127.0.0.1:$PORT (pid $(cat "$PIDFILE"), log $LOG)" >&2
      return 0
    fi
    sleep 0.1
  done
  echo "tansu: did not start; see $LOG" >&2
  tail -n 20 "$LOG" >&2 || true
  return 1
}

stop() {
  if [ -f "$PIDFILE" ]; then
    kill "$(cat "$PIDFILE")" 2>/dev/null || true
    rm -f "$PIDFILE"
  fi
}

case "${1:-start}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 install|start|stop" >&2; exit 2 ;;
esac
