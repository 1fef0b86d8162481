#!/usr/bin/env bash
# `make demo TARGET=github|jira|linear`: the main job against an issue
# tracker's emulator. A throwaway cluster with the extension, the tracker's
# emulator (tests/src/bin/tracker_emulator.rs) and the worker syncing a table
# of tickets, only the shareable ones, into issues: the plan priced in the
# kind's unit, the first sync, edits (a state, labels, a ticket that stops
# being shareable, a new one, a delete), and the issues next to the table.
# Everything it starts is stopped on exit, whether it succeeded or not.
set -euo pipefail
SCRIPT_NAME=demo
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
kind=${1:?usage: demo-tracker.sh github|jira|linear}

# The kind's names: its secret, its container (the definition's list), the
# target's configuration and the fields a ticket maps to, its states.
case $kind in
  github) secret_var=SYNCBRIDGE_SECRET_GITHUB; list=tickets
          config='{"owner": "acme", "base_url": "%s"}'
          title=title body=body state=state labels=labels open=open done=closed ;;
  jira)   secret_var=SYNCBRIDGE_SECRET_JIRA; list=SB
          config='{"site": "acme.atlassian.net", "project_key": "SB", "email": "bot@example.com", "base_url": "%s"}'
          title=summary body=description state=status labels=labels open='To Do' done=Done ;;
  linear) secret_var=SYNCBRIDGE_SECRET_LINEAR; list=ENG
          config='{"team_id": "ENG", "base_url": "%s"}'
          title=title body=description state=state labels=labels open=Todo done=Done ;;
  *) log "unknown TARGET $kind: graph (the default), github, jira or linear"; exit 2 ;;
esac

"$ROOT/scripts/setup.sh" >/dev/null
log "building the worker, the $kind emulator and the extension"
cargo build --quiet -p syncbridge-worker -p syncbridge-tests --bin syncbridge-worker --bin tracker-emulator
install_ext

dir=$(mktemp -d "${TMPDIR:-/tmp}/syncbridge-demo-XXXXXX")
chmod 0755 "$dir"
EMU_PID=
cleanup() {
  if [ -n "$EMU_PID" ]; then kill "$EMU_PID" 2>/dev/null || true; wait "$EMU_PID" 2>/dev/null || true; fi
  pg_stop "$dir/pg"; rm -rf "$dir"
}
trap cleanup EXIT
demo_cluster "$dir"

# The credential reaches the worker through its environment only, never a
# table (the worker reads secrets only from variables named SYNCBRIDGE_SECRET_*).
export "$secret_var=demo-$kind-credential"
"$ROOT/target/debug/tracker-emulator" "$kind" --secret "demo-$kind-credential" --port-file "$dir/emu.port" >"$dir/emu.log" 2>&1 &
EMU_PID=$!
for _ in $(seq 100); do [ -s "$dir/emu.port" ] && break; sleep 0.1; done
[ -s "$dir/emu.port" ] || { log "the $kind emulator did not start:"; cat "$dir/emu.log" >&2; exit 1; }
emu="http://127.0.0.1:$(cat "$dir/emu.port")"
api=$emu; [ "$kind" = linear ] && api="$emu/graphql"
log "$kind emulator on $emu"

# The issues as the emulator holds them (GET /_emulator/issues), one a line.
issues() {
  echo; echo "== the issues in the $kind emulator (what a person sees in the tracker)"
  python3 - "$kind" "$emu/_emulator/issues" <<'PY'
import json, sys, urllib.request
kind, url = sys.argv[1], sys.argv[2]
data = json.load(urllib.request.urlopen(url))
rows = []
if kind == "github":
    for repo, issues in data.items():
        for i in issues:
            if i.get("pull_request"):
                continue
            body = (i.get("body") or "").split("<!--")[0].strip()
            rows.append((f"{repo}#{i['number']}", i["state"] + ("/" + i["state_reason"] if i.get("state_reason") else ""),
                         i["title"], ",".join(l for l in i["labels"] if l != "syncbridge"), body))
elif kind == "jira":
    def text(n):
        # Atlassian Document Format: the text of its nodes, blocks apart
        if isinstance(n, dict):
            inner = "".join(text(c) for c in n.get("content", []))
            return n.get("text", "") + (inner + " " if n.get("type") != "text" and n.get("content") else inner)
        return ""
    for i in sorted(data, key=lambda i: int(i["id"])):
        f = i["fields"]
        rows.append((i["key"], (f.get("status") or {}).get("name", ""), f.get("summary", ""),
                     ",".join(l for l in f.get("labels", []) if not l.startswith("sb-")), text(f.get("description"))))
else:
    for i in data:
        if i.get("trashed"):
            state = "(in the trash)"
        else:
            state = (i.get("state") or {}).get("name", "")
        labels = ",".join(l["name"] for l in (i.get("labels") or {}).get("nodes", []))
        rows.append((i["identifier"], state, i["title"], labels, i.get("description") or ""))
print(f"{'issue':<12} {'state':<19} {'title':<34} {'labels':<16} body")
for r in rows:
    body = " ".join(r[4].split())
    print(f"{r[0]:<12} {r[1]:<19} {r[2][:34]:<34} {r[3][:16]:<16} {body[:60]}")
print(f"({len(rows)} issues)")
PY
}

demo_show "a table of tickets; only the shareable ones may leave" <<SQL
CREATE EXTENSION syncbridge;
CREATE TABLE tickets (id int PRIMARY KEY, title text NOT NULL, body text, status text NOT NULL DEFAULT '$open',
                      tags text[] NOT NULL DEFAULT '{}', shareable boolean NOT NULL DEFAULT true);
INSERT INTO tickets VALUES
  (1, 'Login fails on Safari', E'Steps:\n\n- open the login page\n- type a password with é', '$open', '{bug,web}', true),
  (2, 'Add a dark mode', 'Most of you asked for it.', '$open', '{feature}', true),
  (3, 'Rotate the production database password', 'internal: the old one is in the runbook', '$open', '{ops}', false),
  (4, 'Crash when exporting to CSV', NULL, '$open', '{bug}', true);
SELECT * FROM tickets ORDER BY id;
SQL

# shellcheck disable=SC2059
target_config=$(printf "$config" "$api")
demo_show "a $kind target, a definition whose row filter keeps the shareable tickets" <<SQL
\set ECHO queries
\o /dev/null
SELECT sync.create_target('tracker', kind => '$kind', config => '$target_config', secret => 'env:$secret_var');
SELECT sync.define('tickets_$kind', source => 'tickets', target => 'tracker', list => '$list', row_filter => 'shareable');
SELECT sync.map('tickets_$kind', 'title', '$title');
SELECT sync.map('tickets_$kind', 'body', '$body');
SELECT sync.map('tickets_$kind', 'status', '$state');
SELECT sync.map('tickets_$kind', 'tags', '$labels');
SELECT sync.enable('tickets_$kind');
SQL

demo_show "SELECT * FROM sync.plan_summary();  -- priced in the kind's own unit" <<'SQL'
SELECT definition, adds, requests, batches, cost, cost_unit, budget_per_min, est_drain FROM sync.plan_summary();
SQL

echo; echo "== syncbridge-worker run --once  (slot, backfill, issues created)"
demo_worker run --once
issues

demo_show "changes: ticket 1 is done, ticket 2 gets a label, ticket 4 stops being shareable, a new ticket" <<SQL
UPDATE tickets SET status = '$done' WHERE id = 1;
UPDATE tickets SET tags = tags || '{ux}'::text[], title = 'Add a dark mode (and a light one)' WHERE id = 2;
UPDATE tickets SET shareable = false WHERE id = 4;
INSERT INTO tickets VALUES (5, 'Tooltips are cut off', 'On screens narrower than 400 px.', '$open', '{bug,ux}', true);
SELECT definition, op, sync_key, changed FROM sync.plan() ORDER BY sync_key;
SQL

echo; echo "== syncbridge-worker run --once"
demo_worker run --once
issues
demo_show "the table, with each ticket's issue (its id on the target, from sync.ledger)" <<'SQL'
SELECT t.id, t.title, t.status, t.tags, t.shareable, l.target_id AS issue
  FROM tickets t LEFT JOIN sync.ledger l ON l.sync_key = t.id::text ORDER BY t.id;
SELECT definition, state, items, exported, pending, failed, error FROM sync.status;
SELECT sync_key, op, status, last_error FROM sync.pending_exports WHERE status IN ('failed', 'error') ORDER BY sync_key;
SQL
echo
if grep -q "production database password\|runbook" <(python3 -c "import urllib.request,sys; print(urllib.request.urlopen(sys.argv[1]).read().decode())" "$emu/_emulator/issues"); then
  log "ticket 3 (not shareable) reached the tracker: this is a bug"; exit 1
fi
log "ticket 3 never left the database; done, stopping the emulator and the cluster"
