#!/usr/bin/env bash
# Runs the isolation specs in sql/isolation (the races of the export queue:
# isolationtester sessions, steps and permutations) against a throwaway cluster.
#   scripts/isolation.sh                 run the schedule; differences go to sql/isolation/regression.diffs
#   scripts/isolation.sh --accept        run it and take the new output as expected (review the diff!)
#   scripts/isolation.sh [--accept] SPEC...   run these specs (names in sql/isolation/specs) instead
set -euo pipefail
accept=
specs=()
for a in "$@"; do
  case $a in
    --accept) accept=--accept ;;
    -*) echo "usage: $0 [--accept] [spec ...]" >&2; exit 2 ;;
    *) specs+=("$a") ;;
  esac
done
SCRIPT_NAME=isolation
source "$(dirname "$0")/lib.sh"

# pg_isolation_regress and isolationtester sit next to the PGXS makefiles
# (package postgresql-client-$PG_MAJOR on Debian, a dependency of postgresql-$PG_MAJOR).
pgxs=$($PG_CONFIG --pgxs)
isolation_regress="$(dirname "$pgxs")/../test/isolation/pg_isolation_regress"
if [ ! -x "$isolation_regress" ]; then
  log "pg_isolation_regress not found at $isolation_regress (it comes with postgresql-client-$PG_MAJOR: make setup)"
  exit 1
fi

dir=$(mktemp -d "${TMPDIR:-/tmp}/syncbridge-isolation-XXXXXX")
chmod 0755 "$dir"
trap 'pg_stop "$dir/pg"; rm -rf "$dir"' EXIT
port=$(free_port)
pg_start "$dir/pg" "$port"

suite="$ROOT/sql/isolation"
out="$dir/out"; mkdir -p "$out"
names=("${specs[@]}")
if [ ${#specs[@]} -eq 0 ]; then
  specs=(--schedule="$suite/schedule")
  mapfile -t names < <(sed -n 's/^test: *//p' "$suite/schedule" | tr ' ' '\n')
fi
if [ "$accept" = --accept ]; then
  # a new spec has no expected output yet (pg_isolation_regress stops at a missing one)
  for n in "${names[@]}"; do [ -e "$suite/expected/$n.out" ] || : >"$suite/expected/$n.out"; done
fi
# A step still blocked after this long is cancelled (and fails its spec):
# no step here waits but for another step of its permutation.
export PGISOLATIONTIMEOUT=${PGISOLATIONTIMEOUT:-60}
if ! "$isolation_regress" --bindir="$PG_BIN" --host=127.0.0.1 --port="$port" --user=postgres \
     --inputdir="$suite" --outputdir="$out" --dbname=syncbridge_isolation \
     --load-extension=syncbridge "${specs[@]}"; then
  if [ "$accept" = --accept ]; then
    cp "$out"/results/*.out "$suite/expected/"
    log "accepted the new output into sql/isolation/expected (review it with git diff)"
    exit 0
  fi
  cp "$out/regression.diffs" "$suite/regression.diffs" 2>/dev/null || true
  log "pg_isolation_regress failed; differences in sql/isolation/regression.diffs"
  cat "$out/regression.diffs" >&2 || true
  exit 1
fi
rm -f "$suite/regression.diffs"
