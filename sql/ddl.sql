-- syncbridge: schema changes of source tables. Event triggers look at every
-- DDL command touching a table a definition reads, at once: a definition
-- whose mapping no longer fits its table (a mapped column dropped, renamed
-- or given a type that no longer maps), whose key changed, or whose table was
-- renamed or dropped, goes to error with what to do. A new column is
-- ignored until mapped; a type change that keeps the sent values sends
-- nothing (staging compares hashes). Staging never uses a stale compilation
-- either way (sync._compile recompiles when the table's columns change).
--
-- The triggers never stop the DDL itself: whatever goes wrong in them is a
-- WARNING.

-- A relation's schema-qualified name, quoted as needed.
CREATE FUNCTION _rel_name(rel oid) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = rel
$$;

-- Whether a definition still fits its table; NULL, or why not (and what to do).
CREATE FUNCTION _ddl_misfit(d definitions, OUT why text, OUT hint text)
LANGUAGE plpgsql AS $$
DECLARE
    msg text;
    msg_hint text;
BEGIN
    IF d.source_name IS NOT NULL AND sync._rel_name(d.source_rel) IS DISTINCT FROM d.source_name THEN
        why := format('its table %s was renamed to %s', d.source_name, sync._rel_name(d.source_rel));
        hint := format('If that is intended, SELECT sync.resume(%L); (the definition follows the table; the whole table is staged again). Otherwise rename it back, then resume.', d.name);
        RETURN;
    END IF;
    BEGIN
        PERFORM sync._check_key(d.source_rel, d.key_columns::text[]);
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
        why := format('its key (%s) no longer identifies rows: %s', array_to_string(d.key_columns, ', '), msg);
        hint := format('Restore the key (a primary key or a unique index over NOT NULL columns %s), then SELECT sync.resume(%L); or define the sync again with another key.',
                       array_to_string(d.key_columns, ', '), d.name);
        RETURN;
    END;
    BEGIN
        PERFORM sync._compile(d.id);
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, msg_hint = PG_EXCEPTION_HINT;
        why := format('its mapping no longer fits the table: %s', msg);
        hint := concat_ws(' ', nullif(msg_hint, ''), format('Fix the mapping (sync.map / sync.unmap), then SELECT sync.resume(%L);', d.name));
        RETURN;
    END;
END $$;

-- Puts a definition in error for a schema change (the caller's DDL goes on).
CREATE FUNCTION _ddl_error(d definitions, why text, hint text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE sync.definitions x
       SET state = 'error', updated_at = now(), revision = x.revision + 1,
           state_reason = left(format('schema change: %s. %s', why, hint), 1000)
     WHERE x.id = d.id AND x.state IN ('active', 'paused', 'configuring');
    RAISE WARNING 'syncbridge: definition % is in error: %', quote_literal(d.name), why
        USING HINT = hint;
END $$;

CREATE FUNCTION _ddl_command_end() RETURNS event_trigger
LANGUAGE plpgsql AS $$
DECLARE
    d sync.definitions;
    m record;
BEGIN
    -- (cheap when no definition reads a touched table: one probe)
    FOR d IN SELECT x.* FROM sync.definitions x
              WHERE x.state IN ('active', 'paused', 'configuring')
                AND x.source_rel::oid IN (SELECT c.objid FROM pg_catalog.pg_event_trigger_ddl_commands() c
                                           WHERE c.classid = 'pg_catalog.pg_class'::regclass)
              ORDER BY x.id LOOP
        BEGIN
            SELECT * INTO m FROM sync._ddl_misfit(d);
            IF m.why IS NOT NULL THEN
                PERFORM sync._ddl_error(d, m.why, m.hint);
            END IF;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'syncbridge could not check definition % after a schema change: %', quote_literal(d.name), SQLERRM;
        END;
    END LOOP;
EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'syncbridge could not check a schema change: %', SQLERRM;
END $$;

CREATE FUNCTION _ddl_sql_drop() RETURNS event_trigger
LANGUAGE plpgsql AS $$
DECLARE
    d sync.definitions;
    m record;
BEGIN
    -- An index dropped (the one a key stood on?): every definition's key is
    -- looked at again (its table is gone from the catalog by now).
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger_dropped_objects() o WHERE o.object_type IN ('index', 'table constraint')) THEN
        FOR d IN SELECT x.* FROM sync.definitions x WHERE x.state IN ('active', 'paused', 'configuring')
                    AND EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = x.source_rel) ORDER BY x.id LOOP
            SELECT * INTO m FROM sync._ddl_misfit(d);
            IF m.why IS NOT NULL THEN
                PERFORM sync._ddl_error(d, m.why, m.hint);
            END IF;
        END LOOP;
    END IF;
    FOR d IN SELECT x.* FROM sync.definitions x
              WHERE x.state IN ('active', 'paused', 'configuring')
                AND x.source_rel::oid IN (SELECT o.objid FROM pg_catalog.pg_event_trigger_dropped_objects() o
                                           WHERE o.classid = 'pg_catalog.pg_class'::regclass AND o.objsubid = 0
                                             AND o.object_type IN ('table', 'partitioned table'))
              ORDER BY x.id LOOP
        PERFORM sync._ddl_error(d, format('its table %s was dropped', coalesce(d.source_name, d.source_rel::oid::text)),
                                format('Nothing more is synced. Create the table again and define the sync anew, or SELECT sync.undefine(%L, force => true);', d.name));
    END LOOP;
EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'syncbridge could not check a dropped table: %', SQLERRM;
END $$;

CREATE EVENT TRIGGER syncbridge_ddl_command_end ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'ALTER INDEX')
    EXECUTE FUNCTION _ddl_command_end();
CREATE EVENT TRIGGER syncbridge_sql_drop ON sql_drop
    EXECUTE FUNCTION _ddl_sql_drop();
