#!/usr/bin/env bash
# `make bench`: every benchmark scenario, figures to bench/results/latest.json.
set -euo pipefail
SCRIPT_NAME=bench
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
"$ROOT/scripts/setup.sh" >/dev/null
cargo run --release --quiet -p syncbridge-bench -- "$@"
