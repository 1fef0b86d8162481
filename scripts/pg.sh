#!/usr/bin/env bash
# A developer cluster kept under .dev/pg (ignored by git):
#   scripts/pg.sh start | stop | psql [args] | dsn
set -euo pipefail
SCRIPT_NAME=pg
source "$(dirname "$0")/lib.sh"
dir="$ROOT/.dev/pg"
port_file="$ROOT/.dev/pg.port"
case "${1:-}" in
  start)
    mkdir -p "$ROOT/.dev"; chmod 0755 "$ROOT/.dev"
    [ -f "$port_file" ] || free_port > "$port_file"
    if [ -f "$dir/data/postmaster.pid" ] && as_pg "$PG_BIN/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
      log "already running on port $(cat "$port_file")"; exit 0
    fi
    pg_start "$dir" "$(cat "$port_file")"
    "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$(cat "$port_file")" -U postgres -d postgres \
      -c "SELECT 1 FROM pg_database WHERE datname = 'syncbridge'" -t | grep -q 1 || \
      "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$(cat "$port_file")" -U postgres -d postgres -c "CREATE DATABASE syncbridge"
    log "running on 127.0.0.1:$(cat "$port_file") (database syncbridge); make psql to connect"
    ;;
  stop) pg_stop "$dir"; log "stopped" ;;
  psql) shift; exec "$PG_BIN/psql" -X -h 127.0.0.1 -p "$(cat "$port_file")" -U postgres -d syncbridge "$@" ;;
  dsn) echo "host=127.0.0.1 port=$(cat "$port_file") user=postgres dbname=syncbridge" ;;
  *) echo "usage: $0 start|stop|psql|dsn" >&2; exit 2 ;;
esac
