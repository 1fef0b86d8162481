#!/usr/bin/env bash
# `make demo TARGET=webhook`: the main job against the test webhook receiver
# (tests/src/bin/webhook_receiver.rs), which verifies every request's
# Standard Webhooks signature with its own implementation. A throwaway
# cluster with the extension, the receiver, and the worker sending a table's
# changes (only the shareable rows) as signed events: the first sync, edits,
# a 410 Gone that disables the target without losing anything, and what
# arrived next to the table. Everything it starts is stopped on exit,
# whether it succeeded or not.
set -euo pipefail
SCRIPT_NAME=demo
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

"$ROOT/scripts/setup.sh" >/dev/null
log "building the worker, the webhook receiver and the extension"
cargo build --quiet -p syncbridge-worker -p syncbridge-tests --bin syncbridge-worker --bin webhook-receiver
install_ext

dir=$(mktemp -d "${TMPDIR:-/tmp}/syncbridge-demo-XXXXXX")
chmod 0755 "$dir"
RCV_PID=
cleanup() {
  if [ -n "$RCV_PID" ]; then kill "$RCV_PID" 2>/dev/null || true; wait "$RCV_PID" 2>/dev/null || true; fi
  pg_stop "$dir/pg"; rm -rf "$dir"
}
trap cleanup EXIT
demo_cluster "$dir"

# A fresh whsec_ secret (24 random bytes). It reaches the worker through its
# environment only, never a table, and the receiver on its command line.
secret="whsec_$(python3 -c 'import base64, os; print(base64.b64encode(os.urandom(24)).decode())')"
export SYNCBRIDGE_SECRET_WEBHOOK=$secret
"$ROOT/target/debug/webhook-receiver" --secret "$secret" --port-file "$dir/rcv.port" >"$dir/rcv.log" 2>&1 &
RCV_PID=$!
for _ in $(seq 100); do [ -s "$dir/rcv.port" ] && break; sleep 0.1; done
[ -s "$dir/rcv.port" ] || { log "the webhook receiver did not start:"; cat "$dir/rcv.log" >&2; exit 1; }
rcv="http://127.0.0.1:$(cat "$dir/rcv.port")"
log "webhook receiver on $rcv/hooks"

# What arrived: every verified delivery in order, its events (a batch's
# each), and the requests the receiver refused (none, or this is a bug).
arrived() {
  echo; echo "== what the receiver got (each request verified: signature and timestamp)"
  python3 - "$rcv/_emulator/deliveries" <<'PY'
import json, sys, urllib.request
d = json.load(urllib.request.urlopen(sys.argv[1]))
print(f"{'webhook-id':<24} {'type':<18} {'key':<10} fields / previous")
for delivery in d["deliveries"]:
    body = delivery["body"]
    for e in body if isinstance(body, list) else [body]:
        data = e["data"]
        key = ",".join(f"{v}" for v in (data.get("key") or {}).values())
        shown = json.dumps(data.get("fields"), ensure_ascii=False) if "fields" in data else "-"
        if data.get("previous"):
            shown += "  (was " + json.dumps(data["previous"], ensure_ascii=False) + ")"
        print(f"{delivery['id']:<24} {e['type']:<18} {key:<10} {shown[:100]}")
print(f"({len(d['deliveries'])} delivered, {d['attempts']} requests, {d['duplicates']} duplicates, "
      f"{len(d['rejected'])} refused as unverified)")
if d["rejected"]:
    sys.exit("the receiver could not verify a request: " + json.dumps(d["rejected"]))
PY
}

demo_show "a table of people; only the shareable rows may leave" <<'SQL'
CREATE EXTENSION syncbridge;
CREATE TABLE people (id int PRIMARY KEY, name text NOT NULL, team text, email text, shareable boolean NOT NULL DEFAULT true);
INSERT INTO people VALUES
  (1, 'Ada Lovelace', 'engines', 'ada@example.com', true),
  (2, 'Grace Hopper', 'compilers', 'grace@example.com', true),
  (3, 'Alan Turing', 'codes', 'alan@example.com', false),
  (4, 'Émilie du Châtelet', 'physics', NULL, true);
SELECT * FROM people ORDER BY id;
SQL

demo_show "a webhook target (the secret by reference), a definition with a row filter" <<SQL
\set ECHO queries
\o /dev/null
SELECT sync.create_target('hooks', kind => 'webhook', config => '{"url": "$rcv/hooks", "concurrency": 4}',
                          secret => 'env:SYNCBRIDGE_SECRET_WEBHOOK');
SELECT sync.define('people', source => 'people', target => 'hooks', list => 'directory', row_filter => 'shareable');
SELECT sync.enable('people');
SQL

echo; echo "== syncbridge-worker run --once  (slot, initial load: one people.created event a row)"
demo_worker run --once
arrived

demo_show "changes: Ada changes team, Grace leaves, Émilie gets an e-mail twice (one event: state, not statements), a new person" <<'SQL'
UPDATE people SET team = 'analytical engines' WHERE id = 1;
DELETE FROM people WHERE id = 2;
UPDATE people SET email = 'emilie@old.example.com' WHERE id = 4;
UPDATE people SET email = 'emilie@example.com' WHERE id = 4;
INSERT INTO people VALUES (5, 'Hedy Lamarr', 'radio', 'hedy@example.com', true);
SQL
echo; echo "== syncbridge-worker run --once"
demo_worker run --once
arrived

echo; echo "== the receiver answers 410 Gone: the target is disabled, nothing is dropped"
python3 -c "import urllib.request,sys; urllib.request.urlopen(urllib.request.Request(sys.argv[1], data=b'{\"default_status\": 410}', method='POST', headers={'content-type': 'application/json'}))" "$rcv/_emulator/config"
"${psql[@]}" -q -c "INSERT INTO people VALUES (6, 'Katherine Johnson', 'orbits', 'katherine@example.com', true)"
demo_worker run --once
demo_show "the target's status, and the queue that waits" <<'SQL'
SELECT name, status, status_detail, disabled_at IS NOT NULL AS disabled FROM sync.targets;
SELECT definition, target_status, pending, failed, error FROM sync.status;
SQL
python3 -c "import urllib.request,sys; urllib.request.urlopen(urllib.request.Request(sys.argv[1], data=b'{\"default_status\": 204}', method='POST', headers={'content-type': 'application/json'}))" "$rcv/_emulator/config"
demo_show "the receiver is back: SELECT sync.enable_target('hooks')" -c "SELECT sync.enable_target('hooks')"
demo_worker run --once
arrived

demo_show "the table, next to what arrived (each item's creating event, from sync.ledger)" <<'SQL'
SELECT p.id, p.name, p.team, p.email, p.shareable, l.target_id AS created_by_event
  FROM people p LEFT JOIN sync.ledger l ON l.sync_key = p.id::text ORDER BY p.id;
SELECT definition, state, items, exported, pending, failed, error, target_status FROM sync.status;
SQL
echo
if python3 -c "import urllib.request,sys; print(urllib.request.urlopen(sys.argv[1]).read().decode())" "$rcv/_emulator/deliveries" | grep -q "alan@example.com"; then
  log "person 3 (not shareable) reached the receiver: this is a bug"; exit 1
fi
log "person 3 never left the database; done, stopping the receiver and the cluster"
