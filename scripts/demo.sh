#!/usr/bin/env bash
# `make demo`: the main job on the embedded default. A throwaway cluster with
# the extension, the local Graph emulator, and the worker syncing a demo table
# (a mapping, two shards) into SharePoint lists: the plan, the first sync,
# inserts / updates / a shard move / a delete, and the result side by side.
# Everything it starts is stopped on exit, whether it succeeded or not.
set -euo pipefail
SCRIPT_NAME=demo
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
# TARGET (make demo TARGET=...): graph, the default, an issue tracker, or webhook.
case ${TARGET:-graph} in
  graph) ;;
  webhook) exec "$ROOT/scripts/demo-webhook.sh" ;;
  ldap) exec "$ROOT/scripts/demo-ldap.sh" ;;
  *) exec "$ROOT/scripts/demo-tracker.sh" "$TARGET" ;;
esac

"$ROOT/scripts/setup.sh" >/dev/null
log "building the worker, the Graph emulator and the extension"
cargo build --quiet -p syncbridge-worker -p syncbridge-tests --bin syncbridge-worker --bin graph-emulator
install_ext

dir=$(mktemp -d "${TMPDIR:-/tmp}/syncbridge-demo-XXXXXX")
chmod 0755 "$dir"
EMU_PID=
cleanup() {
  graph_emulator_stop
  pg_stop "$dir/pg"; rm -rf "$dir"
}
trap cleanup EXIT
demo_cluster "$dir"

# The emulator plays Microsoft Graph (token endpoint included). The secret
# reaches the worker through its environment only, never a table (the worker
# reads secrets only from variables named SYNCBRIDGE_SECRET_*).
export SYNCBRIDGE_SECRET_GRAPH=demo-secret
graph_emulator_start "$dir"
emu=$EMU_URL
log "Graph emulator on $emu"


# The table and the definition are shared with the package test (scripts/lib.sh).
{ echo 'CREATE EXTENSION syncbridge;'; demo_employees_sql; echo 'SELECT * FROM employees ORDER BY id;'; } \
  | demo_show "a source table"

{ printf '\\set ECHO queries\n\\o /dev/null\n'; demo_definition_sql "$emu"; } \
  | demo_show "a Graph target, a definition with a mapping and two shards"

demo_show "SELECT * FROM sync.plan();  -- what the first sync will do" <<'SQL'
SELECT definition, op, sync_key, list, changed, requests, cost FROM sync.plan() ORDER BY list, sync_key;
SELECT sync.provision('employees_sp') AS lists_to_create, sync.enable('employees_sp');
SQL

echo; echo "== syncbridge-worker run --once  (slot, backfill, lists provisioned, items created)"
demo_worker run --once

demo_show "changes: two inserts, an update, a shard move (EU -> US), a delete" <<'SQL'
INSERT INTO employees VALUES (6, 'Margaret Hamilton', 'US', 7000, true, '2023-02-01'),
                             (7, 'Barbara Liskov', 'EU', 6600, true, '2018-09-12');
UPDATE employees SET salary = 5900 WHERE id = 1;
UPDATE employees SET region = 'US' WHERE id = 3;
DELETE FROM employees WHERE id = 4;
SELECT definition, op, sync_key, list, from_list, changed FROM sync.plan() ORDER BY sync_key;
SQL

echo; echo "== syncbridge-worker run --once"
demo_worker run --once

echo; echo "== the SharePoint lists (as the Graph emulator holds them)"
"$ROOT/target/debug/graph-emulator" dump --url "$emu"

demo_show "the source table" <<'SQL'
SELECT * FROM employees ORDER BY id;
SQL
# ---------------------------------------------------------------------------
# Two-way: a task list people also edit in SharePoint.
demo_show "two-way: a task table, synced both ways, conflicts settled by a person" <<'SQL'
CREATE TABLE tasks (id serial PRIMARY KEY, title text NOT NULL, status text NOT NULL DEFAULT 'open',
                    sp_modified timestamptz, sp_editor int);
INSERT INTO tasks (title) VALUES ('Write the release notes'), ('Fix the login bug'), ('Plan the offsite');
\set ECHO queries
\o /dev/null
SELECT sync.define('tasks_sp', source => 'tasks', target => 'sharepoint', list => 'Tasks',
                   direction => 'both', conflict => 'manual');
SELECT sync.map('tasks_sp', 'title', 'Title');
SELECT sync.map('tasks_sp', 'status', 'Status');
SELECT sync.map('tasks_sp', 'sp_modified', 'Modified', direction => 'pull');
SELECT sync.map('tasks_sp', 'sp_editor', 'EditorLookupId', direction => 'pull');
SELECT sync.provision('tasks_sp'), sync.enable('tasks_sp');
SQL
echo; echo "== syncbridge-worker run --once  (the tasks go to SharePoint)"
demo_worker run --once

echo; echo "== a person edits task 2 in SharePoint: Status 'doing'"
"$ROOT/target/debug/graph-emulator" edit --url "$emu" --list Tasks --key 2 --fields '{"Status": "doing"}'
echo; echo "== meanwhile, both sides change task 1's title"
"$ROOT/target/debug/graph-emulator" edit --url "$emu" --list Tasks --key 1 --fields '{"Title": "Write the 2.0 release notes"}'
"${psql[@]}" -q -c "UPDATE tasks SET title = 'Write release notes (draft)' WHERE id = 1"

echo; echo "== syncbridge-worker run --once  (pulls the list's delta, applies, meets the conflict)"
demo_worker run --once
demo_show "the edit made in SharePoint is in the table (with who and when); task 1 waits for a person" <<'SQL'
SELECT id, title, status, sp_editor, sp_modified IS NOT NULL AS has_modified FROM tasks ORDER BY id;
SELECT id, sync_key, field, base_value, local_value, remote_value FROM sync.conflicts WHERE resolution IS NULL;
SELECT definition, imports_applied, conflicts_open, pull_state FROM sync.status WHERE definition = 'tasks_sp';
SQL
demo_show "SELECT sync.resolve(<conflict>, 'remote');  -- SharePoint's title wins" <<'SQL'
SELECT sync.resolve(id, 'remote') FROM sync.conflicts WHERE resolution IS NULL;
SQL
echo; echo "== syncbridge-worker run --once"
demo_worker run --once
demo_show "settled: the table and the list agree" <<'SQL'
SELECT id, title, status FROM tasks ORDER BY id;
SELECT count(*) AS open_conflicts FROM sync.conflicts WHERE resolution IS NULL;
SQL
echo; echo "== the Tasks list"
"$ROOT/target/debug/graph-emulator" dump --url "$emu" | sed -n '/Tasks/,$p'

echo; echo "== drift: someone changes Ada's Salary in SharePoint, behind syncbridge's back"
"$ROOT/target/debug/graph-emulator" edit --url "$emu" --list 'Employees EU' --key 1 --fields '{"Salary": 99999}'
demo_show "a drift check: its cost first, then SELECT sync.check_drift('employees_sp')" <<'SQL'
SELECT definition, drift_check_requests, drift_check_cost, drift_check_time FROM sync.plan_summary('employees_sp');
SELECT sync.check_drift('employees_sp') AS report;
SQL
echo; echo "== syncbridge-worker run --once  (reads the lists whole, the extension compares)"
demo_worker run --once
demo_show "the report; SELECT * FROM sync.reconcile(<report>)" <<'SQL'
SELECT definition, status, in_sync, orphans, adoptable, missing, drifted FROM sync.drift WHERE definition = 'employees_sp';
SELECT kind, list, sync_key, field, expected, actual FROM sync.drift_items
 WHERE report_id = (SELECT report FROM sync.drift WHERE definition = 'employees_sp');
SELECT added, updated, deleted, adopted FROM sync.reconcile((SELECT report FROM sync.drift WHERE definition = 'employees_sp'));
SQL
echo; echo "== syncbridge-worker run --once  (one update: the Salary written back)"
demo_worker run --once
demo_show "the run history" <<'SQL'
SELECT id, kind, status, started_by, staged, exported FROM sync.runs ORDER BY id DESC LIMIT 5;
SQL

demo_show "SELECT * FROM sync.status;" <<'SQL'
\x on
SELECT * FROM sync.status;
SQL
echo
log "done; stopping the emulator and the cluster"
