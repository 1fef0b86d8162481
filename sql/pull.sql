-- syncbridge: two-way sync. The worker reads each list's changes (Graph
-- delta pages) and hands every page to sync.pull_page, which stores the
-- items as pending imports together with the link to the next page, in one
-- transaction: a crash resumes at the page after the last one stored, and
-- never loses or half-stores one. sync.apply_imports then decides each item
-- against the ledger, the common base, field by field (a three-way merge),
-- and applies what comes in to the source table, with the ledger, in one
-- transaction: the worker's session runs it under the replication origin
-- syncbridge, so the stream skips the change; and should it come back all
-- the same (another origin, a trigger), the ledger already holds it and
-- nothing is sent.
--
-- Decisions per field (inbound directions as compiled, see _compile):
--   push  a remote change is put back: the ledger learns the remote value
--         and staging sends the database's again;
--   both  changed remotely only: applied to the row; changed on both sides
--         to different values: a conflict, settled by the definition's
--         policy (source_wins, target_wins, newest_wins, manual);
--   pull  applied whenever it differs from the row (the target owns it).
-- An item whose eTag is the ledger's is syncbridge's own write coming back:
-- only its pull fields are looked at.

-- ---------------------------------------------------------------------------
-- State
-- ---------------------------------------------------------------------------
CREATE TABLE pulls (
    definition_id   int NOT NULL REFERENCES definitions (id) ON DELETE CASCADE,
    list            text NOT NULL,
    link            text,
    page_link       text,
    round           bigint NOT NULL DEFAULT 0,
    full_read       boolean NOT NULL DEFAULT true,
    full_round      bigint,
    full_started_at timestamptz,
    next_pull_at    timestamptz NOT NULL DEFAULT now(),
    lease_until     timestamptz,
    leased_by       text,
    last_pull_at    timestamptz,
    attempts        int NOT NULL DEFAULT 0,
    last_error      text,
    error_class     text CHECK (error_class IN ('transient', 'throttled', 'auth', 'definite')),
    pages           bigint NOT NULL DEFAULT 0,
    items           bigint NOT NULL DEFAULT 0,
    resyncs         int NOT NULL DEFAULT 0,
    PRIMARY KEY (definition_id, list)
);
COMMENT ON TABLE pulls IS 'Where each list''s pull stands (two-way definitions): its delta link, the page being read, its lease and its errors. Written by sync.pull_claim / pull_page / pull_failed only.';
COMMENT ON COLUMN pulls.definition_id IS 'The definition (sync.definitions.id).';
COMMENT ON COLUMN pulls.list IS 'The list (sync.target_lists.list).';
COMMENT ON COLUMN pulls.link IS 'The delta link of the last complete round (Graph @odata.deltaLink): the next round starts there. NULL: the next round is a full read.';
COMMENT ON COLUMN pulls.page_link IS 'The link to the next page of the round in progress (Graph @odata.nextLink), stored with the page before it: a crash resumes there.';
COMMENT ON COLUMN pulls.round IS 'Bumped by every lease: a page handed over under an older round is refused.';
COMMENT ON COLUMN pulls.full_read IS 'Whether the round in progress reads the whole list (first pull, or a resync after 410 Gone): at its end, items the ledger knows and the read did not see are remote deletes.';
COMMENT ON COLUMN pulls.full_round IS 'The round the full read began in.';
COMMENT ON COLUMN pulls.full_started_at IS 'When the full read began (items written after it are not taken for deleted).';
COMMENT ON COLUMN pulls.next_pull_at IS 'When the next round is due (last round + the target''s pull_interval, or a backoff after an error).';
COMMENT ON COLUMN pulls.lease_until IS 'While a worker reads the list: its lease ends at this time (then another may take over).';
COMMENT ON COLUMN pulls.leased_by IS 'Which worker reads it.';
COMMENT ON COLUMN pulls.last_pull_at IS 'When the last round completed.';
COMMENT ON COLUMN pulls.attempts IS 'Failed rounds in a row.';
COMMENT ON COLUMN pulls.last_error IS 'The last error (cleared by a complete round).';
COMMENT ON COLUMN pulls.error_class IS 'transient, throttled, auth or definite.';
COMMENT ON COLUMN pulls.pages IS 'Pages stored, in all.';
COMMENT ON COLUMN pulls.items IS 'Items stored, in all.';
COMMENT ON COLUMN pulls.resyncs IS 'Full re-reads after the target refused the delta link (410 Gone).';

CREATE TABLE pending_imports (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    definition_id int NOT NULL REFERENCES definitions (id) ON DELETE CASCADE,
    list          text NOT NULL,
    target_id     text NOT NULL,
    sync_key      text,
    etag          text,
    deleted       boolean NOT NULL DEFAULT false,
    remote        jsonb,
    modified      timestamptz,
    origin        text NOT NULL DEFAULT 'delta' CHECK (origin IN ('delta', 'full', 'resync', 'write')),
    round         bigint,
    status        text NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'applied', 'echo', 'conflict', 'awaiting_approval', 'failed', 'ignored', 'rejected', 'superseded')),
    decision      text,
    changes       jsonb,
    resolutions   jsonb,
    last_error    text,
    sqlstate      text,
    attempts      int NOT NULL DEFAULT 0,
    decided_by    name,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    applied_at    timestamptz
);
-- One open change per item: a later page's version of it replaces it.
CREATE UNIQUE INDEX pending_imports_open_idx ON pending_imports (definition_id, list, target_id) WHERE status = 'pending';
CREATE INDEX pending_imports_status_idx ON pending_imports (definition_id, status);
CREATE INDEX pending_imports_key_idx ON pending_imports (definition_id, sync_key) WHERE status IN ('pending', 'conflict', 'awaiting_approval', 'failed');
CREATE INDEX pending_imports_round_idx ON pending_imports (definition_id, list, round);
COMMENT ON TABLE pending_imports IS 'Changes read from the targets (two-way definitions, and the read-only fields of write answers): pending until sync.apply_imports decides them; then applied, echo (syncbridge''s own write), conflict (sync.resolve), awaiting_approval (sync.approve_import), failed (the reason in last_error; sync.retry_import), ignored, rejected or superseded.';
COMMENT ON COLUMN pending_imports.id IS 'Import id (sync.approve_import, sync.reject_import, sync.retry_import).';
COMMENT ON COLUMN pending_imports.definition_id IS 'The definition (sync.definitions.id).';
COMMENT ON COLUMN pending_imports.list IS 'The list the item is in.';
COMMENT ON COLUMN pending_imports.target_id IS 'The item''s id on the target.';
COMMENT ON COLUMN pending_imports.sync_key IS 'The row''s key, once known (from the ledger, the item''s SyncKey, or the row inserted for it).';
COMMENT ON COLUMN pending_imports.etag IS 'The item''s eTag as read.';
COMMENT ON COLUMN pending_imports.deleted IS 'The item was deleted on the target.';
COMMENT ON COLUMN pending_imports.remote IS 'The item''s fields as read (a field left out is empty).';
COMMENT ON COLUMN pending_imports.modified IS 'When the item was last changed on the target (newest_wins compares it).';
COMMENT ON COLUMN pending_imports.origin IS 'delta (a change read from the delta), full (a full read), resync (a remote delete found by a full read), write (a write''s answer, for pull fields).';
COMMENT ON COLUMN pending_imports.round IS 'The pull round that stored it.';
COMMENT ON COLUMN pending_imports.status IS 'pending, applied, echo, conflict, awaiting_approval, failed, ignored, rejected, superseded.';
COMMENT ON COLUMN pending_imports.decision IS 'What was decided, in words.';
COMMENT ON COLUMN pending_imports.changes IS 'Per field: {"old": ..., "new": ...} applied to the row, or put back on the target.';
COMMENT ON COLUMN pending_imports.resolutions IS 'Per field, how its conflicts were resolved (local, remote, or {"value": v}).';
COMMENT ON COLUMN pending_imports.last_error IS 'Why it failed (a value that does not fit its column, a constraint).';
COMMENT ON COLUMN pending_imports.sqlstate IS 'The SQLSTATE of that error.';
COMMENT ON COLUMN pending_imports.attempts IS 'Times it was tried.';
COMMENT ON COLUMN pending_imports.decided_by IS 'Who approved, rejected or resolved it.';
COMMENT ON COLUMN pending_imports.created_at IS 'When it was read.';
COMMENT ON COLUMN pending_imports.updated_at IS 'When it last changed.';
COMMENT ON COLUMN pending_imports.applied_at IS 'When it was applied.';

SELECT pg_catalog.pg_extension_config_dump('pulls', '');
SELECT pg_catalog.pg_extension_config_dump('pending_imports', '');

-- ---------------------------------------------------------------------------
-- Values from the target into columns
-- ---------------------------------------------------------------------------

-- A JSON number's digits as a whole number, or an error (a fraction is
-- never rounded into an integer column).
CREATE FUNCTION _whole(v text) RETURNS numeric
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    n numeric := v::numeric;
BEGIN
    IF n <> trunc(n) THEN
        RAISE EXCEPTION 'invalid input syntax for an integer: "%"', v
            USING ERRCODE = 'invalid_text_representation', DETAIL = 'A whole number was expected; nothing is rounded.';
    END IF;
    RETURN n;
END $$;

-- The SQL expression turning `src` (an expression of type jsonb, a value
-- as the target holds it) into a value of type `typ`: the inverse of
-- _json_expr for a column of kind `kind` in the time zone `tz`. JSON null
-- (or no value) is NULL; a value the type cannot take raises the type's
-- own error.
CREATE FUNCTION _from_json_expr(src text, typ regtype, kind text, tz text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    base oid;
    cat "char";
    t text := format_type(typ, NULL);
    v text := format('(%s #>> ''{}'')', src);
BEGIN
    SELECT x.oid, x.typcategory INTO base, cat FROM pg_type x
     WHERE x.oid = (WITH RECURSIVE b(oid) AS (SELECT typ::oid UNION ALL
                        SELECT t2.typbasetype FROM pg_type t2 JOIN b ON t2.oid = b.oid WHERE t2.typtype = 'd')
                    SELECT b.oid FROM b JOIN pg_type t3 ON t3.oid = b.oid WHERE t3.typtype <> 'd' LIMIT 1);
    RETURN format('(CASE WHEN jsonb_typeof(%s) IS DISTINCT FROM ''null'' THEN (%s)::%s END)', src,
        CASE
            WHEN base = 'jsonb'::regtype OR base = 'json'::regtype THEN
                -- a note holds the document's text; a document may also come as itself
                format('CASE WHEN jsonb_typeof(%1$s) = ''string'' THEN (%2$s)::jsonb ELSE %1$s END', src, v)
            WHEN cat = 'A' THEN
                format('CASE WHEN jsonb_typeof(%1$s) = ''string'' AND left(%2$s, 1) = ''['' '
                       'THEN translate((%2$s)::jsonb::text, ''[]'', ''{}'') ELSE %2$s END', src, v)
            WHEN base = 'bytea'::regtype THEN format('decode(%s, ''base64'')', v)
            WHEN base IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype) THEN format('sync._whole(%s)', v)
            WHEN tz IS NOT NULL AND base = 'timestamp'::regtype THEN format('(%s)::timestamptz AT TIME ZONE %L', v, tz)
            WHEN tz IS NOT NULL AND base = 'date'::regtype AND kind IN ('date', 'dateTime') THEN
                format('((%s)::timestamptz AT TIME ZONE %L)::date', v, tz)
            ELSE v
        END, t);
END $$;

-- Writes to a definition's source table for sync.apply_imports: the only
-- function that does, owned by the role syncbridge_writer (it may read and
-- write exactly the source tables of two-way definitions, granted by
-- _reader_grants once the definer was checked for the same rights). The SQL
-- is built from the catalog and the compiled definition: identifiers
-- quoted, values bound as parameters, never text from a target.
--   op update: sets the fields of `vals` on the row `key` (only if one
--              differs); returns {"rows": n}
--   op insert: inserts a row of `vals` (the key from the table's
--              defaults); returns {"key": {column: text}}
--   op delete: deletes the row `key`; returns {"rows": n}
--   op commit_time: the row's commit time (track_commit_timestamp), or null
--   op check:  converts `vals` without writing; returns {}
CREATE FUNCTION _source_write(def_id int, op text, key jsonb, vals jsonb) RETURNS jsonb
LANGUAGE plpgsql
SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'iso_8601' SET extra_float_digits = 1
AS $$
DECLARE
    d sync.definitions;
    c sync.compiled := sync._compile(def_id);
    tz text;
    rel text;
    key_join text;
    key_out text;
    cols text[];
    exprs text[];
    f jsonb;
    n int;
    res jsonb;
BEGIN
    SELECT * INTO d FROM sync.definitions WHERE id = def_id;
    SELECT coalesce(t.config->>'time_zone', 'UTC') INTO tz FROM sync.targets t WHERE t.name = d.target;
    rel := d.source_rel::text;
    SELECT string_agg(format('%I = ($1->>%L)::%s', a.attname, a.attname, format_type(a.atttypid, a.atttypmod)), ' AND '),
           'jsonb_build_object(' || string_agg(format('%L, (%I)::text', a.attname, a.attname), ', ') || ')'
      INTO key_join, key_out
      FROM unnest(d.key_columns) x JOIN pg_attribute a ON a.attrelid = d.source_rel AND a.attname = x;
    FOR f IN SELECT e FROM jsonb_array_elements(c.inbound) e WHERE vals ? (e->>'field') LOOP
        cols := cols || quote_ident(f->>'column');
        exprs := exprs || sync._from_json_expr(format('($2->%L)', f->>'field'), (f->>'type')::regtype, f->>'kind', tz);
    END LOOP;
    CASE op
    WHEN 'update' THEN
        IF cardinality(cols) IS NULL THEN
            RETURN jsonb_build_object('rows', 0);
        END IF;
        EXECUTE format('UPDATE ONLY %s SET (%s) = ROW(%s) WHERE %s AND (%2$s) IS DISTINCT FROM (%3$s)',
                       rel, array_to_string(cols, ', '), array_to_string(exprs, ', '), key_join)
          USING key, vals;
        GET DIAGNOSTICS n = ROW_COUNT;
        RETURN jsonb_build_object('rows', n);
    WHEN 'insert' THEN
        EXECUTE format('INSERT INTO %s (%s) VALUES (%s) RETURNING %s', rel,
                       coalesce(array_to_string(cols, ', '), ''), coalesce(array_to_string(exprs, ', '), ''), key_out)
           INTO res USING key, vals;
        RETURN jsonb_build_object('key', res);
    WHEN 'delete' THEN
        EXECUTE format('DELETE FROM ONLY %s WHERE %s', rel, key_join) USING key, vals;
        GET DIAGNOSTICS n = ROW_COUNT;
        RETURN jsonb_build_object('rows', n);
    WHEN 'commit_time' THEN
        IF NOT current_setting('track_commit_timestamp')::boolean THEN
            RETURN jsonb_build_object('time', NULL);
        END IF;
        EXECUTE format('SELECT to_jsonb(pg_xact_commit_timestamp(xmin)) FROM ONLY %s WHERE %s', rel, key_join) INTO res USING key, vals;
        RETURN jsonb_build_object('time', res);
    WHEN 'check' THEN
        IF cardinality(cols) IS NOT NULL THEN
            EXECUTE format('SELECT ROW(%s)', array_to_string(exprs, ', ')) USING key, vals;
        END IF;
        RETURN '{}';
    END CASE;
END $$;

-- ---------------------------------------------------------------------------
-- Pulling (the worker)
-- ---------------------------------------------------------------------------

-- Seconds between two pulls of a list: the target's pull_interval, else 60.
CREATE FUNCTION _pull_interval(target_name text) RETURNS interval
LANGUAGE sql STABLE AS $$
    SELECT make_interval(secs => coalesce((t.config->>'pull_interval')::float8, 60)) FROM sync.targets t WHERE t.name = target_name
$$;

-- The arguments the worker's calls on a target share: the target exists,
-- a batch size within 1..max_n, the worker's name. Raises 42704 / 22023.
CREATE FUNCTION _check_target_call(target_name text, n int, max_n int, what text, nothing text, worker text) RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM sync.targets t WHERE t.name = target_name) THEN
        RAISE EXCEPTION 'target % does not exist', coalesce(quote_literal(target_name), 'NULL')
            USING ERRCODE = 'undefined_object', DETAIL = nothing, HINT = 'SELECT name FROM sync.targets;';
    END IF;
    IF n IS NULL OR n NOT BETWEEN 1 AND max_n THEN
        RAISE EXCEPTION 'invalid batch size %', coalesce(n::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value', DETAIL = format('%s takes 1 to %s at a time.', what, max_n),
                  HINT = 'Leave n out for the default.';
    END IF;
    PERFORM sync._check_worker_name(worker);
END $$;

-- The containers a target's definitions pull: the lists syncbridge
-- provisioned or found (sync.target_lists with their id), and, for kinds
-- whose containers exist already (a repository, a Jira project, a Linear
-- team: sync.target_kinds.containers), the definition's list and its shards'
-- lists, known by their name.
CREATE FUNCTION _pull_containers(target text)
RETURNS TABLE (definition_id int, list text, remote_id text)
LANGUAGE sql STABLE AS $$
    SELECT tl.definition_id, tl.list, tl.remote_id
      FROM sync.target_lists tl JOIN sync.definitions d ON d.id = tl.definition_id
     WHERE d.target = _pull_containers.target AND tl.remote_id IS NOT NULL
    UNION
    SELECT d.id, l.list, l.list
      FROM sync.definitions d
      JOIN sync.targets t ON t.name = d.target
      JOIN sync.target_kinds k ON k.kind = t.kind AND k.containers = 'existing'
     CROSS JOIN LATERAL (SELECT d.list AS list WHERE d.list IS NOT NULL
                         UNION SELECT s.list FROM sync.shards s WHERE s.definition_id = d.id) l
     WHERE d.target = _pull_containers.target
       AND NOT EXISTS (SELECT 1 FROM sync.target_lists tl
                        WHERE tl.definition_id = d.id AND tl.list = l.list AND tl.remote_id IS NOT NULL)
$$;

CREATE FUNCTION pull_claim(target text, n int DEFAULT 10, lease_seconds int DEFAULT NULL, worker text DEFAULT NULL, force boolean DEFAULT false)
RETURNS TABLE (definition text, list text, list_id text, link text, fields text[], round bigint)
LANGUAGE plpgsql AS $$
DECLARE
    lease interval;
BEGIN
    PERFORM sync._check_target_call(target, n, 1000, 'A pull claim (lists)', 'Nothing was claimed.', worker);
    IF lease_seconds IS NOT NULL AND lease_seconds NOT BETWEEN 1 AND 86400 THEN
        RAISE EXCEPTION 'invalid lease_seconds %', lease_seconds
            USING ERRCODE = 'invalid_parameter_value', DETAIL = 'A lease lasts 1 to 86400 seconds.',
                  HINT = format('The default is %s (setting sync.lease_seconds).', sync._setting('lease_seconds'));
    END IF;
    lease := make_interval(secs => coalesce(lease_seconds, sync._setting('lease_seconds')::int));
    -- Every provisioned list of the target's pulling definitions has its row
    -- (made when the list is provisioned; here for lists that lack it). One
    -- worker at a time adds them: another would wait on its uncommitted rows.
    IF pg_try_advisory_xact_lock(1937337956, hashtext(pull_claim.target))
       AND EXISTS (SELECT 1 FROM sync._pull_containers(pull_claim.target) c JOIN sync.definitions d ON d.id = c.definition_id
                    WHERE d.direction <> 'push'
                      AND NOT EXISTS (SELECT 1 FROM sync.pulls p WHERE p.definition_id = d.id AND p.list = c.list)) THEN
        INSERT INTO sync.pulls (definition_id, list)
        SELECT d.id, c.list FROM sync._pull_containers(pull_claim.target) c JOIN sync.definitions d ON d.id = c.definition_id
         WHERE d.direction <> 'push'
        ON CONFLICT DO NOTHING;
    END IF;
    RETURN QUERY
    WITH due AS (
        SELECT p.definition_id, p.list FROM sync.pulls p JOIN sync.definitions d ON d.id = p.definition_id
         WHERE d.target = pull_claim.target AND d.state = 'active' AND d.direction <> 'push'
           AND (pull_claim.force OR p.next_pull_at <= now())
           AND (p.lease_until IS NULL OR p.lease_until < now())
         ORDER BY p.next_pull_at, p.definition_id, p.list
         LIMIT n
           FOR UPDATE OF p SKIP LOCKED
    ), leased AS (
        UPDATE sync.pulls p
           SET round = p.round + 1, lease_until = now() + lease, leased_by = pull_claim.worker,
               -- a round that starts without a link reads the whole list
               full_read = CASE WHEN p.page_link IS NULL THEN p.link IS NULL ELSE p.full_read END,
               full_round = CASE WHEN p.page_link IS NULL AND p.link IS NULL THEN p.round + 1 ELSE p.full_round END,
               full_started_at = CASE WHEN p.page_link IS NULL AND p.link IS NULL THEN now() ELSE p.full_started_at END
          FROM due WHERE p.definition_id = due.definition_id AND p.list = due.list
        RETURNING p.*
    )
    SELECT d.name, l.list, c.remote_id, coalesce(l.page_link, l.link),
           ARRAY['SyncKey'] || ARRAY(SELECT DISTINCT e->>'field' FROM jsonb_array_elements((sync._compile(d.id)).inbound) e
                                      WHERE e->>'field' <> 'SyncKey' ORDER BY 1),
           l.round
      FROM leased l JOIN sync.definitions d ON d.id = l.definition_id
      JOIN sync._pull_containers(pull_claim.target) c ON c.definition_id = l.definition_id AND c.list = l.list
     ORDER BY d.name, l.list;
END $$;
COMMENT ON FUNCTION pull_claim(text, int, int, text, boolean) IS 'Leases up to n lists of a target whose pull is due (force: all) to the caller (FOR UPDATE SKIP LOCKED: two workers never read one list at once): the list''s id, the link to read next (NULL: start a full read), the fields to select, and the round to hand pages over under.';

-- The caller's lease of a list, locked; raises 55000 when it has lost it.
CREATE FUNCTION _pull_lease(def_id int, list_name text, lease_round bigint, worker text) RETURNS pulls
LANGUAGE plpgsql AS $$
DECLARE
    p sync.pulls;
BEGIN
    SELECT * INTO p FROM sync.pulls x WHERE x.definition_id = def_id AND x.list = list_name FOR UPDATE;
    IF NOT FOUND OR p.round <> lease_round OR p.leased_by IS DISTINCT FROM worker OR p.lease_until IS NULL THEN
        RAISE EXCEPTION 'the pull of list % is no longer leased to this worker', quote_literal(list_name)
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('Round %s; the list''s round is %s, leased by %s.', lease_round, coalesce(p.round::text, 'none'), coalesce(p.leased_by, 'nobody')),
                  HINT = 'The lease expired and another worker took the list over: leave it.';
    END IF;
    RETURN p;
END $$;

-- A page of items as the worker hands it over (sync.pull_page, and
-- sync.drift_page): raises 22023, nothing stored, when it is malformed.
CREATE FUNCTION _check_page(items jsonb, link text, final boolean) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    bad bigint;
BEGIN
    IF items IS NULL OR jsonb_typeof(items) <> 'array' THEN
        RAISE EXCEPTION 'items must be a JSON array'
            USING ERRCODE = 'invalid_parameter_value', DETAIL = format('Got %s.', coalesce(jsonb_typeof(items), 'NULL')),
                  HINT = 'items is [{"id": "1", "etag": "...", "deleted": false, "modified": "...", "fields": {...}}].';
    END IF;
    SELECT min(o) INTO bad FROM jsonb_array_elements(items) WITH ORDINALITY e(v, o)
     WHERE jsonb_typeof(v) <> 'object' OR jsonb_typeof(v -> 'id') <> 'string' OR (v ->> 'id') !~ '^[A-Za-z0-9._,-]{1,200}$'
        OR (v ? 'etag' AND jsonb_typeof(v -> 'etag') NOT IN ('string', 'null'))
        OR (v ? 'deleted' AND jsonb_typeof(v -> 'deleted') <> 'boolean')
        OR (v ? 'fields' AND jsonb_typeof(v -> 'fields') NOT IN ('object', 'null'))
        OR (v ? 'modified' AND jsonb_typeof(v -> 'modified') NOT IN ('string', 'null'));
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'item % of the page is malformed', bad
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('It is %s.', left((items -> (bad - 1)::int)::text, 200)),
                  HINT = 'Each item has a string id; etag and modified are strings, deleted a boolean, fields an object. Nothing of the page was stored.';
    END IF;
    IF final IS NULL OR (final AND link IS NULL) THEN
        RAISE EXCEPTION 'a last page needs its delta link'
            USING ERRCODE = 'invalid_parameter_value', DETAIL = 'The next round starts at the delta link of the last page.',
                  HINT = 'Pass the page''s @odata.deltaLink with final => true, or its @odata.nextLink with final => false.';
    END IF;
    IF length(link) > 8000 THEN
        RAISE EXCEPTION 'link too long'
            USING ERRCODE = 'invalid_parameter_value', DETAIL = format('%s characters; at most 8000.', length(link)), HINT = 'Pass the link the target gave.';
    END IF;
END $$;

CREATE FUNCTION pull_page(definition text, list text, round bigint, items jsonb, link text, final boolean, worker text DEFAULT NULL)
RETURNS int
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    d sync.definitions := sync._def(definition);
    p sync.pulls;
    stored int;
    lease interval := make_interval(secs => sync._setting('lease_seconds')::int);
BEGIN
    PERFORM sync._check_page(items, link, final);
    PERFORM sync._check_worker_name(worker);
    p := sync._pull_lease(d.id, list, round, worker);
    -- The page's items, the last version of each (an item may come more
    -- than once in a round: the last counts).
    WITH page AS (
        SELECT DISTINCT ON (v ->> 'id') v ->> 'id' AS target_id, v ->> 'etag' AS etag,
               coalesce((v ->> 'deleted')::boolean, false) AS deleted,
               CASE WHEN jsonb_typeof(v -> 'fields') = 'object' THEN v -> 'fields' END AS remote,
               CASE WHEN (v ->> 'modified') ~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}T' THEN (v ->> 'modified')::timestamptz END AS modified
          FROM jsonb_array_elements(items) WITH ORDINALITY e(v, o)
         ORDER BY v ->> 'id', o DESC
    ), ins AS (
        INSERT INTO sync.pending_imports AS i (definition_id, list, target_id, sync_key, etag, deleted, remote, modified, origin, round)
        SELECT d.id, pull_page.list, page.target_id,
               -- the key, when the item is known: its exports wait for the decision
               (SELECT l.sync_key FROM sync.ledger l WHERE l.target_id = page.target_id AND l.definition_id = d.id AND l.list = pull_page.list LIMIT 1),
               page.etag, page.deleted, page.remote, page.modified,
               CASE WHEN p.full_read THEN 'full' ELSE 'delta' END, pull_page.round
          FROM page
        ON CONFLICT (definition_id, list, target_id) WHERE status = 'pending'
        DO UPDATE SET etag = EXCLUDED.etag, deleted = EXCLUDED.deleted, remote = EXCLUDED.remote, modified = EXCLUDED.modified,
                      origin = EXCLUDED.origin, round = EXCLUDED.round, sync_key = EXCLUDED.sync_key, updated_at = now()
        RETURNING 1
    )
    SELECT count(*) INTO stored FROM ins;
    IF final THEN
        IF p.full_read THEN
            -- A full read saw every item: the ones the ledger knows in this
            -- list that it did not see (and that were not written since it
            -- began) were deleted on the target.
            INSERT INTO sync.pending_imports AS i (definition_id, list, target_id, sync_key, etag, deleted, origin, round)
            SELECT d.id, l.list, l.target_id, l.sync_key, NULL, true, 'resync', pull_page.round
              FROM sync.ledger l
             WHERE l.definition_id = d.id AND l.list = pull_page.list AND l.target_id IS NOT NULL
               AND l.last_synced_at < p.full_started_at
               AND NOT EXISTS (SELECT 1 FROM sync.pending_imports s
                                WHERE s.definition_id = d.id AND s.list = pull_page.list AND s.target_id = l.target_id
                                  AND s.round >= p.full_round AND s.origin IN ('full', 'delta'))
            ON CONFLICT (definition_id, list, target_id) WHERE status = 'pending'
            DO UPDATE SET deleted = true, remote = NULL, origin = 'resync', round = EXCLUDED.round, updated_at = now();
        END IF;
        UPDATE sync.pulls x
           SET link = pull_page.link, page_link = NULL, full_read = false, full_round = NULL, full_started_at = NULL,
               last_pull_at = now(), next_pull_at = now() + sync._pull_interval(d.target),
               lease_until = NULL, leased_by = NULL, attempts = 0, last_error = NULL, error_class = NULL,
               pages = x.pages + 1, items = x.items + stored
         WHERE x.definition_id = d.id AND x.list = pull_page.list;
    ELSE
        UPDATE sync.pulls x
           SET page_link = pull_page.link, lease_until = now() + lease, pages = x.pages + 1, items = x.items + stored
         WHERE x.definition_id = d.id AND x.list = pull_page.list;
    END IF;
    RETURN stored;
END $$;
COMMENT ON FUNCTION pull_page(text, text, bigint, jsonb, text, boolean, text) IS 'Stores one page of a list''s changes as pending imports together with the link to the next page (final: the delta link the next round starts at), in one transaction. At the end of a full read, items the ledger knows that were not seen become remote deletes. Raises 55000 when the caller no longer holds the list''s lease.';

CREATE FUNCTION pull_failed(definition text, list text, round bigint, error text, class text, resync boolean DEFAULT false,
                            retry_after double precision DEFAULT NULL, worker text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    d sync.definitions := sync._def(definition);
    p sync.pulls;
BEGIN
    PERFORM sync._check_choice('error class', class, ARRAY['transient', 'throttled', 'auth', 'definite']);
    IF retry_after IS NOT NULL AND (retry_after = 'NaN' OR retry_after NOT BETWEEN 0 AND 86400) THEN
        RAISE EXCEPTION 'invalid retry_after %', retry_after
            USING ERRCODE = 'invalid_parameter_value', DETAIL = 'retry_after is 0 to 86400 seconds.', HINT = 'Pass the target''s Retry-After.';
    END IF;
    PERFORM sync._check_worker_name(worker);
    p := sync._pull_lease(d.id, list, round, worker);
    UPDATE sync.pulls x
       SET lease_until = NULL, leased_by = NULL,
           -- 410 Gone: the link is dead; the next round reads the whole list
           link = CASE WHEN resync THEN NULL ELSE x.link END,
           page_link = CASE WHEN resync THEN NULL ELSE x.page_link END,
           full_read = CASE WHEN resync THEN true ELSE x.full_read END,
           resyncs = x.resyncs + resync::int,
           attempts = CASE WHEN class = 'throttled' OR resync THEN x.attempts ELSE x.attempts + 1 END,
           last_error = left(coalesce(error, 'failed without a message'), 2000), error_class = class,
           next_pull_at = now() + greatest(
               CASE WHEN resync OR class = 'throttled' THEN interval '0' ELSE sync._backoff(x.attempts + 1) END,
               make_interval(secs => coalesce(retry_after, 0)))
     WHERE x.definition_id = d.id AND x.list = pull_failed.list;
END $$;
COMMENT ON FUNCTION pull_failed(text, text, bigint, text, text, boolean, double precision, text) IS 'The worker reports a failed pull of a list: the lease is released and the next round waits a backoff (or retry_after); resync (410 Gone, or a link refused) starts the next round as a full read.';

CREATE FUNCTION pull_due(target text) RETURNS double precision
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN EXISTS (SELECT 1 FROM sync.pending_imports i JOIN sync.definitions d ON d.id = i.definition_id
                              WHERE d.target = pull_due.target AND d.state = 'active' AND i.status = 'pending') THEN 0::float8
    -- (greatest() skips a NULL: a target without lists must stay NULL)
    ELSE (SELECT CASE WHEN count(*) > 0 THEN greatest(0, extract(epoch FROM min(coalesce(CASE WHEN p.lease_until > now() THEN greatest(p.lease_until, p.next_pull_at) ELSE p.next_pull_at END, now())) - now()))::float8 END
      FROM sync._pull_containers(pull_due.target) c
      JOIN sync.definitions d ON d.id = c.definition_id
      LEFT JOIN sync.pulls p ON p.definition_id = d.id AND p.list = c.list
     WHERE d.state = 'active' AND d.direction <> 'push') END
$$;
COMMENT ON FUNCTION pull_due(text) IS 'Seconds until a list of the target is due for a pull, or inbound changes wait to be applied (0: now); NULL when the target has no list to pull and nothing waits.';

CREATE FUNCTION pull_now(definition text) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    d sync.definitions := sync._def(definition);
    n int;
BEGIN
    IF d.direction = 'push' THEN
        RAISE EXCEPTION 'definition % does not pull', quote_literal(definition)
            USING ERRCODE = 'object_not_in_prerequisite_state', DETAIL = 'Its direction is push.',
                  HINT = 'Define it with direction => ''both'' or ''pull'' to read changes back.';
    END IF;
    INSERT INTO sync.pulls (definition_id, list)
    SELECT d.id, c.list FROM sync._pull_containers(d.target) c WHERE c.definition_id = d.id
    ON CONFLICT DO NOTHING;
    UPDATE sync.pulls SET next_pull_at = now() WHERE definition_id = d.id;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;
COMMENT ON FUNCTION pull_now(text) IS 'Makes every list of a two-way definition due for a pull now. Returns the number of lists.';

CREATE FUNCTION reset_pull(definition text) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    d sync.definitions := sync._def(definition);
    n int;
BEGIN
    UPDATE sync.pulls SET link = NULL, page_link = NULL, full_read = true, next_pull_at = now() WHERE definition_id = d.id;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;
COMMENT ON FUNCTION reset_pull(text) IS 'Forgets the delta links of a definition''s lists: the next pull reads each list whole and compares it with the ledger (items gone on the target become remote deletes). Returns the number of lists.';

-- ---------------------------------------------------------------------------
-- Deciding and applying
-- ---------------------------------------------------------------------------

-- The worker's session takes the replication origin syncbridge before it
-- calls sync.apply_imports (the stream skips what such a session commits)
-- and gives it back after; PostgreSQL 15 lets one session at a time hold it
-- (55006 object_in_use: the worker waits and tries again).
CREATE FUNCTION _origin_setup() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_catalog.pg_replication_origin_session_setup('syncbridge');
END $$;

CREATE FUNCTION _origin_reset() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_catalog.pg_replication_origin_session_reset();
END $$;

-- An eTag as Graph spells it in one place or another ("{GUID},N" in a
-- delta, "guid,N" in an ETag header, W/ and quotes or not): the same text.
CREATE FUNCTION _etag_norm(etag text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT lower(translate(regexp_replace(etag, '^W/', ''), '"{}', ''))
$$;

-- A field's value in a field set as the target gives it (JSON null when
-- absent: a field left out is empty). Names match as SharePoint matches
-- them, without case: a mapping of ID reads the id every field set has.
CREATE FUNCTION _field_of(fields jsonb, name text) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(fields -> name, (SELECT f.value FROM jsonb_each(fields) f WHERE lower(f.key) = lower(name) LIMIT 1), 'null')
$$;

-- When the row's value of a key last changed here, for newest_wins: its
-- commit time when track_commit_timestamp is on; else when the change was
-- staged (the open export of the key: a little after its commit); else (a
-- change not staged yet) now: the database's change counts as the newer.
CREATE FUNCTION _local_time(def_id int, key_obj jsonb, sync_key text) RETURNS timestamptz
LANGUAGE plpgsql AS $$
DECLARE
    t timestamptz;
BEGIN
    t := (sync._source_write(def_id, 'commit_time', key_obj, '{}') ->> 'time')::timestamptz;
    IF t IS NULL THEN
        SELECT max(e.updated_at) INTO t FROM sync.pending_exports e
         WHERE e.definition_id = def_id AND e.sync_key = _local_time.sync_key
           AND e.status IN ('pending', 'awaiting_approval', 'failed', 'error', 'executing');
    END IF;
    RETURN coalesce(t, now());
END $$;

-- Decides one pending import and carries the decision out (the caller holds
-- the definition's staging lock and runs this in a subtransaction: an error
-- leaves nothing half-done). Returns the import's new status, or 'waiting'
-- (an export of the key is in flight: decided later).
CREATE FUNCTION _apply_import(imp pending_imports, d definitions) RETURNS text
LANGUAGE plpgsql
SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'iso_8601' SET extra_float_digits = 1
AS $$
DECLARE
    c sync.compiled := sync._compile(d.id);
    l sync.ledger;
    found_ledger boolean;
    key_obj jsonb;
    skey text;
    w record;
    f jsonb;
    fname text;
    dir text;
    rv jsonb;         -- remote value
    bv jsonb;         -- base value (ledger)
    lv jsonb;         -- local value (row)
    set_vals jsonb := '{}';
    new_base jsonb := '{}';
    v_changes jsonb := '{}';
    putback text[] := '{}';
    v_conflicts jsonb := '[]';
    winner text;
    local_t timestamptz;
    remote_t timestamptz;
    res jsonb;
    new_fields jsonb;
    echo boolean;
    v_remote jsonb := coalesce(imp.remote, '{}');
    outcome text;
    pulled text[] := '{}';
BEGIN
    -- The item: by id in its list, else by its SyncKey.
    SELECT * INTO l FROM sync.ledger x
     WHERE x.target_id = imp.target_id AND x.definition_id = d.id AND x.list = imp.list LIMIT 1;
    found_ledger := FOUND;
    IF NOT found_ledger AND NOT imp.deleted AND jsonb_typeof(v_remote -> 'SyncKey') = 'string' THEN
        -- (only in the item's own list, and only a ledger entry without an
        -- item or with this one: a SyncKey typed into another item never
        -- reaches a row of another list, or takes over a row's item)
        SELECT * INTO l FROM sync.ledger x
         WHERE x.definition_id = d.id AND x.sync_key = v_remote ->> 'SyncKey' AND x.list = imp.list
           AND (x.target_id IS NULL OR x.target_id = imp.target_id);
        found_ledger := FOUND;
    END IF;

    -- Deleted on the target.
    IF imp.deleted THEN
        IF NOT found_ledger THEN
            UPDATE sync.pending_imports SET status = 'ignored', decision = 'deleted on the target: an item syncbridge did not know',
                   updated_at = now() WHERE id = imp.id;
            RETURN 'ignored';
        END IF;
        IF EXISTS (SELECT 1 FROM sync.pending_exports e WHERE e.definition_id = d.id AND e.sync_key = l.sync_key AND e.status = 'executing') THEN
            RETURN 'waiting';
        END IF;
        key_obj := sync._key_objects(d.id, ARRAY[l.sync_key]) -> 0;
        IF d.inbound_deletes = 'approve' AND imp.decided_by IS NULL THEN
            UPDATE sync.pending_imports SET status = 'awaiting_approval', sync_key = l.sync_key,
                   decision = 'deleted on the target: the row is deleted once approved (sync.approve_import), kept and sent again if rejected (sync.reject_import)',
                   updated_at = now() WHERE id = imp.id;
            RETURN 'awaiting_approval';
        END IF;
        IF d.inbound_deletes = 'ignore' THEN
            -- The row stays; the ledger forgets the item (it is created again
            -- the next time the row v_changes).
            DELETE FROM sync.ledger x WHERE x.definition_id = d.id AND x.sync_key = l.sync_key;
            UPDATE sync.pending_imports SET status = 'ignored', sync_key = l.sync_key,
                   decision = 'deleted on the target: ignored (inbound_deletes = ignore); the row stays', updated_at = now() WHERE id = imp.id;
            RETURN 'ignored';
        END IF;
        res := sync._source_write(d.id, 'delete', key_obj, '{}');
        DELETE FROM sync.ledger x WHERE x.definition_id = d.id AND x.sync_key = l.sync_key;
        IF d.direction = 'both' THEN
            PERFORM sync._stage_def(d.id, jsonb_build_array(key_obj), NULL, NULL);
        END IF;
        UPDATE sync.pending_imports SET status = 'applied', sync_key = l.sync_key, applied_at = now(), updated_at = now(),
               decision = format('deleted on the target: the row was deleted (%s row)', res ->> 'rows'),
               changes = jsonb_build_object('@deleted', jsonb_build_object('old', l.fields, 'new', NULL))
         WHERE id = imp.id;
        RETURN 'applied';
    END IF;

    -- A new item on the target: a row for it.
    IF NOT found_ledger THEN
        IF jsonb_typeof(v_remote -> 'SyncKey') = 'string' AND v_remote ->> 'SyncKey' <> '' THEN
            UPDATE sync.pending_imports SET status = 'ignored', updated_at = now(),
                   decision = format('an item with SyncKey %s that the ledger does not know (a drift check tells more)', left(v_remote ->> 'SyncKey', 200))
             WHERE id = imp.id;
            RETURN 'ignored';
        END IF;
        IF d.inbound_inserts = 'ignore' OR (d.inbound_inserts = 'approve' AND imp.decided_by IS NULL) THEN
            UPDATE sync.pending_imports
               SET status = CASE d.inbound_inserts WHEN 'ignore' THEN 'ignored' ELSE 'awaiting_approval' END, updated_at = now(),
                   decision = CASE d.inbound_inserts WHEN 'ignore' THEN 'created on the target: ignored (inbound_inserts = ignore)'
                                   ELSE 'created on the target: a row is inserted once approved (sync.approve_import)' END
             WHERE id = imp.id;
            RETURN CASE d.inbound_inserts WHEN 'ignore' THEN 'ignored' ELSE 'awaiting_approval' END;
        END IF;
        SELECT coalesce(jsonb_object_agg(e->>'field', sync._field_of(v_remote, e->>'field')), '{}') INTO set_vals
          FROM jsonb_array_elements(c.inbound) e;
        res := sync._source_write(d.id, 'insert', NULL, set_vals);
        key_obj := res -> 'key';
        SELECT * INTO w FROM sync._mapped_rows_by_key(d.id, jsonb_build_array(key_obj)) LIMIT 1;
        skey := w.sync_key;
        -- The ledger holds the item as the row now maps (nothing to send
        -- back), known to have come from the target.
        INSERT INTO sync.ledger (definition_id, sync_key, list, target_id, etag, fields, hash, join_type, provenance)
        VALUES (d.id, skey, imp.list, imp.target_id, imp.etag, coalesce(w.fields, '{}'),
                coalesce(w.hash, sha256(convert_to('{}', 'UTF8'))), 'projected', 'pull');
        IF d.direction = 'both' THEN
            -- Whatever the row maps to differently (a shard's list: a move,
            -- which creates the item anew with its SyncKey) is staged; else
            -- the item gets its SyncKey written.
            PERFORM sync._stage_def(d.id, jsonb_build_array(key_obj), NULL, NULL);
            INSERT INTO sync.pending_exports (definition_id, sync_key, op, list, payload, hash, status)
            VALUES (d.id, skey, 'update', imp.list, jsonb_build_object('SyncKey', skey), coalesce(w.hash, sha256(convert_to('{}', 'UTF8'))), 'pending')
            ON CONFLICT (definition_id, sync_key) WHERE status IN ('pending', 'awaiting_approval', 'failed', 'error') AND sync_key IS NOT NULL
            DO NOTHING;
        END IF;
        UPDATE sync.pending_imports SET status = 'applied', sync_key = skey, applied_at = now(), updated_at = now(),
               decision = 'created on the target: a row was inserted',
               changes = (SELECT jsonb_object_agg(k, jsonb_build_object('old', NULL, 'new', v)) FROM jsonb_each(set_vals) s(k, v))
         WHERE id = imp.id;
        RETURN 'applied';
    END IF;

    -- A known item that changed (or syncbridge's own write coming back).
    IF EXISTS (SELECT 1 FROM sync.pending_exports e WHERE e.definition_id = d.id AND e.sync_key = l.sync_key AND e.status = 'executing') THEN
        RETURN 'waiting';
    END IF;
    key_obj := sync._key_objects(d.id, ARRAY[l.sync_key]) -> 0;
    SELECT * INTO w FROM sync._mapped_rows_by_key(d.id, jsonb_build_array(key_obj)) LIMIT 1;
    IF NOT coalesce(w.present, false) AND NOT EXISTS (
            SELECT 1 FROM jsonb_array_elements(c.inbound) e WHERE e->>'direction' = 'pull') THEN
        -- The row is gone here (or filtered out): its delete goes (with the
        -- item's new eTag, so that it is not refused as stale).
        UPDATE sync.ledger x SET etag = imp.etag WHERE x.definition_id = d.id AND x.sync_key = l.sync_key;
        UPDATE sync.pending_imports SET status = 'ignored', sync_key = l.sync_key, updated_at = now(),
               decision = 'the row is no longer sent from here: the database''s delete wins' WHERE id = imp.id;
        IF d.direction = 'both' THEN
            PERFORM sync._stage_def(d.id, jsonb_build_array(key_obj), NULL, NULL);
        END IF;
        RETURN 'ignored';
    END IF;
    echo := imp.etag IS NOT NULL AND sync._etag_norm(imp.etag) = sync._etag_norm(l.etag);
    FOR f IN SELECT e FROM jsonb_array_elements(c.inbound) e LOOP
        fname := f->>'field';
        dir := f->>'direction';
        rv := sync._field_of(v_remote, fname);
        IF dir = 'pull' THEN
            -- The target owns it: taken whenever it differs (the UPDATE
            -- below v_changes nothing when it does not).
            -- (a field the answer leaves out is not known to be empty here:
            -- Graph leaves out empty fields, and also fields a list lacks)
            IF imp.remote IS NOT NULL AND EXISTS (SELECT 1 FROM jsonb_object_keys(v_remote) k WHERE lower(k) = lower(fname)) THEN
                set_vals := set_vals || jsonb_build_object(fname, rv);
                pulled := pulled || fname;
            END IF;
            CONTINUE;
        END IF;
        bv := coalesce(l.fields -> fname, 'null');
        lv := coalesce(w.fields -> fname, 'null');
        -- (a write's answer brings the read-only fields only)
        IF echo OR rv = bv OR imp.remote IS NULL OR imp.origin = 'write' THEN
            new_base := new_base || jsonb_build_object(fname, bv);
        ELSIF dir = 'push' THEN
            -- The database owns it: put back.
            new_base := new_base || jsonb_build_object(fname, rv);
            putback := putback || fname;
        ELSIF lv = bv OR lv = rv THEN
            -- Changed on the target only (or the same way on both sides).
            set_vals := set_vals || jsonb_build_object(fname, rv);
            new_base := new_base || jsonb_build_object(fname, rv);
            IF lv <> rv THEN
                v_changes := v_changes || jsonb_build_object(fname, jsonb_build_object('old', lv, 'new', rv));
            END IF;
        ELSE
            v_conflicts := v_conflicts || jsonb_build_object('field', fname, 'base', bv, 'local', lv, 'remote', rv);
        END IF;
    END LOOP;

    -- Fields changed on both sides.
    IF jsonb_array_length(v_conflicts) > 0 THEN
        remote_t := coalesce(imp.modified, CASE WHEN (v_remote ->> 'Modified') ~ '^[0-9]{4}-' THEN (v_remote ->> 'Modified')::timestamptz END);
        IF d.conflict = 'newest_wins' THEN
            local_t := sync._local_time(d.id, key_obj, l.sync_key);
        END IF;
        FOR f IN SELECT e FROM jsonb_array_elements(v_conflicts) e LOOP
            fname := f->>'field';
            winner := CASE
                WHEN imp.resolutions ? fname THEN
                    CASE WHEN jsonb_typeof(imp.resolutions -> fname) = 'object' THEN 'custom' ELSE imp.resolutions ->> fname END
                WHEN d.conflict = 'source_wins' THEN 'local'
                WHEN d.conflict = 'target_wins' THEN 'remote'
                WHEN d.conflict = 'newest_wins' THEN CASE WHEN remote_t IS NOT NULL AND remote_t > local_t THEN 'remote' ELSE 'local' END
                ELSE NULL END;
            CASE winner
            WHEN 'local' THEN
                new_base := new_base || jsonb_build_object(fname, f -> 'remote');
                putback := putback || fname;
            WHEN 'remote' THEN
                set_vals := set_vals || jsonb_build_object(fname, f -> 'remote');
                new_base := new_base || jsonb_build_object(fname, f -> 'remote');
                v_changes := v_changes || jsonb_build_object(fname, jsonb_build_object('old', f -> 'local', 'new', f -> 'remote'));
            WHEN 'custom' THEN
                set_vals := set_vals || jsonb_build_object(fname, imp.resolutions -> fname -> 'value');
                new_base := new_base || jsonb_build_object(fname, f -> 'remote');
                v_changes := v_changes || jsonb_build_object(fname, jsonb_build_object('old', f -> 'local', 'new', imp.resolutions -> fname -> 'value'));
                putback := putback || fname;
            ELSE
                -- manual: recorded; the item waits for sync.resolve
                INSERT INTO sync.conflicts (definition_id, sync_key, field, base_value, local_value, remote_value,
                                            import_id, local_time, remote_time, target_id)
                VALUES (d.id, l.sync_key, fname, f -> 'base', f -> 'local', f -> 'remote', imp.id,
                        sync._local_time(d.id, key_obj, l.sync_key), remote_t, imp.target_id);
            END CASE;
        END LOOP;
        IF EXISTS (SELECT 1 FROM sync.conflicts x WHERE x.import_id = imp.id AND x.resolution IS NULL) THEN
            UPDATE sync.pending_imports SET status = 'conflict', sync_key = l.sync_key, updated_at = now(),
                   decision = format('changed on both sides: %s (sync.conflicts; sync.resolve)',
                                     (SELECT string_agg(x.field, ', ' ORDER BY x.field) FROM sync.conflicts x WHERE x.import_id = imp.id AND x.resolution IS NULL))
             WHERE id = imp.id;
            RETURN 'conflict';
        END IF;
    END IF;

    -- Apply to the row, then the ledger learns what both sides hold.
    IF set_vals <> '{}' AND coalesce(w.present, false) THEN
        res := sync._source_write(d.id, 'update', key_obj, set_vals);
        SELECT * INTO w FROM sync._mapped_rows_by_key(d.id, jsonb_build_array(key_obj)) LIMIT 1;
    ELSIF set_vals <> '{}' THEN
        res := sync._source_write(d.id, 'update', key_obj, set_vals);
    END IF;
    outcome := CASE WHEN echo AND coalesce((res ->> 'rows')::int, 0) = 0 AND cardinality(putback) = 0 THEN 'echo' ELSE 'applied' END;
    -- Per sent field: the row's value where it agrees with the base decided
    -- above (its exact form, so that staging hashes it the same), else that
    -- base (staging then sends the row's value: put back, source wins).
    SELECT coalesce(jsonb_object_agg(s ->> 'field',
               CASE WHEN NOT new_base ? (s ->> 'field') THEN coalesce(l.fields -> (s ->> 'field'), 'null')
                    WHEN coalesce(w.fields -> (s ->> 'field'), 'null') = new_base -> (s ->> 'field') THEN coalesce(w.fields -> (s ->> 'field'), 'null')
                    ELSE new_base -> (s ->> 'field') END), '{}')
      INTO new_fields
      FROM jsonb_array_elements(c.fields) s;
    UPDATE sync.ledger x
       SET etag = coalesce(imp.etag, x.etag), fields = new_fields, hash = sha256(convert_to(new_fields::text, 'UTF8')),
           provenance = CASE WHEN v_changes = '{}' THEN x.provenance ELSE 'pull' END, last_synced_at = now()
     WHERE x.definition_id = d.id AND x.sync_key = l.sync_key;
    IF d.direction = 'both' THEN
        PERFORM sync._stage_def(d.id, jsonb_build_array(key_obj), NULL, NULL);
    END IF;
    IF v_remote ->> 'SyncKey' = l.sync_key THEN
        -- The item has its SyncKey (a write-back whose answer was lost):
        -- never written again.
        UPDATE sync.pending_exports e
           SET payload = e.payload - 'SyncKey', updated_at = now(),
               status = CASE WHEN e.op = 'update' AND e.payload - 'SyncKey' = '{}' THEN 'cancelled' ELSE e.status END,
               last_error = CASE WHEN e.op = 'update' AND e.payload - 'SyncKey' = '{}'
                                 THEN 'cancelled: the item has its SyncKey' ELSE e.last_error END
         WHERE e.definition_id = d.id AND e.sync_key = l.sync_key AND e.payload ? 'SyncKey'
           AND e.status IN ('pending', 'awaiting_approval', 'failed', 'error');
    END IF;
    UPDATE sync.pending_imports
       SET status = outcome, sync_key = l.sync_key, updated_at = now(), applied_at = CASE WHEN outcome = 'applied' THEN now() END,
           changes = nullif(v_changes, '{}'),
           decision = CASE
               WHEN outcome = 'echo' THEN 'syncbridge''s own write coming back: nothing to do'
               ELSE concat_ws('; ',
                   CASE WHEN v_changes <> '{}' THEN 'applied to the row: ' || (SELECT string_agg(k, ', ' ORDER BY k) FROM jsonb_object_keys(v_changes) k) END,
                   CASE WHEN cardinality(putback) > 0 THEN 'the database''s value sent again: ' || array_to_string(putback, ', ') END,
                   CASE WHEN v_changes = '{}' AND cardinality(putback) = 0 THEN 'nothing differs' END) END
     WHERE id = imp.id;
    -- Conflicts of this item settled here are closed.
    UPDATE sync.conflicts x SET resolution = coalesce(x.resolution, 'superseded'), resolved_at = coalesce(x.resolved_at, now())
     WHERE x.import_id = imp.id AND x.resolution IS NULL;
    RETURN outcome;
END $$;

CREATE FUNCTION apply_imports(target text, n int DEFAULT 500, worker text DEFAULT NULL)
RETURNS TABLE (applied int, echoes int, conflicts int, awaiting int, failed int, remaining bigint)
LANGUAGE plpgsql
SET enable_seqscan = off SET jit = off
AS $$
DECLARE
    d sync.definitions;
    imp sync.pending_imports;
    outcome text;
    msg text;
    state text;
    done int := 0;
BEGIN
    PERFORM sync._check_target_call(target, n, 10000, 'apply_imports (imports)', 'Nothing was applied.', worker);
    -- An export whose worker vanished no longer holds its key's changes.
    PERFORM sync._recover_expired(target);
    applied := 0; echoes := 0; conflicts := 0; awaiting := 0; failed := 0;
    FOR d IN SELECT x.* FROM sync.definitions x
              WHERE x.target = apply_imports.target AND x.state = 'active'
                AND EXISTS (SELECT 1 FROM sync.pending_imports i WHERE i.definition_id = x.id AND i.status = 'pending')
              ORDER BY x.id LOOP
        EXIT WHEN done >= n;
        -- Serialized with staging and sync.complete for the definition:
        -- the ledger and the queue do not move under the decision.
        PERFORM pg_advisory_xact_lock(1937337955, d.id);
        FOR imp IN SELECT i.* FROM sync.pending_imports i
                    WHERE i.definition_id = d.id AND i.status = 'pending'
                    ORDER BY i.id LIMIT n - done
                      FOR UPDATE SKIP LOCKED LOOP
            done := done + 1;
            -- A newer version of an item in conflict replaces the conflict.
            WITH old AS (
                UPDATE sync.pending_imports o SET status = 'superseded', updated_at = now(),
                       decision = coalesce(o.decision, '') || format(' (superseded by import %s)', imp.id)
                 WHERE o.definition_id = d.id AND o.list = imp.list AND o.target_id = imp.target_id AND o.id < imp.id
                   AND o.status IN ('conflict', 'awaiting_approval', 'failed')
                RETURNING o.id
            )
            UPDATE sync.conflicts x SET resolution = 'superseded', resolved_at = now()
              FROM old WHERE x.import_id = old.id AND x.resolution IS NULL;
            BEGIN
                outcome := sync._apply_import(imp, d);
            EXCEPTION
            WHEN transaction_rollback OR lock_not_available OR insufficient_resources OR operator_intervention THEN
                RAISE;
            WHEN OTHERS THEN
                -- A value that does not fit its column, a constraint, a
                -- trigger's refusal: the item fails alone, visibly; the row is
                -- untouched (the subtransaction is rolled back) and the pull
                -- goes on. sync.retry_import tries again once it is fixed.
                GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, state = RETURNED_SQLSTATE;
                UPDATE sync.pending_imports
                   SET status = 'failed', last_error = left(msg, 2000), sqlstate = state, attempts = attempts + 1, updated_at = now(),
                       decision = 'could not be applied to the row'
                 WHERE id = imp.id;
                outcome := 'failed';
            END;
            CASE outcome
                WHEN 'applied' THEN applied := applied + 1;
                WHEN 'echo' THEN echoes := echoes + 1;
                WHEN 'conflict' THEN conflicts := conflicts + 1;
                WHEN 'awaiting_approval' THEN awaiting := awaiting + 1;
                WHEN 'failed' THEN failed := failed + 1;
                WHEN 'ignored' THEN applied := applied + 1;
                ELSE NULL;  -- waiting: decided later
            END CASE;
        END LOOP;
    END LOOP;
    SELECT count(*) INTO remaining FROM sync.pending_imports i JOIN sync.definitions x ON x.id = i.definition_id
     WHERE x.target = apply_imports.target AND x.state = 'active' AND i.status = 'pending';
    RETURN NEXT;
END $$;
COMMENT ON FUNCTION apply_imports(text, int, text) IS 'Decides up to n pending imports of a target''s active definitions against the ledger (three-way, field by field) and applies them to the source tables with the ledger, in one transaction; each item alone fails visibly (status failed, last_error). Run by the worker under the replication origin syncbridge, so the stream skips what it writes. An item whose key has an export in flight waits.';

-- ---------------------------------------------------------------------------
-- People decide: conflicts, approvals, retries
-- ---------------------------------------------------------------------------

CREATE FUNCTION _conflict(conflict_id bigint) RETURNS conflicts
LANGUAGE plpgsql STABLE AS $$
DECLARE
    c sync.conflicts;
BEGIN
    SELECT * INTO c FROM sync.conflicts WHERE id = conflict_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'conflict % does not exist', coalesce(conflict_id::text, 'NULL')
            USING ERRCODE = 'undefined_object', DETAIL = 'It may have been purged, or settled by a newer change of the item.',
                  HINT = 'SELECT * FROM sync.conflicts WHERE resolution IS NULL;';
    END IF;
    IF c.resolution IS NOT NULL THEN
        RAISE EXCEPTION 'conflict % is already settled (%)', conflict_id, c.resolution
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('Settled at %s%s.', c.resolved_at, coalesce(' by ' || c.resolved_by, '')),
                  HINT = 'SELECT * FROM sync.conflicts WHERE resolution IS NULL;';
    END IF;
    RETURN c;
END $$;

-- Records a resolution; once every conflict of the item is settled, the
-- item goes back to the queue and the next sync.apply_imports carries it out.
CREATE FUNCTION _resolve(c conflicts, how text, val jsonb) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    choice jsonb := CASE how WHEN 'custom' THEN jsonb_build_object('value', val) ELSE to_jsonb(how) END;
BEGIN
    -- The definition's staging lock first, as sync.apply_imports takes it
    -- (then the conflict and the import: the same order, no deadlock).
    PERFORM pg_advisory_xact_lock(1937337955, c.definition_id);
    PERFORM 1 FROM sync.conflicts x WHERE x.id = c.id AND x.resolution IS NULL FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'conflict % is already settled', c.id
            USING ERRCODE = 'object_not_in_prerequisite_state', DETAIL = 'A newer change of the item replaced it meanwhile.',
                  HINT = 'SELECT * FROM sync.conflicts WHERE resolution IS NULL;';
    END IF;
    UPDATE sync.conflicts SET resolution = how, resolved_value = CASE how WHEN 'local' THEN c.local_value
                                                                          WHEN 'remote' THEN c.remote_value ELSE val END,
           resolved_by = session_user, resolved_at = now()
     WHERE id = c.id;
    UPDATE sync.pending_imports i
       SET resolutions = coalesce(i.resolutions, '{}') || jsonb_build_object(c.field, choice), updated_at = now(),
           decided_by = session_user,
           status = CASE WHEN EXISTS (SELECT 1 FROM sync.conflicts x WHERE x.import_id = i.id AND x.resolution IS NULL)
                         THEN i.status
                         -- a newer version of the item waits already: it counts
                         WHEN EXISTS (SELECT 1 FROM sync.pending_imports o WHERE o.definition_id = i.definition_id AND o.list = i.list
                                         AND o.target_id = i.target_id AND o.status = 'pending') THEN 'superseded'
                         ELSE 'pending' END
     WHERE i.id = c.import_id AND i.status = 'conflict';
    RETURN how;
END $$;

-- Whoever settles a conflict writes the field's column (a person's say is
-- their own rights', never syncbridge_writer's).
CREATE FUNCTION _check_may_settle(c conflicts) RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
    col name;
BEGIN
    SELECT (e ->> 'column')::name INTO col FROM sync.definitions d, jsonb_array_elements((sync._compile(d.id)).inbound) e
     WHERE d.id = c.definition_id AND e ->> 'field' = c.field;
    PERFORM sync._check_may_write(d.source_rel, 'both', col) FROM sync.definitions d WHERE d.id = c.definition_id AND col IS NOT NULL;
END $$;

CREATE FUNCTION resolve(conflict bigint, choice text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    c sync.conflicts := sync._conflict(conflict);
BEGIN
    PERFORM sync._check_may_settle(c);
    IF choice IS NULL OR choice NOT IN ('local', 'remote') THEN
        RAISE EXCEPTION 'invalid resolution %', coalesce(quote_literal(choice), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A conflict is resolved with ''local'' (the database''s value is sent to the target), ''remote'' (the target''s value is written into the row), or a value of the field.',
                  HINT = format('SELECT sync.resolve(%s, ''local''); or SELECT sync.resolve(%s, ''"a value"''::jsonb);', conflict, conflict);
    END IF;
    RETURN sync._resolve(c, choice, NULL);
END $$;
COMMENT ON FUNCTION resolve(bigint, text) IS 'Settles a conflict: local (the database''s value wins and is sent to the target) or remote (the target''s value is written into the row). Carried out by the worker''s next apply, once every conflict of the item is settled.';

CREATE FUNCTION resolve(conflict bigint, value jsonb) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    c sync.conflicts := sync._conflict(conflict);
    msg text;
BEGIN
    PERFORM sync._check_may_settle(c);
    IF value IS NULL THEN
        RAISE EXCEPTION 'a resolution value cannot be SQL NULL'
            USING ERRCODE = 'null_value_not_allowed', DETAIL = 'To empty the field, resolve with JSON null.',
                  HINT = format('SELECT sync.resolve(%s, ''null''::jsonb);', conflict);
    END IF;
    -- The value must fit the column it goes into.
    BEGIN
        PERFORM sync._source_write(c.definition_id, 'check', NULL, jsonb_build_object(c.field, value));
    EXCEPTION WHEN data_exception OR invalid_text_representation THEN
        GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
        RAISE EXCEPTION 'value % does not fit field %', left(value::text, 100), c.field
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = msg,
                  HINT = format('Give a value of the column''s type, as JSON (the local value is %s, the remote %s).',
                                left(c.local_value::text, 100), left(c.remote_value::text, 100));
    END;
    RETURN sync._resolve(c, 'custom', value);
END $$;
COMMENT ON FUNCTION resolve(bigint, jsonb) IS 'Settles a conflict with a value of one''s own (JSON, checked against the column): written into the row and sent to the target.';

CREATE FUNCTION _import(import_id bigint, want text[]) RETURNS pending_imports
LANGUAGE plpgsql AS $$
DECLARE
    i sync.pending_imports;
BEGIN
    -- The definition's staging lock first, as sync.apply_imports takes it.
    PERFORM pg_advisory_xact_lock(1937337955, x.definition_id) FROM sync.pending_imports x WHERE x.id = import_id;
    SELECT * INTO i FROM sync.pending_imports WHERE id = import_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'import % does not exist', coalesce(import_id::text, 'NULL')
            USING ERRCODE = 'undefined_object', DETAIL = 'It may have been purged.', HINT = 'SELECT * FROM sync.pending_imports;';
    END IF;
    IF NOT i.status = ANY (want) THEN
        RAISE EXCEPTION 'import % is %', import_id, i.status
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('Only an import that is %s can be changed so.', array_to_string(want, ' or ')),
                  HINT = format('SELECT status, decision, last_error FROM sync.pending_imports WHERE id = %s;', import_id);
    END IF;
    RETURN i;
END $$;

CREATE FUNCTION approve_import(import_id bigint) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    i sync.pending_imports := sync._import(import_id, ARRAY['awaiting_approval']);
BEGIN
    -- Approving deletes or inserts a row: the approver's own rights.
    PERFORM sync._check_may_write(d.source_rel, 'both') FROM sync.definitions d WHERE d.id = i.definition_id;
    IF EXISTS (SELECT 1 FROM sync.pending_imports o WHERE o.definition_id = i.definition_id AND o.list = i.list
                  AND o.target_id = i.target_id AND o.status = 'pending') THEN
        UPDATE sync.pending_imports SET status = 'superseded', updated_at = now() WHERE id = i.id;
        RETURN 'superseded';
    END IF;
    UPDATE sync.pending_imports SET status = 'pending', decided_by = session_user, updated_at = now() WHERE id = i.id;
    RETURN 'pending';
END $$;
COMMENT ON FUNCTION approve_import(bigint) IS 'Approves an inbound delete or create that waits for a person: the worker''s next apply carries it out.';

CREATE FUNCTION reject_import(import_id bigint) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    i sync.pending_imports := sync._import(import_id, ARRAY['awaiting_approval', 'failed']);
    d sync.definitions;
BEGIN
    SELECT * INTO d FROM sync.definitions WHERE id = i.definition_id;
    PERFORM pg_advisory_xact_lock(1937337955, d.id);
    UPDATE sync.pending_imports SET status = 'rejected', decided_by = session_user, updated_at = now(),
           decision = coalesce(decision, '') || ' — rejected: the database''s row stands' WHERE id = i.id;
    IF i.sync_key IS NOT NULL AND i.deleted THEN
        -- The item is gone: the ledger forgets it and the row is sent again.
        DELETE FROM sync.ledger WHERE definition_id = d.id AND sync_key = i.sync_key;
    ELSIF i.sync_key IS NOT NULL THEN
        -- The target's version is not taken: the ledger learns it, so that
        -- the row's values are sent over it.
        UPDATE sync.ledger l SET etag = coalesce(i.etag, l.etag),
               fields = l.fields || (SELECT coalesce(jsonb_object_agg(k, coalesce(i.remote -> k, 'null')), '{}')
                                       FROM jsonb_object_keys(l.fields) k),
               hash = sha256(convert_to((l.fields || (SELECT coalesce(jsonb_object_agg(k, coalesce(i.remote -> k, 'null')), '{}')
                                                        FROM jsonb_object_keys(l.fields) k))::text, 'UTF8'))
         WHERE l.definition_id = d.id AND l.sync_key = i.sync_key AND i.remote IS NOT NULL;
    END IF;
    IF i.sync_key IS NOT NULL AND d.direction = 'both' THEN
        PERFORM sync._stage_def(d.id, sync._key_objects(d.id, ARRAY[i.sync_key]), NULL, NULL);
    END IF;
    RETURN 'rejected';
END $$;
COMMENT ON FUNCTION reject_import(bigint) IS 'Rejects an inbound change that waits for approval or failed: the database''s row stands and is sent to the target again (a rejected delete re-creates the item).';

CREATE FUNCTION retry_import(import_id bigint) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    i sync.pending_imports := sync._import(import_id, ARRAY['failed']);
BEGIN
    PERFORM sync._check_may_write(d.source_rel, 'both') FROM sync.definitions d WHERE d.id = i.definition_id;
    -- Only if no newer version of the item is queued (that one counts).
    IF EXISTS (SELECT 1 FROM sync.pending_imports o WHERE o.definition_id = i.definition_id AND o.list = i.list
                  AND o.target_id = i.target_id AND o.status = 'pending') THEN
        UPDATE sync.pending_imports SET status = 'superseded', updated_at = now() WHERE id = i.id;
        RETURN 'superseded';
    END IF;
    UPDATE sync.pending_imports SET status = 'pending', last_error = NULL, sqlstate = NULL, updated_at = now() WHERE id = i.id;
    RETURN 'pending';
END $$;
COMMENT ON FUNCTION retry_import(bigint) IS 'Queues a failed import again (after the table or the mapping was fixed); the worker''s next apply tries it.';
