-- Definitions: sources, keys, replica identity, row filters, the publication.
\set SHOW_CONTEXT never
BEGIN;
SELECT sync.create_target('sp_hr', kind => 'graph', config => '{"tenant_id": "t", "client_id": "c", "site_id": "s"}');
SELECT sync.define('employees_sp', source => 'hr.employees', target => 'sp_hr', list => 'Employees',
                   row_filter => 'shareable', approval => 'deletes');
SELECT name, source_rel, target, list, key_columns, direction, conflict, row_filter, approval, delete_scope,
       max_attempts, state, backfill FROM sync.definitions;
-- The source table joins the publication with its key columns only.
SELECT pubname, schemaname, tablename, attnames FROM pg_publication_tables ORDER BY tablename;
-- A key other than the primary key must be unique and NOT NULL.
CREATE TABLE hr.badges (badge text NOT NULL UNIQUE, holder int, note text);
ALTER TABLE hr.badges REPLICA IDENTITY USING INDEX badges_badge_key;
SELECT sync.define('badges_sp', source => 'hr.badges', target => 'sp_hr', list => 'Badges', key => '{badge}');
-- Identifiers that need quoting work as names of real tables and columns.
CREATE SCHEMA "Ünïcode; schema";
CREATE TABLE "Ünïcode; schema"."table ""with"" quotes" ("clé; id" int PRIMARY KEY, "naïve value" text);
SELECT sync.define('unicode_sp', source => '"Ünïcode; schema"."table ""with"" quotes"', target => 'sp_hr', list => 'Ünïcode');
SELECT name, source_rel, key_columns FROM sync.definitions WHERE name = 'unicode_sp';
SELECT tablename, attnames FROM pg_publication_tables ORDER BY tablename;
-- Errors: each has a SQLSTATE, a detail and a hint, and changes nothing.
CREATE TABLE hr.no_pk (a int, b text);
CREATE TABLE hr.not_unique (a int NOT NULL, b text, PRIMARY KEY (a));
CREATE TABLE hr.nullable_key (a int, b text, UNIQUE (a));
ALTER TABLE hr.nullable_key REPLICA IDENTITY FULL;
CREATE TABLE hr.no_identity (a int PRIMARY KEY, b text);
ALTER TABLE hr.no_identity REPLICA IDENTITY NOTHING;
CREATE VIEW hr.v AS SELECT * FROM hr.employees;
\x on
SELECT * FROM regress.err($sql$SELECT sync.define('employees_sp', source => 'hr.employees', target => 'sp_hr', list => 'X')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.define('x', source => 'hr.nope', target => 'sp_hr', list => 'X')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.define('x', source => 'hr.employees; DROP TABLE hr.employees', target => 'sp_hr', list => 'X')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.define('x', source => 'a.b.c.d', target => 'sp_hr', list => 'X')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.define('x', source => 'hr.v', target => 'sp_hr', list => 'X')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.define('x', source => 'hr.employees', target => 'nope', list => 'X')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.define('x', source => 'hr.no_pk', target => 'sp_hr', list => 'X')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.define('x', source => 'hr.not_unique', target => 'sp_hr', list => 'X', key => '{b}')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.define('x', source => 'hr.nullable_key', target => 'sp_hr', list => 'X', key => '{a}')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.define('x', source => 'hr.employees', target => 'sp_hr', list => 'X', key => '{nope}')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.define('x', source => 'hr.employees', target => 'sp_hr', list => 'X', key => '{id,id}')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.define('x', source => 'hr.no_identity', target => 'sp_hr', list => 'X')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.define('x', source => 'hr.employees', target => 'sp_hr', list => 'X', direction => 'sideways')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.define('x', source => 'hr.employees', target => 'sp_hr', list => 'X', approval => 'maybe')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.define('x', source => 'hr.employees', target => 'sp_hr', list => E'bad\nlist')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.define('x', source => 'hr.employees', target => 'sp_hr', list => 'X', max_attempts => 0)$sql$);
-- Row filters: one boolean expression over the row's own columns.
SELECT * FROM regress.err($sql$SELECT sync.define('x', source => 'hr.employees', target => 'sp_hr', list => 'X', row_filter => 'region =')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.define('x', source => 'hr.employees', target => 'sp_hr', list => 'X', row_filter => 'colour = ''red''')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.define('x', source => 'hr.employees', target => 'sp_hr', list => 'X', row_filter => 'salary + 1')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.define('x', source => 'hr.employees', target => 'sp_hr', list => 'X', row_filter => 'true; DROP TABLE hr.employees')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.define('x', source => 'hr.employees', target => 'sp_hr', list => 'X', row_filter => 'true) OR (true')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.define('x', source => 'hr.employees', target => 'sp_hr', list => 'X', row_filter => 'id IN (SELECT 1)')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.define('x', source => 'hr.employees', target => 'sp_hr', list => 'X', row_filter => 'true FROM pg_authid')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.define('x', source => 'hr.employees', target => 'sp_hr', list => 'X', row_filter => 'true UNION SELECT false')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.define('x', source => 'hr.employees', target => 'sp_hr', list => 'X', row_filter => 'true, false')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.define('x', source => 'hr.employees', target => 'sp_hr', list => 'X', row_filter => 'public.nope(id)')$sql$);
\x off
-- A trailing comment cannot swallow what the filter is embedded in.
SELECT sync.define('commented', source => 'hr.employees', target => 'sp_hr', list => 'X', row_filter => 'shareable -- and more');
SELECT count(*) AS commented_rows FROM sync.preview('commented');
SELECT sync.undefine('commented');
SELECT count(*) AS definitions FROM sync.definitions;
SELECT count(*) AS employees FROM hr.employees;
-- Lifecycle: enable, pause, resume, disable; wrong transitions are refused.
SELECT sync.enable('employees_sp');
SELECT sync.pause('employees_sp', 'maintenance');
SELECT state, state_reason FROM sync.definitions WHERE name = 'employees_sp';
\x on
SELECT * FROM regress.err($sql$SELECT sync.pause('badges_sp')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.enable('nope')$sql$);
\x off
SELECT sync.resume('employees_sp');
SELECT sync.disable('badges_sp');
SELECT name, state FROM sync.definitions ORDER BY name;
SELECT tablename FROM pg_publication_tables ORDER BY tablename;
-- undefine refuses to forget items on the target unless forced.
INSERT INTO sync.ledger (definition_id, sync_key, list, fields, hash)
SELECT id, '1', 'Employees', '{}', '\x00' FROM sync.definitions WHERE name = 'employees_sp';
\x on
SELECT * FROM regress.err($sql$SELECT sync.undefine('employees_sp')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.drop_target('sp_hr')$sql$);
\x off
-- Its queue goes with it (pending_exports has no foreign key: a trigger
-- deletes a dropped definition's exports).
INSERT INTO sync.pending_exports (id, definition_id, sync_key, op, list, payload) OVERRIDING SYSTEM VALUE
SELECT -1, id, '1', 'add', 'Employees', '{}' FROM sync.definitions WHERE name = 'employees_sp';
SELECT id AS dropped_id FROM sync.definitions WHERE name = 'employees_sp' \gset
SELECT sync.undefine('employees_sp', force => true);
SELECT count(*) AS exports_left FROM sync.pending_exports WHERE definition_id = :dropped_id;
-- Staging for a definition dropped meanwhile stages nothing.
SELECT * FROM sync._stage_def(:dropped_id, '[{"id": "1"}]', NULL, NULL);
SELECT sync.undefine('badges_sp');
SELECT sync.undefine('unicode_sp');
SELECT count(*) AS publication_tables FROM pg_publication_tables WHERE pubname = 'syncbridge_pub';
ROLLBACK;
