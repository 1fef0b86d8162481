-- syncbridge: staging. The worker hands over changed keys; the extension
-- reads the current rows by key, compares them with what the target is known
-- to hold, and upserts pending exports, in one set-based statement per
-- definition. "Reconcile key K": idempotent and order-insensitive.

-- The slot cursor only moves forward.
CREATE FUNCTION checkpoint(lsn pg_lsn, slot text DEFAULT NULL) RETURNS pg_lsn
LANGUAGE plpgsql AS $$
DECLARE
    done pg_lsn;
BEGIN
    IF slot IS NOT NULL AND slot !~ '^[a-z0-9_]{1,63}$' THEN
        RAISE EXCEPTION 'invalid slot name %', to_json(left(slot, 100))
            USING ERRCODE = 'invalid_name',
                  DETAIL = 'Replication slot names have 1 to 63 lower-case letters, digits and underscores.',
                  HINT = 'Leave slot out to use the setting sync.slot_name.';
    END IF;
    INSERT INTO sync.cursors AS c (kind, scope, lsn)
    VALUES ('slot', coalesce(slot, sync._setting('slot_name')), lsn)
    ON CONFLICT (kind, scope) DO UPDATE
       SET lsn = EXCLUDED.lsn, updated_at = now()
     WHERE c.lsn IS NULL OR c.lsn < EXCLUDED.lsn
    RETURNING c.lsn INTO done;
    RETURN done;
END $$;
COMMENT ON FUNCTION checkpoint(pg_lsn, text) IS 'Records that everything up to lsn is durably staged for the slot (default: setting sync.slot_name); never moves back.';

-- ---------------------------------------------------------------------------
-- Deferred keys: a definition whose target is far behind (its open queue
-- holds sync.defer_after exports or more) keeps batches of changed keys as
-- they came, unmapped, and stages them as the queue drains (sync.claim).
-- Staging reads the current row of each key when it runs, so a key staged
-- later than it changed is staged as it is then (order-insensitive), twice
-- is once (idempotent), and a batch is durable before the slot is confirmed
-- past it (it is written in the staging transaction).
-- ---------------------------------------------------------------------------
CREATE TABLE deferred_keys (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    definition_id int NOT NULL REFERENCES definitions (id) ON DELETE CASCADE,
    keys          jsonb CHECK (jsonb_typeof(keys) = 'array'),
    -- (a backfill's range of keys instead: range_after, range_last]
    range_after   jsonb,
    range_last    jsonb,
    n             int NOT NULL CHECK (n > 0),
    lsn           pg_lsn,
    run_id        bigint,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CHECK ((keys IS NULL) = (range_last IS NOT NULL)),
    CHECK (keys IS NULL OR range_after IS NULL)
);
CREATE INDEX deferred_keys_definition_idx ON deferred_keys (definition_id, id);
COMMENT ON TABLE deferred_keys IS 'Changed keys whose staging waits while their definition''s target is far behind (its open queue holds sync.defer_after exports or more): a batch per row, checked and de-duplicated. sync.claim stages them, oldest first, once its claimable queue (pending, failed) is below half of sync.defer_after or 2,000 exports; staging reads the rows then, so nothing is lost or stale.';
COMMENT ON COLUMN deferred_keys.id IS 'Batch id (oldest first).';
COMMENT ON COLUMN deferred_keys.definition_id IS 'The definition whose keys they are.';
COMMENT ON COLUMN deferred_keys.keys IS 'The keys: a JSON array of objects mapping key columns to their text values (what sync.stage takes); NULL for a backfill''s range.';
COMMENT ON COLUMN deferred_keys.range_after IS 'A backfill''s range of the source''s keys, in key order: the key it starts after (a JSON array of key texts; NULL: the first key).';
COMMENT ON COLUMN deferred_keys.range_last IS 'The last key of a backfill''s range (a JSON array of key texts); the keys of the range are read when it is staged.';
COMMENT ON COLUMN deferred_keys.n IS 'How many keys (a range: how many it held when the backfill read it).';
COMMENT ON COLUMN deferred_keys.lsn IS 'The position they were staged at, kept for their exports (NULL: a backfill, a re-staging).';
COMMENT ON COLUMN deferred_keys.run_id IS 'The run that handed them over, kept for their exports.';
COMMENT ON COLUMN deferred_keys.created_at IS 'When they were deferred.';
SELECT pg_catalog.pg_extension_config_dump('deferred_keys', '');

-- The statement staging one definition's keys. Parameters:
--   $1 keys jsonb, $2 definition id, $3 lsn, $4 run id, $5 approval, $6 delete scope,
--   $7 delete grace (NULL: a delete removes the item at once; else the item
--   is disabled first and its delete scheduled by sync.complete).
-- The rows are read, mapped and hashed by sync._mapped_rows_by_key (as the
-- role syncbridge_reader); this statement compares them and writes the queue.
--
-- The base a row is compared with is what the target will hold once the
-- export in flight for the key (if any) lands, else the ledger; when that
-- export completes, sync.complete re-stages the key against the new ledger.
CREATE FUNCTION _stage_sql() RETURNS text
LANGUAGE sql IMMUTABLE AS $outer$ SELECT $sql$
WITH cur AS (
    SELECT k.sync_key, k.list, k.fields, k.hash, k.present,
           CASE WHEN ex.op IS NOT NULL THEN ex.op <> 'delete' ELSE l.sync_key IS NOT NULL END AS known,
           coalesce(ex.list, l.list) AS base_list,
           CASE WHEN ex.op IS NOT NULL THEN ex.hash ELSE l.hash END AS base_hash,
           CASE WHEN ex.op IN ('add', 'move') THEN ex.payload
                WHEN ex.op = 'update' THEN coalesce(l.fields, '{}') || ex.payload
                ELSE l.fields END AS base_fields,
           coalesce(l.join_type, 'provisioned') AS join_type, rb.id AS held_by,
           -- disabled, or being disabled (delete_grace)
           l.disabled_at IS NOT NULL OR coalesce(ex.op = 'disable', false) AS disabled, ex.op AS ex_op
      FROM sync._mapped_rows_by_key($2, $1) AS k
      -- Each lookup is a per-key index probe (LATERAL ... LIMIT 1).
      LEFT JOIN LATERAL (
          SELECT l.sync_key, l.list, l.hash, l.fields, l.join_type, l.disabled_at FROM sync.ledger l
           WHERE l.definition_id = $2 AND l.sync_key = k.sync_key LIMIT 1) l ON true
      LEFT JOIN LATERAL (
          SELECT e.op, e.list, e.hash, e.payload FROM sync.pending_exports e
           WHERE e.definition_id = $2 AND e.sync_key = k.sync_key AND e.status = 'executing'
           ORDER BY e.id DESC LIMIT 1) ex ON true
      -- A rollback's export waiting for the key is left alone (a probe of a
      -- small partial index): the row is staged again once it is sent.
      LEFT JOIN LATERAL (
          SELECT e.id FROM sync.pending_exports e
           WHERE e.definition_id = $2 AND e.sync_key = k.sync_key AND e.rollback
             AND e.status IN ('pending', 'awaiting_approval', 'failed', 'error')
           LIMIT 1) rb ON true
),
decided AS (
    SELECT cur.*, CASE
        WHEN present AND NOT known THEN 'add'
        WHEN present AND list IS DISTINCT FROM base_list THEN 'move'
        WHEN present AND hash IS DISTINCT FROM base_hash THEN 'update'
        WHEN present THEN NULL
        -- (a disable in flight: its completion schedules the delete)
        WHEN ex_op = 'disable' THEN NULL
        WHEN known AND ($6 = 'all' OR ($6 = 'provisioned' AND join_type = 'provisioned')) AND $7::interval IS NOT NULL
             AND NOT disabled THEN 'disable'
        WHEN known AND ($6 = 'all' OR ($6 = 'provisioned' AND join_type = 'provisioned')) THEN 'delete'
        WHEN known THEN 'forget'
    END AS op
      FROM cur
),
-- Driven by the decided keys (= ANY, LATERAL ... LIMIT 1): index probes by
-- key. A join with decided, planned on stale statistics, became a nested loop
-- over the definition's whole queue for each key (8 s for 10,000 keys), and
-- `sync_key = ANY (...)` a scan of the definition's whole open queue.
forgotten AS (
    DELETE FROM sync.ledger l
     WHERE l.definition_id = $2 AND l.sync_key = ANY (ARRAY(SELECT x.sync_key FROM decided x WHERE x.op = 'forget' AND x.held_by IS NULL))
    RETURNING l.sync_key
),
cancelled AS (
    UPDATE sync.pending_exports p
       SET status = 'cancelled', updated_at = now(), lsn = coalesce($3, p.lsn),
           last_error = 'cancelled: the row is back to what the target holds'
     WHERE p.id = ANY (ARRAY(
               SELECT o.id FROM decided x
                CROSS JOIN LATERAL (
                    SELECT o.id FROM sync.pending_exports o
                     WHERE o.definition_id = $2 AND o.sync_key = x.sync_key
                       AND o.status IN ('pending', 'awaiting_approval', 'failed', 'error') LIMIT 1) o
                WHERE x.held_by IS NULL AND (x.op = 'forget'
                   -- (an item created on the target still gets its SyncKey)
                   OR (x.op IS NULL AND NOT EXISTS (SELECT 1 FROM sync.pending_exports w
                                                     WHERE w.id = o.id AND w.payload ? 'SyncKey')))))
    RETURNING p.id
),
held AS (
    UPDATE sync.pending_exports p SET changed_since = true, updated_at = now()
     WHERE p.id = ANY (ARRAY(SELECT x.held_by FROM decided x WHERE x.held_by IS NOT NULL AND x.op IN ('add', 'update', 'delete', 'move', 'disable')))
       AND NOT p.changed_since
    RETURNING p.id
),
staged AS (
    INSERT INTO sync.pending_exports AS p
           (definition_id, sync_key, op, list, from_list, payload, previous, hash, status, lsn, run_id, next_attempt_at)
    SELECT $2, x.sync_key, x.op,
           CASE WHEN x.op IN ('delete', 'disable') THEN x.base_list ELSE x.list END,
           CASE WHEN x.op = 'move' THEN x.base_list END,
           CASE x.op WHEN 'update' THEN (SELECT coalesce(jsonb_object_agg(n.key, n.value), '{}') FROM jsonb_each(x.fields) n
                                          WHERE n.value IS DISTINCT FROM x.base_fields -> n.key)
                     WHEN 'delete' THEN '{}'
                     WHEN 'disable' THEN '{}'
                     ELSE x.fields END,
           CASE x.op WHEN 'update' THEN (SELECT coalesce(jsonb_object_agg(n.key, x.base_fields -> n.key), '{}') FROM jsonb_each(x.fields) n
                                          WHERE n.value IS DISTINCT FROM x.base_fields -> n.key)
                     WHEN 'add' THEN NULL
                     ELSE x.base_fields END,
           CASE WHEN x.op IN ('delete', 'disable') THEN NULL ELSE x.hash END,
           -- (a disable can be undone: it goes without an approval for deletes)
           CASE WHEN $5 = 'all' OR ($5 = 'deletes' AND x.op = 'delete') THEN 'awaiting_approval' ELSE 'pending' END,
           $3, $4,
           -- the delete of a disabled item waits out the grace
           CASE WHEN x.op = 'delete' AND x.disabled AND $7::interval IS NOT NULL
                THEN greatest(now(), (SELECT l.disabled_at FROM sync.ledger l WHERE l.definition_id = $2 AND l.sync_key = x.sync_key) + $7::interval)
                ELSE now() END
      FROM decided x
     WHERE x.op IN ('add', 'update', 'delete', 'move', 'disable') AND x.held_by IS NULL
    ON CONFLICT (definition_id, sync_key) WHERE status IN ('pending', 'awaiting_approval', 'failed', 'error') AND sync_key IS NOT NULL
    DO UPDATE SET
        op = EXCLUDED.op, list = EXCLUDED.list, from_list = EXCLUDED.from_list,
        -- an update keeps the SyncKey an item created on the target waits for
        payload = CASE WHEN EXCLUDED.op = 'update' AND p.payload ? 'SyncKey'
                       THEN EXCLUDED.payload || jsonb_build_object('SyncKey', p.payload -> 'SyncKey') ELSE EXCLUDED.payload END,
        previous = EXCLUDED.previous, hash = EXCLUDED.hash,
        status = CASE WHEN EXCLUDED.status = 'awaiting_approval' AND p.approved_at IS NOT NULL AND p.op = EXCLUDED.op
                      THEN 'pending' ELSE EXCLUDED.status END,
        -- (a scheduled delete turned into the item's re-enabling goes now)
        attempts = CASE WHEN p.status = 'error' OR (p.op = 'delete' AND EXCLUDED.op <> 'delete') THEN 0 ELSE p.attempts END,
        next_attempt_at = CASE WHEN p.status = 'error' OR (p.op = 'delete' AND EXCLUDED.op <> 'delete') THEN now()
                               WHEN EXCLUDED.op = 'delete' THEN greatest(p.next_attempt_at, EXCLUDED.next_attempt_at)
                               ELSE p.next_attempt_at END,
        lsn = coalesce(EXCLUDED.lsn, p.lsn), run_id = coalesce(EXCLUDED.run_id, p.run_id), updated_at = now()
     WHERE (p.op, p.list, p.from_list, p.payload, p.hash)
           IS DISTINCT FROM (EXCLUDED.op, EXCLUDED.list, EXCLUDED.from_list, EXCLUDED.payload, EXCLUDED.hash)
    RETURNING p.op
)
SELECT count(*) FILTER (WHERE s.op = 'add')::int,
       count(*) FILTER (WHERE s.op = 'update')::int,
       count(*) FILTER (WHERE s.op IN ('delete', 'disable'))::int,
       count(*) FILTER (WHERE s.op = 'move')::int,
       ((SELECT count(*) FROM decided WHERE op IS NULL) )::int,
       ((SELECT count(*) FROM cancelled) + (SELECT count(*) FROM forgotten))::int
  FROM staged s
$sql$ $outer$;

-- Stages `keys` (a JSON array of objects {column: text}) for one definition,
-- or defers them (may_defer, and the target far behind: sync.defer_after).
CREATE FUNCTION _stage_def(def_id int, keys jsonb, lsn pg_lsn, run_id bigint, may_defer boolean DEFAULT true,
                           OUT added int, OUT updated int, OUT deleted int, OUT moved int, OUT unchanged int, OUT cancelled int,
                           OUT deferred int)
LANGUAGE plpgsql
SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'iso_8601' SET extra_float_digits = 1
-- Staging probes the source, the ledger and the queue by key. The queue grows
-- while the statement runs (its INSERT interleaves with the probes), so a
-- sequential scan chosen on stale statistics would make a large batch
-- quadratic: index probes only. Without JIT: a plan's cost inflated by a
-- disabled scan would have the statement compiled at every call.
SET enable_seqscan = off SET jit = off
AS $$
DECLARE
    d sync.definitions;
    checked record;
BEGIN
    added := 0; updated := 0; deleted := 0; moved := 0; unchanged := 0; cancelled := 0; deferred := 0;
    -- Staging of one definition is serialized until commit: the statement
    -- below takes its snapshot after the lock, so it sees what the previous
    -- stager committed, and an older read never overwrites a newer one (the
    -- stream, sync.complete's re-staging and a backfill may run at once).
    PERFORM pg_advisory_xact_lock(1937337955, def_id);   -- 1937337955: 'sync' as int4
    -- FOR KEY SHARE: what a foreign key would take per exported row, once
    -- (the definition cannot be deleted before this commits).
    SELECT * INTO d FROM sync.definitions WHERE id = def_id FOR KEY SHARE;
    IF NOT FOUND OR d.direction = 'pull' THEN
        -- (a pull definition sends nothing)
        -- Dropped since the caller chose it: nothing to stage.
        RETURN;
    END IF;
    IF may_defer AND sync._defers(def_id, jsonb_array_length(keys)) THEN
        -- Checked (a key that does not fit is refused now, not when staged)
        -- and de-duplicated.
        SELECT * INTO checked FROM sync._keys_of(def_id, keys);
        IF cardinality(checked.key_objs) > 0 THEN
            INSERT INTO sync.deferred_keys (definition_id, keys, n, lsn, run_id)
            VALUES (def_id, to_jsonb(checked.key_objs), cardinality(checked.key_objs), lsn, run_id);
        END IF;
        deferred := coalesce(cardinality(checked.key_objs), 0);
        RETURN;
    END IF;
    EXECUTE sync._stage_sql()
       INTO added, updated, deleted, moved, unchanged, cancelled
      USING keys, def_id, lsn, run_id, d.approval, d.delete_scope,
            CASE WHEN (SELECT k.disable FROM sync.targets t JOIN sync.target_kinds k ON k.kind = t.kind WHERE t.name = d.target)
                 THEN d.delete_grace END;
END $$;

-- Stops a definition whose staging failed (a dropped column, a transform
-- failing on a row): state error with the reason, and a warning saying the
-- way back. The other definitions go on.
CREATE FUNCTION _staging_failed(def_id int, reason text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    def_name text;
BEGIN
    UPDATE sync.definitions x SET state = 'error', state_reason = left(reason, 1000), updated_at = now()
     WHERE x.id = def_id RETURNING x.name INTO def_name;
    RAISE WARNING 'syncbridge: definition % stopped: %', def_name, reason
        USING HINT = 'Fix the cause, then SELECT sync.resume(' || quote_literal(def_name) || ');';
END $$;

-- Whether a batch of n keys of a definition is deferred: deferring is on
-- (sync.defer_after > 0), the batch holds at least 500 keys (or
-- sync.defer_after, if fewer: small batches are staged at once), and the
-- definition has deferred keys already or sync.defer_after open exports.
CREATE FUNCTION _defers(def_id int, n int) RETURNS boolean
LANGUAGE plpgsql STABLE
SET enable_seqscan = off
AS $$
DECLARE
    lim int := sync._setting('defer_after')::int;
BEGIN
    IF lim = 0 OR n < least(500, lim) THEN
        RETURN false;
    END IF;
    RETURN EXISTS (SELECT 1 FROM sync.deferred_keys x WHERE x.definition_id = def_id)
        OR sync._open_exports(def_id, lim) >= lim;
END $$;

-- A definition's claimable exports (pending, failed), counted up to `up_to`
-- (an index-only scan of the claim index, that many entries at most). Not
-- _open_exports with a status parameter: each list must be a literal for
-- the planner to match its partial index.
CREATE FUNCTION _claimable_exports(def_id int, up_to int) RETURNS int
LANGUAGE sql STABLE
SET enable_seqscan = off
AS $$
    SELECT count(*)::int FROM (
        SELECT 1 FROM sync.pending_exports e
         WHERE e.definition_id = def_id AND e.status IN ('pending', 'failed')
         LIMIT up_to) x
$$;

-- A definition's open exports (pending, awaiting approval, failed, error),
-- counted up to `up_to` (an index-only scan of that many entries at most).
CREATE FUNCTION _open_exports(def_id int, up_to int) RETURNS int
LANGUAGE sql STABLE
SET enable_seqscan = off
AS $$
    SELECT count(*)::int FROM (
        SELECT 1 FROM sync.pending_exports e
         WHERE e.definition_id = def_id AND e.status IN ('pending', 'awaiting_approval', 'failed', 'error')
         LIMIT up_to) x
$$;

-- Stages deferred keys of the target's definitions whose claimable queue
-- (pending or failed: not exports waiting for approval or sync.retry, which
-- no claim drains) is below half of sync.defer_after or 2,000 exports,
-- whichever is fewer (all of them when deferring is off; every claim
-- counts, so at most 2,000 index entries: a claim costs what it costs
-- without deferred keys): the
-- oldest batch of each, never waiting for a lock (another claim or a
-- stager holding the definition's staging lock: its turn comes at the next
-- claim). Called by sync.claim. A batch that fails to stage stops its
-- definition (like sync.stage), and stays deferred until sync.resume.
CREATE FUNCTION _undefer(target text) RETURNS int
LANGUAGE plpgsql
SET enable_seqscan = off
AS $$
DECLARE
    lim int := sync._setting('defer_after')::int;
    low int;
    d record;
    b sync.deferred_keys;
    r record;
    rng record;
    got int;
    total int := 0;
    msg text;
    -- keys of a backfill's range read and staged per claim
    per_claim CONSTANT int := 5000;
    -- the most open exports a definition's deferred keys wait for: enough
    -- for claims of up to 1,000 (sync.claim's limit) while one is staged
    refill_below CONSTANT int := 2000;
BEGIN
    low := CASE WHEN lim = 0 THEN 2147483647 ELSE greatest(least(lim / 2, refill_below), 1) END;
    FOR d IN SELECT x.id, x.name FROM sync.definitions x
              WHERE x.target = _undefer.target AND x.state IN ('active', 'paused')
                AND EXISTS (SELECT 1 FROM sync.deferred_keys k WHERE k.definition_id = x.id)
              ORDER BY x.id LOOP
        CONTINUE WHEN lim > 0 AND sync._claimable_exports(d.id, low) >= low;
        CONTINUE WHEN NOT pg_try_advisory_xact_lock(1937337955, d.id);
        SELECT * INTO b FROM sync.deferred_keys k WHERE k.definition_id = d.id ORDER BY k.id LIMIT 1 FOR UPDATE SKIP LOCKED;
        CONTINUE WHEN NOT FOUND;
        BEGIN
            got := 0;
            IF b.keys IS NOT NULL THEN
                SELECT * INTO r FROM sync._stage_def(d.id, b.keys, b.lsn, b.run_id, false);
                got := r.added + r.updated + r.deleted + r.moved;
                DELETE FROM sync.deferred_keys k WHERE k.id = b.id;
                total := total + b.n;
            ELSE
                -- A backfill's range: its next keys as the table holds them
                -- now (what staging reads anyway), per_claim at a time.
                SELECT * INTO rng FROM sync._source_range(d.id, b.range_after, b.range_last, per_claim);
                IF rng.n > 0 THEN
                    SELECT * INTO r FROM sync._stage_def(d.id, rng.keys, b.lsn, b.run_id, false);
                    got := r.added + r.updated + r.deleted + r.moved;
                END IF;
                IF rng.n < per_claim OR rng.last_key = b.range_last THEN
                    DELETE FROM sync.deferred_keys k WHERE k.id = b.id;
                ELSE
                    UPDATE sync.deferred_keys k SET range_after = rng.last_key, n = greatest(k.n - rng.n, 1) WHERE k.id = b.id;
                END IF;
                total := total + rng.n;
            END IF;
            IF b.run_id IS NOT NULL AND got > 0 THEN
                UPDATE sync.runs SET staged = staged + got WHERE id = b.run_id;
            END IF;
        EXCEPTION
        WHEN transaction_rollback OR lock_not_available OR insufficient_resources OR operator_intervention OR query_canceled THEN
            -- Nothing wrong with the definition, and the claim goes on: the
            -- batch stays deferred, the next claim tries again.
            RAISE WARNING 'syncbridge: deferred keys of % not staged yet: %', d.name, SQLERRM;
        WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
            PERFORM sync._staging_failed(d.id, 'staging deferred keys failed: ' || msg);
        END;
    END LOOP;
    RETURN total;
END $$;

-- Key objects for sync_keys of a definition (to re-stage keys the worker did not send).
CREATE FUNCTION _key_objects(def_id int, sync_keys text[]) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT coalesce(jsonb_agg(CASE WHEN cardinality(d.key_columns) = 1
                                   THEN jsonb_build_object(d.key_columns[1], k)
                                   ELSE (SELECT jsonb_object_agg(c.col, (k::jsonb) ->> (c.o - 1)::int)
                                           FROM unnest(d.key_columns) WITH ORDINALITY c(col, o)) END), '[]')
      FROM sync.definitions d, unnest(sync_keys) k
     WHERE d.id = def_id
$$;

-- Re-stages keys of a definition against the current ledger (after an export
-- in flight for them completed or was given up).
CREATE FUNCTION _rebase(def_id int, sync_keys text[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF cardinality(sync_keys) > 0 THEN
        PERFORM sync._stage_def(def_id, sync._key_objects(def_id, sync_keys), NULL, NULL);
    END IF;
END $$;

CREATE FUNCTION stage(relation regclass, keys jsonb, lsn pg_lsn DEFAULT NULL, only_definition text DEFAULT NULL, run_id bigint DEFAULT NULL)
RETURNS TABLE (definition text, added int, updated int, deleted int, moved int, unchanged int, cancelled int, error text, deferred int)
LANGUAGE plpgsql AS $$
DECLARE
    d record;
    bad bigint;
    r record;
    msg text;
BEGIN
    IF keys IS NULL OR jsonb_typeof(keys) <> 'array' THEN
        RAISE EXCEPTION 'keys must be a JSON array'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('Got %s.', coalesce(jsonb_typeof(keys), 'NULL')),
                  HINT = 'keys is a JSON array of objects mapping key columns to their text values: [{"id": "1"}, {"id": "2"}].';
    END IF;
    SELECT min(o) INTO bad FROM jsonb_array_elements(keys) WITH ORDINALITY e(v, o) WHERE jsonb_typeof(v) <> 'object';
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'element % of keys is not a JSON object', bad
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('It is %s.', left((keys -> (bad - 1)::int)::text, 100)),
                  HINT = 'Each key is an object mapping key columns to their text values: {"id": "1"}.';
    END IF;
    IF only_definition IS NOT NULL THEN
        PERFORM sync._def(only_definition);
    END IF;
    FOR d IN
        SELECT x.id, x.name FROM sync.definitions x
         WHERE x.source_rel = relation AND x.state IN ('active', 'paused')
           AND (only_definition IS NULL OR x.name = only_definition)
           AND (x.start_lsn IS NULL OR stage.lsn IS NULL OR stage.lsn >= x.start_lsn)
         ORDER BY x.id
    LOOP
        BEGIN
            SELECT * INTO r FROM sync._stage_def(d.id, keys, lsn, run_id);
            definition := d.name; added := r.added; updated := r.updated; deleted := r.deleted;
            moved := r.moved; unchanged := r.unchanged; cancelled := r.cancelled; error := NULL; deferred := r.deferred;
            IF run_id IS NOT NULL THEN
                UPDATE sync.runs SET staged = staged + r.added + r.updated + r.deleted + r.moved WHERE id = run_id;
            END IF;
        EXCEPTION
        WHEN transaction_rollback OR lock_not_available OR insufficient_resources OR operator_intervention THEN
            -- Deadlocks, serialization failures, lock timeouts, a full disk:
            -- nothing is wrong with the definition; the caller retries.
            RAISE;
        WHEN OTHERS THEN
            -- A key that does not fit its column (sync._mapped_rows_by_key)
            -- is the caller's mistake, not the definition's: refused whole.
            GET STACKED DIAGNOSTICS msg = CONSTRAINT_NAME;
            IF msg = 'syncbridge_key' THEN
                RAISE;
            END IF;
            -- A definition that no longer fits its table (a dropped column, a
            -- transform failing on a row) stops alone; the others go on, and
            -- sync.resume() reconciles the whole table once it is fixed.
            GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
            PERFORM sync._staging_failed(d.id, 'staging failed: ' || msg);
            definition := d.name; added := 0; updated := 0; deleted := 0; moved := 0; unchanged := 0; cancelled := 0;
            error := msg; deferred := 0;
        END;
        RETURN NEXT;
    END LOOP;
    IF lsn IS NOT NULL THEN
        PERFORM sync.checkpoint(lsn);
    END IF;
END $$;
COMMENT ON FUNCTION stage(regclass, jsonb, pg_lsn, text, bigint) IS 'Reconciles changed keys of a table: reads the current rows, compares them with the ledger and upserts pending exports (coalesced per key); records lsn as staged. Idempotent. A batch of a definition whose target is far behind (sync.defer_after) is kept in sync.deferred_keys instead (column deferred) and staged as its queue drains.';

-- Stages every ledger key of the table's definitions: what TRUNCATE calls for.
CREATE FUNCTION stage_truncate(relation regclass, lsn pg_lsn DEFAULT NULL)
RETURNS TABLE (definition text, added int, updated int, deleted int, moved int, unchanged int, cancelled int, error text, deferred int)
LANGUAGE plpgsql AS $$
DECLARE
    d record;
BEGIN
    FOR d IN SELECT x.id, x.name FROM sync.definitions x
              WHERE x.source_rel = relation AND x.state IN ('active', 'paused') ORDER BY x.id LOOP
        -- Every key the target holds or is about to hold.
        RETURN QUERY SELECT * FROM sync.stage(relation,
            sync._key_objects(d.id, ARRAY(
                SELECT l.sync_key FROM sync.ledger l WHERE l.definition_id = d.id
                UNION
                SELECT e.sync_key FROM sync.pending_exports e
                 WHERE e.definition_id = d.id AND e.sync_key IS NOT NULL
                   AND e.status IN ('pending', 'awaiting_approval', 'failed', 'error', 'executing'))),
            lsn, d.name);
    END LOOP;
    IF lsn IS NOT NULL THEN
        PERFORM sync.checkpoint(lsn);
    END IF;
END $$;
