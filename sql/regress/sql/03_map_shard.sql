-- Mappings, shards, and what a definition sends (type serialization).
\set SHOW_CONTEXT never
BEGIN;
SELECT sync.create_target('sp_hr', kind => 'graph', config => '{"tenant_id": "t", "client_id": "c", "site_id": "s"}');
SELECT sync.create_target('sp_other', kind => 'graph', config => '{"tenant_id": "t", "client_id": "c", "site_id": "s2"}');
SELECT sync.define('employees_sp', source => 'hr.employees', target => 'sp_hr', list => 'Employees', row_filter => 'shareable');
-- Without mappings every column goes under its own name.
SELECT sync_key, list, fields FROM sync.preview('employees_sp');
SELECT sync.map('employees_sp', 'full_name', 'Title');
SELECT sync.map('employees_sp', 'email', 'Email');
SELECT sync.map('employees_sp', 'salary', 'Salary');
SELECT sync.map('employees_sp', 'hired', 'Hired');
SELECT sync.map('employees_sp', 'active', 'Active');
SELECT sync.map('employees_sp', 'manager_id', 'Manager', reference => 'employees_sp');
SELECT sync.map('employees_sp', NULL, 'Initials', transform => $$left(full_name, 1) || '.'$$);
SELECT sync.map('employees_sp', 'region', 'SpRegion', direction => 'pull');
-- Mapping a field again replaces it.
SELECT sync.map('employees_sp', 'email', 'Email', transform => 'upper(email)');
SELECT field, column_name, direction, transform, transform_type, reference, position FROM sync.field_maps ORDER BY position;
SELECT sync.shard('employees_sp', $$region = 'EU'$$, list => 'Employees EU');
SELECT sync.shard('employees_sp', $$region = 'US' AND salary > 1000$$, list => 'Employees US');
SELECT position, predicate, list FROM sync.shards ORDER BY position;
-- Pulled fields are not sent; the filter keeps Dan (not shareable) out.
SELECT sync_key, list, fields, hash FROM sync.preview('employees_sp');
SELECT field, kind, type FROM jsonb_to_recordset((SELECT fields FROM sync.compiled)) AS f(field text, kind text, type text);
-- Errors.
\x on
SELECT * FROM regress.err($sql$SELECT sync.map('employees_sp', 'nope', 'Nope')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.map('employees_sp', 'full_name', 'Full Name')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.map('employees_sp', 'full_name', $$Title'; DROP TABLE hr.employees; --$$)$sql$);
SELECT * FROM regress.err($sql$SELECT sync.map('employees_sp', 'id', 'SyncKey')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.map('employees_sp', NULL, 'X')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.map('employees_sp', 'full_name', 'X', direction => 'pull', transform => 'upper(full_name)')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.map('employees_sp', 'full_name', 'X', transform => 'upper(nope)')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.map('employees_sp', 'full_name', 'X', transform => '(SELECT 1)')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.map('employees_sp', 'manager_id', 'X', reference => 'nope')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.map('nope', 'full_name', 'X')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.shard('employees_sp', 'region', list => 'X')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.shard('employees_sp', 'true', list => NULL)$sql$);
SELECT * FROM regress.err($sql$SELECT sync.unmap('employees_sp', 'Nope')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.unshard('employees_sp', 9)$sql$);
\x off
SELECT count(*) AS mappings FROM sync.field_maps;
-- A reference to a definition on another target is refused.
SELECT sync.define('other_sp', source => 'hr.employees', target => 'sp_other', list => 'Other');
\x on
SELECT * FROM regress.err($sql$SELECT sync.map('employees_sp', 'manager_id', 'Boss', reference => 'other_sp')$sql$);
\x off
-- Columns that cannot be field names need an explicit mapping.
CREATE TABLE hr.odd ("id" int PRIMARY KEY, "full name" text);
SELECT sync.define('odd_sp', source => 'hr.odd', target => 'sp_hr', list => 'Odd');
\x on
SELECT * FROM regress.err($sql$SELECT * FROM sync.preview('odd_sp')$sql$);
\x off
SELECT sync.map('odd_sp', 'full name', 'FullName');
INSERT INTO hr.odd VALUES (1, 'x');
SELECT sync_key, fields FROM sync.preview('odd_sp');
-- The compiled SQL follows the table: a dropped mapped column is reported.
SELECT sync.unmap('employees_sp', 'Initials');
SELECT sync.unmap('employees_sp', 'Email');
ALTER TABLE hr.employees DROP COLUMN email;
SELECT sync_key, fields ->> 'Title' AS title FROM sync.preview('employees_sp') ORDER BY 1;
ALTER TABLE hr.employees DROP COLUMN active;
\x on
SELECT * FROM regress.err($sql$SELECT * FROM sync.preview('employees_sp')$sql$);
\x off
ROLLBACK;
