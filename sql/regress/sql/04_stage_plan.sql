-- Staging changed keys, coalescing, idempotency, moves, deletes, approval, the plan.
\set SHOW_CONTEXT never
BEGIN;
SELECT sync.create_target('sp_hr', kind => 'graph', config => '{"tenant_id": "t", "client_id": "c", "site_id": "s", "budget_per_min": 300}');
SELECT sync.define('employees_sp', source => 'hr.employees', target => 'sp_hr', list => 'Employees',
                   row_filter => 'shareable', approval => 'deletes');
SELECT sync.map('employees_sp', 'full_name', 'Title');
SELECT sync.map('employees_sp', 'salary', 'Salary');
SELECT sync.shard('employees_sp', $$region = 'EU'$$, list => 'Employees EU');
-- The plan before anything was sent: every shareable row is an add.
SELECT definition, op, sync_key, list, changed, requests, cost, queued FROM sync.plan('employees_sp');
SELECT * FROM sync.plan_summary();
-- Staging only happens for enabled definitions.
SELECT * FROM sync.stage('hr.employees', '[{"id": "1"}]', '0/10');
SELECT sync.enable('employees_sp');
-- Keys arrive as the worker decoded them: objects of key column texts,
-- possibly with other columns, possibly repeated; unknown keys are harmless.
SELECT * FROM sync.stage('hr.employees', '[{"id": "1"}, {"id": "2", "email": "x"}, {"id": "3"}, {"id": "4"}, {"id": "1"}, {"id": "99"}, {"email": "no key"}]', '0/100');
SELECT id, op, sync_key, list, payload, status, lsn FROM sync.pending_exports ORDER BY id;
SELECT kind, scope, lsn FROM sync.cursors;
-- The same call again changes nothing.
SELECT * FROM sync.stage('hr.employees', '[{"id": "1"}, {"id": "2"}, {"id": "3"}, {"id": "4"}]', '0/100');
SELECT count(*) AS exports, max(updated_at) = min(created_at) AS untouched FROM sync.pending_exports;
-- Several changes to one key before it is sent coalesce into one export.
UPDATE hr.employees SET full_name = 'Ada King' WHERE id = 1;
SELECT * FROM sync.stage('hr.employees', '[{"id": "1"}]', '0/200');
UPDATE hr.employees SET full_name = 'Ada, Countess of Lovelace' WHERE id = 1;
SELECT * FROM sync.stage('hr.employees', '[{"id": "1"}]', '0/300');
SELECT id, op, sync_key, payload ->> 'Title' AS title, lsn FROM sync.pending_exports WHERE sync_key = '1';
-- A row added and deleted before it was sent leaves nothing.
INSERT INTO hr.employees (id, full_name, region) VALUES (5, 'Eve', 'US');
SELECT * FROM sync.stage('hr.employees', '[{"id": "5"}]', '0/400');
DELETE FROM hr.employees WHERE id = 5;
SELECT * FROM sync.stage('hr.employees', '[{"id": "5"}]', '0/500');
SELECT sync_key, op, status FROM sync.pending_exports WHERE sync_key = '5';
-- The cursor never moves back.
SELECT * FROM sync.stage('hr.employees', '[]', '0/50');
SELECT lsn FROM sync.cursors WHERE kind = 'slot';
-- Pretend the target accepted everything: claim and complete.
SELECT count(*) AS claimed FROM sync.claim('sp_hr', 10, worker => 'regress');
SELECT * FROM sync.complete((SELECT jsonb_agg(jsonb_build_object('id', id, 'ok', true, 'target_id', 'item-' || sync_key, 'etag', '"1"'))
                               FROM sync.pending_exports WHERE status = 'executing'), worker => 'regress');
SELECT sync_key, list, target_id, fields FROM sync.ledger ORDER BY sync_key;
SELECT * FROM sync.plan('employees_sp');
-- An update sends only the changed fields, with their previous values.
UPDATE hr.employees SET salary = 6000 WHERE id = 1;
SELECT * FROM sync.stage('hr.employees', '[{"id": "1"}]', '0/600');
SELECT op, sync_key, list, payload, previous FROM sync.pending_exports WHERE status = 'pending';
-- Back to what the target holds: the queued update is cancelled.
UPDATE hr.employees SET salary = 5000.50 WHERE id = 1;
SELECT * FROM sync.stage('hr.employees', '[{"id": "1"}]', '0/700');
SELECT op, sync_key, status, last_error FROM sync.pending_exports WHERE op = 'update';
-- A shard change is a move (delete from the old list, create in the new one).
UPDATE hr.employees SET region = 'US' WHERE id = 3;
-- A row leaving the filter is a delete, which waits for approval here.
UPDATE hr.employees SET shareable = false WHERE id = 2;
SELECT * FROM sync.stage('hr.employees', '[{"id": "3"}, {"id": "2"}]', '0/800');
SELECT op, sync_key, list, from_list, status FROM sync.pending_exports WHERE status IN ('pending', 'awaiting_approval') ORDER BY sync_key;
SELECT definition, op, sync_key, list, from_list, changed, requests, cost, queued FROM sync.plan('employees_sp');
SELECT definition, adds, updates, deletes, moves, awaiting_approval, requests, batches, cost, cost_unit, budget_per_min, est_drain
  FROM sync.plan_summary('employees_sp');
-- A key change (old and new key staged together) deletes the old item and adds the new.
UPDATE hr.employees SET id = 30 WHERE id = 3;
SELECT * FROM sync.stage('hr.employees', '[{"id": "3"}, {"id": "30"}]', '0/900');
SELECT op, sync_key, list, status FROM sync.pending_exports WHERE sync_key IN ('3', '30') AND status <> 'exported' ORDER BY sync_key;
-- TRUNCATE stages a delete of every item the definition put on the target.
TRUNCATE hr.employees CASCADE;
SELECT * FROM sync.stage_truncate('hr.employees', '0/A00');
SELECT op, count(*), min(status) AS status FROM sync.pending_exports WHERE status IN ('pending', 'awaiting_approval') GROUP BY op ORDER BY op;
-- Bad input changes nothing.
\x on
SELECT * FROM regress.err($sql$SELECT * FROM sync.stage('hr.employees', '{"id": "1"}')$sql$);
SELECT * FROM regress.err($sql$SELECT * FROM sync.stage('hr.employees', '[{"id": "1"}, 7]')$sql$);
SELECT * FROM regress.err($sql$SELECT * FROM sync.stage('hr.employees', '[]', only_definition => 'nope')$sql$);
SELECT * FROM regress.err($sql$SELECT * FROM sync.plan('nope')$sql$);
\x off
ROLLBACK;
