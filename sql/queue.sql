-- syncbridge: the export queue. Workers claim pending exports with FOR UPDATE
-- SKIP LOCKED under a lease, send them, and report the results with
-- sync.complete(), which moves the ledger and the lifecycle in one
-- transaction:
--   pending -> (awaiting_approval ->) executing -> exported (-> confirmed)
--   executing -> failed -> pending (backoff) ... -> error (max_attempts; sync.retry)

-- Runs ----------------------------------------------------------------------

-- A run holds a session-level advisory lock (classid 1937337957, objid its
-- key) from start_run to finish_run. When its session ends without finishing
-- it (the worker killed, its connection lost), the lock goes with it, and
-- sync.purge() marks the run failed as abandoned: sync.runs never shows a
-- dead worker's run as running for long.
CREATE FUNCTION _run_lock_key(run_id bigint) RETURNS int
LANGUAGE sql IMMUTABLE AS $$ SELECT (run_id % 2147483647)::int $$;

-- Whether this session holds the run's lock.
CREATE FUNCTION _run_lock_held(run_id bigint) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM pg_locks l
                    WHERE l.locktype = 'advisory' AND l.classid = 1937337957::oid AND l.objid = sync._run_lock_key(run_id)::oid AND l.objsubid = 2
                      AND l.pid = pg_backend_pid() AND l.granted)
$$;

-- A worker's name as it reports it (host:pid): bounded, printable.
CREATE FUNCTION _check_worker_name(worker text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF worker IS NOT NULL AND (length(worker) > 200 OR worker ~ '[[:cntrl:]]') THEN
        RAISE EXCEPTION 'invalid worker name'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('A worker name has at most 200 characters and no control characters; got %s characters.', length(worker)),
                  HINT = 'The worker reports itself as host:pid.';
    END IF;
END $$;

CREATE FUNCTION start_run(kind text, definition text DEFAULT NULL, worker text DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    id bigint;
BEGIN
    PERFORM sync._check_choice('run kind', kind, ARRAY['stream', 'backfill', 'export', 'pull', 'reconcile', 'manual']);
    PERFORM sync._check_worker_name(worker);
    INSERT INTO sync.runs (definition_id, kind, worker, started_by)
    VALUES (CASE WHEN definition IS NOT NULL THEN (sync._def(definition)).id END, kind, worker, coalesce(worker, session_user::text))
    RETURNING runs.id INTO id;
    PERFORM pg_advisory_lock(1937337957, sync._run_lock_key(id));
    RETURN id;
END $$;

CREATE FUNCTION finish_run(run_id bigint, status text DEFAULT 'succeeded', error text DEFAULT NULL, detail jsonb DEFAULT NULL) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM sync._check_choice('run status', status, ARRAY['succeeded', 'failed', 'cancelled']);
    -- First (an unlock is not rolled back): a run finished by hand meanwhile
    -- must not leave its lock on the worker's long-lived session.
    IF sync._run_lock_held(run_id) THEN
        PERFORM pg_advisory_unlock(1937337957, sync._run_lock_key(run_id));
    END IF;
    IF detail IS NOT NULL AND (jsonb_typeof(detail) NOT IN ('object', 'null') OR length(detail::text) > 10000) THEN
        RAISE EXCEPTION 'invalid run detail'
            USING ERRCODE = 'invalid_parameter_value', DETAIL = 'A run''s detail is a JSON object of at most 10000 characters.',
                  HINT = 'Pass the run''s counts: {"exported": 10, ...}.';
    END IF;
    UPDATE sync.runs r SET status = finish_run.status, error = left(finish_run.error, 2000), finished_at = now(),
           detail = CASE WHEN jsonb_typeof(finish_run.detail) = 'object' THEN coalesce(r.detail, '{}') || finish_run.detail ELSE r.detail END
     WHERE r.id = run_id AND r.finished_at IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'run % does not exist or is finished', run_id
            USING ERRCODE = 'undefined_object', DETAIL = 'A run is finished once.', HINT = 'SELECT * FROM sync.runs ORDER BY id DESC;';
    END IF;
END $$;

-- Marks failed the running runs whose session is gone (their lock is free);
-- returns how many.
CREATE FUNCTION _reap_runs() RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    n int := 0;
BEGIN
    -- (a drift check's run is held by its report while it reads, not by a
    -- session: the report finishes it)
    FOR r IN SELECT x.id FROM sync.runs x WHERE x.status = 'running'
                AND NOT EXISTS (SELECT 1 FROM sync.drift_reports d WHERE d.run_id = x.id AND d.status = 'reading')
              ORDER BY x.id LOOP
        CONTINUE WHEN sync._run_lock_held(r.id);
        IF pg_try_advisory_xact_lock(1937337957, sync._run_lock_key(r.id)) THEN
            UPDATE sync.runs x
               SET status = 'failed', finished_at = now(),
                   error = 'abandoned: the session that ran it ended without finishing it (the worker was killed or lost its connection)'
             WHERE x.id = r.id AND x.status = 'running';
            IF FOUND THEN
                n := n + 1;
            END IF;
        END IF;
    END LOOP;
    RETURN n;
END $$;

-- Claim ---------------------------------------------------------------------

-- Whether a role (by name) may approve: a superuser or a member of syncbridge_admin.
CREATE FUNCTION _is_admin(role_name name) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT r.rolsuper OR pg_has_role(r.oid, 'syncbridge_admin', 'USAGE') FROM pg_roles r WHERE r.rolname = role_name
$$;

-- Exports whose lease expired are reopened (or given up after max_attempts);
-- their outcome is unknown, so they are marked verify (look up before create).
CREATE FUNCTION _recover_expired(target_name text) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    n int;
    superseded record;
BEGIN
    -- An expired export with a newer open export for the same key: the newer
    -- one takes over (re-staged against the ledger), and inherits verify.
    FOR superseded IN
        WITH gone AS (
            UPDATE sync.pending_exports e
               SET status = 'cancelled', lease_until = NULL, updated_at = now(),
                   last_error = 'lease expired (worker ' || coalesce(e.leased_by, '?') || ' lost it); superseded by a newer change'
              FROM sync.definitions d
             WHERE d.id = e.definition_id AND d.target = target_name AND e.status = 'executing' AND e.lease_until < now()
               AND EXISTS (SELECT 1 FROM sync.pending_exports o WHERE o.definition_id = e.definition_id AND o.sync_key = e.sync_key
                              AND o.status IN ('pending', 'awaiting_approval', 'failed', 'error'))
            RETURNING e.definition_id, e.sync_key)
        SELECT definition_id, array_agg(sync_key) AS keys FROM gone GROUP BY definition_id
    LOOP
        PERFORM sync._rebase(superseded.definition_id, superseded.keys);
        UPDATE sync.pending_exports o SET verify = true
         WHERE o.definition_id = superseded.definition_id AND o.sync_key = ANY (superseded.keys)
           AND o.status IN ('pending', 'awaiting_approval', 'failed', 'error');
    END LOOP;
    UPDATE sync.pending_exports e
       SET status = CASE WHEN e.attempts >= d.max_attempts THEN 'error' ELSE 'pending' END,
           verify = true, lease_until = NULL, next_attempt_at = now(), updated_at = now(),
           last_error = 'lease expired: worker ' || coalesce(e.leased_by, '?') || ' did not report a result',
           error_class = 'transient'
      FROM sync.definitions d
     WHERE d.id = e.definition_id AND d.target = target_name AND e.status = 'executing' AND e.lease_until < now();
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

-- The items an export's payload refers to: its reference fields (@ref, and
-- @refs for an array column) as the definition maps them, each with the
-- referenced item's id when the ledger knows it.
CREATE FUNCTION _references(def_id int, payload jsonb)
RETURNS TABLE (definition_id int, sync_key text, target_id text)
LANGUAGE sql STABLE AS $$
    SELECT rd.id, k.key, rl.target_id
      FROM jsonb_each(payload) f
      JOIN sync.field_maps m ON m.definition_id = def_id AND m.field = f.key AND m.reference IS NOT NULL
                            AND jsonb_typeof(f.value) = 'object' AND m.reference = f.value ->> '@def'
      JOIN sync.definitions rd ON rd.name = m.reference
     CROSS JOIN LATERAL (
          SELECT f.value ->> '@ref' AS key WHERE f.value ? '@ref'
          UNION ALL
          SELECT r FROM jsonb_array_elements_text(
                 CASE WHEN jsonb_typeof(f.value -> '@refs') = 'array' THEN f.value -> '@refs' ELSE '[]' END) r) k
      LEFT JOIN sync.ledger rl ON rl.definition_id = rd.id AND rl.sync_key = k.key
$$;

CREATE FUNCTION claim(target text, n int DEFAULT 20, lease_seconds int DEFAULT NULL, worker text DEFAULT NULL, run_id bigint DEFAULT NULL)
RETURNS TABLE (id bigint, definition text, op text, sync_key text, list text, from_list text, target_id text,
               etag text, payload jsonb, previous jsonb, attempts int, verify boolean, lease_until timestamptz, read_back text[],
               disabled boolean, key_values jsonb, staged_lsn text, staged_run bigint, staged_at text)
LANGUAGE plpgsql
-- The ledger and the queue grow by thousands of rows between two analyzes
-- while a backlog drains; a plan made on the old statistics (a sequential
-- scan of the ledger for each claimed row's references) made each claim
-- slower than the last. Claim probes by key only. The costs of the plans a
-- disabled sequential scan leaves must not trigger JIT compilation (40-120 ms
-- per statement, on every call).
SET enable_seqscan = off SET jit = off
AS $$
DECLARE
    lease interval;
    defs int[];
    def int;
    ids bigint[];
    paused int[];
    with_refs int[];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM sync.targets t WHERE t.name = claim.target) THEN
        RAISE EXCEPTION 'target % does not exist', coalesce(quote_literal(target), 'NULL')
            USING ERRCODE = 'undefined_object', DETAIL = 'Nothing was claimed.', HINT = 'SELECT name FROM sync.targets;';
    END IF;
    IF n IS NULL OR n NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'invalid claim size %', coalesce(n::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value', DETAIL = 'A claim takes 1 to 1000 exports.', HINT = 'Claim a batch: n => 20.';
    END IF;
    IF lease_seconds IS NOT NULL AND lease_seconds NOT BETWEEN 1 AND 86400 THEN
        RAISE EXCEPTION 'invalid lease_seconds %', lease_seconds
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A lease lasts 1 to 86400 seconds; a lease in the past would hand an export to two workers.',
                  HINT = format('The default is %s (setting sync.lease_seconds).', sync._setting('lease_seconds'));
    END IF;
    PERFORM sync._check_worker_name(worker);
    lease := make_interval(secs => coalesce(lease_seconds, sync._setting('lease_seconds')::int));
    PERFORM sync._recover_expired(target);
    -- A target that asked to be disabled (a webhook receiver's 410 Gone)
    -- gets nothing until sync.enable_target: its exports wait, none is
    -- dropped, no attempt is spent.
    IF EXISTS (SELECT 1 FROM sync.targets t WHERE t.name = claim.target AND t.disabled_at IS NOT NULL) THEN
        RETURN;
    END IF;
    -- Keys deferred while the target was far behind are staged as the
    -- queue drains (sync.defer_after).
    PERFORM sync._undefer(target);
    -- A paused definition sends only what a rollback staged (sync.rollback
    -- paused it so that nothing else goes).
    paused := ARRAY(SELECT d.id FROM sync.definitions d
                     WHERE d.target = claim.target AND d.state = 'paused'
                       AND EXISTS (SELECT 1 FROM sync.pending_exports e
                                    WHERE e.definition_id = d.id AND e.rollback AND e.status IN ('pending', 'failed')));
    -- The target's active definitions, the one whose oldest due export has
    -- waited longest first (one index probe each).
    defs := ARRAY(
        SELECT d.id FROM sync.definitions d
          CROSS JOIN LATERAL (
              SELECT e.next_attempt_at FROM sync.pending_exports e
               WHERE e.definition_id = d.id AND e.status IN ('pending', 'failed') AND e.next_attempt_at <= now()
                 AND (d.state = 'active' OR e.rollback)
               ORDER BY e.next_attempt_at, e.id LIMIT 1) oldest
         WHERE d.target = claim.target AND (d.state = 'active' OR d.id = ANY (paused))
         ORDER BY oldest.next_attempt_at, d.id);
    IF cardinality(defs) = 0 THEN
        RETURN;
    END IF;
    -- Definitions with reference fields (their exports wait for the items
    -- they refer to: objects first, references second).
    with_refs := ARRAY(SELECT DISTINCT m.definition_id FROM sync.field_maps m
                        WHERE m.definition_id = ANY (defs) AND m.reference IS NOT NULL);
    -- Lists first: they are created before items go into them. Few rows.
    ids := ARRAY(
        SELECT e.id FROM sync.pending_exports e
         WHERE e.definition_id = ANY (defs) AND e.op = 'provision'
           AND e.status IN ('pending', 'failed') AND e.next_attempt_at <= now()
         ORDER BY e.next_attempt_at, e.id
         LIMIT n
           FOR UPDATE OF e SKIP LOCKED);
    -- Then items, definition by definition, in queue order: the walk of
    -- pending_exports_claim_idx stops after n claimable rows instead of
    -- sorting the whole backlog. OFFSET 0 keeps the two checks per-row probes:
    -- as anti joins they are estimated to leave one row, and the planner
    -- sorts the backlog (46 ms instead of 0.5 ms for 100 of 20,000).
    FOREACH def IN ARRAY defs LOOP
        EXIT WHEN cardinality(ids) >= n;
        ids := ids || ARRAY(
            SELECT e.id FROM sync.pending_exports e
             WHERE e.definition_id = def AND e.status IN ('pending', 'failed') AND e.next_attempt_at <= now()
               AND e.op <> 'provision'
               AND (NOT def = ANY (paused) OR e.rollback)
               -- not into a list still being created
               AND NOT EXISTS (
                        SELECT 1 FROM sync.pending_exports x
                         WHERE x.definition_id = e.definition_id AND x.op = 'provision' AND x.list IN (e.list, e.from_list)
                           AND x.status IN ('pending', 'awaiting_approval', 'failed', 'executing', 'error')
                        OFFSET 0)
               -- one change in flight per key
               AND NOT EXISTS (
                        SELECT 1 FROM sync.pending_exports x
                         WHERE x.definition_id = e.definition_id AND x.sync_key = e.sync_key AND x.status = 'executing'
                        OFFSET 0)
               -- not while a change of the item read from the target waits
               -- to be decided, or for a person (a conflict, an approval, a
               -- failed import to retry or reject)
               AND NOT EXISTS (
                        SELECT 1 FROM sync.pending_imports x
                         WHERE x.definition_id = e.definition_id AND x.sync_key = e.sync_key
                           AND x.status IN ('pending', 'conflict', 'awaiting_approval', 'failed')
                        OFFSET 0)
               -- not before the items it refers to exist: a referenced key
               -- without an item id whose create is queued or in flight
               -- (one that will never be created does not hold it)
               AND (NOT def = ANY (with_refs) OR e.op NOT IN ('add', 'update', 'move') OR NOT EXISTS (
                        SELECT 1 FROM sync._references(e.definition_id, e.payload) r
                          JOIN sync.pending_exports x ON x.definition_id = r.definition_id AND x.sync_key = r.sync_key
                         WHERE r.target_id IS NULL AND r.definition_id <> e.definition_id AND x.op IN ('add', 'move')
                           AND x.status IN ('pending', 'awaiting_approval', 'failed', 'executing')
                        OFFSET 0))
             ORDER BY e.next_attempt_at, e.id
             LIMIT n - cardinality(ids)
               FOR UPDATE OF e SKIP LOCKED);
    END LOOP;
    -- What leaves is checked once more against the definition, whoever
    -- wrote the queue: a delete within the delete scope, an approval by a
    -- member of syncbridge_admin where one is needed.
    WITH chk AS (
        SELECT e.id,
               CASE WHEN e.op IN ('delete', 'disable')
                         AND NOT (d.delete_scope = 'all' OR (d.delete_scope = 'provisioned' AND l.join_type = 'provisioned')
                                  -- a duplicate of one of syncbridge's items (sync.reconcile, mirror)
                                  OR (d.delete_scope = 'provisioned' AND e.sync_key IS NULL
                                      AND jsonb_typeof(sync._field_of(e.previous, 'SyncKey')) = 'string'))
                    THEN 'scope'
                    WHEN (d.approval = 'all' OR (d.approval = 'deletes' AND e.op = 'delete'))
                         AND NOT coalesce(sync._is_admin(e.approved_by), false)
                    THEN 'approval' END AS refusal
          FROM sync.pending_exports e
          JOIN sync.definitions d ON d.id = e.definition_id
          LEFT JOIN sync.ledger l ON l.definition_id = e.definition_id AND l.sync_key = e.sync_key
         WHERE e.id = ANY (ids)
    ), refused AS (
        UPDATE sync.pending_exports e
           SET status = CASE chk.refusal WHEN 'scope' THEN 'cancelled' ELSE 'awaiting_approval' END,
               approved_by = NULL, approved_at = NULL, updated_at = now(),
               last_error = CASE chk.refusal
                   WHEN 'scope' THEN 'refused: a delete of an item beyond the definition''s delete_scope'
                   ELSE 'refused: not approved by a member of syncbridge_admin' END
          FROM chk WHERE chk.refusal IS NOT NULL AND e.id = chk.id
        RETURNING e.id
    )
    SELECT ARRAY(SELECT x FROM unnest(ids) x WHERE x <> ALL (ARRAY(SELECT r.id FROM refused r))) INTO ids;
    IF cardinality(ids) = 0 THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH claimed AS (
        UPDATE sync.pending_exports e
           SET status = 'executing', attempts = e.attempts + 1, lease_until = now() + lease,
               leased_by = claim.worker, sent_run = coalesce(claim.run_id, e.sent_run), updated_at = now()
         WHERE e.id = ANY (ids)
        RETURNING e.*
    )
    SELECT c.id, d.name, c.op, c.sync_key, c.list, c.from_list,
           -- (an orphan's delete, sync.reconcile: an item the ledger does not hold)
           coalesce(l.target_id, c.target_id),
           -- If-Match for two-way definitions: a change made on the target
           -- since is pulled and decided, not overwritten
           CASE WHEN d.direction = 'both' THEN l.etag END,
           -- reference fields carry the referenced item's id when it is known;
           -- only fields mapped with reference => that definition, on this
           -- target, are references (any other value is sent as it is)
           -- (an array reference, @refs, gets target_ids in its order)
           (SELECT jsonb_object_agg(f.key, CASE WHEN rd.id IS NULL THEN f.value
                                                WHEN f.value ? '@refs'
                                                THEN f.value || jsonb_build_object('target_ids', (
                                                         SELECT coalesce(jsonb_agg(rl.target_id ORDER BY r.o), '[]')
                                                           FROM jsonb_array_elements_text(
                                                                    CASE WHEN jsonb_typeof(f.value -> '@refs') = 'array'
                                                                         THEN f.value -> '@refs' ELSE '[]' END) WITH ORDINALITY r(k, o)
                                                           LEFT JOIN sync.ledger rl ON rl.definition_id = rd.id AND rl.sync_key = r.k))
                                                ELSE f.value || jsonb_build_object('target_id', (
                                                         SELECT rl.target_id FROM sync.ledger rl
                                                          WHERE rl.definition_id = rd.id AND rl.sync_key = f.value ->> '@ref')) END)
              FROM jsonb_each(c.payload) f
              LEFT JOIN sync.field_maps m
                     ON jsonb_typeof(f.value) = 'object' AND m.definition_id = c.definition_id AND m.field = f.key
                    AND m.reference = f.value ->> '@def'
              LEFT JOIN sync.definitions rd ON rd.name = m.reference AND rd.target = claim.target),
           c.previous, c.attempts, c.verify, c.lease_until,
           -- fields the write's answer brings back (pull-only mappings:
           -- Modified, ID, ... into columns, without a request of their own)
           -- (from the mappings: an index probe, not a compile per row)
           nullif(ARRAY(SELECT m.field FROM sync.field_maps m
                         WHERE m.definition_id = c.definition_id AND m.direction = 'pull' AND m.column_name IS NOT NULL
                         ORDER BY 1), '{}'),
           -- (a write to a disabled item re-enables it)
           l.disabled_at IS NOT NULL,
           -- where the change came from, for kinds that pass it on (a
           -- webhook's event): the key as an object of the key columns'
           -- texts, the WAL position of its last change, the run that
           -- staged it, and when it was first staged (UTC)
           CASE WHEN c.sync_key IS NOT NULL THEN sync._key_objects(c.definition_id, ARRAY[c.sync_key]) -> 0 END,
           c.lsn::text, c.run_id,
           to_char(c.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
      FROM claimed c
      JOIN sync.definitions d ON d.id = c.definition_id
      LEFT JOIN sync.ledger l ON l.definition_id = c.definition_id AND l.sync_key = c.sync_key
     ORDER BY (c.op = 'provision') DESC, c.id;
END $$;
COMMENT ON FUNCTION claim(text, int, int, text, bigint) IS 'Takes up to n due exports of a target (FOR UPDATE SKIP LOCKED) and leases them to the caller: status executing, attempts + 1. Expired leases are recovered first; a disabled target (sync.targets.disabled_at) gets none. Lists are provisioned before items go into them, one change per key is in flight at a time, and none while a change of the item read from the target waits to be decided. etag (two-way definitions) goes with If-Match; read_back names the fields to report from the write''s answer; key_values (the key columns'' texts), staged_lsn, staged_run and staged_at say where the change came from.';

-- A worker still working on claimed exports (a batch waiting for the
-- target's budget or a Retry-After pause) keeps its leases: renewed, they
-- never expire under a live worker, so another never takes them over and
-- sends them a second time; a dead worker stops renewing them.
CREATE FUNCTION extend_leases(ids bigint[], worker text, lease_seconds int DEFAULT NULL) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    n int;
BEGIN
    PERFORM sync._check_worker_name(worker);
    IF worker IS NULL THEN
        RAISE EXCEPTION 'a lease is extended by the worker holding it'
            USING ERRCODE = 'invalid_parameter_value', DETAIL = 'worker is NULL.', HINT = 'Pass the name the exports were claimed with.';
    END IF;
    IF lease_seconds IS NOT NULL AND lease_seconds NOT BETWEEN 1 AND 86400 THEN
        RAISE EXCEPTION 'invalid lease_seconds %', lease_seconds
            USING ERRCODE = 'invalid_parameter_value', DETAIL = 'A lease lasts 1 to 86400 seconds.',
                  HINT = format('The default is %s (setting sync.lease_seconds).', sync._setting('lease_seconds'));
    END IF;
    UPDATE sync.pending_exports e
       SET lease_until = greatest(e.lease_until,
                                  now() + make_interval(secs => coalesce(lease_seconds, sync._setting('lease_seconds')::int)))
     WHERE e.id = ANY (ids) AND e.status = 'executing' AND e.leased_by = extend_leases.worker;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;
COMMENT ON FUNCTION extend_leases(bigint[], text, int) IS 'The worker holding claimed exports renews their leases while it still works on them (a batch waiting for the budget): they expire only when it stops. Returns how many it still holds.';

-- What an exporter needs besides claim: whether work is left (so that
-- `--once` knows when to stop) and the remote ids of the target's lists.
CREATE FUNCTION export_backlog(target text, within_seconds double precision DEFAULT 60)
RETURNS TABLE (open bigint, due_later bigint)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF within_seconds IS NULL OR within_seconds = 'NaN' OR within_seconds NOT BETWEEN 0 AND 31536000 THEN
        RAISE EXCEPTION 'invalid within_seconds %', coalesce(within_seconds::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value', DETAIL = 'within_seconds is 0 to 31536000 (a year).',
                  HINT = 'The default is 60.';
    END IF;
    RETURN QUERY
    SELECT count(*)
           -- keys deferred while the target was far behind: sync.claim stages them
           + (SELECT coalesce(sum(k.n), 0)::bigint FROM sync.deferred_keys k JOIN sync.definitions x ON x.id = k.definition_id
               WHERE x.target = export_backlog.target AND x.state = 'active'
                 AND NOT EXISTS (SELECT 1 FROM sync.targets t WHERE t.name = x.target AND t.disabled_at IS NOT NULL)),
           -- (a failed export's next retry, or a delete scheduled after a grace)
           count(*) FILTER (WHERE e.status IN ('pending', 'failed') AND e.next_attempt_at > now() + make_interval(secs => within_seconds))
      FROM sync.pending_exports e JOIN sync.definitions d ON d.id = e.definition_id
     WHERE d.target = export_backlog.target AND e.status IN ('pending', 'failed', 'executing')
       -- not those of a disabled target: they wait for sync.enable_target
       AND NOT EXISTS (SELECT 1 FROM sync.targets t WHERE t.name = d.target AND t.disabled_at IS NOT NULL)
       AND (d.state = 'active'
            OR (d.state = 'paused' AND e.rollback))
       -- not behind a list that waits for a person (its creation failed for
       -- good, or awaits approval): like those, they wait for sync.retry/approve
       AND NOT EXISTS (SELECT 1 FROM sync.pending_exports x
                        WHERE x.definition_id = e.definition_id AND x.op = 'provision' AND e.op <> 'provision'
                          AND x.list IN (e.list, e.from_list) AND x.status IN ('error', 'awaiting_approval'))
       -- nor those of an item whose change from the target waits to be
       -- applied (sync.apply_imports) or for sync.resolve
       AND NOT EXISTS (SELECT 1 FROM sync.pending_imports x
                        WHERE x.definition_id = e.definition_id AND x.sync_key = e.sync_key
                          AND x.status IN ('pending', 'conflict', 'awaiting_approval', 'failed'));
END $$;
COMMENT ON FUNCTION export_backlog(text, double precision) IS 'The open exports and deferred keys of a target''s active definitions (pending, failed awaiting a retry, or executing under a lease; none while the target is disabled; not those behind a list whose creation is in error or awaits approval, nor those of an item whose change from the target waits to be applied or resolved), and how many of them will not be retried within within_seconds.';

CREATE FUNCTION target_list_ids(target text)
RETURNS TABLE (definition text, list text, remote_id text, columns jsonb)
LANGUAGE sql STABLE AS $$
    SELECT d.name, tl.list, tl.remote_id, tl.columns
      FROM sync.target_lists tl JOIN sync.definitions d ON d.id = tl.definition_id
     WHERE tl.remote_id IS NOT NULL AND d.target = target_list_ids.target
     ORDER BY d.name, tl.list
$$;

-- The targets a worker serves: those with an active or paused definition
-- (only the named ones when `names` is not empty). The worker reads no table.
CREATE FUNCTION worker_targets(names text[] DEFAULT '{}')
RETURNS TABLE (name text, kind text, config jsonb, secret_ref text)
LANGUAGE sql STABLE AS $$
    SELECT t.name, t.kind, t.config, t.secret_ref FROM sync.targets t
     WHERE EXISTS (SELECT 1 FROM sync.definitions d WHERE d.target = t.name AND d.state IN ('active', 'paused'))
       AND (cardinality(coalesce(worker_targets.names, '{}')) = 0 OR t.name = ANY (worker_targets.names))
     ORDER BY t.name
$$;
COMMENT ON FUNCTION worker_targets(text[]) IS 'The targets with an active or paused definition (only those named, when names is not empty): name, kind, configuration and secret reference, for the worker.';

-- The LSN staged durably for a slot (sync.checkpoint moved it), if any.
CREATE FUNCTION slot_cursor(slot text) RETURNS pg_lsn
LANGUAGE sql STABLE AS $$
    SELECT c.lsn FROM sync.cursors c WHERE c.kind = 'slot' AND c.scope = slot_cursor.slot
$$;
COMMENT ON FUNCTION slot_cursor(text) IS 'The LSN staged durably for the slot (what sync.checkpoint recorded), NULL before the first checkpoint.';
-- The worker's report of a target's health (the worker writes no table).
CREATE FUNCTION report_target_status(target text, status text, detail text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM sync._check_choice('target status', status,
                               ARRAY['unknown', 'ok', 'throttled', 'unreachable', 'auth_failed', 'misconfigured', 'disabled']);
    IF status = 'disabled' THEN
        -- The target asked to be disabled (a webhook receiver's 410 Gone):
        -- it stays so, across worker restarts, until sync.enable_target.
        UPDATE sync.targets t
           SET status = 'disabled', status_detail = left(nullif(detail, ''), 1000),
               disabled_at = coalesce(t.disabled_at, now()), updated_at = now()
         WHERE t.name = report_target_status.target;
        RETURN;
    END IF;
    UPDATE sync.targets t
       SET status = report_target_status.status, status_detail = left(nullif(detail, ''), 1000), updated_at = now()
     WHERE t.name = report_target_status.target AND t.disabled_at IS NULL
       AND (t.status, t.status_detail) IS DISTINCT FROM (report_target_status.status, left(nullif(detail, ''), 1000));
END $$;
COMMENT ON FUNCTION report_target_status(text, text, text) IS 'The worker reports what it last saw of a target: ok, throttled, unreachable, auth_failed, misconfigured, and a detail (at most 1000 characters); or disabled: the target asked to be disabled (a webhook receiver''s 410 Gone), which holds (other reports are ignored, nothing is claimed) until sync.enable_target.';

CREATE FUNCTION enable_target(name text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    t sync.targets;
    n bigint;
BEGIN
    SELECT * INTO t FROM sync.targets x WHERE x.name = enable_target.name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'target % does not exist', coalesce(quote_literal(name), 'NULL')
            USING ERRCODE = 'undefined_object', DETAIL = 'Nothing was enabled.', HINT = 'SELECT name, status FROM sync.targets;';
    END IF;
    IF t.disabled_at IS NULL THEN
        RAISE EXCEPTION 'target % is not disabled', quote_literal(name)
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('Its status is %s; only a target that asked to be disabled (a webhook receiver''s 410 Gone) is enabled again.', t.status),
                  HINT = 'SELECT name, status, status_detail, disabled_at FROM sync.targets;';
    END IF;
    UPDATE sync.targets x SET disabled_at = NULL, status = 'unknown', status_detail = NULL, updated_at = now()
     WHERE x.name = enable_target.name;
    -- What waited goes out now, in queue order (a retry's backoff is kept).
    SELECT count(*) INTO n FROM sync.pending_exports e JOIN sync.definitions d ON d.id = e.definition_id
     WHERE d.target = enable_target.name AND e.status IN ('pending', 'failed', 'executing');
    RETURN format('target %s enabled; %s exports queued for it', name, n);
END $$;
COMMENT ON FUNCTION enable_target(text) IS 'Enables a target that asked to be disabled (a webhook receiver answered 410 Gone): the exports that waited are sent, in order, each once with its original webhook-id. Raises 55000 when the target is not disabled.';

-- One budget for many workers: every exporter of a target, on any machine,
-- takes what it spends from the target's bucket here (a slice at a time).
-- The bucket holds `capacity` (two seconds of the budget) and refills at
-- budget_per_min less capacity a minute, so that in any sliding minute all
-- exporters together spend at most budget_per_min. What a worker that dies
-- held is lost with it: at most its last slice, never the budget.
CREATE FUNCTION budget_take(target text, need double precision, extra double precision DEFAULT 0,
                            OUT granted double precision, OUT wait_seconds double precision, OUT per_min double precision)
LANGUAGE plpgsql AS $$
DECLARE
    capacity double precision;
    rate double precision;      -- units a second
    b sync.target_budgets;
    at timestamptz := clock_timestamp();
    avail double precision;     -- in the bucket now
BEGIN
    IF need IS NULL OR extra IS NULL OR need = 'NaN' OR extra = 'NaN' OR need NOT BETWEEN 0 AND 1000000 OR extra NOT BETWEEN 0 AND 1000000 THEN
        RAISE EXCEPTION 'invalid budget request (need %, extra %)', coalesce(need::text, 'NULL'), coalesce(extra::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value', DETAIL = 'need and extra are units of the target''s cost (0 to 1,000,000).',
                  HINT = 'The worker asks for what its next request costs (need) and a slice more (extra).';
    END IF;
    SELECT coalesce((t.config ->> 'budget_per_min')::double precision, k.default_budget_per_min::double precision)
      INTO per_min
      FROM sync.targets t JOIN sync.target_kinds k ON k.kind = t.kind WHERE t.name = budget_take.target;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'target % does not exist', coalesce(quote_literal(target), 'NULL')
            USING ERRCODE = 'undefined_object', DETAIL = 'Nothing was granted.', HINT = 'SELECT name FROM sync.targets;';
    END IF;
    capacity := least(greatest(per_min / 30, 1), per_min / 2);
    rate := greatest(per_min - capacity, 1) / 60;
    INSERT INTO sync.target_budgets AS x (target, tokens, refreshed_at) VALUES (budget_take.target, capacity, at)
    ON CONFLICT ON CONSTRAINT target_budgets_pkey DO NOTHING;
    SELECT * INTO b FROM sync.target_budgets x WHERE x.target = budget_take.target FOR UPDATE;
    avail := least(capacity, b.tokens + rate * greatest(extract(epoch FROM at - b.refreshed_at)::double precision, 0));
    -- A request costlier than the bucket holds goes once the bucket is
    -- full (it is paid back before anything else goes).
    IF avail >= least(need, capacity) THEN
        granted := need + least(extra, greatest(avail - need, 0));
        wait_seconds := 0;
    ELSE
        granted := 0;
        wait_seconds := (least(need, capacity) - avail) / rate;
    END IF;
    UPDATE sync.target_budgets x
       SET tokens = avail - budget_take.granted, refreshed_at = at,
           granted = x.granted + budget_take.granted, takes = x.takes + (budget_take.granted > 0)::int
     WHERE x.target = budget_take.target;
END $$;
COMMENT ON FUNCTION budget_take(text, double precision, double precision) IS 'The worker takes need units (and up to extra more, a slice for its next requests) from the target''s budget, shared by every exporter of every worker: granted (0 when the bucket is short: ask again after wait_seconds), per_min the budget. A bucket of two seconds'' budget refilled so that no sliding minute sees more than budget_per_min.';

COMMENT ON FUNCTION target_list_ids(text) IS 'The provisioned lists of a target''s definitions, their ids on the target and their columns as provisioned.';

-- Complete ------------------------------------------------------------------

-- Delay before attempt `attempts` + 1: base * 2^(attempts-1), capped, +-20% jitter.
CREATE FUNCTION _backoff(attempts int) RETURNS interval
LANGUAGE sql VOLATILE AS $$
    SELECT make_interval(secs => least(sync._setting('backoff_max_seconds')::float8,
                                       sync._setting('backoff_base_seconds')::float8 * 2 ^ greatest(attempts - 1, 0))
                                 * (0.8 + random() * 0.4))
$$;

CREATE FUNCTION complete(results jsonb, worker text DEFAULT NULL)
RETURNS TABLE (exported int, failed int, errors int, stale int)
LANGUAGE plpgsql
-- As claim: probes by key whatever the statistics say, and no JIT.
SET enable_seqscan = off SET jit = off
AS $$
DECLARE
    bad bigint;
    total int;
    rebase record;
    def int;
BEGIN
    IF results IS NULL OR jsonb_typeof(results) <> 'array' THEN
        RAISE EXCEPTION 'results must be a JSON array'
            USING ERRCODE = 'invalid_parameter_value', DETAIL = format('Got %s.', coalesce(jsonb_typeof(results), 'NULL')),
                  HINT = 'results is [{"id": 1, "ok": true, "target_id": "...", "etag": "..."}, {"id": 2, "ok": false, "error": "...", "class": "transient"}].';
    END IF;
    SELECT min(o) INTO bad FROM jsonb_array_elements(results) WITH ORDINALITY r(v, o)
     WHERE jsonb_typeof(v) <> 'object' OR jsonb_typeof(v -> 'id') <> 'number' OR jsonb_typeof(v -> 'ok') <> 'boolean'
        OR NOT (v ->> 'id') ~ '^[0-9]{1,18}$'
        OR (v ? 'class' AND NOT (v ->> 'class') = ANY (ARRAY['transient', 'throttled', 'auth', 'definite', 'conflict']))
        OR (v ? 'fields' AND jsonb_typeof(v -> 'fields') NOT IN ('object', 'null'))
        OR (v ? 'retry_after' AND (jsonb_typeof(v -> 'retry_after') <> 'number' OR (v ->> 'retry_after')::numeric NOT BETWEEN 0 AND 86400))
        OR (v ? 'join_type' AND NOT (v ->> 'join_type') = ANY (ARRAY['provisioned', 'joined']))
        OR (v ? 'sent' AND jsonb_typeof(v -> 'sent') <> 'boolean');
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'result % is malformed', bad
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('It is %s.', left((results -> (bad - 1)::int)::text, 200)),
                  HINT = 'Each result has an integer id and a boolean ok; class is transient, throttled, auth, definite or conflict; retry_after is a number of seconds from 0 to 86400; fields is an object.';
    END IF;
    PERFORM sync._check_worker_name(worker);
    SELECT count(*) INTO total FROM jsonb_array_elements(results);
    IF (SELECT count(DISTINCT (v ->> 'id')) FROM jsonb_array_elements(results) v) <> total THEN
        RAISE EXCEPTION 'results hold an export twice'
            USING ERRCODE = 'invalid_parameter_value', DETAIL = 'Each export gets one result.', HINT = 'Report each claimed export once.';
    END IF;

    -- Serialized with staging, definition by definition (the lock
    -- _stage_def holds), in id order: a change of one of these keys staged
    -- meanwhile is decided either before this commits (and is rebased
    -- below) or after it (against what the target holds now), never against
    -- an export still in flight, however its result turns out.
    FOR def IN
        SELECT DISTINCT e.definition_id FROM sync.pending_exports e
         WHERE e.id IN (SELECT (v ->> 'id')::bigint FROM jsonb_array_elements(results) v)
         ORDER BY 1
    LOOP
        PERFORM pg_advisory_xact_lock(1937337955, def);
    END LOOP;

    -- Successes: the ledger learns what the target holds.
    WITH r AS (
        SELECT (v ->> 'id')::bigint AS id, v ->> 'target_id' AS target_id, v ->> 'etag' AS etag,
               v ->> 'join_type' AS join_type, v ->> 'list_id' AS list_id, v -> 'columns' AS columns,
               CASE WHEN jsonb_typeof(v -> 'fields') = 'object' THEN v -> 'fields' END AS fields
          FROM jsonb_array_elements(results) v WHERE (v ->> 'ok')::boolean
    ), done AS (
        UPDATE sync.pending_exports e
           SET status = 'exported', exported_at = now(), lease_until = NULL, updated_at = now(),
               target_id = coalesce(r.target_id, e.target_id), etag = r.etag, last_error = NULL, error_class = NULL
          FROM r
         WHERE e.id = r.id AND e.status = 'executing' AND (complete.worker IS NULL OR e.leased_by = complete.worker)
        RETURNING e.*, r.join_type AS result_join_type, r.list_id, r.columns AS result_columns, r.fields AS result_fields
    ), read_back AS (
        -- What the answer says of the item's read-only fields: applied to
        -- the row by the next sync.apply_imports (under the origin).
        INSERT INTO sync.pending_imports AS i (definition_id, list, target_id, sync_key, etag, remote, origin)
        SELECT x.definition_id, x.list, x.target_id, x.sync_key, x.etag, x.result_fields, 'write'
          FROM done x WHERE x.result_fields IS NOT NULL AND x.target_id IS NOT NULL AND x.op IN ('add', 'update', 'move')
        ON CONFLICT (definition_id, list, target_id) WHERE status = 'pending'
        DO UPDATE SET etag = EXCLUDED.etag, remote = coalesce(i.remote, '{}') || EXCLUDED.remote, updated_at = now()
         -- (a change pulled meanwhile is newer than this answer: it stays)
         WHERE i.origin = 'write'
        RETURNING 1
    ), upserted AS (
        INSERT INTO sync.ledger AS l (definition_id, sync_key, list, target_id, etag, fields, hash, join_type, provenance)
        SELECT x.definition_id, x.sync_key, x.list, x.target_id, x.etag,
               -- (SyncKey is the target's own field, written back to items
               -- created there: not one of the row's)
               (CASE WHEN x.op = 'update' THEN coalesce(ol.fields, '{}') || x.payload ELSE x.payload END) - 'SyncKey',
               x.hash, coalesce(x.result_join_type, ol.join_type, 'provisioned'), 'push'
          FROM done x LEFT JOIN sync.ledger ol ON ol.definition_id = x.definition_id AND ol.sync_key = x.sync_key
         WHERE x.op IN ('add', 'update', 'move')
        ON CONFLICT (definition_id, sync_key) DO UPDATE
           SET list = EXCLUDED.list, target_id = coalesce(EXCLUDED.target_id, l.target_id), etag = EXCLUDED.etag,
               fields = EXCLUDED.fields, hash = EXCLUDED.hash, join_type = EXCLUDED.join_type,
               provenance = 'push', last_synced_at = now(),
               -- (a write to a disabled item re-enabled it)
               disabled_at = NULL
        RETURNING 1
    ), disabled AS (
        -- Disabled: the ledger says so (its hash matches no row, so a row
        -- back re-enables the item), and the delete waits out the grace:
        -- a scheduled export, approvable like any delete. A change of the
        -- key queued meanwhile (the row is back) goes instead.
        UPDATE sync.ledger l SET disabled_at = now(), hash = '\x', etag = coalesce(x.etag, l.etag), last_synced_at = now()
          FROM done x
         WHERE x.op = 'disable' AND l.definition_id = x.definition_id AND l.sync_key = x.sync_key
        RETURNING l.definition_id, l.sync_key, l.list, l.target_id, l.fields
    ), scheduled AS (
        INSERT INTO sync.pending_exports (definition_id, sync_key, op, list, target_id, payload, previous, status,
                                          next_attempt_at, lsn, run_id)
        SELECT y.definition_id, y.sync_key, 'delete', y.list, y.target_id, '{}', y.fields,
               CASE WHEN d.approval IN ('all', 'deletes') THEN 'awaiting_approval' ELSE 'pending' END,
               now() + coalesce(d.delete_grace, interval '0'), x.lsn, x.run_id
          FROM disabled y
          JOIN sync.definitions d ON d.id = y.definition_id
          JOIN done x ON x.definition_id = y.definition_id AND x.sync_key = y.sync_key
        ON CONFLICT (definition_id, sync_key) WHERE status IN ('pending', 'awaiting_approval', 'failed', 'error') AND sync_key IS NOT NULL
        DO NOTHING
        RETURNING 1
    ), removed AS (
        DELETE FROM sync.ledger l USING done x
         WHERE x.op = 'delete' AND l.definition_id = x.definition_id AND l.sync_key = x.sync_key
        RETURNING 1
    ), lists AS (
        INSERT INTO sync.target_lists AS t (definition_id, list, remote_id, provisioned_at, columns)
        SELECT x.definition_id, x.list, x.list_id, now(), coalesce(x.result_columns, x.payload -> 'columns')
          FROM done x WHERE x.op = 'provision'
        ON CONFLICT (definition_id, list) DO UPDATE
           SET remote_id = coalesce(EXCLUDED.remote_id, t.remote_id), provisioned_at = coalesce(t.provisioned_at, now()),
               columns = EXCLUDED.columns
        RETURNING 1
    ), pull_rows AS (
        -- a list of a two-way definition is read back from now on
        INSERT INTO sync.pulls (definition_id, list)
        SELECT x.definition_id, x.list FROM done x JOIN sync.definitions d ON d.id = x.definition_id
         WHERE x.op = 'provision' AND d.direction <> 'push'
        ON CONFLICT DO NOTHING
        RETURNING 1
    ), counted AS (
        UPDATE sync.runs u SET exported = u.exported + c.n
          FROM (SELECT sent_run, count(*) AS n FROM done WHERE sent_run IS NOT NULL GROUP BY sent_run) c
         WHERE u.id = c.sent_run
        RETURNING 1
    )
    SELECT count(*) INTO exported FROM done;

    -- Failures: back off and retry, or stop at max_attempts or a definite error.
    -- A failed export with a newer change queued for its key gives way to it.
    WITH r AS (
        SELECT (v ->> 'id')::bigint AS id, left(coalesce(v ->> 'error', 'failed without a message'), 2000) AS error,
               coalesce(v ->> 'class', 'transient') AS class, (v ->> 'retry_after')::numeric AS retry_after,
               coalesce((v ->> 'sent')::boolean, true) AS sent
          FROM jsonb_array_elements(results) v WHERE NOT (v ->> 'ok')::boolean
    ), f AS (
        SELECT e.id, r.error, r.class, r.retry_after, r.sent, d.max_attempts,
               EXISTS (SELECT 1 FROM sync.pending_exports o
                        WHERE o.definition_id = e.definition_id AND o.sync_key = e.sync_key AND o.id <> e.id
                          AND o.status IN ('pending', 'awaiting_approval', 'failed', 'error')) AS superseded
          FROM sync.pending_exports e JOIN r ON r.id = e.id JOIN sync.definitions d ON d.id = e.definition_id
         WHERE e.status = 'executing' AND (complete.worker IS NULL OR e.leased_by = complete.worker)
           FOR UPDATE OF e
    ), upd AS (
        UPDATE sync.pending_exports e
           SET status = CASE WHEN f.superseded THEN 'cancelled'
                             WHEN f.class = 'definite' THEN 'error'
                             WHEN f.class = 'conflict' AND e.attempts < f.max_attempts THEN 'failed'
                             WHEN f.class IN ('throttled', 'auth') THEN 'failed'
                             WHEN e.attempts >= f.max_attempts THEN 'error'
                             ELSE 'failed' END,
               -- throttling and token refreshes are not the export's fault: not counted
               attempts = CASE WHEN f.class IN ('throttled', 'auth') THEN greatest(e.attempts - 1, 0) ELSE e.attempts END,
               next_attempt_at = now() + greatest(
                   CASE WHEN f.class IN ('throttled', 'auth') THEN interval '0' ELSE sync._backoff(e.attempts) END,
                   make_interval(secs => coalesce(f.retry_after, 0)::float8)),
               last_error = f.error, error_class = f.class, lease_until = NULL, updated_at = now(),
               -- a failure after sending that is not a definite answer (a
               -- timeout, a 5xx, a 503 that throttled a request it may have
               -- run, ...): the create may have happened
               verify = e.verify OR (f.sent AND f.class <> 'definite' AND e.op IN ('add', 'move'))
          FROM f WHERE e.id = f.id
        RETURNING e.id, e.status, e.definition_id, e.sync_key, e.verify, e.sent_run, e.list, e.error_class
    ), pull_soon AS (
        -- 412: the item changed on the target; its list is read now, and
        -- the change decided before this export goes again.
        UPDATE sync.pulls p SET next_pull_at = least(p.next_pull_at, now())
          FROM upd WHERE upd.error_class = 'conflict' AND p.definition_id = upd.definition_id AND p.list = upd.list
        RETURNING 1
    ), counted AS (
        UPDATE sync.runs u SET failed = u.failed + c.n
          FROM (SELECT sent_run, count(*) AS n FROM upd WHERE sent_run IS NOT NULL GROUP BY sent_run) c
         WHERE u.id = c.sent_run
        RETURNING 1
    ), inherit AS (
        UPDATE sync.pending_exports o SET verify = true
          FROM upd WHERE upd.status = 'cancelled' AND upd.verify
           AND o.definition_id = upd.definition_id AND o.sync_key = upd.sync_key
           AND o.status IN ('pending', 'awaiting_approval', 'failed', 'error')
        RETURNING 1
    )
    SELECT count(*) FILTER (WHERE status IN ('failed', 'cancelled')), count(*) FILTER (WHERE status = 'error')
      INTO failed, errors FROM upd;

    stale := total - exported - failed - errors;

    -- Changes queued for these keys while the export was in flight were
    -- decided against what it was about to do; decide them again against
    -- what actually happened.
    FOR rebase IN
        SELECT e.definition_id, array_agg(DISTINCT e.sync_key) AS keys
          FROM jsonb_array_elements(results) v
          JOIN sync.pending_exports e ON e.id = (v ->> 'id')::bigint
         WHERE e.sync_key IS NOT NULL
           AND (EXISTS (SELECT 1 FROM sync.pending_exports o
                         WHERE o.definition_id = e.definition_id AND o.sync_key = e.sync_key AND o.id > e.id
                           AND o.status IN ('pending', 'awaiting_approval', 'failed', 'error'))
                -- a rollback's export sent: a change of the row made since
                -- it was staged is staged now (it waits while paused)
                OR (e.rollback AND e.changed_since AND e.status = 'exported'))
         GROUP BY e.definition_id
    LOOP
        PERFORM sync._rebase(rebase.definition_id, rebase.keys);
    END LOOP;
    RETURN NEXT;
END $$;
COMMENT ON FUNCTION complete(jsonb, text) IS 'Records the results of claimed exports in one transaction: the ledger and the export lifecycle (exported; failed with backoff; error after max_attempts or a definite error). Results for exports no longer leased to the caller are ignored (stale).';

-- Approval and retries --------------------------------------------------------

CREATE FUNCTION _export(export_id bigint) RETURNS pending_exports
LANGUAGE plpgsql STABLE AS $$
DECLARE
    e sync.pending_exports;
BEGIN
    SELECT * INTO e FROM sync.pending_exports WHERE id = export_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'export % does not exist', coalesce(export_id::text, 'NULL')
            USING ERRCODE = 'undefined_object', DETAIL = 'No pending export has that id.',
                  HINT = 'SELECT id, op, sync_key, status FROM sync.pending_exports WHERE status <> ''exported'';';
    END IF;
    RETURN e;
END $$;

CREATE FUNCTION approve(export_id bigint) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    e sync.pending_exports := sync._export(export_id);
BEGIN
    IF e.status <> 'awaiting_approval' THEN
        RAISE EXCEPTION 'export % is %, not awaiting approval', export_id, e.status
            USING ERRCODE = 'object_not_in_prerequisite_state', DETAIL = 'Only exports awaiting approval can be approved.',
                  HINT = 'SELECT * FROM sync.pending_exports WHERE status = ''awaiting_approval'';';
    END IF;
    UPDATE sync.pending_exports x
       SET status = 'pending', approved_by = session_user, approved_at = now(),
           -- (a delete scheduled after a grace period keeps its time)
           next_attempt_at = greatest(now(), x.next_attempt_at), updated_at = now()
     WHERE x.id = export_id;
    RETURN 'pending';
END $$;

CREATE FUNCTION approve_all(definition text DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    UPDATE sync.pending_exports e
       SET status = 'pending', approved_by = session_user, approved_at = now(),
           -- (a delete scheduled after a grace period keeps its time)
           next_attempt_at = greatest(now(), e.next_attempt_at), updated_at = now()
     WHERE e.status = 'awaiting_approval'
       AND (approve_all.definition IS NULL OR e.definition_id = (sync._def(approve_all.definition)).id);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

CREATE FUNCTION reject(export_id bigint) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    e sync.pending_exports := sync._export(export_id);
BEGIN
    IF e.status NOT IN ('awaiting_approval', 'pending', 'failed', 'error') THEN
        RAISE EXCEPTION 'export % is %, it cannot be rejected', export_id, e.status
            USING ERRCODE = 'object_not_in_prerequisite_state', DETAIL = 'Only exports not yet sent can be rejected.',
                  HINT = 'An executing export finishes first; exported ones are history.';
    END IF;
    UPDATE sync.pending_exports SET status = 'cancelled', last_error = 'rejected by ' || session_user, updated_at = now()
     WHERE id = export_id;
    RETURN 'cancelled';
END $$;

CREATE FUNCTION retry(export_id bigint) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    e sync.pending_exports := sync._export(export_id);
BEGIN
    IF e.status NOT IN ('error', 'failed') THEN
        RAISE EXCEPTION 'export % is %, not failed', export_id, e.status
            USING ERRCODE = 'object_not_in_prerequisite_state', DETAIL = 'Only exports in state error or failed can be retried.',
                  HINT = 'SELECT id, status, last_error FROM sync.pending_exports WHERE status IN (''error'', ''failed'');';
    END IF;
    UPDATE sync.pending_exports SET status = 'pending', attempts = 0, next_attempt_at = now(), updated_at = now()
     WHERE id = export_id;
    RETURN 'pending';
END $$;

CREATE FUNCTION retry_failed(definition text DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    UPDATE sync.pending_exports e SET status = 'pending', attempts = 0, next_attempt_at = now(), updated_at = now()
     WHERE e.status IN ('error', 'failed')
       AND (retry_failed.definition IS NULL OR e.definition_id = (sync._def(retry_failed.definition)).id);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

-- Cursors ---------------------------------------------------------------------

CREATE FUNCTION reset_cursor(definition text, "to" text DEFAULT 'beginning') RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    d sync.definitions := sync._def(definition);
    target_lsn pg_lsn;
    confirmed pg_lsn;
    n bigint;
BEGIN
    IF "to" = 'beginning' THEN
        -- Reconcile the whole table again (against the ledger: only real differences are sent).
        UPDATE sync.definitions SET backfill = 'needed', start_lsn = NULL, updated_at = now() WHERE id = d.id;
        DELETE FROM sync.cursors WHERE kind = 'backfill' AND definition_id = d.id;
        RETURN 'the whole table will be reconciled again';
    ELSIF "to" = 'now' THEN
        -- Forget what is queued and not sent; follow changes from now on.
        UPDATE sync.pending_exports SET status = 'cancelled', last_error = 'cursor reset to now by ' || session_user, updated_at = now()
         WHERE definition_id = d.id AND status IN ('pending', 'awaiting_approval', 'failed', 'error');
        GET DIAGNOSTICS n = ROW_COUNT;
        UPDATE sync.definitions SET backfill = 'done', start_lsn = pg_current_wal_lsn(), updated_at = now() WHERE id = d.id;
        DELETE FROM sync.cursors WHERE kind = 'backfill' AND definition_id = d.id;
        RETURN format('following changes from %s; %s queued exports cancelled', pg_current_wal_lsn(), n);
    END IF;
    BEGIN
        target_lsn := "to"::pg_lsn;
    EXCEPTION WHEN invalid_text_representation THEN
        RAISE EXCEPTION 'invalid cursor position %', coalesce(quote_literal("to"), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A cursor is reset to ''beginning'', ''now'' or an LSN such as ''0/16B3748''.',
                  HINT = 'SELECT sync.reset_cursor(''name'', to => ''beginning'');';
    END;
    IF target_lsn > pg_current_wal_lsn() THEN
        RAISE EXCEPTION 'LSN % is in the future', target_lsn
            USING ERRCODE = 'invalid_parameter_value', DETAIL = format('The server is at %s.', pg_current_wal_lsn()),
                  HINT = 'Use ''now'' to skip to the present.';
    END IF;
    SELECT confirmed_flush_lsn INTO confirmed FROM pg_replication_slots WHERE slot_name = sync._setting('slot_name');
    IF confirmed IS NOT NULL AND target_lsn < confirmed THEN
        RAISE EXCEPTION 'LSN % is before what the slot still holds (%)', target_lsn, confirmed
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'Changes before the slot''s confirmed position are no longer available.',
                  HINT = 'Use ''beginning'' to reconcile from the table itself.';
    END IF;
    UPDATE sync.definitions SET start_lsn = target_lsn, updated_at = now() WHERE id = d.id;
    RETURN format('changes committed before %s are ignored', target_lsn);
END $$;

-- Provisioning ----------------------------------------------------------------

CREATE FUNCTION provision(definition text) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    d sync.definitions := sync._def(definition);
    c sync.compiled := sync._compile(d.id);
    cols jsonb;
    n int;
    containers text;
BEGIN
    SELECT k.containers INTO containers
      FROM sync.targets t JOIN sync.target_kinds k ON k.kind = t.kind WHERE t.name = d.target;
    IF containers <> 'provisioned' THEN
        RAISE EXCEPTION 'the target of definition % makes no containers', quote_literal(definition)
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = format('Its kind''s containers are %s (sync.target_kinds.containers): they exist already or there are none.', containers),
                  HINT = 'Only kinds whose containers are provisioned (graph) are provisioned; enable the definition directly.';
    END IF;
    SELECT coalesce(jsonb_agg(jsonb_build_object('name', f ->> 'field', 'kind', f ->> 'kind', 'source_type', f ->> 'type')
                     || CASE WHEN f ->> 'reference' IS NOT NULL THEN jsonb_build_object('reference', f ->> 'reference') ELSE '{}' END), '[]')
           -- fields only pulled have their columns too (not the list's own
           -- read-only fields: ID, Created, Modified, ...)
           || coalesce((SELECT jsonb_agg(jsonb_build_object('name', i ->> 'field', 'kind', i ->> 'kind', 'source_type', i ->> 'type'))
                          FROM jsonb_array_elements(c.inbound) i
                         WHERE i ->> 'direction' = 'pull'
                           AND lower(i ->> 'field') NOT IN ('id', 'created', 'modified', 'author', 'editor', 'authorlookupid', 'editorlookupid',
                                                            '_uiversionstring', 'contenttype', 'attachments', 'appauthorlookupid', 'appeditorlookupid')), '[]')
           || jsonb_build_array(jsonb_build_object('name', 'SyncKey', 'kind', 'text', 'indexed', true, 'hidden', true))
      INTO cols FROM jsonb_array_elements(c.fields) f;
    -- Keeps the definition until this commits (pending_exports has no foreign key).
    PERFORM 1 FROM sync.definitions x WHERE x.id = d.id FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'definition % was dropped meanwhile', quote_literal(definition)
            USING ERRCODE = 'undefined_object';
    END IF;
    WITH lists AS (
        SELECT d.list AS list WHERE d.list IS NOT NULL
        UNION SELECT s.list FROM sync.shards s WHERE s.definition_id = d.id
    ), queued AS (
        INSERT INTO sync.pending_exports (definition_id, op, list, payload, status)
        SELECT d.id, 'provision', l.list, jsonb_build_object('list', l.list, 'columns', cols),
               CASE WHEN d.approval = 'all' THEN 'awaiting_approval' ELSE 'pending' END
          FROM lists l
         WHERE NOT EXISTS (SELECT 1 FROM sync.target_lists t WHERE t.definition_id = d.id AND t.list = l.list AND t.provisioned_at IS NOT NULL)
        ON CONFLICT DO NOTHING
        RETURNING 1
    )
    SELECT count(*) INTO n FROM queued;
    IF n = 0 AND d.list IS NULL AND NOT EXISTS (SELECT 1 FROM sync.shards s WHERE s.definition_id = d.id) THEN
        RAISE EXCEPTION 'definition % names no list', quote_literal(definition)
            USING ERRCODE = 'invalid_parameter_value', DETAIL = 'It has neither a list nor shards.',
                  HINT = 'Give it a list (sync.define(..., list => ''Employees'')) or shards (sync.shard()).';
    END IF;
    RETURN n;
END $$;
COMMENT ON FUNCTION provision(text) IS 'Queues creating the definition''s lists (its list and its shards'') with a column per mapped field (pulled ones too, but the list''s own read-only fields) plus a hidden indexed SyncKey; lists already provisioned are skipped. Returns the number queued.';

-- History retention: exported, confirmed and cancelled exports, and finished
-- runs, older than `older_than` (default: setting sync.history_retention_days;
-- 0 days keeps them) are deleted, and exports of definitions that no longer
-- exist; running runs whose session ended are marked failed (abandoned).
-- Open exports (pending, awaiting approval, executing, failed, error) of an
-- existing definition, and running runs, never are. Every exporter calls
-- it every few minutes; one purges at a time, the others return zeros.
CREATE FUNCTION purge(older_than interval DEFAULT NULL, OUT exports bigint, OUT runs bigint, OUT abandoned int)
LANGUAGE plpgsql AS $$
DECLARE
    days int := sync._setting('history_retention_days')::int;
    cutoff timestamptz;
BEGIN
    exports := 0;
    runs := 0;
    abandoned := 0;
    IF older_than > interval '1000 years' THEN
        RAISE EXCEPTION 'older_than % is too far back', older_than
            USING ERRCODE = 'invalid_parameter_value', DETAIL = 'older_than is at most 1000 years.',
                  HINT = 'sync.purge(''7 days'') deletes finished exports and runs older than a week; 0 days in sync.history_retention_days keeps them.';
    END IF;
    IF older_than < interval '0' THEN
        RAISE EXCEPTION 'older_than must not be negative'
            USING ERRCODE = 'invalid_parameter_value', DETAIL = format('Got %s.', older_than),
                  HINT = 'sync.purge(''7 days'') deletes finished exports and runs older than a week.';
    END IF;
    -- 0 days keeps the history (exports of dropped definitions still go).
    cutoff := CASE WHEN older_than IS NULL AND days = 0 THEN '-infinity'
                   ELSE now() - coalesce(older_than, make_interval(days => days)) END;
    IF NOT pg_try_advisory_xact_lock(1937337955, -1) THEN
        RETURN;
    END IF;
    abandoned := sync._reap_runs();
    -- Runs first: sync.undefine locks a definition's runs (ON DELETE SET
    -- NULL) before its exports (the trigger); the same order cannot deadlock.
    WITH gone AS (
        DELETE FROM sync.runs r WHERE r.status <> 'running' AND r.finished_at < cutoff
        RETURNING 1)
    SELECT count(*) INTO runs FROM gone;
    -- Finished exports past the retention, and any export whose definition
    -- is gone (pending_exports has no foreign key; a definition deleted
    -- outside sync.undefine, e.g. in a REPEATABLE READ transaction, can leave
    -- some).
    WITH gone AS (
        DELETE FROM sync.pending_exports e
         WHERE (e.status IN ('exported', 'confirmed', 'cancelled') AND e.updated_at < cutoff)
            OR e.definition_id NOT IN (SELECT d.id FROM sync.definitions d)
        RETURNING 1)
    SELECT count(*) INTO exports FROM gone;
    -- Drift reports past the retention (the latest of each definition stays).
    DELETE FROM sync.drift_reports r
     WHERE r.status <> 'reading' AND coalesce(r.finished_at, r.requested_at) < cutoff
       AND r.id <> (SELECT max(x.id) FROM sync.drift_reports x WHERE x.definition_id = r.definition_id);
END $$;
COMMENT ON FUNCTION purge(interval) IS 'Deletes finished exports (exported, confirmed, cancelled) and finished runs older than older_than (default: sync.history_retention_days; 0 keeps them), and exports of vanished definitions; never an open export of an existing definition. Marks failed the running runs whose session is gone (abandoned). Returns how many of each.';
