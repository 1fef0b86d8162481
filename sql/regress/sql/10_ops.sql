-- Operating from SQL: drift checks and reconciliation (the worker's reads
-- played by hand), the run history item by item and its rollback,
-- scheduled jobs.
\set SHOW_CONTEXT never
BEGIN;
CREATE TABLE hr.items (id int PRIMARY KEY, name text, qty int);
INSERT INTO hr.items VALUES (1, 'one', 1), (2, 'two', 2), (3, 'three', 3), (4, 'four', 4);
SELECT sync.create_target('spo', kind => 'graph', config => '{"tenant_id": "t", "client_id": "c", "site_id": "s"}');
SELECT sync.define('items_sp', source => 'hr.items', target => 'spo', list => 'Items');
SELECT sync.map('items_sp', 'name', 'Name'), sync.map('items_sp', 'qty', 'Qty');
SELECT sync.shard('items_sp', 'qty >= 100', 'Big');
SELECT sync.enable('items_sp');
SELECT sync.provision('items_sp');
SELECT count(*) FROM sync.claim('spo', 10, worker => 'w1');
SELECT * FROM sync.complete((SELECT jsonb_agg(jsonb_build_object('id', id, 'ok', true, 'list_id', 'L-' || list)) FROM sync.pending_exports WHERE op = 'provision'));
-- The first sync: a stream run stages, an export run sends.
SELECT sync.start_run('stream', worker => 'w1') AS stream1 \gset
SELECT added FROM sync.stage('hr.items', '[{"id": "1"}, {"id": "2"}, {"id": "3"}, {"id": "4"}]', run_id => :stream1);
SELECT sync.finish_run(:stream1);
SELECT sync.start_run('export', worker => 'w1') AS export1 \gset
SELECT count(*) FROM sync.claim('spo', 10, worker => 'w1', run_id => :export1);
SELECT * FROM sync.complete((SELECT jsonb_agg(jsonb_build_object('id', id, 'ok', true, 'target_id', '10' || sync_key, 'etag', '"e' || sync_key || ',1"'))
                               FROM sync.pending_exports WHERE status = 'executing'), worker => 'w1');
SELECT sync.finish_run(:export1);
SELECT kind, status, staged, exported, started_by FROM sync.runs WHERE id IN (:stream1, :export1) ORDER BY id;
-- What each run changed: the stream run staged them, the export run sent them.
SELECT definition, sync_key, op, list, previous, new, staged_by = :stream1 AS by_stream, sent_by = :export1 AS by_export
  FROM sync.run_changes(:stream1) ORDER BY sync_key;
SELECT count(*) AS export_run_changes FROM sync.run_changes(:export1);
SELECT * FROM regress.err($$SELECT * FROM sync.run_changes(-1)$$);

-- ---------------------------------------------------------------------------
-- Drift
-- ---------------------------------------------------------------------------
-- What a check would cost, beforehand.
SELECT definition, drift_check_requests, drift_check_cost, drift_check_time FROM sync.plan_summary('items_sp');
SELECT * FROM regress.err($$SELECT sync.check_drift('nope')$$);
-- (one transaction: what was sent so far is dated an hour back, as if the
-- check came later)
UPDATE sync.ledger SET last_synced_at = last_synced_at - interval '1 hour';
UPDATE sync.pending_exports SET exported_at = exported_at - interval '1 hour' WHERE exported_at IS NOT NULL;
SELECT sync.check_drift('items_sp') AS report \gset
SELECT code, message, hint FROM regress.err($$SELECT sync.check_drift('items_sp')$$);
SELECT definition, status, lists, lists_read, requested_by = session_user AS by_me FROM sync.drift;
SELECT kind, status, started_by = session_user AS by_me FROM sync.runs WHERE kind = 'drift';
SELECT sync.drift_due('spo') AS due_now;
-- One worker leases a list at a time; a second gets the other.
SELECT definition, list, list_id, link, fields, round FROM sync.drift_claim('spo', worker => 'w1');
SELECT definition, list, list_id, link, round FROM sync.drift_claim('spo', worker => 'w2');
SELECT count(*) AS third FROM sync.drift_claim('spo', worker => 'w3');
-- Bad pages: another worker's, a malformed one.
SELECT code, message FROM regress.err(format($$SELECT sync.drift_page(%s, 'Items', 1, '[]', 'https://x/d', true, 'w1')$$, :report));
SELECT code, message FROM regress.err(format($$SELECT sync.drift_page(%s, 'Items', 1, '[{"id": 5}]', 'https://x/n', false, 'w2')$$, :report));
-- Row 5 exists but was never sent; item 105 carries its SyncKey (adoptable).
INSERT INTO hr.items VALUES (5, 'five', 5);
-- Items: 101 as written, 102 with Qty edited behind syncbridge's back, 103
-- as written, 104 gone, 105 adoptable, 106 without a SyncKey (an orphan),
-- 107 a twin of 103 (a duplicate), 108 the SyncKey of no row (an orphan).
SELECT sync.drift_page(:report, 'Items', 1, '[
  {"id": "101", "etag": "\"e1,1\"", "fields": {"SyncKey": "1", "Name": "one", "Qty": 1}},
  {"id": "102", "etag": "\"e2,2\"", "fields": {"SyncKey": "2", "Name": "two", "Qty": 20}},
  {"id": "103", "etag": "\"e3,1\"", "fields": {"SyncKey": "3", "Name": "three", "Qty": 3}}
]', 'https://x/next', false, 'w2') AS stored;
SELECT sync.drift_page(:report, 'Items', 1, '[
  {"id": "105", "etag": "\"e5,1\"", "fields": {"SyncKey": "5", "Name": "five?", "Qty": 5}},
  {"id": "106", "etag": "\"e6,1\"", "fields": {"Name": "made by hand", "Qty": 0}},
  {"id": "107", "etag": "\"e7,1\"", "fields": {"SyncKey": "3", "Name": "three", "Qty": 3}},
  {"id": "108", "etag": "\"e8,1\"", "fields": {"SyncKey": "99", "Name": "ghost", "Qty": 9}}
]', 'https://x/delta', true, 'w2') AS stored;
SELECT status, lists, lists_read, items_read FROM sync.drift;
SELECT sync.drift_page(:report, 'Big', 1, '[]', 'https://x/delta2', true, 'w1') AS stored;
SELECT status, lists_read, items_read, in_sync, orphans, adoptable, duplicates, missing, drifted, per_list FROM sync.drift;
SELECT list, kind, sync_key, target_id, field, expected, actual FROM sync.drift_items WHERE report_id = :report ORDER BY kind, target_id, field;
SELECT count(*) AS scratch_left FROM sync.drift_seen;
SELECT kind, status, detail - 'report' AS detail FROM sync.runs WHERE kind = 'drift';

-- ---------------------------------------------------------------------------
-- Reconcile
-- ---------------------------------------------------------------------------
SELECT * FROM regress.err($$SELECT * FROM sync.reconcile(-1)$$);
SELECT code, message FROM regress.err(format($$SELECT * FROM sync.reconcile(%s, 'everything')$$, :report));
SELECT added, updated, deleted, moved, adopted FROM sync.reconcile(:report, 'mirror');
-- Exactly what makes the target match: 4 created again, Qty of 2 rewritten,
-- 5 adopted and brought to the row's values, the twin 107 deleted (it
-- carries syncbridge's key); the orphans stay (delete_scope provisioned).
SELECT op, sync_key, list, target_id, payload, status FROM sync.pending_exports
 WHERE status IN ('pending', 'awaiting_approval') ORDER BY sync_key;
SELECT sync_key, target_id, join_type FROM sync.ledger WHERE sync_key = '5';
SELECT op, sync_key, queued, warning ~ '^reconcile run' AS from_reconcile FROM sync.plan('items_sp') ORDER BY sync_key;
SELECT reconcile_mode, reconcile_run IS NOT NULL AS reconciled FROM sync.drift;
-- A report reconciled once is stale.
SELECT code, message, detail FROM regress.err(format($$SELECT * FROM sync.reconcile(%s)$$, :report));
-- The worker sends them (107's delete passes the claim's delete scope check).
SELECT sync.start_run('export', worker => 'w1') AS export2 \gset
SELECT op, sync_key, target_id FROM sync.claim('spo', 10, worker => 'w1', run_id => :export2) ORDER BY sync_key;
SELECT * FROM sync.complete((SELECT jsonb_agg(jsonb_build_object('id', id, 'ok', true, 'target_id', CASE WHEN op = 'add' THEN '20' || sync_key END, 'etag', '"r,1"'))
                               FROM sync.pending_exports WHERE status = 'executing'), worker => 'w1');
SELECT sync.finish_run(:export2);
-- A second check finds nothing to repair but the orphans: reconciling it
-- stages nothing.
-- (one transaction: what was sent so far is dated an hour back, as if the
-- check came later)
UPDATE sync.ledger SET last_synced_at = last_synced_at - interval '1 hour';
UPDATE sync.pending_exports SET exported_at = exported_at - interval '1 hour' WHERE exported_at IS NOT NULL;
UPDATE sync.drift_reports SET requested_at = requested_at - interval '2 hours';
SELECT sync.check_drift('items_sp') AS report2 \gset
SELECT list FROM sync.drift_claim('spo', 10, worker => 'w1') ORDER BY list;
SELECT sync.drift_page(:report2, 'Items', 1, '[
  {"id": "101", "etag": "\"e1,1\"", "fields": {"SyncKey": "1", "Name": "one", "Qty": 1}},
  {"id": "102", "etag": "\"r,1\"", "fields": {"SyncKey": "2", "Name": "two", "Qty": 2}},
  {"id": "103", "etag": "\"e3,1\"", "fields": {"SyncKey": "3", "Name": "three", "Qty": 3}},
  {"id": "204", "etag": "\"r,1\"", "fields": {"SyncKey": "4", "Name": "four", "Qty": 4}},
  {"id": "105", "etag": "\"r,1\"", "fields": {"SyncKey": "5", "Name": "five", "Qty": 5}},
  {"id": "106", "etag": "\"e6,1\"", "fields": {"Name": "made by hand", "Qty": 0}},
  {"id": "108", "etag": "\"e8,1\"", "fields": {"SyncKey": "99", "Name": "ghost", "Qty": 9}}
]', 'https://x/delta', true, 'w1') AS stored;
SELECT sync.drift_page(:report2, 'Big', 1, '[]', 'https://x/delta2', true, 'w1') AS stored;
SELECT in_sync, orphans, adoptable, duplicates, missing, drifted FROM sync.drift;
SELECT added, updated, deleted, moved, adopted FROM sync.reconcile(:report2);
-- A check that fails: its run fails, its scratch is dropped.
SELECT sync.check_drift('items_sp') AS report3 \gset
SELECT list FROM sync.drift_claim('spo', 1, worker => 'w1');
SELECT sync.drift_failed(:report3, 'Big', 1, 'HTTP 403: forbidden', 'auth', false, NULL, 'w1');
UPDATE sync.drift_lists SET next_read_at = now() WHERE report_id = :report3;
SELECT list FROM sync.drift_claim('spo', 1, worker => 'w1');
SELECT sync.drift_failed(:report3, 'Big', 2, 'HTTP 403: forbidden', 'auth', false, NULL, 'w1');
SELECT status, error FROM sync.drift;
SELECT code, message, detail FROM regress.err(format($$SELECT * FROM sync.reconcile(%s)$$, :report3));

-- Two-way: only the fields the database owns are compared (Title goes
-- both ways: a remote edit is the pull's to decide); a missing item is the
-- pull's too (inbound_deletes): reconcile makes the next pull a full read.
CREATE TABLE hr.tw (id int PRIMARY KEY, title text, done boolean);
INSERT INTO hr.tw VALUES (1, 'a', false), (2, 'b', false);
SELECT sync.define('tw_sp', source => 'hr.tw', target => 'spo', list => 'TW', direction => 'both') > 0 AS defined;
SELECT sync.map('tw_sp', 'title', 'Title'), sync.map('tw_sp', 'done', 'Done', direction => 'push');
SELECT sync.enable('tw_sp'), sync.provision('tw_sp');
SELECT * FROM sync.complete((SELECT jsonb_agg(jsonb_build_object('id', c.id, 'ok', true, 'list_id', 'L-TW')) FROM sync.claim('spo', 10, worker => 'w1') c));
SELECT added FROM sync.stage('hr.tw', '[{"id": "1"}, {"id": "2"}]');
SELECT * FROM sync.complete((SELECT jsonb_agg(jsonb_build_object('id', c.id, 'ok', true, 'target_id', '90' || c.sync_key, 'etag', '"w,1"'))
                               FROM sync.claim('spo', 10, worker => 'w1') c), worker => 'w1');
UPDATE sync.ledger SET last_synced_at = last_synced_at - interval '1 hour';
UPDATE sync.pending_exports SET exported_at = exported_at - interval '1 hour' WHERE exported_at IS NOT NULL;
SELECT sync.check_drift('tw_sp') AS twr \gset
SELECT list, fields FROM sync.drift_claim('spo', 1, worker => 'w1');
SELECT sync.drift_page(:twr, 'TW', 1, '[{"id": "901", "etag": "\"w,2\"", "fields": {"SyncKey": "1", "Title": "edited", "Done": true}}]',
                       'https://x/delta', true, 'w1') AS stored;
SELECT kind, sync_key, field, expected, actual FROM sync.drift_items WHERE report_id = :twr ORDER BY kind, sync_key;
SELECT added, updated, deleted FROM sync.reconcile(:twr);
SELECT op, sync_key, payload FROM sync.pending_exports WHERE definition_id = (SELECT id FROM sync.definitions WHERE name = 'tw_sp')
   AND status = 'pending';
SELECT list, full_read, link IS NULL AS read_whole_next FROM sync.pulls WHERE definition_id = (SELECT id FROM sync.definitions WHERE name = 'tw_sp');
SELECT sync.undefine('tw_sp', force => true);

-- ---------------------------------------------------------------------------
-- Rollback
-- ---------------------------------------------------------------------------
-- A run that creates 6, updates 1, moves 3 to Big and deletes 2.
INSERT INTO hr.items VALUES (6, 'six', 6);
UPDATE hr.items SET name = 'ONE' WHERE id = 1;
UPDATE hr.items SET qty = 300 WHERE id = 3;
DELETE FROM hr.items WHERE id = 2;
SELECT sync.start_run('stream', worker => 'w1') AS stream2 \gset
SELECT added, updated, deleted, moved FROM sync.stage('hr.items', '[{"id": "1"}, {"id": "2"}, {"id": "3"}, {"id": "6"}]', run_id => :stream2);
SELECT sync.finish_run(:stream2);
SELECT sync.start_run('export', worker => 'w1') AS export3 \gset
SELECT op, sync_key FROM sync.claim('spo', 10, worker => 'w1', run_id => :export3) ORDER BY sync_key;
SELECT * FROM sync.complete((SELECT jsonb_agg(jsonb_build_object('id', id, 'ok', true, 'target_id', CASE WHEN op IN ('add', 'move') THEN '30' || sync_key END, 'etag', '"s,1"'))
                               FROM sync.pending_exports WHERE status = 'executing'), worker => 'w1');
SELECT sync.finish_run(:export3);
SELECT sync_key, op, list, from_list, previous, new FROM sync.run_changes(:stream2) ORDER BY sync_key;
-- Bad input: a run still running, another definition's run, a run that
-- changed nothing of the definition.
SELECT sync.start_run('backfill', 'items_sp', 'w9') AS live \gset
SELECT code, message, hint FROM regress.err(format($$SELECT * FROM sync.rollback('items_sp', %s)$$, :live));
SELECT sync.finish_run(:live);
CREATE TABLE hr.other (id int PRIMARY KEY, v text);
SELECT sync.define('other_sp', source => 'hr.other', target => 'spo', list => 'Other') > 0 AS defined;
SELECT sync.start_run('backfill', 'other_sp', 'w9') AS other_run \gset
SELECT sync.finish_run(:other_run);
SELECT code, message, detail FROM regress.err(format($$SELECT * FROM sync.rollback('items_sp', %s)$$, :other_run));
SELECT code, message, detail FROM regress.err(format($$SELECT * FROM sync.rollback('items_sp', %s)$$, :live));
-- Item 6 changes again after the run: it is listed, not overwritten.
UPDATE hr.items SET name = 'SIX' WHERE id = 6;
SELECT updated FROM sync.stage('hr.items', '[{"id": "6"}]');
SELECT count(*) FROM sync.claim('spo', 10, worker => 'w1');
SELECT * FROM sync.complete((SELECT jsonb_agg(jsonb_build_object('id', id, 'ok', true, 'etag', '"s,2"'))
                               FROM sync.pending_exports WHERE status = 'executing'), worker => 'w1');
SELECT sync_key, action, op, detail FROM sync.rollback('items_sp', :stream2) WHERE sync_key IS NOT NULL ORDER BY sync_key;
SELECT state, state_reason ~ '^rolled back run' AS reason FROM sync.definitions WHERE name = 'items_sp';
-- The inverse, awaiting approval, shown by plan first.
SELECT op, sync_key, list, from_list, target_id, payload, status FROM sync.pending_exports WHERE status = 'awaiting_approval' ORDER BY sync_key;
SELECT op, sync_key, queued, warning ~ '^rollback run' AS from_rollback FROM sync.plan('items_sp') WHERE warning ~ '^rollback' ORDER BY sync_key;
SELECT count(*) AS unapproved FROM sync.claim('spo', 10, worker => 'w1');
-- A change of row 1 made now is not merged into its rollback export: the
-- rollback goes as staged, and the row is staged again once it is sent.
UPDATE hr.items SET name = 'uno' WHERE id = 1;
SELECT added, updated, unchanged FROM sync.stage('hr.items', '[{"id": "1"}]');
SELECT op, payload, rollback, changed_since FROM sync.pending_exports WHERE sync_key = '1' AND status = 'awaiting_approval';
SELECT sync.approve_all('items_sp');
-- Paused, the definition sends its rollback only (a later change of row 4
-- is staged and waits).
UPDATE hr.items SET qty = 44 WHERE id = 4;
SELECT updated FROM sync.stage('hr.items', '[{"id": "4"}]');
SELECT op, sync_key FROM sync.claim('spo', 10, worker => 'w1') ORDER BY sync_key;
SELECT * FROM sync.complete((SELECT jsonb_agg(jsonb_build_object('id', id, 'ok', true, 'target_id', CASE WHEN op IN ('add', 'move') THEN '40' || sync_key END, 'etag', '"t,1"'))
                               FROM sync.pending_exports WHERE status = 'executing'), worker => 'w1');
SELECT sync_key, list, fields FROM sync.ledger WHERE definition_id = (SELECT id FROM sync.definitions WHERE name = 'items_sp') ORDER BY sync_key;
SELECT op, sync_key, status FROM sync.pending_exports WHERE status IN ('pending', 'awaiting_approval') ORDER BY sync_key;

-- ---------------------------------------------------------------------------
-- Scheduled jobs
-- ---------------------------------------------------------------------------
SELECT * FROM regress.err($$SELECT sync.schedule('j', '61 * * * *', 'purge')$$);
SELECT * FROM regress.err($$SELECT sync.schedule('j', '* * *', 'purge')$$);
SELECT * FROM regress.err($$SELECT sync.schedule('j', '0 2 * * *', 'purge', time_zone => 'Europe/Pariss')$$);
SELECT * FROM regress.err($$SELECT sync.schedule('j', '0 2 * * *', 'vacuum')$$);
SELECT * FROM regress.err($$SELECT sync.schedule('j', '0 2 * * *', 'purge', 'items_sp')$$);
SELECT * FROM regress.err($$SELECT sync.schedule('j', '0 2 * * *', 'drift')$$);
SELECT * FROM regress.err($$SELECT sync.schedule('j', '0 2 * * *', 'pull', 'items_sp')$$);
SELECT * FROM regress.err($$SELECT sync.schedule('j', '0 2 * * *', 'drift', 'items_sp', options => '{"mode": "mirror"}')$$);
SELECT count(*) AS nothing_scheduled FROM sync.schedules;
-- Read in Paris: 02:30 local.
SELECT sync.schedule('nightly_drift', '30 2 * * *', 'reconcile', 'items_sp', 'Europe/Paris', '{"mode": "repair"}') > now() AS in_future;
SELECT sync.schedule('purge_hourly', '@hourly', 'purge') = date_trunc('hour', now()) + interval '1 hour' AS next_hour;
SELECT name, job, definition, cron, time_zone, options, paused,
       CASE WHEN name = 'nightly_drift' THEN next_run_local::time END AS local_time, last_run_at, runs FROM sync.jobs;
-- Missed for hours (no worker was up): run once, not once per hour missed.
UPDATE sync.schedules SET next_run_at = now() - interval '5 hours' WHERE name = 'purge_hourly';
SELECT sync.run_jobs('w1') AS ran;
SELECT sync.run_jobs('w2') AS ran_again;
SELECT name, last_status, runs, failures, next_run > now() AS next_in_future FROM sync.jobs WHERE name = 'purge_hourly';
SELECT kind, status, started_by, worker, scheduled_for = now() - interval '5 hours' AS for_the_missed_one, detail ? 'runs' AS purged
  FROM sync.runs WHERE kind = 'job';
-- A job that fails is recorded (and sent as an event, see the README).
SELECT sync.schedule('restage_items', '*/5 * * * *', 'restage', 'items_sp') > now() AS in_future;
SELECT sync.disable('items_sp');
UPDATE sync.schedules SET next_run_at = now() - interval '1 minute' WHERE name = 'restage_items';
SELECT sync.run_jobs('w1') AS ran;
SELECT name, last_status, last_error, runs, failures FROM sync.jobs WHERE name = 'restage_items';
-- Paused jobs are not run; resumed, from their next occurrence.
SELECT sync.pause_job('purge_hourly') AS next_while_paused;
UPDATE sync.schedules SET next_run_at = now() - interval '1 minute' WHERE name = 'purge_hourly';
SELECT sync.run_jobs('w1') AS ran_while_paused;
SELECT sync.pause_job('purge_hourly', false) > now() AS resumed;
SELECT sync.unschedule('purge_hourly');
SELECT * FROM regress.err($$SELECT sync.unschedule('purge_hourly')$$);
SELECT name FROM sync.jobs;
ROLLBACK;
