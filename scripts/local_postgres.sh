#!/usr/bin/env bash
# A PostgreSQL server on localhost for sweeps that share an Optuna study through a database
# (hparams_search.storage=postgresql://...; tests/track/test_optuna_postgres.py, run by .ci/run).
#
#   scripts/local_postgres.sh start    # install Debian's postgresql if needed, start it, add the role
#   scripts/local_postgres.sh stop     # stop the server
#   scripts/local_postgres.sh status
#
# The role segexp (password segexp, may create databases) is what the tests use:
# postgresql://segexp:segexp@localhost:5432/postgres. A local test server, not a secret.
# Needs root (apt-get, the service); elsewhere it exits non-zero with the reason.
set -euo pipefail

ROLE=segexp
say() { echo "[local_postgres] $*"; }
die() { echo "[local_postgres] ERROR: $*" >&2; exit 1; }
as_postgres() { su postgres -c "$1"; }

start() {
  [[ $(id -u) -eq 0 ]] || die "needs root (apt-get, service)"
  if ! command -v pg_lsclusters >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || die "no apt-get to install postgresql"
    say "installing postgresql"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  service postgresql start >/dev/null
  for _ in $(seq 30); do
    as_postgres "psql -qtAc 'SELECT 1'" >/dev/null 2>&1 && break
    sleep 1
  done
  if ! as_postgres "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'\"" | grep -q 1; then
    as_postgres "psql -qc \"CREATE ROLE $ROLE LOGIN PASSWORD '$ROLE' CREATEDB\""
  fi
  say "running: postgresql://$ROLE:$ROLE@localhost:5432/postgres"
}

case "${1:-}" in
  start) start ;;
  stop) service postgresql stop ;;
  status) pg_lsclusters ;;
  *) die "usage: $0 start|stop|status" ;;
esac
