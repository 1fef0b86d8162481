-- Schema changes of source tables: event triggers put a definition whose
-- mapping, key or table changed in error with what to do; a new column, or
-- a type change that keeps the sent values, changes nothing.
\set SHOW_CONTEXT never
BEGIN;
CREATE TABLE hr.parts (id int PRIMARY KEY, name text NOT NULL, qty int, note text);
INSERT INTO hr.parts VALUES (1, 'bolt', 10, 'a'), (2, 'nut', 20, 'b');
SELECT sync.create_target('spd', kind => 'graph', config => '{"tenant_id": "t", "client_id": "c", "site_id": "s"}');
SELECT sync.define('parts_sp', source => 'hr.parts', target => 'spd', list => 'Parts') > 0 AS defined;
SELECT sync.map('parts_sp', 'name', 'Name'), sync.map('parts_sp', 'qty', 'Qty');
SELECT sync.enable('parts_sp');
SELECT source_name FROM sync.definitions WHERE name = 'parts_sp';
-- The ledger holds what was sent.
SELECT sync.provision('parts_sp');
SELECT * FROM sync.complete((SELECT jsonb_agg(jsonb_build_object('id', c.id, 'ok', true, 'list_id', 'L')) FROM sync.claim('spd', 10, worker => 'w') c));
SELECT added FROM sync.stage('hr.parts', '[{"id": "1"}, {"id": "2"}]');
SELECT * FROM sync.complete((SELECT jsonb_agg(jsonb_build_object('id', c.id, 'ok', true, 'target_id', 'i' || c.sync_key)) FROM sync.claim('spd', 10, worker => 'w') c));

-- A new column: ignored until mapped. A type change that keeps the values
-- sent: nothing to send.
ALTER TABLE hr.parts ADD COLUMN color text;
ALTER TABLE hr.parts ALTER COLUMN qty TYPE bigint;
SELECT state, state_reason FROM sync.definitions WHERE name = 'parts_sp';
SELECT added, updated, unchanged FROM sync.stage('hr.parts', '[{"id": "1"}, {"id": "2"}]');
-- An unmapped column renamed or dropped: nothing either.
ALTER TABLE hr.parts RENAME COLUMN note TO remark;
ALTER TABLE hr.parts DROP COLUMN remark;
SELECT state FROM sync.definitions WHERE name = 'parts_sp';

-- A mapped column renamed: error, with what to do; the fix, then resume.
ALTER TABLE hr.parts RENAME COLUMN name TO title;
SELECT state, state_reason FROM sync.definitions WHERE name = 'parts_sp';
SELECT updated FROM sync.stage('hr.parts', '[{"id": "1"}]');
SELECT sync.map('parts_sp', 'title', 'Name');
SELECT sync.resume('parts_sp');
SELECT state, backfill FROM sync.definitions WHERE name = 'parts_sp';
SELECT added, updated, unchanged FROM sync.stage('hr.parts', '[{"id": "1"}, {"id": "2"}]');

-- A mapped column given a type whose values differ: the values go (no
-- error: the mapping still fits).
ALTER TABLE hr.parts ALTER COLUMN qty TYPE numeric(10,1);
SELECT state FROM sync.definitions WHERE name = 'parts_sp';
SELECT updated FROM sync.stage('hr.parts', '[{"id": "1"}, {"id": "2"}]');

-- A mapped column dropped.
SAVEPOINT s;
ALTER TABLE hr.parts DROP COLUMN qty;
SELECT state, state_reason FROM sync.definitions WHERE name = 'parts_sp';
ROLLBACK TO SAVEPOINT s;

-- The key: its primary key dropped.
SAVEPOINT s;
ALTER TABLE hr.parts DROP CONSTRAINT parts_pkey;
SELECT state, state_reason FROM sync.definitions WHERE name = 'parts_sp';
ROLLBACK TO SAVEPOINT s;

-- The table renamed: error; resumed, it follows the table.
ALTER TABLE hr.parts RENAME TO components;
SELECT state, state_reason FROM sync.definitions WHERE name = 'parts_sp';
SELECT sync.resume('parts_sp');
SELECT state, source_name FROM sync.definitions WHERE name = 'parts_sp';

-- The table dropped.
DROP TABLE hr.components;
SELECT state, state_reason FROM sync.definitions WHERE name = 'parts_sp';
-- Other DDL goes on unhindered.
CREATE TABLE hr.unrelated (id int);
ALTER TABLE hr.unrelated ADD COLUMN x int;
DROP TABLE hr.unrelated;
ROLLBACK;
