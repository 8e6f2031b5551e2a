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

# The log relay reads PostgreSQL's write-ahead log through a logical replication slot: that needs
# wal_level=logical, which takes a restart. Done once (ALTER SYSTEM persists it); later runs see
# it set and do nothing. The tests make a slot each, so allow more than the default 10.
pg_setting() { psql -h 127.0.0.1 -U postgres -d postgres -tAc "SHOW $1" 2>/dev/null; }
if port_open 5432 && command -v psql >/dev/null 2>&1; then
  if [ "$(pg_setting wal_level)" != "logical" ] || [ "$(pg_setting max_replication_slots)" -lt 64 ] 2>/dev/null; then
    echo "services: setting wal_level=logical on PostgreSQL (restart)"
    psql -h 127.0.0.1 -U postgres -d postgres -qc "ALTER SYSTEM SET wal_level = logical" \
      -c "ALTER SYSTEM SET max_replication_slots = 64" -c "ALTER SYSTEM SET max_wal_senders = 64" || status=1
    if command -v pg_ctlcluster >/dev/null 2>&1; then
      pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main restart || status=1
    else
      echo "services: no pg_ctlcluster; restart PostgreSQL yourself for wal_level=logical" >&2
      status=1
    fi
    wait_port 5432 || { echo "services: PostgreSQL did not come back after the restart" >&2; status=1; }
    for _ in $(seq 1 50); do
      [ "$(pg_setting wal_level)" = "logical" ] && break
      sleep 0.2
    done
  fi
  if [ "$(pg_setting wal_level)" = "logical" ]; then
    echo "services: PostgreSQL has wal_level=logical"
  else
    echo "services: PostgreSQL wal_level is not logical" >&2
    status=1
  fi
fi

# The tests create one database per test; make sure the entry databases exist.
if port_open 5432 && command -v psql >/dev/null 2>&1; then
  psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='test'" | grep -q 1 \
    || psql -h 127.0.0.1 -U postgres -d postgres -c "CREATE DATABASE test" >/dev/null || true
fi
if port_open 3306 && command -v mariadb >/dev/null 2>&1; then
  mariadb -h 127.0.0.1 -uroot -e "CREATE DATABASE IF NOT EXISTS test" || true
fi

# RabbitMQ (the outbox-rabbitmq tests): the server runs on every machine of this project. Its
# consistent-hash exchange plugin (ExchangeType::ConsistentHashOnAggregateId) is enabled online,
# without a restart; enabling an enabled plugin does nothing.
if port_open 5672; then
  echo "services: RabbitMQ answers on 127.0.0.1:5672"
  if command -v rabbitmq-plugins >/dev/null 2>&1; then
    if ! rabbitmq-plugins list -e -m 2>/dev/null | grep -qx rabbitmq_consistent_hash_exchange; then
      echo "services: enabling RabbitMQ plugin rabbitmq_consistent_hash_exchange"
      rabbitmq-plugins enable rabbitmq_consistent_hash_exchange >/dev/null || status=1
    fi
  else
    echo "services: no rabbitmq-plugins; the consistent-hash exchange test needs rabbitmq_consistent_hash_exchange" >&2
  fi
else
  echo "services: RabbitMQ is not reachable on 127.0.0.1:5672" >&2
  status=1
fi

exit $status
