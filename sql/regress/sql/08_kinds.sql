-- Issue 15: what each kind can do is data (sync.target_kinds, the same facts
-- as the worker's registry). A kind whose containers exist already has
-- nothing to provision; a move costs what the kind's moves say.
SELECT kind, containers, delete_mode, moves, key_lookup, pull FROM sync.target_kinds ORDER BY kind;
SELECT sync.create_target('gh', kind => 'github', config => '{"owner": "o", "repo": "r"}');
CREATE TABLE hr.tickets (id int PRIMARY KEY, title text NOT NULL, team text NOT NULL);
INSERT INTO hr.tickets VALUES (1, 'one', 'a'), (2, 'two', 'b');
SELECT sync.define('issues_gh', source => 'hr.tickets', target => 'gh', list => 'Issues') > 0 AS defined;
\x on
SELECT * FROM regress.err($sql$SELECT sync.provision('issues_gh')$sql$);
\x off
-- On Graph a move is a create and a delete: 2 requests.
SELECT sync.create_target('sp_kinds', kind => 'graph', config => '{"tenant_id": "t", "client_id": "c", "site_id": "s"}');
SELECT sync.define('tickets_sp', source => 'hr.tickets', target => 'sp_kinds', list => 'Tickets') > 0 AS defined;
SELECT sync.shard('tickets_sp', $$team = 'b'$$, list => 'Tickets B');
INSERT INTO sync.ledger (definition_id, sync_key, list, target_id, hash, fields, join_type)
SELECT d.id, '2', 'Tickets', 'item-2', '\x00', '{}', 'provisioned' FROM sync.definitions d WHERE d.name = 'tickets_sp';
SELECT op, sync_key, list, from_list, requests, cost FROM sync.plan('tickets_sp') ORDER BY sync_key;
-- Issue 19: each kind priced in its own unit. 120 new rows: one request each
-- on GitHub (80 a minute); Jira creates 50 to a bulk request with a search
-- before it and a read of the new issues after it (3 requests per 50
-- issues); Linear sends 50 mutations to a
-- request at 3 complexity points each; Graph 20 to a $batch at 2 RU each.
CREATE TABLE hr.bulk (id int PRIMARY KEY, title text NOT NULL);
INSERT INTO hr.bulk SELECT g, 'issue ' || g FROM generate_series(1, 120) g;
SELECT sync.create_target('jira_kinds', kind => 'jira', config => '{"site": "acme.atlassian.net", "project_key": "OPS"}');
SELECT sync.create_target('linear_kinds', kind => 'linear', config => '{"team_id": "ENG"}');
SELECT sync.define('bulk_' || t, source => 'hr.bulk', target => t, list => 'Bulk') > 0 AS defined
  FROM unnest(ARRAY['gh', 'jira_kinds', 'linear_kinds', 'sp_kinds']) t;
SELECT kind, bulk_ops, item_costs FROM sync.target_kinds ORDER BY kind;
SELECT definition, adds, requests, batches, cost, cost_unit, budget_per_min, est_drain
  FROM sync.plan_summary() WHERE definition LIKE 'bulk%' ORDER BY definition;
SELECT op, requests, cost FROM sync.plan('bulk_jira_kinds') LIMIT 1;
SELECT sync.undefine('bulk_' || t) FROM unnest(ARRAY['gh', 'jira_kinds', 'linear_kinds', 'sp_kinds']) t;
SELECT sync.drop_target(t) FROM unnest(ARRAY['jira_kinds', 'linear_kinds']) t;
DROP TABLE hr.bulk;

-- GitHub reads its issues back (pull updated_since) every pull_interval
-- seconds (the end-to-end tests pull its repositories).
BEGIN;
SELECT sync.alter_target('gh', config => '{"owner": "o", "repo": "r", "pull_interval": 120}');
SELECT extract(epoch FROM sync._pull_interval('gh')) AS pull_interval;
ROLLBACK;

-- Issue 20: signed webhooks. The URL is http:// or https:// (anything else
-- is refused with 22023, nothing stored); the numeric keys have bounds.
BEGIN;
SELECT sync.create_target('hooks', kind => 'webhook', secret => 'env:SYNCBRIDGE_SECRET_HOOKS',
       config => '{"url": "https://hooks.example.com/sb", "concurrency": 8, "batch_max_events": 50, "batch_max_bytes": 65536}');
\x on
SELECT * FROM regress.err($sql$SELECT sync.create_target('h2', kind => 'webhook', config => '{"url": "ftp://hooks.example.com/sb"}')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.create_target('h2', kind => 'webhook', config => '{"url": "hooks.example.com/sb"}')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.create_target('h2', kind => 'webhook', config => '{"url": "https://hooks.example.com/sb?token=hunter2"}')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.alter_target('hooks', config => '{"concurrency": 0}')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.alter_target('hooks', config => '{"batch_max_events": 101}')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.alter_target('hooks', config => '{"batch_max_bytes": 100}')$sql$);
\x off
SELECT name, config FROM sync.targets WHERE kind = 'webhook' ORDER BY name;
-- A receiver's 410 Gone disables the target (the worker reports it): other
-- reports leave it so, claim hands nothing out and nothing counts as
-- open, until sync.enable_target; then the queue goes out as it was.
SELECT sync.define('hooked', source => 'hr.employees', target => 'hooks', list => 'events') > 0 AS defined;
SELECT sync.enable('hooked');
SELECT added FROM sync.stage('hr.employees', '[{"id": "1"}]', lsn => '0/16B3748');
SELECT added FROM sync.stage('hr.employees', '[{"id": "2"}]');
SELECT sync.report_target_status('hooks', 'disabled', 'the receiver answered 410 Gone');
SELECT sync.report_target_status('hooks', 'ok', '');
SELECT status, status_detail, disabled_at IS NOT NULL AS disabled FROM sync.targets WHERE name = 'hooks';
SELECT count(*) AS claimed FROM sync.claim('hooks', 10);
SELECT open FROM sync.export_backlog('hooks');
SELECT definition, target_status, pending FROM sync.status WHERE definition = 'hooked';
SELECT sync.enable_target('hooks');
SELECT status, disabled_at IS NULL AS enabled FROM sync.targets WHERE name = 'hooks';
-- What a webhook's event needs: the key as an object, where the change came from.
SELECT op, sync_key, key_values, staged_lsn, staged_run, staged_at ~ '^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$' AS utc_time
  FROM sync.claim('hooks', 10) ORDER BY sync_key;
\x on
SELECT * FROM regress.err($sql$SELECT sync.enable_target('hooks')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.enable_target('nope')$sql$);
\x off
ROLLBACK;
