-- Issue 13: the attacks of the audit, performed as the README's roles (an
-- admin login in syncbridge_admin, a worker login in syncbridge_worker);
-- each is refused, and nothing it aimed at happens.
\set SHOW_CONTEXT never
BEGIN;
CREATE ROLE regress_sb_admin LOGIN IN ROLE syncbridge_admin;
CREATE ROLE regress_sb_worker LOGIN REPLICATION IN ROLE syncbridge_worker;
GRANT USAGE ON SCHEMA hr TO regress_sb_admin, regress_sb_worker;
GRANT SELECT ON hr.employees TO regress_sb_admin, regress_sb_worker;
CREATE TABLE hr.secrets (id int PRIMARY KEY, secret text);   -- the admin may not read it
CREATE TABLE hr.audit (what text);                            -- what a planted function would write
GRANT INSERT ON hr.audit TO PUBLIC;
SELECT sync.create_target('sp_hr', kind => 'graph', config => '{"tenant_id": "t", "client_id": "c", "site_id": "s"}');

SET SESSION AUTHORIZATION regress_sb_admin;
SELECT sync.define('emp', source => 'hr.employees', target => 'sp_hr', list => 'Employees', approval => 'deletes') > 0 AS defined;
\x on
-- 1. Expressions: only immutable functions and operators of pg_catalog.
SELECT * FROM regress.err($sql$SELECT sync.map('emp', NULL, 'X', transform => $t$pg_notify('leak', query_to_xml('select rolname, rolpassword from pg_authid', true, false, '')::text)::text$t$)$sql$);
SELECT * FROM regress.err($sql$SELECT sync.map('emp', NULL, 'X', transform => $t$query_to_xml('select 1', true, false, '')::text$t$)$sql$);
SELECT * FROM regress.err($sql$SELECT sync.map('emp', NULL, 'X', transform => $t$lo_export(1, '/tmp/x')::text$t$)$sql$);
SELECT * FROM regress.err($sql$SELECT sync.map('emp', NULL, 'X', transform => $t$pg_drop_replication_slot('standby')::text$t$)$sql$);
SELECT * FROM regress.err($sql$SELECT sync.map('emp', NULL, 'X', transform => $t$now()::text$t$)$sql$);
SELECT * FROM regress.err($sql$SELECT sync.map('emp', NULL, 'X', transform => $t$current_user::text$t$)$sql$);
SELECT * FROM regress.err($sql$SELECT sync.map('emp', NULL, 'X', transform => $t$xmin::text$t$)$sql$);
SELECT * FROM regress.err($sql$SELECT sync.map('emp', NULL, 'X', transform => $t$count(*)$t$)$sql$);
SELECT * FROM regress.err($sql$SELECT sync.map('emp', NULL, 'X', transform => $t$row_number() OVER ()$t$)$sql$);
SELECT * FROM regress.err($sql$SELECT sync.map('emp', NULL, 'X', transform => $t$generate_series(1, id)$t$)$sql$);
SELECT * FROM regress.err($sql$SELECT sync.shard('emp', $t$pg_catalog.pg_sleep(1) IS NULL$t$, list => 'L')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.define('emp2', source => 'hr.employees', target => 'sp_hr', list => 'L', row_filter => $t$nextval('pg_class') > 0$t$)$sql$);
-- standard_conforming_strings = off does not let a subquery through.
SET standard_conforming_strings = off;
SELECT * FROM regress.err($sql$SELECT sync.map('emp', NULL, 'X', transform => $t$'a\' || (SELECT secret FROM hr.secrets LIMIT 1) || '$t$)$sql$);
RESET standard_conforming_strings;
\x off
-- A planted function on the search_path is not what runs: expressions are
-- resolved and stored under search_path = pg_catalog, pg_temp.
RESET SESSION AUTHORIZATION;
CREATE FUNCTION public.upper(varchar) RETURNS text LANGUAGE sql AS $$ INSERT INTO hr.audit VALUES ('planted upper ran as ' || current_user) RETURNING 'pwned' $$;
GRANT EXECUTE ON FUNCTION public.upper(varchar) TO PUBLIC;
ALTER TABLE hr.employees ADD COLUMN code varchar(10) DEFAULT 'ab';
SET SESSION AUTHORIZATION regress_sb_admin;
SET search_path = public, pg_catalog;
SELECT sync.map('emp', 'code', 'Code', transform => 'upper(code)');
SELECT sync.map('emp', 'full_name', 'Title');
RESET search_path;
SELECT field, transform FROM sync.field_maps ORDER BY position;
SELECT sync_key, fields ->> 'Code' AS code FROM sync.preview('emp', 2);
RESET SESSION AUTHORIZATION;
SET search_path = public, pg_catalog;
SELECT sync_key, fields ->> 'Code' AS code FROM sync.preview('emp', 1);
SELECT count(*) AS staged FROM sync.plan('emp');
RESET search_path;
SELECT count(*) AS planted_calls FROM hr.audit;
-- An expression written into the table behind the functions' back (only a
-- superuser can) is checked again when the definition compiles.
UPDATE sync.field_maps SET transform = $t$pg_notify('leak', 'x')::text$t$ WHERE field = 'Code';
UPDATE sync.definitions SET revision = revision + 1 WHERE name = 'emp';
\x on
SELECT * FROM regress.err($sql$SELECT * FROM sync.preview('emp')$sql$);
\x off
UPDATE sync.field_maps SET transform = 'upper((code)::text)' WHERE field = 'Code';
-- The evaluating role: owner of the three functions that run compiled SQL,
-- SELECT on the source tables and nothing else of ours.
SELECT p.proname, p.proowner::regrole, p.prosecdef FROM pg_proc p
 WHERE p.pronamespace = 'sync'::regnamespace AND p.proname IN ('_mapped_rows_all', '_mapped_rows_by_key', '_source_keys') ORDER BY 1;
SELECT has_table_privilege('syncbridge_reader', 'hr.employees', 'SELECT') AS reads_source,
       has_table_privilege('syncbridge_reader', 'hr.secrets', 'SELECT') AS reads_other,
       has_table_privilege('syncbridge_reader', 'sync.ledger', 'SELECT') AS reads_ledger,
       has_table_privilege('syncbridge_owner', 'hr.employees', 'SELECT') AS owner_reads_source;
-- Every function runs with a pinned search_path; all but define (which only
-- resolves the table name as its caller) and the publication's two as syncbridge_owner or _reader.
SELECT p.proname, p.prosecdef, p.proowner::regrole FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
 WHERE p.pronamespace = 'sync'::regnamespace AND l.lanname IN ('plpgsql', 'sql')
   AND (p.proname = 'define' OR NOT p.prosecdef OR NOT 'search_path=pg_catalog, pg_temp' = ANY (p.proconfig)
        OR p.proowner::regrole::text NOT IN ('syncbridge_owner', 'syncbridge_reader'))
 ORDER BY 1;

-- 4. define checks the caller's rights; the publication keeps out tables
-- without a replica identity.
SET SESSION AUTHORIZATION regress_sb_admin;
\x on
SELECT * FROM regress.err($sql$SELECT sync.define('steal', source => 'hr.secrets', target => 'sp_hr', list => 'L')$sql$);
\x off
RESET SESSION AUTHORIZATION;
CREATE TABLE hr.fragile (id int PRIMARY KEY, v text);
INSERT INTO hr.fragile VALUES (1, 'a');
SELECT sync.define('fragile', source => 'hr.fragile', target => 'sp_hr', list => 'F') > 0 AS defined;
ALTER TABLE hr.fragile REPLICA IDENTITY NOTHING;
SELECT sync.enable('fragile');
SELECT tablename FROM pg_publication_tables ORDER BY 1;
UPDATE hr.fragile SET v = 'b';
DELETE FROM hr.fragile;
SELECT sync.undefine('fragile');
SELECT has_table_privilege('syncbridge_reader', 'hr.fragile', 'SELECT') AS reader_kept_fragile;

-- 5. No direct writes: every change goes through the functions' checks.
SET SESSION AUTHORIZATION regress_sb_admin;
\x on
SELECT * FROM regress.err($sql$UPDATE sync.targets SET config = config || '{"client_secret": "hunter2"}'$sql$);
SELECT * FROM regress.err($sql$INSERT INTO sync.field_maps (definition_id, field, transform, position) SELECT id, 'X', 'pg_notify(''a'', ''b'')', 99 FROM sync.definitions$sql$);
SELECT * FROM regress.err($sql$UPDATE sync.definitions SET source_rel = 'hr.secrets'::regclass$sql$);
\x off
RESET SESSION AUTHORIZATION;
SELECT sync.enable('emp');
SELECT added FROM sync.stage('hr.employees', '[{"id": "1"}, {"id": "4"}]');
SELECT sync.complete(jsonb_agg(jsonb_build_object('id', c.id, 'ok', true, 'target_id', 'item-' || c.sync_key, 'etag', 'v1')))
  FROM sync.claim('sp_hr', 10, worker => 'w1') c;
DELETE FROM hr.employees WHERE id = 4;
SELECT deleted FROM sync.stage('hr.employees', '[{"id": "4"}]');
SET SESSION AUTHORIZATION regress_sb_worker;
\x on
-- the worker approves a delete itself
SELECT * FROM regress.err($sql$UPDATE sync.pending_exports SET status = 'pending', approved_by = 'regress_sb_worker', approved_at = now() WHERE op = 'delete'$sql$);
SELECT * FROM regress.err($sql$SELECT sync.approve_all()$sql$);
-- re-activates a definition the admin disabled
SELECT * FROM regress.err($sql$UPDATE sync.definitions SET state = 'active'$sql$);
-- forges a ledger row to have an item syncbridge never created deleted
SELECT * FROM regress.err($sql$INSERT INTO sync.ledger (definition_id, sync_key, list, target_id, fields, hash) SELECT id, '999', 'Employees', 'foreign-item', '{}', '\x00' FROM sync.definitions WHERE name = 'emp'$sql$);
SELECT * FROM regress.err($sql$UPDATE sync.targets SET status = 'ok'$sql$);
\x off
SELECT count(*) AS claimed_unapproved_delete FROM sync.claim('sp_hr', 10, worker => 'w1');
-- The worker needs no right on the source table: rows are read by syncbridge_reader.
RESET SESSION AUTHORIZATION;
REVOKE SELECT ON hr.employees FROM regress_sb_worker;
UPDATE hr.employees SET full_name = 'Ada King' WHERE id = 1;
SET SESSION AUTHORIZATION regress_sb_worker;
SELECT has_table_privilege('hr.employees', 'SELECT') AS worker_reads_source, updated
  FROM sync.stage('hr.employees', '[{"id": "1"}]');
SELECT sync.report_target_status('sp_hr', 'ok', 'fine');
RESET SESSION AUTHORIZATION;
SELECT status, status_detail FROM sync.targets;
-- claim checks again what the queue says, whoever wrote it (a superuser here):
-- a delete approved by a role outside syncbridge_admin goes back to approval,
-- a delete of an item syncbridge did not create is cancelled.
UPDATE sync.pending_exports SET status = 'pending', approved_by = 'regress_sb_worker', approved_at = now() WHERE op = 'delete';
SELECT count(*) AS claimed FROM sync.claim('sp_hr', 10, worker => 'w1');
SELECT op, status, last_error FROM sync.pending_exports WHERE op = 'delete';
UPDATE sync.ledger SET join_type = 'joined' WHERE sync_key = '4';
UPDATE sync.pending_exports SET status = 'pending', approved_by = 'regress_sb_admin', approved_at = now() WHERE op = 'delete';
SELECT count(*) AS claimed FROM sync.claim('sp_hr', 10, worker => 'w1');
SELECT op, status, last_error FROM sync.pending_exports WHERE op = 'delete';

-- 10. A value shaped like a reference is a reference only in a field mapped
-- with reference => on the same target; elsewhere it travels as its JSON text.
CREATE TABLE hr.docs (id int PRIMARY KEY, meta jsonb);
INSERT INTO hr.docs VALUES (1, '{"@ref": "1", "@def": "emp"}');
SELECT sync.define('docs', source => 'hr.docs', target => 'sp_hr', list => 'Docs') > 0 AS defined;
SELECT sync.enable('docs');
SELECT added FROM sync.stage('hr.docs', '[{"id": "1"}]');
SELECT c.payload -> 'meta' AS meta FROM sync.claim('sp_hr', 10, worker => 'w1') c WHERE c.definition = 'docs';

-- 13. Bad input is refused with a SQLSTATE, a detail and a hint, and changes nothing.
\x on
SELECT * FROM regress.err($sql$SELECT * FROM sync.stage('hr.employees', '[{"id": "1"}, {"id": "not a number"}]')$sql$);
SELECT * FROM regress.err($sql$SELECT * FROM sync.claim('sp_hr', 1, lease_seconds => -10)$sql$);
SELECT * FROM regress.err($sql$SELECT * FROM sync.claim('sp_hr', 1, worker => repeat('w', 300))$sql$);
SELECT * FROM regress.err($sql$SELECT * FROM sync.backfill_step('emp', chunk_keys => '[]', chunk_after => NULL, chunk_last => '{"evil": true}')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.pause('emp', repeat('x', 5000))$sql$);
SELECT * FROM regress.err($sql$SELECT * FROM sync.complete('[{"id": 1.5, "ok": true}]')$sql$);
SELECT * FROM regress.err($sql$SELECT * FROM sync.complete('[{"id": 1, "ok": false, "retry_after": 1e300}]')$sql$);
SELECT * FROM regress.err($sql$SELECT * FROM sync.complete('[{"id": 1, "ok": false, "retry_after": -5}]')$sql$);
SELECT * FROM regress.err($sql$SELECT * FROM sync.preview('emp', -1)$sql$);
SELECT * FROM regress.err($sql$SELECT * FROM sync.purge('100000 years')$sql$);
SELECT * FROM regress.err($sql$SELECT * FROM sync.export_backlog('sp_hr', 'NaN')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.checkpoint('0/1', 'Bad Slot; DROP')$sql$);
\x off
SELECT name, state FROM sync.definitions ORDER BY name;

-- 8. The configuration holds no secret, however it is spelled or hidden,
-- and each value has its type and bounds; a trigger checks every write.
\x on
SELECT * FROM regress.err($sql$SELECT sync.alter_target('sp_hr', config => '{"tenant_id": {"client_secret": "hunter2"}}')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.alter_target('sp_hr', config => jsonb_build_object(E'\u0441lient_s\u0435cret', 'hunter2'))$sql$);
SELECT * FROM regress.err($sql$SELECT sync.alter_target('sp_hr', config => jsonb_build_object(E'\uff43\uff4c\uff49\uff45\uff4e\uff54\uff3f\uff53\uff45\uff43\uff52\uff45\uff54', 'hunter2'))$sql$);
SELECT * FROM regress.err($sql$SELECT sync.alter_target('sp_hr', config => jsonb_build_object(E'client_sec\u200bret', 'hunter2'))$sql$);
SELECT * FROM regress.err($sql$SELECT sync.alter_target('sp_hr', config => '{"base_url": "https://user:hunter2@graph.example.com/v1.0"}')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.alter_target('sp_hr', config => '{"base_url": "https://graph.example.com/v1.0?code=hunter2"}')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.alter_target('sp_hr', config => '{"base_url": "https://graph.example.com/v1.0#hunter2"}')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.alter_target('sp_hr', config => '{"tenant_id": 42}')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.alter_target('sp_hr', config => '{"timeout_ms": -5}')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.alter_target('sp_hr', config => '{"budget_per_min": 1e300}')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.create_target('t2', kind => 'graph', config => '{"tenant_id": null, "client_id": "c", "site_id": "s"}')$sql$);
-- even a superuser's direct write
SELECT * FROM regress.err($sql$UPDATE sync.targets SET config = config || '{"client_secret": "hunter2"}'$sql$);
\x off
SELECT sync.alter_target('sp_hr', config => '{"max_concurrent_batches": 8, "timeout_ms": 5000, "base_url": "https://graph.microsoft.com/v1.0"}');
SELECT config FROM sync.targets;
ROLLBACK;
