-- The extension installs into schema sync; later files assume it is there.
CREATE EXTENSION syncbridge;
SELECT extname, extnamespace::regnamespace AS schema, extrelocatable
  FROM pg_extension WHERE extname = 'syncbridge';
SELECT sync.version() ~ '^\d+\.\d+\.\d+$' AS version_is_semver;
-- Every table and column is documented.
SELECT c.relname, a.attname
  FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
 WHERE c.relnamespace = 'sync'::regnamespace AND c.relkind IN ('r', 'v')
   AND col_description(c.oid, a.attnum) IS NULL AND c.relname <> 'status'
 ORDER BY 1, 2;
SELECT c.relname FROM pg_class c
 WHERE c.relnamespace = 'sync'::regnamespace AND c.relkind IN ('r', 'v') AND obj_description(c.oid, 'pg_class') IS NULL;
SELECT name, value FROM sync.settings() ORDER BY name;
-- A fixture used by the files that follow (they roll back what they do).
CREATE SCHEMA hr;
CREATE TABLE hr.employees (
    id int PRIMARY KEY,
    full_name text NOT NULL,
    email text UNIQUE,
    region text,
    salary numeric,
    hired timestamptz,
    active boolean,
    manager_id int REFERENCES hr.employees,
    shareable boolean NOT NULL DEFAULT true
);
INSERT INTO hr.employees VALUES
  (1, 'Ada Lovelace', 'ada@example.com', 'EU', 5000.50, '2020-01-02 03:04:05+00', true, NULL, true),
  (2, 'Bob Builder', 'bob@example.com', 'US', 99999999999999999.12, '2021-05-06 07:08:09.123+02', false, 1, true),
  (3, 'Chloé Ngô', NULL, 'EU', NULL, NULL, NULL, 1, true),
  (4, 'Dan Secret', 'dan@example.com', 'US', 1, '2022-01-01 00:00:00+00', true, 1, false);
-- regress.err(sql): runs sql and shows the error it raises (code: the SQLSTATE,
-- message, detail, hint), or 00000 when it succeeds. Errors roll back
-- whatever the statement did (a subtransaction), as they would in a session.
CREATE SCHEMA regress;
GRANT USAGE ON SCHEMA regress TO PUBLIC;
CREATE FUNCTION regress.err(sql text)
RETURNS TABLE (code text, message text, detail text, hint text)
LANGUAGE plpgsql AS $$
BEGIN
    BEGIN
        EXECUTE sql;
        code := '00000'; message := 'ok';
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, message = MESSAGE_TEXT,
                                detail = PG_EXCEPTION_DETAIL, hint = PG_EXCEPTION_HINT;
        -- ids and WAL positions differ from run to run
        message := regexp_replace(message, '\m(export|run) \d+', '\1 N', 'g');
        detail := regexp_replace(detail, '\m[0-9A-F]+/[0-9A-F]+\M', 'X/X', 'g');
    END;
    RETURN NEXT;
END $$;
