-- The export queue: claims, leases, results, backoff, errors, retries, approval, cursors.
\set SHOW_CONTEXT never
BEGIN;
SET LOCAL sync.backoff_base_seconds = 10;
SELECT sync.create_target('sp_hr', kind => 'graph', config => '{"tenant_id": "t", "client_id": "c", "site_id": "s"}');
SELECT sync.define('employees_sp', source => 'hr.employees', target => 'sp_hr', list => 'Employees',
                   approval => 'deletes', max_attempts => 2);
SELECT sync.map('employees_sp', 'full_name', 'Title');
SELECT sync.enable('employees_sp');
-- Provisioning is queued first and claimed before any item of its list.
SELECT sync.provision('employees_sp');
SELECT op, list, payload FROM sync.pending_exports;
SELECT * FROM sync.stage('hr.employees', '[{"id": "1"}, {"id": "2"}, {"id": "3"}, {"id": "4"}]');
SELECT op, sync_key, attempts, verify FROM sync.claim('sp_hr', 10, worker => 'w1');
-- Items wait until their list exists.
SELECT count(*) AS claimable_now FROM sync.claim('sp_hr', 10, worker => 'w2');
SELECT * FROM sync.complete(jsonb_build_array(jsonb_build_object(
    'id', (SELECT id FROM sync.pending_exports WHERE op = 'provision'), 'ok', true, 'list_id', 'list-1')), worker => 'w1');
SELECT list, remote_id, provisioned_at IS NOT NULL AS provisioned FROM sync.target_lists;
SELECT sync.provision('employees_sp') AS queued_again;
-- Two claimers never get the same export.
SELECT array_agg(sync_key ORDER BY sync_key) AS w1 FROM sync.claim('sp_hr', 2, worker => 'w1');
SELECT array_agg(sync_key ORDER BY sync_key) AS w2 FROM sync.claim('sp_hr', 10, worker => 'w2');
SELECT leased_by, array_agg(sync_key ORDER BY sync_key) FROM sync.pending_exports WHERE status = 'executing' GROUP BY 1 ORDER BY 1;
-- Results: success, a transient failure, a throttled one, a definite one; a
-- result from a worker that no longer holds the lease is ignored. A create
-- that failed after it may have run (sent: the 503, and the throttling 503
-- that may have run it) is marked verify; a definite answer is not.
SELECT * FROM sync.complete(jsonb_build_array(
    jsonb_build_object('id', (SELECT id FROM sync.pending_exports WHERE sync_key = '1'), 'ok', true, 'target_id', '17', 'etag', '"e1"'),
    jsonb_build_object('id', (SELECT id FROM sync.pending_exports WHERE sync_key = '2'), 'ok', false, 'error', 'HTTP 503: service unavailable', 'class', 'transient')),
  worker => 'w1');
SELECT * FROM sync.complete(jsonb_build_array(
    jsonb_build_object('id', (SELECT id FROM sync.pending_exports WHERE sync_key = '3'), 'ok', false, 'error', 'HTTP 503 throttled', 'class', 'throttled', 'retry_after', 30, 'sent', true),
    jsonb_build_object('id', (SELECT id FROM sync.pending_exports WHERE sync_key = '4'), 'ok', false, 'error', 'HTTP 400: Field ''Title'' is too long', 'class', 'definite'),
    jsonb_build_object('id', (SELECT id FROM sync.pending_exports WHERE sync_key = '1'), 'ok', false, 'error', 'late')),
  worker => 'w2');
SELECT sync_key, status, attempts, error_class, last_error, verify,
       next_attempt_at - now() BETWEEN interval '8 seconds' AND interval '12 seconds' AS backoff_10s,
       next_attempt_at - now() = interval '30 seconds' AS retry_after_30s
  FROM sync.pending_exports WHERE op <> 'provision' ORDER BY sync_key;
SELECT sync_key, target_id, etag FROM sync.ledger;
SELECT pending, failed, error, exported, items, last_error FROM sync.status;
-- Not due yet: nothing to claim. Once due, the second failure is the last (max_attempts 2).
SELECT count(*) AS claimable FROM sync.claim('sp_hr', 10, worker => 'w1');
UPDATE sync.pending_exports SET next_attempt_at = now() WHERE status = 'failed';
SELECT sync_key, attempts FROM sync.claim('sp_hr', 10, worker => 'w1') ORDER BY sync_key;
SELECT * FROM sync.complete((SELECT jsonb_agg(jsonb_build_object('id', id, 'ok', false, 'error', 'HTTP 502', 'class', 'transient'))
                               FROM sync.pending_exports WHERE status = 'executing'));
SELECT sync_key, status, attempts FROM sync.pending_exports WHERE op <> 'provision' ORDER BY sync_key;
-- sync.retry puts an export in error back in the queue.
SELECT sync.retry((SELECT id FROM sync.pending_exports WHERE sync_key = '4'));
SELECT sync.retry_failed('employees_sp') AS retried;
SELECT sync_key, status, attempts FROM sync.pending_exports WHERE op <> 'provision' ORDER BY sync_key;
-- An expired lease is recovered: the export is claimable again and marked
-- verify (the target may already hold it: look it up before creating).
UPDATE sync.pending_exports SET next_attempt_at = now() WHERE status IN ('pending', 'failed');
SELECT sync_key FROM sync.claim('sp_hr', 1, lease_seconds => 1, worker => 'dead') ORDER BY 1;
UPDATE sync.pending_exports SET lease_until = now() - interval '1 second' WHERE leased_by = 'dead' AND status = 'executing';
SELECT sync_key, attempts, verify FROM sync.claim('sp_hr', 10, worker => 'w3') ORDER BY sync_key;
-- Approval: deletes wait for sync.approve.
SELECT * FROM sync.complete((SELECT jsonb_agg(jsonb_build_object('id', id, 'ok', true, 'target_id', 'x' || sync_key)) FROM sync.pending_exports WHERE status = 'executing'));
DELETE FROM hr.employees WHERE id IN (3, 4);
SELECT * FROM sync.stage('hr.employees', '[{"id": "3"}, {"id": "4"}]');
SELECT sync_key, op, status FROM sync.pending_exports WHERE op = 'delete' ORDER BY sync_key;
SELECT count(*) AS claimable FROM sync.claim('sp_hr', 10);
SELECT sync.approve((SELECT id FROM sync.pending_exports WHERE op = 'delete' AND sync_key = '3'));
SELECT sync.reject((SELECT id FROM sync.pending_exports WHERE op = 'delete' AND sync_key = '4'));
SELECT sync_key, op, status, approved_by IS NOT NULL AS approved FROM sync.pending_exports WHERE op = 'delete' ORDER BY sync_key;
SELECT sync.approve_all('employees_sp') AS approved_all;
-- Errors.
\x on
SELECT * FROM regress.err($sql$SELECT sync.approve((SELECT id FROM sync.pending_exports WHERE op = 'delete' AND sync_key = '3'))$sql$);
SELECT * FROM regress.err($sql$SELECT sync.retry(123456)$sql$);
SELECT * FROM regress.err($sql$SELECT sync.retry((SELECT id FROM sync.pending_exports WHERE op = 'provision'))$sql$);
SELECT * FROM regress.err($sql$SELECT * FROM sync.claim('nope')$sql$);
SELECT * FROM regress.err($sql$SELECT * FROM sync.claim('sp_hr', 0)$sql$);
SELECT * FROM regress.err($sql$SELECT * FROM sync.complete('{"id": 1}')$sql$);
SELECT * FROM regress.err($sql$SELECT * FROM sync.complete('[{"id": "one", "ok": true}]')$sql$);
SELECT * FROM regress.err($sql$SELECT * FROM sync.complete('[{"id": 1, "ok": false, "class": "sometimes"}]')$sql$);
SELECT * FROM regress.err($sql$SELECT * FROM sync.complete('[{"id": 1, "ok": true}, {"id": 1, "ok": true}]')$sql$);
\x off
-- Cursors: beginning (reconcile the table), now (drop what is queued), an LSN.
SELECT sync.reset_cursor('employees_sp', 'beginning');
SELECT backfill, start_lsn FROM sync.definitions;
SELECT sync.reset_cursor('employees_sp', 'now') LIKE 'following changes from %' AS reset_to_now;
SELECT backfill, start_lsn IS NOT NULL AS has_start FROM sync.definitions;
SELECT count(*) FILTER (WHERE status IN ('pending', 'awaiting_approval', 'failed', 'error')) AS open_exports FROM sync.pending_exports;
SELECT sync.reset_cursor('employees_sp', '0/1');
SELECT * FROM sync.stage('hr.employees', '[{"id": "1"}]', '0/0');
\x on
SELECT * FROM regress.err($sql$SELECT sync.reset_cursor('employees_sp', 'yesterday')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.reset_cursor('employees_sp', 'FFFFFFFF/0')$sql$);
\x off
-- History retention: finished exports and runs older than the retention
-- (sync.history_retention_days, 30) go; open exports and running runs never.
INSERT INTO sync.pending_exports (id, definition_id, sync_key, op, list, status) OVERRIDING SYSTEM VALUE
SELECT -1 - g, (SELECT id FROM sync.definitions WHERE name = 'employees_sp'), 'old ' || g, 'add', 'Employees',
       (ARRAY['exported', 'confirmed', 'cancelled', 'pending', 'error', 'awaiting_approval'])[g]
  FROM generate_series(1, 6) g;
UPDATE sync.pending_exports SET updated_at = now() - interval '31 days';
INSERT INTO sync.runs (kind, status, started_at, finished_at) VALUES
    ('export', 'succeeded', now() - interval '40 days', now() - interval '40 days'),
    ('export', 'running', now() - interval '40 days', NULL);
-- A run of this session (it holds the run's lock) is alive; the 'running'
-- row above has no session: it is marked failed, abandoned.
SELECT sync.start_run('manual') AS live_run \gset
UPDATE sync.runs SET started_at = now() - interval '40 days' WHERE id = :live_run;
SELECT status, count(*) FROM sync.pending_exports GROUP BY 1 ORDER BY 1;
SELECT * FROM sync.purge('1 year');
SET sync.history_retention_days = 0;
SELECT * FROM sync.purge();
RESET sync.history_retention_days;
SELECT * FROM sync.purge();
SELECT status, count(*) FROM sync.pending_exports GROUP BY 1 ORDER BY 1;
SELECT status, left(error, 30) AS error, id = :live_run AS live FROM sync.runs WHERE started_at < now() - interval '30 days' ORDER BY id;
SELECT sync.finish_run(:live_run);
SELECT sync._run_lock_held(:live_run) AS lock_still_held;
-- An export whose definition is gone (deleted where the trigger could not
-- see it) goes whatever the retention.
ALTER TABLE sync.definitions DISABLE TRIGGER definitions_delete_exports;
INSERT INTO sync.definitions (id, name, source_rel, target, key_columns) OVERRIDING SYSTEM VALUE
SELECT -5, 'doomed', source_rel, target, key_columns FROM sync.definitions WHERE name = 'employees_sp';
INSERT INTO sync.pending_exports (id, definition_id, sync_key, op, list) OVERRIDING SYSTEM VALUE
SELECT -10, id, '1', 'add', 'X' FROM sync.definitions WHERE name = 'doomed';
DELETE FROM sync.definitions WHERE name = 'doomed';
ALTER TABLE sync.definitions ENABLE TRIGGER definitions_delete_exports;
SET sync.history_retention_days = 0;
SELECT * FROM sync.purge();
RESET sync.history_retention_days;
SELECT count(*) AS orphans FROM sync.pending_exports WHERE id = -10;
\x on
SELECT * FROM regress.err($sql$SELECT sync.purge('-1 day')$sql$);
\x off
-- Items behind a list whose creation failed for good wait for a person, as
-- exports in error do: the backlog export --once waits for leaves them out.
CREATE TABLE hr.rooms (id int PRIMARY KEY, name text);
INSERT INTO hr.rooms VALUES (1, 'Blue'), (2, 'Red');
SELECT sync.define('rooms', source => 'hr.rooms', target => 'sp_hr', list => 'Rooms') > 0 AS defined;
SELECT sync.provision('rooms'), sync.enable('rooms');
SELECT added FROM sync.stage('hr.rooms', '[{"id": "1"}, {"id": "2"}]');
SELECT * FROM sync.export_backlog('sp_hr') \gset before_
SELECT sync.complete(jsonb_agg(jsonb_build_object('id', c.id, 'ok', false, 'class', 'definite', 'error', 'list refused')))
  FROM sync.claim('sp_hr', 100, worker => 'w') c WHERE c.op = 'provision';
SELECT :before_open - open AS no_longer_open FROM sync.export_backlog('sp_hr');
ROLLBACK;
