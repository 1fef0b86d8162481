#!/usr/bin/env bash
# Runs the pg_regress suite in sql/regress against a throwaway cluster.
#   scripts/regress.sh            run it; differences go to sql/regress/regression.diffs
#   scripts/regress.sh --accept   run it and take the new output as expected (review the diff!)
set -euo pipefail
accept=${1:-}
SCRIPT_NAME=regress
source "$(dirname "$0")/lib.sh"

dir=$(mktemp -d "${TMPDIR:-/tmp}/syncbridge-regress-XXXXXX")
chmod 0755 "$dir"
trap 'pg_stop "$dir/pg"; rm -rf "$dir"' EXIT
port=$(free_port)
pg_start "$dir/pg" "$port"

suite="$ROOT/sql/regress"
out="$dir/out"; mkdir -p "$out"
schedule=$(sed -n 's/^test: *//p' "$suite/schedule" | tr '\n' ' ')
pg_regress="$($PG_CONFIG --pkglibdir)/pgxs/src/test/regress/pg_regress"
if ! "$pg_regress" --bindir="$PG_BIN" --host=127.0.0.1 --port="$port" --user=postgres \
     --inputdir="$suite" --outputdir="$out" --dbname=syncbridge_regress $schedule; then
  if [ "$accept" = --accept ]; then
    cp "$out"/results/*.out "$suite/expected/"
    log "accepted the new output into sql/regress/expected (review it with git diff)"
    exit 0
  fi
  cp "$out/regression.diffs" "$suite/regression.diffs" 2>/dev/null || true
  log "pg_regress failed; differences in sql/regress/regression.diffs"
  cat "$out/regression.diffs" >&2 || true
  exit 1
fi
rm -f "$suite/regression.diffs"
