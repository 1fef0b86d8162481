-- Deferred keys (issue 21): a definition whose queue holds sync.defer_after
-- open exports keeps large batches of changed keys as they came, and
-- sync.claim stages them once the queue is below half of it. Staging reads
-- the rows then: what changed meanwhile goes as it is then, a key deferred
-- twice is staged once, and a key that does not fit is refused at once.
\set SHOW_CONTEXT never
BEGIN;
SET LOCAL sync.defer_after = 4;   -- (batches of 4 keys or more defer)
SELECT sync.create_target('hooks_d', kind => 'webhook', secret => 'env:SYNCBRIDGE_SECRET_HOOKS',
       config => '{"url": "https://hooks.example.com/sb"}');
CREATE TABLE hr.defer_tickets (id int PRIMARY KEY, title text NOT NULL);
INSERT INTO hr.defer_tickets SELECT g, 'ticket ' || g FROM generate_series(1, 20) g;
SELECT sync.define('tickets_wh', source => 'hr.defer_tickets', target => 'hooks_d', list => 'tickets');
SELECT sync.enable('tickets_wh');
-- Small batches are staged at once, whatever the queue holds.
SELECT definition, added, deferred FROM sync.stage('hr.defer_tickets', '[{"id": "1"}, {"id": "2"}, {"id": "3"}]');
-- Below sync.defer_after open exports, a large batch is staged too.
SELECT definition, added, deferred FROM sync.stage('hr.defer_tickets', '[{"id": "4"}, {"id": "5"}, {"id": "6"}, {"id": "7"}]');
-- From it on, large batches wait, checked and de-duplicated.
SELECT definition, added, deferred FROM sync.stage('hr.defer_tickets', '[{"id": "8"}, {"id": "9"}, {"id": "10"}, {"id": "9"}, {"id": "11"}]');
SELECT n, keys FROM sync.deferred_keys ORDER BY id;
-- A key that does not fit its column is refused whole, even when deferring.
SELECT * FROM regress.err($$SELECT * FROM sync.stage('hr.defer_tickets', '[{"id": "12"}, {"id": "13"}, {"id": "x"}, {"id": "14"}]')$$);
SELECT count(*) AS batches FROM sync.deferred_keys;
-- Once keys are deferred, every large batch waits behind them (a small one
-- does not): the same keys again, and others.
SELECT definition, added, deferred FROM sync.stage('hr.defer_tickets', '[{"id": "8"}, {"id": "9"}, {"id": "10"}, {"id": "11"}]');
SELECT definition, added, deferred FROM sync.stage('hr.defer_tickets', '[{"id": "15"}]');
-- What is deferred shows in sync.status and counts as open work.
SELECT definition, pending, deferred FROM sync.status WHERE definition = 'tickets_wh';
SELECT open, due_later FROM sync.export_backlog('hooks_d');
-- Changes meanwhile: 9 edited, 10 deleted.
UPDATE hr.defer_tickets SET title = 'ticket 9, edited' WHERE id = 9;
DELETE FROM hr.defer_tickets WHERE id = 10;
-- The queue holds 8 open exports (at least half of 4): the claim stages
-- nothing deferred and hands out what is queued.
SELECT array_agg(sync_key ORDER BY sync_key::int) AS claimed FROM sync.claim('hooks_d', 100, worker => 'w1');
SELECT count(*) AS batches FROM sync.deferred_keys;
SELECT count(*) FROM sync.complete((SELECT jsonb_agg(jsonb_build_object('id', e.id, 'ok', true, 'target_id', 'm-' || e.sync_key))
                                      FROM sync.pending_exports e WHERE e.status = 'executing'), worker => 'w1');
-- The queue is empty: the next claim stages the oldest batch (the rows as
-- they are now: 9 edited, 10 gone and never sent: nothing) and hands it out.
SELECT sync_key, op, payload FROM sync.claim('hooks_d', 100, worker => 'w1') ORDER BY sync_key::int;
SELECT n FROM sync.deferred_keys ORDER BY id;
-- The same keys deferred again: staged once more, nothing new (what is in
-- flight is the base).
SELECT count(*) AS claimed FROM sync.claim('hooks_d', 100, worker => 'w1');
SELECT count(*) AS batches, coalesce(sum(n), 0) AS keys FROM sync.deferred_keys;
SELECT sync_key, op, status FROM sync.pending_exports WHERE sync_key IN ('8', '9', '10', '11') ORDER BY sync_key::int, id;
-- sync.defer_after = 0 never defers.
SET LOCAL sync.defer_after = 0;
SELECT definition, added, deferred FROM sync.stage('hr.defer_tickets', '[{"id": "16"}, {"id": "17"}, {"id": "18"}, {"id": "19"}, {"id": "20"}]');
-- Dropping the definition drops its deferred keys.
SET LOCAL sync.defer_after = 4;
SELECT definition, deferred FROM sync.stage('hr.defer_tickets', '[{"id": "1"}, {"id": "2"}, {"id": "3"}, {"id": "4"}]');
SELECT count(*) AS batches FROM sync.deferred_keys;
-- Exports waiting for sync.retry (or for approval) are not a queue a claim
-- drains: deferred keys do not wait behind them, however many.
UPDATE sync.pending_exports SET status = 'error', error_class = 'definite', last_error = 'regress: refused'
 WHERE status IN ('pending', 'failed') AND definition_id = (SELECT id FROM sync.definitions WHERE name = 'tickets_wh');
SELECT count(*) >= 2 AS errors_past_half FROM sync.pending_exports WHERE status = 'error';
SELECT count(*) >= 0 AS claimed FROM sync.claim('hooks_d', 100, worker => 'w1');
SELECT count(*) AS batches FROM sync.deferred_keys;
-- They still say the target is far behind: new large batches are deferred.
SELECT definition, deferred FROM sync.stage('hr.defer_tickets', '[{"id": "5"}, {"id": "6"}, {"id": "7"}, {"id": "8"}]');
SELECT count(*) AS batches FROM sync.deferred_keys;
SELECT sync.undefine('tickets_wh', force => true);
SELECT count(*) AS batches FROM sync.deferred_keys;
-- A backfill far behind records the next 20 chunks as a range of keys,
-- reading only where it ends; claims read and stage a range 5,000 keys at a
-- time as the queue drains, the rows as they are then.
CREATE TABLE hr.defer_big (id int PRIMARY KEY, v text NOT NULL);
INSERT INTO hr.defer_big SELECT g, 'v' || g FROM generate_series(1, 13000) g;
ANALYZE hr.defer_big;
SET LOCAL sync.defer_after = 500;
SELECT sync.define('big_wh', source => 'hr.defer_big', target => 'hooks_d', list => 'big');
SELECT sync.enable('big_wh');
SELECT done, rows_done, rows_total, staged, deferring FROM sync.backfill_step('big_wh', 600);
-- The rate of the steps that staged keys says nothing of the steps that
-- record ranges: the moving average starts over (an absurd rate recorded
-- for the staging steps is gone after the first range, not 70% of it).
UPDATE sync.cursors SET position = position || '{"recent_rate_per_s": 1e12}' WHERE kind = 'backfill' AND scope = 'big_wh';
SELECT (position ->> 'in_ranges')::boolean AS in_ranges FROM sync.cursors WHERE kind = 'backfill' AND scope = 'big_wh';
SELECT done, rows_done, rows_total, staged, deferring FROM sync.backfill_step('big_wh', 300);
SELECT (position ->> 'in_ranges')::boolean AS in_ranges, (position ->> 'recent_rate_per_s')::float8 < 1e11 AS started_over
  FROM sync.cursors WHERE kind = 'backfill' AND scope = 'big_wh';
SELECT done, rows_done, rows_total, staged, deferring FROM sync.backfill_step('big_wh', 300);
SELECT (position ->> 'eta_s') IS NOT NULL AS eta_known, (position ->> 'recent_rate_per_s')::float8 > 0 AS recent_rate
  FROM sync.cursors WHERE kind = 'backfill' AND scope = 'big_wh';
SELECT done, rows_done, rows_total, staged, deferring FROM sync.backfill_step('big_wh', 300);
SELECT keys IS NULL AS is_range, range_after, range_last, n FROM sync.deferred_keys ORDER BY id;
SELECT definition, pending, deferred, backfill FROM sync.status WHERE definition = 'big_wh';
-- Meanwhile: a row of the second range deleted, one edited.
DELETE FROM hr.defer_big WHERE id = 7000;
UPDATE hr.defer_big SET v = 'edited' WHERE id = 7001;
DO $$ DECLARE res jsonb; rounds int := 0; BEGIN
    LOOP
        SELECT coalesce(jsonb_agg(jsonb_build_object('id', c.id, 'ok', true, 'target_id', 'm-' || c.sync_key)), '[]')
          INTO res FROM sync.claim('hooks_d', 1000, worker => 'w1') c;
        EXIT WHEN jsonb_array_length(res) = 0;
        PERFORM sync.complete(res, worker => 'w1');
        rounds := rounds + 1;
    END LOOP;
    RAISE NOTICE 'claims: %', rounds;
END $$;
SELECT count(*) AS items, count(DISTINCT sync_key) AS keys, max(sync_key::int) AS last_key,
       bool_or(sync_key = '7000') AS has_7000, max(fields ->> 'v') FILTER (WHERE sync_key = '7001') AS v_7001
  FROM sync.ledger WHERE definition_id = (SELECT id FROM sync.definitions WHERE name = 'big_wh');
SELECT count(*) AS batches FROM sync.deferred_keys;
ROLLBACK;
