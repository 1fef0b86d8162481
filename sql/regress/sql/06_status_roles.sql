-- sync.status, and the two roles' privileges.
\set SHOW_CONTEXT never
BEGIN;
SELECT sync.create_target('sp_hr', kind => 'graph', config => '{"tenant_id": "t", "client_id": "c", "site_id": "s"}');
SELECT sync.define('employees_sp', source => 'hr.employees', target => 'sp_hr', list => 'Employees');
SELECT definition, state, source, target, list, backfill, pending, awaiting_approval, executing, failed, error, exported, items,
       oldest_pending_age, last_error FROM sync.status;
SELECT sync.enable('employees_sp');
SELECT * FROM sync.stage('hr.employees', '[{"id": "1"}, {"id": "2"}]', '0/10');
SELECT definition, state, pending, oldest_pending_age IS NOT NULL AS has_age, staged_lsn FROM sync.status;
-- Roles exist, without login.
SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname LIKE 'syncbridge%' ORDER BY 1;
CREATE ROLE regress_worker LOGIN IN ROLE syncbridge_worker;
CREATE ROLE regress_admin LOGIN IN ROLE syncbridge_admin;
CREATE ROLE regress_nobody LOGIN;
GRANT SELECT ON hr.employees TO regress_worker, regress_admin;
GRANT USAGE ON SCHEMA hr TO regress_worker, regress_admin;
-- The worker stages, claims and completes ...
SET ROLE regress_worker;
SELECT * FROM sync.stage('hr.employees', '[{"id": "3"}]', '0/20');
SELECT count(*) AS claimed FROM sync.claim('sp_hr', 1, worker => 'regress_worker');
-- ... writes a standby snapshot for its slot (the worker's role only) ...
SELECT sync._standby_snapshot() IS NOT NULL AS snapshot_written, sync._log_standby_snapshot() > 0 AS written_directly,
       sync._nudge_slot('no_such_slot') AS nudged;
-- ... but cannot configure, nor stage deferred keys but through sync.claim.
\x on
SELECT * FROM regress.err($sql$SELECT sync._undefer('sp_hr')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.define('x', source => 'hr.employees', target => 'sp_hr', list => 'X')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.approve_all()$sql$);
SELECT * FROM regress.err($sql$UPDATE sync.definitions SET row_filter = 'true'$sql$);
SELECT * FROM regress.err($sql$INSERT INTO sync.compiled SELECT * FROM sync.compiled$sql$);
\x off
RESET ROLE;
-- The admin configures, approves, and reads everything; the compiled SQL cache is not theirs to write.
SET ROLE regress_admin;
SELECT sync.pause('employees_sp');
SELECT sync.resume('employees_sp');
SELECT definition, state, pending, executing FROM sync.status;
\x on
SELECT * FROM regress.err($sql$UPDATE sync.compiled SET rows_all = 'SELECT 1'$sql$);
SELECT * FROM regress.err($sql$SELECT sync._standby_snapshot()$sql$);
SELECT * FROM regress.err($sql$SELECT sync._log_standby_snapshot()$sql$);
SELECT * FROM regress.err($sql$SELECT pg_catalog.pg_log_standby_snapshot()$sql$) WHERE current_setting('server_version_num')::int >= 160000
UNION ALL SELECT '42501', 'permission denied for function pg_log_standby_snapshot', NULL, NULL WHERE current_setting('server_version_num')::int < 160000;
\x off
RESET ROLE;
-- Anyone else sees nothing.
SET ROLE regress_nobody;
\x on
SELECT * FROM regress.err($sql$SELECT * FROM sync.status$sql$);
SELECT * FROM regress.err($sql$SELECT sync.create_target('x', kind => 'graph')$sql$);
\x off
RESET ROLE;
ROLLBACK;
