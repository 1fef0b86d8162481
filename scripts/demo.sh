#!/usr/bin/env bash
# `make demo`: the main job on the embedded default. A throwaway cluster,
# the extension installed, and what the worker's `check` reports.
# Everything it starts is stopped on exit, whether it succeeded or not.
set -euo pipefail
SCRIPT_NAME=demo
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

"$ROOT/scripts/setup.sh" >/dev/null
log "building the worker and the extension"
cargo build --quiet -p syncbridge-worker
install_ext

dir=$(mktemp -d "${TMPDIR:-/tmp}/syncbridge-demo-XXXXXX")
chmod 0755 "$dir"
cleanup() { pg_stop "$dir/pg"; rm -rf "$dir"; }
trap cleanup EXIT
port=$(free_port)
log "starting a throwaway cluster on 127.0.0.1:$port"
pg_start "$dir/pg" "$port"
psql=("$PG_BIN/psql" -X -h 127.0.0.1 -p "$port" -U postgres)
"${psql[@]}" -q -d postgres -c "CREATE DATABASE demo"
dsn="host=127.0.0.1 port=$port user=postgres dbname=demo"

echo
echo "== CREATE EXTENSION syncbridge; SELECT sync.version();"
"${psql[@]}" -q -d demo -c "CREATE EXTENSION syncbridge" -c "SELECT sync.version()"

echo "== syncbridge-worker check --dsn '$dsn'"
"$ROOT/target/debug/syncbridge-worker" check --dsn "$dsn"
echo
log "done; stopping the cluster"
