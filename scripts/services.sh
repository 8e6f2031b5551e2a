#!/usr/bin/env bash
# Makes sure the databases the tests use answer on loopback, starting them if they are installed
# but stopped. Idempotent. Prints what it did; exits non-zero only if a service stays unreachable.
set -uo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  for _ in $(seq 1 100); do
    port_open "$1" && return 0
    sleep 0.2
  done
  return 1
}

status=0

if port_open 5432; then
  echo "services: PostgreSQL answers on 127.0.0.1:5432"
else
  echo "services: starting PostgreSQL"
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
  wait_port 5432 || { echo "services: PostgreSQL is not reachable on 127.0.0.1:5432" >&2; status=1; }
fi

if port_open 3306; then
  echo "services: MariaDB answers on 127.0.0.1:3306"
else
  echo "services: starting MariaDB"
  if [ -x /usr/sbin/mariadbd ]; then
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
  fi
  wait_port 3306 || { echo "services: MariaDB is not reachable on 127.0.0.1:3306" >&2; status=1; }
fi

# The tests create one database per test; make sure the entry databases exist.
if port_open 5432 && command -v psql >/dev/null 2>&1; then
  psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='test'" | grep -q 1 \
    || psql -h 127.0.0.1 -U postgres -d postgres -c "CREATE DATABASE test" >/dev/null || true
fi
if port_open 3306 && command -v mariadb >/dev/null 2>&1; then
  mariadb -h 127.0.0.1 -uroot -e "CREATE DATABASE IF NOT EXISTS test" || true
fi

exit $status
