-- syncbridge: each definition compiles into set-based SQL that yields, per
-- source row, its key, its list (shard), its mapped fields as JSON and their
-- hash. The SQL is built from catalog data with quoted identifiers, cached in
-- sync.compiled, and rebuilt when the definition (its revision) or the source
-- table's columns (their fingerprint) change.
--
-- Serialization of values (documented in the README, tested by #[pg_test]s
-- and graph_e2e). By the kind of target column (_field_kind):
--   text, note  -> always a JSON string: the value's text form; json/jsonb
--                  scalars as their text, arrays and documents as JSON text
--   number      -> a JSON number (smallint, integer, bigint, real, double,
--                  numeric(p <= 15)); a bigint beyond 2^53 stays a number
--                  (the worker refuses it rather than let a double round it)
--   boolean     -> a JSON boolean
--   dateTime, date (the target's time zone, Graph: config time_zone, UTC by
--                  default) -> "YYYY-MM-DDTHH:MI:SSZ", whole seconds:
--                  timestamptz in UTC; timestamp read as wall-clock time in
--                  the time zone; date as its midnight there
-- Without a target column (no kind): bigint beyond 2^53 and numeric beyond a
-- double's precision -> strings with every digit; timestamptz ->
-- "...[.ffffff]Z", timestamp without Z, date "YYYY-MM-DD"; json/jsonb ->
-- the value; arrays -> JSON arrays; bytea -> base64; NaN, infinities ->
-- strings; NULL -> JSON null (the field is cleared on the target).
-- Compiled SQL runs with TimeZone = UTC, DateStyle = ISO, IntervalStyle =
-- iso_8601 and extra_float_digits = 1 (set on the functions running it), so
-- that a row always serializes and hashes the same whatever the session says.

CREATE TABLE compiled (
    definition_id int PRIMARY KEY REFERENCES definitions (id) ON DELETE CASCADE,
    revision      int NOT NULL,
    fingerprint   text NOT NULL,
    rows_all      text NOT NULL,
    rows_by_key   text NOT NULL,
    keys_sql      text NOT NULL,
    key_of_json   text NOT NULL,
    fields        jsonb NOT NULL,
    compiled_at   timestamptz NOT NULL DEFAULT now(),
    inbound       jsonb NOT NULL DEFAULT '[]'
);
COMMENT ON TABLE compiled IS 'Cache of the SQL each definition compiles into (rebuilt on a new revision or when the table''s columns change). Written only by sync._compile(); shown for investigation.';
COMMENT ON COLUMN compiled.definition_id IS 'The definition (sync.definitions.id).';
COMMENT ON COLUMN compiled.revision IS 'The definition revision it was compiled from.';
COMMENT ON COLUMN compiled.fingerprint IS 'Digest of the source table''s columns (names, types, positions) it was compiled against.';
COMMENT ON COLUMN compiled.rows_all IS 'SELECT sync_key, list, fields, hash over the whole table (plan, backfill).';
COMMENT ON COLUMN compiled.rows_by_key IS 'The same for one key, the JSON object _syncbridge_keys._syncbridge_k {column: text} of an outer query (staging probes it per key).';
COMMENT ON COLUMN compiled.keys_sql IS 'SELECT of the elements of $1 holding all key columns, reduced to those, as objects _syncbridge_k.';
COMMENT ON COLUMN compiled.key_of_json IS 'Expression turning one row _syncbridge_k of keys_sql into a sync_key.';
COMMENT ON COLUMN compiled.compiled_at IS 'When it was compiled.';
COMMENT ON COLUMN compiled.fields IS 'The fields sent: [{field, column, type, kind, reference}].';
COMMENT ON COLUMN compiled.inbound IS 'The fields read back from the target (two-way, and pull-only mappings): [{field, column, type, typmod, kind, direction}]; direction push: a remote change is put back, both: merged, pull: applied.';

-- The JSON serialization of `expr` (SQL text) of type `typ`, bound for a
-- target column of kind `kind` (see _field_kind; NULL: no column).
--   kind text or note: always a JSON string (a target's text column takes
--     strings only): numbers and booleans as their text, json and jsonb
--     scalars as their text (a string as itself), arrays and documents as
--     their JSON text;
--   tz (the site's time zone; NULL: none): dates and times in the form the
--     target holds: whole seconds (the fraction dropped), a UTC instant with
--     Z; a timestamp without time zone read as wall-clock time in tz; a date
--     as the instant of its midnight in tz.
CREATE FUNCTION _json_expr(expr text, typ regtype, kind text DEFAULT NULL, tz text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    base oid := typ;
    cat "char";
BEGIN
    -- Domains serialize as their base type.
    SELECT t.oid, t.typcategory INTO base, cat FROM pg_type t
     WHERE t.oid = (WITH RECURSIVE b(oid) AS (SELECT typ::oid UNION ALL
                        SELECT t2.typbasetype FROM pg_type t2 JOIN b ON t2.oid = b.oid WHERE t2.typtype = 'd')
                    SELECT b.oid FROM b JOIN pg_type t3 ON t3.oid = b.oid WHERE t3.typtype <> 'd' LIMIT 1);
    IF kind IN ('text', 'note') THEN
        RETURN CASE
            WHEN base IN ('json'::regtype, 'jsonb'::regtype) THEN format('to_jsonb(((%s)::jsonb) #>> ''{}'')', expr)
            WHEN cat = 'A' THEN format('to_jsonb((to_jsonb(%s))::text)', expr)
            WHEN base = 'bytea'::regtype THEN format('to_jsonb(translate(encode(%s, ''base64''), E''\n'', ''''))', expr)
            ELSE format('to_jsonb((%s)::text)', expr)
        END;
    END IF;
    IF tz IS NOT NULL AND base IN ('timestamptz'::regtype, 'timestamp'::regtype, 'date'::regtype) THEN
        RETURN format('(SELECT CASE WHEN NOT isfinite(v) THEN to_jsonb(v::text) '
                      'ELSE to_jsonb(to_char(%s, ''YYYY-MM-DD"T"HH24:MI:SS"Z"'')) END FROM (SELECT (%s) AS v) x)',
                      CASE base
                          WHEN 'timestamptz'::regtype THEN 'date_trunc(''second'', v) AT TIME ZONE ''UTC'''
                          WHEN 'timestamp'::regtype THEN format('(date_trunc(''second'', v) AT TIME ZONE %L) AT TIME ZONE ''UTC''', tz)
                          ELSE format('(v::timestamp AT TIME ZONE %L) AT TIME ZONE ''UTC''', tz) END,
                      expr);
    END IF;
    RETURN CASE
        WHEN base IN ('bool'::regtype, 'int2'::regtype, 'int4'::regtype, 'jsonb'::regtype) THEN format('to_jsonb(%s)', expr)
        WHEN base IN ('float4'::regtype, 'float8'::regtype) THEN
            format('(SELECT CASE WHEN v IN (''NaN'', ''Infinity'', ''-Infinity'') THEN to_jsonb(v::text) ELSE to_jsonb(v) END FROM (SELECT (%s)::float8 AS v) x)', expr)
        -- A number column takes every bigint as a number: one a double cannot
        -- hold exactly is refused by the worker, never rounded (plan() warns).
        WHEN base = 'int8'::regtype AND kind = 'number' THEN format('to_jsonb(%s)', expr)
        WHEN base = 'int8'::regtype THEN
            format('(SELECT CASE WHEN v BETWEEN -9007199254740991 AND 9007199254740991 THEN to_jsonb(v) ELSE to_jsonb(v::text) END FROM (SELECT (%s) AS v) x)', expr)
        WHEN base = 'numeric'::regtype THEN
            format('(SELECT CASE WHEN v IS NULL THEN NULL WHEN v IN (''NaN'', ''Infinity'', ''-Infinity'') THEN to_jsonb(v::text) '
                   'WHEN v::float8::numeric = v THEN to_jsonb(v) ELSE to_jsonb(v::text) END FROM (SELECT (%s)::numeric AS v) x)', expr)
        WHEN base = 'timestamptz'::regtype THEN
            format('(SELECT CASE WHEN NOT isfinite(v) THEN to_jsonb(v::text) ELSE to_jsonb(regexp_replace(to_char(v AT TIME ZONE ''UTC'', '
                   '''YYYY-MM-DD"T"HH24:MI:SS.US''), ''\.?0+$'', '''') || ''Z'') END FROM (SELECT (%s) AS v) x)', expr)
        WHEN base = 'timestamp'::regtype THEN
            format('(SELECT CASE WHEN NOT isfinite(v) THEN to_jsonb(v::text) ELSE to_jsonb(regexp_replace(to_char(v, '
                   '''YYYY-MM-DD"T"HH24:MI:SS.US''), ''\.?0+$'', '''')) END FROM (SELECT (%s) AS v) x)', expr)
        WHEN base = 'date'::regtype THEN
            format('(SELECT CASE WHEN NOT isfinite(v) THEN to_jsonb(v::text) ELSE to_jsonb(to_char(v, ''YYYY-MM-DD'')) END FROM (SELECT (%s) AS v) x)', expr)
        WHEN base = 'json'::regtype THEN format('(%s)::jsonb', expr)
        WHEN base = 'bytea'::regtype THEN format('to_jsonb(translate(encode(%s, ''base64''), E''\n'', ''''))', expr)
        WHEN cat = 'A' THEN format('to_jsonb(%s)', expr)
        ELSE format('to_jsonb((%s)::text)', expr)
    END;
END $$;

-- The kind of target column a source type provisions as (graph vocabulary:
-- text (one line, at most 255 characters), note (multi-line text), number
-- (a double), boolean, dateTime, date). `typmod` is the column's (-1 for a
-- transform); a domain's own type modifier counts when the column has none.
--   number: smallint, integer, bigint, real, double precision, and numeric
--     with at most 15 digits of precision (a double holds them exactly);
--     numeric without a precision, or with more, is a note holding its exact
--     text (nothing is rounded);
--   text: varchar(n) and char(n) with n <= 255, and types whose text form is
--     short (uuid, inet, cidr, macaddr, name, time, interval, money, enums);
--   note: text, varchar without a length or longer than 255, json, jsonb,
--     arrays, and every other type.
CREATE FUNCTION _field_kind(typ regtype, typmod int DEFAULT -1) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH RECURSIVE b(oid, typmod, depth) AS (
        SELECT typ::oid, typmod, 0
        UNION ALL
        SELECT t2.typbasetype, CASE WHEN b.typmod >= 0 THEN b.typmod ELSE t2.typtypmod END, b.depth + 1
          FROM pg_type t2 JOIN b ON t2.oid = b.oid WHERE t2.typtype = 'd'
    ), base AS (
        SELECT t.oid, t.typcategory AS cat, t.typtype, b.typmod AS tm
          FROM b JOIN pg_type t ON t.oid = b.oid WHERE t.typtype <> 'd' ORDER BY b.depth LIMIT 1
    )
    SELECT CASE
        WHEN cat = 'B' THEN 'boolean'
        WHEN oid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype, 'float4'::regtype, 'float8'::regtype) THEN 'number'
        WHEN oid = 'numeric'::regtype THEN CASE WHEN tm >= 4 AND ((tm - 4) >> 16) <= 15 THEN 'number' ELSE 'note' END
        WHEN oid IN ('timestamptz'::regtype, 'timestamp'::regtype) THEN 'dateTime'
        WHEN oid = 'date'::regtype THEN 'date'
        WHEN oid IN ('varchar'::regtype, 'bpchar'::regtype) THEN CASE WHEN tm > 4 AND tm - 4 <= 255 THEN 'text' ELSE 'note' END
        WHEN typtype = 'e' OR oid IN ('uuid'::regtype, 'inet'::regtype, 'cidr'::regtype, 'macaddr'::regtype, 'macaddr8'::regtype,
                                      'name'::regtype, 'time'::regtype, 'timetz'::regtype, 'interval'::regtype, 'money'::regtype,
                                      'pg_lsn'::regtype, 'char'::regtype) THEN 'text'
        ELSE 'note'
    END
    FROM base
$$;

-- Digest of a table's columns: any ALTER TABLE that adds, drops, renames or
-- retypes a column changes it.
CREATE FUNCTION _fingerprint(rel regclass) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT md5(coalesce(string_agg(format('%s:%s:%s:%s', attnum, attname, atttypid, atttypmod), ',' ORDER BY attnum), '')
               || (SELECT relkind::text FROM pg_class WHERE oid = rel))
      FROM pg_attribute WHERE attrelid = rel AND attnum > 0 AND NOT attisdropped
$$;

CREATE FUNCTION _compile(def_id int) RETURNS compiled
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    d sync.definitions;
    k sync.target_kinds;
    c sync.compiled;
    fp text;
    relkind "char";
    f record;
    fields jsonb := '[]';
    inbound jsonb := '[]';
    fkind text;
    tz text;
    pairs text[] := '{}';
    chunks text[] := '{}';
    bad text;
    key_expr text;
    key_json text;
    key_join text;
    keys_sql text;
    list_expr text;
    fields_expr text;
    from_rel text;
    filter text;
    select_list text;
    expr_sql text;
    i int;
BEGIN
    SELECT * INTO d FROM sync.definitions WHERE id = def_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'sync definition % does not exist', def_id USING ERRCODE = 'undefined_object';
    END IF;
    SELECT c2.relkind INTO relkind FROM pg_class c2 WHERE c2.oid = d.source_rel;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the source table of definition % no longer exists', quote_literal(d.name)
            USING ERRCODE = 'undefined_table',
                  DETAIL = format('It was the relation with oid %s.', d.source_rel::oid),
                  HINT = 'Drop the definition with sync.undefine(name, force => true) and define it again.';
    END IF;
    fp := sync._fingerprint(d.source_rel);
    SELECT * INTO c FROM sync.compiled WHERE definition_id = def_id AND revision = d.revision AND fingerprint = fp;
    IF FOUND THEN
        RETURN c;
    END IF;
    SELECT tk.* INTO k FROM sync.target_kinds tk JOIN sync.targets t ON t.kind = tk.kind WHERE t.name = d.target;
    -- Dates and times go in the form the site holds them, in its time zone
    -- (a change of the target's configuration bumps the revision).
    IF k.kind = 'graph' THEN
        SELECT coalesce(t.config->>'time_zone', 'UTC') INTO tz FROM sync.targets t WHERE t.name = d.target;
    END IF;

    -- Key columns must still exist.
    SELECT string_agg(quote_ident(x), ', ') INTO bad FROM unnest(d.key_columns) x
     WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = d.source_rel AND a.attname = x AND a.attnum > 0 AND NOT a.attisdropped);
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'key column % of definition % no longer exists in %', bad, quote_literal(d.name), d.source_rel
            USING ERRCODE = 'undefined_column',
                  DETAIL = 'The table was altered after the definition was made.',
                  HINT = 'Define the sync again with the new key.';
    END IF;

    -- Fields: the explicit mappings (push and both), else every column under its own name.
    FOR f IN
        WITH maps AS (
            SELECT m.field, m.column_name, m.transform, m.transform_type, m.reference, m.position, m.direction
              FROM sync.field_maps m WHERE m.definition_id = def_id AND m.direction IN ('push', 'both')
               AND d.direction <> 'pull'
        ), has_maps AS (SELECT EXISTS (SELECT 1 FROM sync.field_maps m WHERE m.definition_id = def_id) AS yes)
        SELECT maps.field, maps.column_name, maps.transform, maps.reference, maps.position, maps.direction,
               coalesce(maps.transform_type, a.atttypid::regtype) AS typ,
               CASE WHEN maps.transform_type IS NULL THEN a.atttypmod ELSE -1 END AS typmod,
               (a.attname IS NULL AND maps.column_name IS NOT NULL) AS missing
          FROM maps LEFT JOIN pg_attribute a
            ON a.attrelid = d.source_rel AND a.attname = maps.column_name AND a.attnum > 0 AND NOT a.attisdropped
        UNION ALL
        SELECT a.attname::text, a.attname, NULL, NULL, a.attnum, d.direction, a.atttypid::regtype, a.atttypmod, false
          FROM pg_attribute a, has_maps
         WHERE NOT has_maps.yes AND d.direction <> 'pull' AND a.attrelid = d.source_rel AND a.attnum > 0 AND NOT a.attisdropped
           -- the key travels as SyncKey; id and SyncKey are the target's own
           AND lower(a.attname) NOT IN ('id', 'synckey')
        ORDER BY 5
    LOOP
        -- What comes back: a field merged both ways, or one the database
        -- owns (a remote change of it is put back). References and
        -- transforms are the database's alone.
        IF d.direction <> 'push' AND f.transform IS NULL AND f.reference IS NULL AND NOT f.missing THEN
            inbound := inbound || jsonb_build_object('field', f.field, 'column', f.column_name, 'type', f.typ::text,
                'typmod', f.typmod, 'kind', CASE WHEN k.kind = 'graph' AND lower(f.field) = 'title' THEN 'text'
                                                 ELSE sync._field_kind(f.typ, f.typmod) END,
                -- a key column is never changed from the target: put back
                'direction', CASE WHEN f.direction = 'both' AND NOT f.column_name = ANY (d.key_columns) THEN 'both' ELSE 'push' END);
        END IF;
        IF f.missing THEN
            RAISE EXCEPTION 'mapped column % no longer exists in %', quote_ident(f.column_name), d.source_rel
                USING ERRCODE = 'undefined_column',
                      DETAIL = format('Field %s of definition %s maps it.', f.field, d.name),
                      HINT = format('SELECT sync.unmap(%L, %L); or map the field to another column.', d.name, f.field);
        END IF;
        IF f.field !~ k.field_name_pattern OR lower(f.field) IN ('synckey', 'id') THEN
            RAISE EXCEPTION 'column % cannot be sent under its own name', quote_ident(f.field)
                USING ERRCODE = 'invalid_name',
                      DETAIL = format('%s field names match %s and may not be SyncKey or id; definition %s has no explicit mapping, so every column goes under its own name.',
                                      k.kind, k.field_name_pattern, d.name),
                      HINT = format('Map the columns explicitly: SELECT sync.map(%L, %L, ''SomeField'');', d.name, f.field);
        END IF;
        IF f.transform IS NOT NULL THEN
            -- Analyzed again here, against the table as it is now: what
            -- gets embedded is PostgreSQL's deparse of a checked expression.
            expr_sql := (sync._check_row_expression(d.source_rel, f.transform, 'transform', false)).expression;
        END IF;
        -- SharePoint's Title is always single-line text.
        fkind := CASE WHEN f.reference IS NOT NULL THEN 'lookup'
                      WHEN k.kind = 'graph' AND lower(f.field) = 'title' THEN 'text'
                      ELSE sync._field_kind(f.typ, f.typmod) END;
        pairs := pairs || (quote_literal(f.field) || ', ' || CASE
            -- an array column refers to several items (an LDAP group's members)
            WHEN f.reference IS NOT NULL AND EXISTS (SELECT 1 FROM pg_catalog.pg_type t WHERE t.oid = f.typ AND t.typcategory = 'A') THEN
                format('CASE WHEN s.%1$I IS NULL THEN NULL ELSE jsonb_build_object(''@refs'', to_jsonb((s.%1$I)::text[]), ''@def'', %2$L) END', f.column_name, f.reference)
            WHEN f.reference IS NOT NULL THEN
                format('CASE WHEN s.%1$I IS NULL THEN NULL ELSE jsonb_build_object(''@ref'', (s.%1$I)::text, ''@def'', %2$L) END', f.column_name, f.reference)
            WHEN f.transform IS NOT NULL THEN
                sync._json_expr('(' || E'\n' || expr_sql || E'\n' || ')', f.typ, fkind, tz)
            ELSE sync._json_expr(format('s.%I', f.column_name), f.typ, fkind, tz)
        END);
        fields := fields || jsonb_build_object(
            'field', f.field, 'column', f.column_name, 'type', f.typ::text, 'kind', fkind,
            'reference', f.reference, 'transform', f.transform);
    END LOOP;
    -- Pulled alone: the pull mappings, and for a pull definition without
    -- any mapping every column under its own name.
    FOR f IN
        SELECT m.field, m.column_name, a.atttypid::regtype AS typ, a.atttypmod AS typmod, (a.attname IS NULL) AS missing
          FROM sync.field_maps m LEFT JOIN pg_attribute a
            ON a.attrelid = d.source_rel AND a.attname = m.column_name AND a.attnum > 0 AND NOT a.attisdropped
         WHERE m.definition_id = def_id AND (m.direction = 'pull' OR d.direction = 'pull') AND m.column_name IS NOT NULL
        UNION ALL
        SELECT a.attname::text, a.attname, a.atttypid::regtype, a.atttypmod, false
          FROM pg_attribute a
         WHERE d.direction = 'pull' AND NOT EXISTS (SELECT 1 FROM sync.field_maps m WHERE m.definition_id = def_id)
           AND a.attrelid = d.source_rel AND a.attnum > 0 AND NOT a.attisdropped
           AND lower(a.attname) NOT IN ('id', 'synckey') AND a.attname <> ALL (d.key_columns)
    LOOP
        IF f.missing THEN
            RAISE EXCEPTION 'mapped column % no longer exists in %', quote_ident(f.column_name), d.source_rel
                USING ERRCODE = 'undefined_column',
                      DETAIL = format('Field %s of definition %s is pulled into it.', f.field, d.name),
                      HINT = format('SELECT sync.unmap(%L, %L); or map the field to another column.', d.name, f.field);
        END IF;
        inbound := inbound || jsonb_build_object('field', f.field, 'column', f.column_name, 'type', f.typ::text,
            'typmod', f.typmod, 'kind', sync._field_kind(f.typ, f.typmod), 'direction', 'pull');
    END LOOP;
    IF cardinality(pairs) = 0 AND d.direction = 'pull' THEN
        pairs := ARRAY[]::text[];
    ELSIF cardinality(pairs) = 0 THEN
        RAISE EXCEPTION 'definition % sends no field', quote_literal(d.name)
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'All its mappings are pulled from the target; nothing would be written.',
                  HINT = format('Map at least one column with direction push: SELECT sync.map(%L, ''col'', ''Field'');', d.name);
    END IF;
    -- jsonb_build_object takes at most 100 arguments: 50 fields per call.
    i := 1;
    WHILE i <= cardinality(pairs) LOOP
        chunks := chunks || ('jsonb_build_object(' || array_to_string(pairs[i:i + 49], ', ') || ')')::text;
        i := i + 50;
    END LOOP;
    fields_expr := coalesce(nullif(array_to_string(chunks, ' || '), ''), '''{}''::jsonb');

    -- Keys arrive as a JSON array of objects {column: text} (what the worker
    -- decoded; it knows nothing of definitions). keys_sql keeps the elements
    -- holding all of this definition's key columns, reduced to those (staging
    -- removes repeats by sync_key).
    SELECT 'SELECT jsonb_build_object('
           || string_agg(format('%L, _syncbridge_k->%L', x, x), ', ' ORDER BY o)
           || ') AS _syncbridge_k FROM jsonb_array_elements($1) AS _syncbridge_e(_syncbridge_k) WHERE '
           || string_agg(format('jsonb_typeof(_syncbridge_k->%L) IN (''string'', ''number'')', x), ' AND ' ORDER BY o),
           string_agg(format('s.%I = (_syncbridge_keys._syncbridge_k->>%L)::%s', x, x, format_type(a.atttypid, a.atttypmod)), ' AND ' ORDER BY o)
      INTO keys_sql, key_join
      FROM unnest(d.key_columns) WITH ORDINALITY u(x, o)
      JOIN pg_attribute a ON a.attrelid = d.source_rel AND a.attname = u.x;
    -- A sync_key: one column -> its text; several -> a JSON array of their texts.
    IF cardinality(d.key_columns) = 1 THEN
        key_expr := format('(s.%I)::text', d.key_columns[1]);
        key_json := (SELECT format('(((_syncbridge_k->>%L)::%s)::text)', a.attname, format_type(a.atttypid, a.atttypmod))
                       FROM pg_attribute a WHERE a.attrelid = d.source_rel AND a.attname = d.key_columns[1]);
    ELSE
        key_expr := 'jsonb_build_array(' || (SELECT string_agg(format('(s.%I)::text', x), ', ' ORDER BY o) FROM unnest(d.key_columns) WITH ORDINALITY u(x, o)) || ')::text';
        key_json := 'jsonb_build_array(' || (SELECT string_agg(format('((_syncbridge_k->>%L)::%s)::text', x, format_type(a.atttypid, a.atttypmod)), ', ' ORDER BY o)
                                              FROM unnest(d.key_columns) WITH ORDINALITY u(x, o)
                                              JOIN pg_attribute a ON a.attrelid = d.source_rel AND a.attname = u.x) || ')::text';
    END IF;

    -- Shards: first matching predicate, else the definition's list.
    SELECT 'CASE ' || string_agg(format('WHEN (%s) THEN %L',
                                        E'\n' || (sync._check_row_expression(d.source_rel, sh.predicate, 'shard predicate', true)).expression || E'\n',
                                        sh.list), ' ' ORDER BY sh.position)
           || format(' ELSE %s END', coalesce(quote_literal(d.list), 'NULL::text'))
      INTO list_expr
      FROM sync.shards sh WHERE sh.definition_id = def_id;
    list_expr := coalesce(list_expr, coalesce(quote_literal(d.list), 'NULL::text'));

    IF d.row_filter IS NOT NULL THEN
        filter := '(' || E'\n' || (sync._check_row_expression(d.source_rel, d.row_filter, 'row filter', true)).expression || E'\n' || ') IS TRUE';
    ELSE
        filter := 'true';
    END IF;
    from_rel := CASE WHEN relkind = 'p' THEN '' ELSE 'ONLY ' END || d.source_rel::text;
    select_list := format('%s AS sync_key, %s AS list, %s AS fields', key_expr, list_expr, fields_expr);

    c.definition_id := def_id;
    c.revision := d.revision;
    c.fingerprint := fp;
    c.fields := fields;
    c.inbound := inbound;
    c.key_of_json := key_json;
    c.rows_all := format(
        'SELECT q.sync_key, q.list, q.fields, sha256(convert_to(q.fields::text, ''UTF8'')) AS hash FROM ('
        'SELECT %s FROM %s AS s WHERE %s) q WHERE q.list IS NOT NULL',
        select_list, from_rel, filter);
    c.rows_by_key := format(
        'SELECT q.sync_key, q.list, q.fields, sha256(convert_to(q.fields::text, ''UTF8'')) AS hash FROM ('
        'SELECT %s FROM %s AS s WHERE %s AND %s) q WHERE q.list IS NOT NULL',
        select_list, from_rel, key_join, filter);
    c.keys_sql := keys_sql;
    c.compiled_at := now();
    INSERT INTO sync.compiled VALUES (c.*)
    ON CONFLICT (definition_id) DO UPDATE
       SET revision = EXCLUDED.revision, fingerprint = EXCLUDED.fingerprint, rows_all = EXCLUDED.rows_all,
           rows_by_key = EXCLUDED.rows_by_key, keys_sql = EXCLUDED.keys_sql, key_of_json = EXCLUDED.key_of_json, fields = EXCLUDED.fields,
           compiled_at = EXCLUDED.compiled_at, inbound = EXCLUDED.inbound;
    RETURN c;
END $$;

-- ---------------------------------------------------------------------------
-- Evaluation. The compiled SQL (and so every row filter, shard predicate and
-- transform) runs only here, in functions owned by the role
-- syncbridge_reader (SECURITY DEFINER; SELECT on the definitions' source
-- tables and nothing else), never as the caller: whoever calls plan(),
-- preview() or stage(), a superuser included, an expression cannot act with
-- their rights. Settings that change a value's text form are pinned, so the
-- same row always maps and hashes the same.
-- ---------------------------------------------------------------------------

-- Every row of the definition's table that is sent: key, list, fields, hash.
CREATE FUNCTION _mapped_rows_all(def_id int)
RETURNS TABLE (sync_key text, list text, fields jsonb, hash bytea)
LANGUAGE plpgsql STABLE
SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'iso_8601' SET extra_float_digits = 1
SET jit = off
AS $$
BEGIN
    RETURN QUERY EXECUTE (sync._compile(def_id)).rows_all;
END $$;

-- The distinct keys of a JSON array of objects {column: text} (as the worker
-- decodes them): their sync keys and key objects. A key whose text does not
-- fit its column's type is refused (22023, constraint syncbridge_key).
CREATE FUNCTION _keys_of(def_id int, keys jsonb, OUT sync_keys text[], OUT key_objs jsonb[])
LANGUAGE plpgsql STABLE
SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'iso_8601' SET extra_float_digits = 1
AS $$
DECLARE
    c sync.compiled := sync._compile(def_id);
    msg text;
BEGIN
    EXECUTE format('SELECT array_agg(sync_key), array_agg(_syncbridge_k) FROM ('
                   'SELECT DISTINCT ON (1) %s AS sync_key, _syncbridge_k FROM (%s) AS _syncbridge_keys) k',
                   c.key_of_json, c.keys_sql)
       INTO sync_keys, key_objs USING keys;
EXCEPTION WHEN data_exception THEN
    GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
    RAISE EXCEPTION 'invalid key: %', msg
        USING ERRCODE = 'invalid_parameter_value', CONSTRAINT = 'syncbridge_key',
              DETAIL = 'A key value does not fit its column''s type; nothing was staged.',
              HINT = 'Keys are objects mapping key columns to their text values as the table holds them: [{"id": "42"}].';
END $$;

-- The rows of the given keys (a JSON array of objects {column: text}, as
-- the worker decodes them): one row per distinct key, present = false when
-- the row is gone or not sent (filtered out, no list). A key whose text does
-- not fit its column's type is refused (22023), before anything is read.
CREATE FUNCTION _mapped_rows_by_key(def_id int, keys jsonb)
RETURNS TABLE (sync_key text, present boolean, list text, fields jsonb, hash bytea)
LANGUAGE plpgsql STABLE
SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'iso_8601' SET extra_float_digits = 1
-- Index probes by key, whatever stale statistics suggest; no JIT (see _stage_def).
SET enable_seqscan = off SET jit = off
AS $$
DECLARE
    c sync.compiled := sync._compile(def_id);
    sync_keys text[];
    key_objs jsonb[];
BEGIN
    SELECT k.sync_keys, k.key_objs INTO sync_keys, key_objs FROM sync._keys_of(def_id, keys) k;
    RETURN QUERY EXECUTE format(
        'SELECT k.sync_key, w.sync_key IS NOT NULL, w.list, w.fields, w.hash '
        'FROM unnest($1, $2) AS k(sync_key, _syncbridge_k) '
        -- one index probe per key (LATERAL ... LIMIT 1), whatever the
        -- planner guesses of the size of the key set
        'LEFT JOIN LATERAL (SELECT w.* FROM (SELECT k._syncbridge_k) AS _syncbridge_keys, LATERAL (%s) AS w LIMIT 1) w ON true',
        c.rows_by_key)
      USING coalesce(sync_keys, '{}'), coalesce(key_objs, '{}');
END $$;

-- A chunk of the table's keys in key order after `after` (a JSON array of
-- key texts, NULL for the start): the backfill's keyset scan.
CREATE FUNCTION _source_keys(def_id int, after jsonb, chunk int)
RETURNS TABLE (keys jsonb, last_key jsonb, n bigint)
LANGUAGE plpgsql STABLE
SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'iso_8601' SET extra_float_digits = 1
AS $$
BEGIN
    RETURN QUERY EXECUTE sync._backfill_keyset_sql(def_id) USING after, chunk, NULL::jsonb;
END $$;

-- The keys of a deferred backfill range (after, upto], at most `chunk` of
-- them, in key order: what sync._undefer stages.
CREATE FUNCTION _source_range(def_id int, after jsonb, upto jsonb, chunk int)
RETURNS TABLE (keys jsonb, last_key jsonb, n bigint)
LANGUAGE plpgsql STABLE
SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'iso_8601' SET extra_float_digits = 1
AS $$
BEGIN
    RETURN QUERY EXECUTE sync._backfill_keyset_sql(def_id) USING after, chunk, upto;
END $$;

-- Where the chunk of `chunk` keys after `after` ends, and how many keys it
-- holds (the backfill's key ranges when it defers).
CREATE FUNCTION _source_bounds(def_id int, after jsonb, chunk int, OUT last_key jsonb, OUT n bigint)
LANGUAGE plpgsql STABLE
SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'iso_8601' SET extra_float_digits = 1
AS $$
BEGIN
    EXECUTE sync._backfill_bounds_sql(def_id) INTO last_key, n USING after, chunk;
END $$;

-- What a definition sends for a few rows (or all): key, list, fields, hash.
-- For looking at the mapping before enabling it.
CREATE FUNCTION preview(definition text, "limit" int DEFAULT 10)
RETURNS TABLE (sync_key text, list text, fields jsonb, hash text)
LANGUAGE plpgsql AS $$
DECLARE
    d sync.definitions := sync._def(definition);
BEGIN
    IF "limit" IS NOT NULL AND "limit" < 0 THEN
        RAISE EXCEPTION 'invalid limit %', "limit"
            USING ERRCODE = 'invalid_parameter_value', DETAIL = 'limit is a number of rows, 0 or more (NULL: all).',
                  HINT = format('SELECT * FROM sync.preview(%L, 10);', definition);
    END IF;
    PERFORM sync._check_may_read(d.source_rel);
    RETURN QUERY SELECT r.sync_key, r.list, r.fields, encode(r.hash, 'hex')
                   FROM sync._mapped_rows_all(d.id) r ORDER BY r.sync_key LIMIT "limit";
END $$;
