-- syncbridge: the initial load (backfill) of a definition, one chunk per call.
--
-- A keyset scan of the source by key: each call stages the next `chunk` keys
-- through sync.stage and records the last key and the progress in
-- sync.cursors (kind 'backfill') in the same transaction, so a crash resumes
-- at the last committed chunk. When the table is done, the ledger keys whose
-- rows are gone (or no longer match) are staged too (that is what makes
-- sync.reset_cursor(to => 'beginning') a full reconcile).
--
-- While the target is far behind (sync.defer_after), a step records the
-- next 20 chunks as a range of keys (sync.deferred_keys: after, last]
-- instead, reading only where it ends; sync.claim reads the range's keys
-- and stages them as the queue drains. The same reasoning holds: a key of
-- the range read later than the snapshot is read as the table holds it
-- then, and what changed since came through the slot as well.
--
-- Why nothing is missed or staged wrongly while rows change: staging reads
-- the *current* row of each key ("reconcile key K"), and every change that
-- commits after the definition was enabled also comes through the slot and is
-- staged again. A row inserted behind the scan's position is staged by the
-- stream; a row updated after its chunk was read is re-staged by the stream;
-- a row deleted after its chunk yields a delete from the stream. Staging of a
-- definition is serialized (sync._stage_def takes a transaction lock), so an
-- older read never overwrites a newer one.

-- The pieces of a definition's keyset statements over its source: the
-- relation (ONLY unless partitioned), the key columns (s.col, ...), $1's key
-- (a JSON array of texts) cast to their types, the key as texts, the key as
-- an object's arguments ('col', text, ...), and the key in descending order.
CREATE FUNCTION _keyset_parts(def_id int, OUT rel text, OUT cols text, OUT lasts text, OUT texts text,
                              OUT objs text, OUT descs text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    d sync.definitions;
BEGIN
    SELECT * INTO STRICT d FROM sync.definitions WHERE id = def_id;
    rel := CASE WHEN (SELECT relkind FROM pg_class WHERE oid = d.source_rel) = 'p' THEN '' ELSE 'ONLY ' END || d.source_rel::text;
    SELECT string_agg(format('s.%I', x), ', ' ORDER BY o),
           string_agg(format('($1 ->> %s)::%s', o - 1, format_type(a.atttypid, a.atttypmod)), ', ' ORDER BY o),
           string_agg(format('(s.%I)::text', x), ', ' ORDER BY o),
           string_agg(format('%L, (s.%I)::text', x, x), ', ' ORDER BY o),
           string_agg(format('s.%I DESC', x), ', ' ORDER BY o)
      INTO cols, lasts, texts, objs, descs
      FROM unnest(d.key_columns) WITH ORDINALITY u(x, o)
      JOIN pg_attribute a ON a.attrelid = d.source_rel AND a.attname = u.x;
END $$;

CREATE FUNCTION _backfill_keyset_sql(def_id int) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    k record := sync._keyset_parts(def_id);
BEGIN
    -- $1: the last key done (a JSON array of texts) or NULL; $2: the chunk
    -- size; $3: the last key to read (a JSON array of texts) or NULL: to the end.
    -- Returns the chunk's keys as objects, and the last key.
    RETURN format(
        'SELECT coalesce(jsonb_agg(k ORDER BY n), ''[]''), (array_agg(last ORDER BY n DESC))[1], count(*) FROM ('
        'SELECT row_number() OVER () AS n, jsonb_build_object(%2$s) AS k, jsonb_build_array(%3$s) AS last '
        'FROM (SELECT * FROM %1$s AS s WHERE ($1 IS NULL OR (%4$s) > (%5$s)) AND ($3 IS NULL OR (%4$s) <= (%6$s)) '
        'ORDER BY %4$s LIMIT $2) s) x',
        k.rel, k.objs, k.texts, k.cols, k.lasts, replace(k.lasts, '($1 ->> ', '($3 ->> '));
END $$;

-- The statement reading where a chunk of `$2` keys after `$1` ends: the
-- last key (a JSON array of texts) and how many keys, without building the
-- keys (a deferred backfill records key ranges).
CREATE FUNCTION _backfill_bounds_sql(def_id int) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    k record := sync._keyset_parts(def_id);
BEGIN
    RETURN format(
        'WITH c AS MATERIALIZED (SELECT %2$s FROM %1$s AS s WHERE $1 IS NULL OR (%2$s) > (%3$s) ORDER BY %2$s LIMIT $2) '
        'SELECT (SELECT jsonb_build_array(%4$s) FROM c AS s ORDER BY %5$s LIMIT 1), (SELECT count(*) FROM c)',
        k.rel, k.cols, k.lasts, k.texts, k.descs);
END $$;

-- The keys of the next chunk after `after` (a JSON array of key texts, NULL
-- for the start), read-only: the worker calls it in the slot's exported
-- snapshot, then hands the keys to backfill_step in a fresh transaction.
CREATE FUNCTION backfill_keys(definition text, after jsonb, chunk int DEFAULT 5000)
RETURNS TABLE (keys jsonb, last_key jsonb, n bigint)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    d sync.definitions;
BEGIN
    d := sync._def(definition);
    PERFORM sync._backfill_check_chunk(chunk);
    RETURN QUERY SELECT * FROM sync._source_keys(d.id, after, chunk);
END $$;
COMMENT ON FUNCTION backfill_keys(text, jsonb, int) IS 'The keys of a definition''s next backfill chunk after a given key, read-only (the worker reads them in the slot''s exported snapshot and stages them with backfill_step).';

CREATE FUNCTION _backfill_check_chunk(chunk int) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF chunk IS NULL OR chunk < 1 OR chunk > 1000000 THEN
        RAISE EXCEPTION 'chunk must be between 1 and 1000000'
            USING ERRCODE = 'invalid_parameter_value', DETAIL = format('Got %s.', chunk),
                  HINT = 'The default, 5000, keeps each transaction short.';
    END IF;
END $$;

-- With chunk_keys NULL, reads the next chunk itself (in the caller's
-- snapshot). Otherwise stages chunk_keys, which backfill_keys read after
-- chunk_after (NULL: from the start, which restarts the progress) and ending
-- at chunk_last.
CREATE FUNCTION backfill_step(definition text, chunk int DEFAULT 5000, run_id bigint DEFAULT NULL,
                              chunk_keys jsonb DEFAULT NULL, chunk_after jsonb DEFAULT NULL, chunk_last jsonb DEFAULT NULL)
RETURNS TABLE (done boolean, rows_done bigint, rows_total bigint, staged bigint, deferring boolean)
LANGUAGE plpgsql AS $$
DECLARE
    d sync.definitions;
    pos jsonb;
    in_ranges boolean := false;
    range_keys int;
    step_rate float8;
    recent float8;
    keys jsonb;
    last_key jsonb;
    n bigint;
    r record;
    total bigint;
    started timestamptz;
    elapsed float8;
BEGIN
    d := sync._def(definition);
    PERFORM sync._backfill_check_chunk(chunk);
    -- (a deferred step records 20 chunks as one range)
    range_keys := chunk * 20;
    IF chunk_keys IS NOT NULL AND jsonb_typeof(chunk_keys) <> 'array' THEN
        RAISE EXCEPTION 'chunk_keys must be a JSON array of key objects'
            USING ERRCODE = 'invalid_parameter_value', DETAIL = format('Got %s.', jsonb_typeof(chunk_keys)),
                  HINT = 'Pass what sync.backfill_keys returned.';
    END IF;
    IF chunk_keys IS NOT NULL AND (
           chunk_last IS NULL AND jsonb_array_length(chunk_keys) > 0
        OR chunk_last IS NOT NULL AND (jsonb_typeof(chunk_last) <> 'array' OR jsonb_array_length(chunk_last) <> cardinality(d.key_columns)
                                       OR EXISTS (SELECT 1 FROM jsonb_array_elements(chunk_last) x WHERE jsonb_typeof(x) <> 'string' OR length(x #>> '{}') > 10000))
        OR chunk_after IS NOT NULL AND (jsonb_typeof(chunk_after) <> 'array' OR jsonb_array_length(chunk_after) <> cardinality(d.key_columns))) THEN
        RAISE EXCEPTION 'chunk_last and chunk_after must be keys of %', d.name
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('A key is a JSON array of %s text values (the key columns %s).', cardinality(d.key_columns), array_to_string(d.key_columns, ', ')),
                  HINT = 'Pass what sync.backfill_keys returned (last_key) and the key it was read after.';
    END IF;
    IF d.state NOT IN ('active', 'paused') OR d.backfill = 'done' THEN
        SELECT cu.position INTO pos FROM sync.cursors cu WHERE cu.kind = 'backfill' AND cu.definition_id = d.id;
        RETURN QUERY SELECT d.backfill = 'done', coalesce((pos ->> 'rows_done')::bigint, 0),
                            coalesce((pos ->> 'rows_total')::bigint, 0), 0::bigint, false;
        RETURN;
    END IF;
    -- One backfill per definition at a time, serialized with the stream's
    -- staging by the same transaction lock sync._stage_def takes, taken first
    -- so that both orders their locks alike. No row lock on the definition:
    -- FOR UPDATE would block the FOR KEY SHARE that every pending_exports
    -- insert takes on it, and a staging transaction holding the advisory lock
    -- would deadlock with us.
    PERFORM pg_advisory_xact_lock(1937337955, d.id);
    SELECT cu.position INTO pos FROM sync.cursors cu WHERE cu.kind = 'backfill' AND cu.definition_id = d.id;
    IF chunk_keys IS NOT NULL AND chunk_after IS NULL THEN
        pos := NULL;   -- a new snapshot scan starts over
    END IF;
    IF pos IS NULL THEN
        pos := jsonb_build_object('rows_done', 0, 'rows_total', NULL, 'started_at', now(), 'last_key', NULL);
        UPDATE sync.definitions x SET backfill = 'running', updated_at = now() WHERE x.id = d.id;
    END IF;
    -- The table's size as the planner knows it (reltuples, which VACUUM and
    -- ANALYZE keep); -1 until the table was first analyzed: unknown (no
    -- ETA) rather than a guess, asked again at every chunk until known.
    total := (pos ->> 'rows_total')::bigint;
    IF total IS NULL THEN
        SELECT CASE WHEN c.reltuples >= 0 THEN c.reltuples::bigint END INTO total FROM pg_class c WHERE c.oid = d.source_rel;
    END IF;
    IF chunk_keys IS NULL AND sync._defers(d.id, range_keys) THEN
        -- The target is far behind (sync.defer_after): the next 20 chunks
        -- are recorded as a range of keys, read when sync.claim stages them.
        in_ranges := true;
        SELECT b.last_key, b.n INTO last_key, n FROM sync._source_bounds(d.id, nullif(pos -> 'last_key', 'null'::jsonb), range_keys) b;
        IF n > 0 THEN
            INSERT INTO sync.deferred_keys (definition_id, range_after, range_last, n, run_id)
            VALUES (d.id, nullif(pos -> 'last_key', 'null'::jsonb), last_key, n, run_id);
        END IF;
    ELSIF chunk_keys IS NULL THEN
        SELECT k.keys, k.last_key, k.n INTO keys, last_key, n FROM sync._source_keys(d.id, nullif(pos -> 'last_key', 'null'::jsonb), chunk) k;
    ELSIF chunk_after IS DISTINCT FROM nullif(pos -> 'last_key', 'null'::jsonb) THEN
        RAISE EXCEPTION 'the chunk of % does not follow its recorded progress', d.name
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('The chunk was read after %s; the backfill stands at %s.', coalesce(chunk_after::text, 'the start'), coalesce(pos ->> 'last_key', 'the start')),
                  HINT = 'Is another worker backfilling this definition? Read the next chunk again with sync.backfill_keys.';
    ELSE
        keys := chunk_keys; last_key := chunk_last; n := jsonb_array_length(chunk_keys);
    END IF;
    staged := 0;
    IF n > 0 AND NOT in_ranges THEN
        FOR r IN SELECT * FROM sync.stage(d.source_rel, keys, NULL, d.name, run_id) LOOP
            IF r.error IS NOT NULL THEN
                RAISE EXCEPTION 'backfill of % stopped: %', d.name, r.error
                    USING ERRCODE = 'data_exception',
                          HINT = format('Fix the cause, then SELECT sync.resume(%L); the backfill resumes where it stopped.', d.name);
            END IF;
            staged := staged + r.added + r.updated + r.deleted + r.moved;
        END LOOP;
    END IF;
    started := (pos ->> 'started_at')::timestamptz;
    rows_done := (pos ->> 'rows_done')::bigint + n;
    rows_total := CASE WHEN total IS NOT NULL THEN greatest(total, rows_done) END;
    done := n < CASE WHEN in_ranges THEN range_keys ELSE chunk END;
    IF done THEN
        -- Keys the target holds whose rows are gone or filtered out.
        -- (A probe per ledger key: nothing to read when the target holds nothing.)
        SELECT sync._key_objects(d.id, ARRAY(
                   SELECT m.sync_key FROM sync._mapped_rows_by_key(d.id, sync._key_objects(d.id, ARRAY(
                              SELECT l.sync_key FROM sync.ledger l WHERE l.definition_id = d.id))) m
                    WHERE NOT m.present))
          INTO keys;
        IF jsonb_array_length(keys) > 0 THEN
            FOR r IN SELECT * FROM sync.stage(d.source_rel, keys, NULL, d.name, run_id) LOOP
                staged := staged + r.added + r.updated + r.deleted + r.moved;
            END LOOP;
        END IF;
        rows_total := rows_done;
        UPDATE sync.definitions x SET backfill = 'done', updated_at = now() WHERE x.id = d.id;
    END IF;
    elapsed := greatest(extract(epoch FROM clock_timestamp() - started), 0.001);
    -- The ETA follows the recent rate (a moving average over the steps, each
    -- from the end of the one before): the rate changes when the backfill
    -- starts deferring, and the average since the start would lag it. A
    -- step of the other kind (staging keys, recording a range) starts the
    -- average over: the steps before say nothing of the rate from now on.
    step_rate := n / greatest(extract(epoch FROM clock_timestamp() - coalesce((pos ->> 'step_at')::timestamptz, started)), 0.001);
    recent := CASE WHEN pos ? 'recent_rate_per_s' AND (pos ->> 'in_ranges')::boolean IS NOT DISTINCT FROM in_ranges
                   THEN 0.7 * (pos ->> 'recent_rate_per_s')::float8 + 0.3 * step_rate ELSE step_rate END;
    pos := jsonb_build_object(
        'rows_done', rows_done, 'rows_total', rows_total, 'started_at', started,
        'last_key', coalesce(last_key, pos -> 'last_key'),
        'rate_per_s', round((rows_done / elapsed)::numeric, 1),
        'recent_rate_per_s', round(recent::numeric, 1),
        'in_ranges', in_ranges,
        'step_at', clock_timestamp(),
        'eta_s', CASE WHEN done THEN 0 WHEN total IS NOT NULL THEN round(((rows_total - rows_done) / greatest(recent, 0.001))::numeric, 1) END,
        'finished_at', CASE WHEN done THEN clock_timestamp() END);
    INSERT INTO sync.cursors AS cu (kind, scope, definition_id, position)
    VALUES ('backfill', d.name, d.id, pos)
    ON CONFLICT ON CONSTRAINT cursors_pkey DO UPDATE SET position = EXCLUDED.position, definition_id = EXCLUDED.definition_id, updated_at = now();
    -- Whether the next chunk would be deferred: the worker then stops
    -- reading keys and lets the step read the range's bounds.
    deferring := NOT done AND (in_ranges OR sync._defers(d.id, range_keys));
    RETURN NEXT;
END $$;
COMMENT ON FUNCTION backfill_step(text, int, bigint, jsonb, jsonb, jsonb) IS 'Stages the next chunk of a definition''s initial load (keyset scan by key) and records the progress; done = true when the whole table (and the ledger''s vanished keys) is staged. While the target is far behind (sync.defer_after), records the next 20 chunks as a range of keys in sync.deferred_keys instead (deferring: the next step will). The worker calls it until done.';

-- The definitions whose backfill is not done, for the worker.
CREATE FUNCTION backfills_pending() RETURNS TABLE (definition text, source regclass, backfill text)
LANGUAGE sql STABLE AS $$
    SELECT d.name, d.source_rel, d.backfill FROM sync.definitions d
     WHERE d.state IN ('active') AND d.backfill <> 'done' ORDER BY d.id;
$$;
COMMENT ON FUNCTION backfills_pending() IS 'Active definitions whose initial load is not done.';
