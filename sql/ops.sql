-- syncbridge: operating from SQL. Drift checks and reconciliation, the run
-- history item by item and its rollback, scheduled jobs. The extension
-- decides each; the worker only reads lists for a drift check (paged, from
-- the target's budget) and calls sync.run_jobs.
--
-- Events go out with NOTIFY on the channel syncbridge_events, as JSON:
--   {"event": "definition_error", "definition": ..., "reason": ...}
--   {"event": "job_failed", "job": ..., "run": ..., "error": ...}
--   {"event": "drift_failed", "definition": ..., "report": ..., "error": ...}
--   {"event": "drift_done", "definition": ..., "report": ..., "drifted": n}

-- ---------------------------------------------------------------------------
-- State
-- ---------------------------------------------------------------------------
CREATE TABLE drift_reports (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    definition_id int NOT NULL REFERENCES definitions (id) ON DELETE CASCADE,
    run_id        bigint,
    status        text NOT NULL DEFAULT 'reading' CHECK (status IN ('reading', 'done', 'failed', 'cancelled')),
    requested_by  text NOT NULL,
    requested_at  timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    revision      int NOT NULL,
    auto_reconcile text CHECK (auto_reconcile IN ('repair', 'mirror')),
    seen          bigint NOT NULL DEFAULT 0,
    in_sync       bigint NOT NULL DEFAULT 0,
    orphans       bigint NOT NULL DEFAULT 0,
    adoptable     bigint NOT NULL DEFAULT 0,
    duplicates    bigint NOT NULL DEFAULT 0,
    missing       bigint NOT NULL DEFAULT 0,
    drifted       bigint NOT NULL DEFAULT 0,
    per_list      jsonb,
    error         text,
    reconciled_at timestamptz,
    reconcile_run bigint,
    reconcile_mode text
);
CREATE INDEX drift_reports_definition_idx ON drift_reports (definition_id, id DESC);
-- One check of a definition reads at a time (a job racing a person's call).
CREATE UNIQUE INDEX drift_reports_reading_idx ON drift_reports (definition_id) WHERE status = 'reading';
COMMENT ON TABLE drift_reports IS 'Drift checks (sync.check_drift): the target''s lists read whole and compared with the ledger and the source. Latest per definition: sync.drift; items: sync.drift_items.';
COMMENT ON COLUMN drift_reports.id IS 'Report id (sync.reconcile takes it).';
COMMENT ON COLUMN drift_reports.definition_id IS 'The definition (sync.definitions.id).';
COMMENT ON COLUMN drift_reports.run_id IS 'Its run (sync.runs, kind drift).';
COMMENT ON COLUMN drift_reports.status IS 'reading (the worker reads the lists), done, failed (see error), cancelled.';
COMMENT ON COLUMN drift_reports.requested_by IS 'Who asked: a role, or job:<name>.';
COMMENT ON COLUMN drift_reports.requested_at IS 'When it was asked for.';
COMMENT ON COLUMN drift_reports.finished_at IS 'When the last list was read and compared.';
COMMENT ON COLUMN drift_reports.revision IS 'The definition''s revision it compared against (a report of an older revision is stale).';
COMMENT ON COLUMN drift_reports.auto_reconcile IS 'A reconcile job''s mode: the report is reconciled as soon as it is done.';
COMMENT ON COLUMN drift_reports.seen IS 'Items read.';
COMMENT ON COLUMN drift_reports.in_sync IS 'Items holding what syncbridge last wrote.';
COMMENT ON COLUMN drift_reports.orphans IS 'Items syncbridge does not know (no SyncKey, or one of no row).';
COMMENT ON COLUMN drift_reports.adoptable IS 'Items with the SyncKey of a row the ledger holds no item for (reconcile adopts them as joined).';
COMMENT ON COLUMN drift_reports.duplicates IS 'Items with the SyncKey of a row whose item is another one (a twin).';
COMMENT ON COLUMN drift_reports.missing IS 'Items the ledger expects that are gone (deleted out of band).';
COMMENT ON COLUMN drift_reports.drifted IS 'Items with at least one field whose value differs from what syncbridge last wrote.';
COMMENT ON COLUMN drift_reports.per_list IS 'The same counts per list: {list: {seen, in_sync, orphans, adoptable, duplicates, missing, drifted}}.';
COMMENT ON COLUMN drift_reports.error IS 'Why the check failed.';
COMMENT ON COLUMN drift_reports.reconciled_at IS 'When sync.reconcile staged its repairs.';
COMMENT ON COLUMN drift_reports.reconcile_run IS 'The reconcile run (sync.runs, kind reconcile).';
COMMENT ON COLUMN drift_reports.reconcile_mode IS 'repair or mirror.';

CREATE TABLE drift_lists (
    report_id     bigint NOT NULL REFERENCES drift_reports (id) ON DELETE CASCADE,
    list          text NOT NULL,
    round         bigint NOT NULL DEFAULT 0,
    link          text,
    done          boolean NOT NULL DEFAULT false,
    started_at    timestamptz,
    next_read_at  timestamptz NOT NULL DEFAULT now(),
    lease_until   timestamptz,
    leased_by     text,
    pages         bigint NOT NULL DEFAULT 0,
    items         bigint NOT NULL DEFAULT 0,
    attempts      int NOT NULL DEFAULT 0,
    last_error    text,
    PRIMARY KEY (report_id, list)
);
COMMENT ON TABLE drift_lists IS 'The lists a drift check reads: the link to the next page, the lease, the errors. Written by sync.drift_claim / drift_page / drift_failed only.';
COMMENT ON COLUMN drift_lists.report_id IS 'The report (sync.drift_reports.id).';
COMMENT ON COLUMN drift_lists.list IS 'The list.';
COMMENT ON COLUMN drift_lists.round IS 'Bumped by every lease: a page handed over under an older round is refused.';
COMMENT ON COLUMN drift_lists.link IS 'The link to the next page (NULL: the read starts at the first page).';
COMMENT ON COLUMN drift_lists.done IS 'Read to its last page.';
COMMENT ON COLUMN drift_lists.started_at IS 'When its read began (items written by syncbridge after it are not judged).';
COMMENT ON COLUMN drift_lists.next_read_at IS 'Not read again before (a backoff after an error).';
COMMENT ON COLUMN drift_lists.lease_until IS 'While a worker reads it: its lease ends at this time.';
COMMENT ON COLUMN drift_lists.leased_by IS 'Which worker reads it.';
COMMENT ON COLUMN drift_lists.pages IS 'Pages read.';
COMMENT ON COLUMN drift_lists.items IS 'Items read.';
COMMENT ON COLUMN drift_lists.attempts IS 'Failed reads in a row (after 5 the check fails).';
COMMENT ON COLUMN drift_lists.last_error IS 'The last error.';

-- The items read, until the report is compared (then deleted).
CREATE TABLE drift_seen (
    report_id     bigint NOT NULL REFERENCES drift_reports (id) ON DELETE CASCADE,
    list          text NOT NULL,
    target_id     text NOT NULL,
    sync_key      text,
    etag          text,
    fields        jsonb,
    ledger_key    text,
    ledger_target text,
    ledger_list   text,
    ledger_fields jsonb,
    fresh         boolean,
    PRIMARY KEY (report_id, list, target_id)
);
COMMENT ON TABLE drift_seen IS 'Scratch: the items a drift check read, until its last list is read and the report compared.';
COMMENT ON COLUMN drift_seen.report_id IS 'The report.';
COMMENT ON COLUMN drift_seen.list IS 'The list.';
COMMENT ON COLUMN drift_seen.target_id IS 'The item''s id.';
COMMENT ON COLUMN drift_seen.sync_key IS 'Its SyncKey, if it has one.';
COMMENT ON COLUMN drift_seen.etag IS 'Its eTag.';
COMMENT ON COLUMN drift_seen.fields IS 'Its fields as read.';
COMMENT ON COLUMN drift_seen.ledger_key IS 'Compared: the ledger entry it matches (by id in its list, else by SyncKey).';
COMMENT ON COLUMN drift_seen.ledger_target IS 'Compared: that entry''s item id.';
COMMENT ON COLUMN drift_seen.ledger_list IS 'Compared: that entry''s list.';
COMMENT ON COLUMN drift_seen.ledger_fields IS 'Compared: that entry''s fields.';
COMMENT ON COLUMN drift_seen.fresh IS 'Compared: written by syncbridge after the list''s read began, or with a change read by a pull still to be decided (not judged).';

CREATE TABLE drift_items (
    report_id     bigint NOT NULL REFERENCES drift_reports (id) ON DELETE CASCADE,
    list          text NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('orphan', 'adoptable', 'duplicate', 'missing', 'drifted')),
    sync_key      text,
    target_id     text,
    etag          text,
    field         text,
    expected      jsonb,
    actual        jsonb
);
CREATE INDEX drift_items_report_idx ON drift_items (report_id, kind);
COMMENT ON TABLE drift_items IS 'What a drift check found, item by item (drifted: field by field).';
COMMENT ON COLUMN drift_items.report_id IS 'The report (sync.drift_reports.id).';
COMMENT ON COLUMN drift_items.list IS 'The list the item is in (missing: the list the ledger expects it in).';
COMMENT ON COLUMN drift_items.kind IS 'orphan (unknown to syncbridge), adoptable (the SyncKey of a row without an item), duplicate (the SyncKey of a row whose item is another), missing (gone from the target), drifted (a field differs from what was last written).';
COMMENT ON COLUMN drift_items.sync_key IS 'The row''s key (the ledger''s, or the item''s SyncKey).';
COMMENT ON COLUMN drift_items.target_id IS 'The item''s id.';
COMMENT ON COLUMN drift_items.etag IS 'The item''s eTag as read.';
COMMENT ON COLUMN drift_items.field IS 'drifted: the field.';
COMMENT ON COLUMN drift_items.expected IS 'drifted: what syncbridge last wrote; missing: the fields the ledger holds; adoptable: the id of the ledger''s item it replaces, when that one is gone.';
COMMENT ON COLUMN drift_items.actual IS 'drifted: the value on the target; orphan, adoptable, duplicate: the item''s fields as read.';

CREATE TABLE schedules (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name          text NOT NULL UNIQUE,
    cron          text NOT NULL,
    time_zone     text NOT NULL,
    job           text NOT NULL CHECK (job IN ('drift', 'reconcile', 'restage', 'pull', 'purge')),
    definition_id int REFERENCES definitions (id) ON DELETE CASCADE,
    options       jsonb NOT NULL DEFAULT '{}',
    paused        boolean NOT NULL DEFAULT false,
    next_run_at   timestamptz,
    last_run_at   timestamptz,
    last_scheduled_for timestamptz,
    last_status   text,
    last_error    text,
    last_run_id   bigint,
    runs          bigint NOT NULL DEFAULT 0,
    failures      bigint NOT NULL DEFAULT 0,
    created_by    name NOT NULL DEFAULT session_user,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CHECK ((job = 'purge') = (definition_id IS NULL))
);
CREATE INDEX schedules_due_idx ON schedules (next_run_at) WHERE NOT paused;
COMMENT ON TABLE schedules IS 'Scheduled jobs (sync.schedule): a five-field cron expression in an IANA time zone. Shown with their next and last runs by sync.jobs.';
COMMENT ON COLUMN schedules.id IS 'Job id (sync.runs.job_id).';
COMMENT ON COLUMN schedules.name IS 'The job''s name (sync.unschedule, sync.pause_job).';
COMMENT ON COLUMN schedules.cron IS 'minute hour day-of-month month day-of-week, as crontab(5); or @hourly, @daily, @weekly, @monthly, @yearly.';
COMMENT ON COLUMN schedules.time_zone IS 'The IANA time zone the expression is read in (daylight-saving changes as cron(8) handles them: see the README).';
COMMENT ON COLUMN schedules.job IS 'drift (a drift check), reconcile (a drift check, then its repairs), restage (every row staged again: whatever differs from the ledger is sent), pull (the lists read now), purge (sync.purge).';
COMMENT ON COLUMN schedules.definition_id IS 'The definition it works on (none for purge).';
COMMENT ON COLUMN schedules.options IS 'Job options: reconcile: {"mode": "repair" | "mirror"}.';
COMMENT ON COLUMN schedules.paused IS 'Paused jobs are not run (sync.pause_job).';
COMMENT ON COLUMN schedules.next_run_at IS 'The next occurrence.';
COMMENT ON COLUMN schedules.last_run_at IS 'When it last ran.';
COMMENT ON COLUMN schedules.last_scheduled_for IS 'The occurrence it last ran for (a missed run runs once, late).';
COMMENT ON COLUMN schedules.last_status IS 'succeeded or failed.';
COMMENT ON COLUMN schedules.last_error IS 'Why the last run failed.';
COMMENT ON COLUMN schedules.last_run_id IS 'The last run (sync.runs, kind job).';
COMMENT ON COLUMN schedules.runs IS 'Runs so far.';
COMMENT ON COLUMN schedules.failures IS 'Failed runs so far.';
COMMENT ON COLUMN schedules.created_by IS 'Who scheduled it.';
COMMENT ON COLUMN schedules.created_at IS 'When it was scheduled.';

-- ---------------------------------------------------------------------------
-- Events
-- ---------------------------------------------------------------------------

CREATE FUNCTION _notify(payload jsonb) RETURNS void
LANGUAGE sql AS $$
    -- (the callers bound every text they put in: a payload stays far below
    -- NOTIFY's 8000 bytes)
    SELECT pg_catalog.pg_notify('syncbridge_events', payload::text)
$$;

CREATE FUNCTION _definitions_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM sync._notify(jsonb_build_object('event', 'definition_error', 'definition', NEW.name, 'reason', left(NEW.state_reason, 1000)));
    RETURN NULL;
END $$;
-- Whatever puts a definition in error (staging, the worker, an upgrade).
CREATE TRIGGER definitions_notify_error AFTER UPDATE OF state ON definitions
    FOR EACH ROW WHEN (NEW.state = 'error' AND OLD.state IS DISTINCT FROM 'error')
    EXECUTE FUNCTION _definitions_notify();

-- ---------------------------------------------------------------------------
-- Run history
-- ---------------------------------------------------------------------------

-- A run the extension starts and finishes itself (a reconcile, a rollback, a
-- job; a drift check is finished by its report).
CREATE FUNCTION _own_run(kind text, def_id int, started_by text, status text DEFAULT 'succeeded', job bigint DEFAULT NULL,
                         occurrence timestamptz DEFAULT NULL) RETURNS bigint
LANGUAGE sql AS $$
    INSERT INTO sync.runs (definition_id, kind, worker, started_by, status, finished_at, job_id, scheduled_for)
    VALUES (def_id, kind, NULL, started_by, status, CASE WHEN status <> 'running' THEN now() END, job, occurrence)
    RETURNING id
$$;

CREATE FUNCTION _run(run_id bigint) RETURNS runs
LANGUAGE plpgsql STABLE AS $$
DECLARE
    r sync.runs;
BEGIN
    SELECT * INTO r FROM sync.runs x WHERE x.id = run_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'run % does not exist', coalesce(run_id::text, 'NULL')
            USING ERRCODE = 'undefined_object', DETAIL = 'No run has that id (finished runs are purged after sync.history_retention_days).',
                  HINT = 'SELECT id, kind, status, started_at FROM sync.runs ORDER BY id DESC LIMIT 20;';
    END IF;
    RETURN r;
END $$;

-- What a run changed on the target: the exports it staged (a stream, a
-- backfill, a reconcile, a rollback) or sent (an export run) that reached
-- the target, item by item, with the values before and after.
CREATE FUNCTION run_changes(run bigint)
RETURNS TABLE (export_id bigint, definition text, sync_key text, op text, list text, from_list text, target_id text,
               previous jsonb, new jsonb, exported_at timestamptz, staged_by bigint, sent_by bigint)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    PERFORM sync._run(run);
    RETURN QUERY
    SELECT e.id, d.name, e.sync_key, e.op, e.list, e.from_list, e.target_id,
           CASE WHEN e.op = 'add' THEN NULL ELSE e.previous END,
           CASE WHEN e.op = 'delete' THEN NULL ELSE e.payload - 'SyncKey' END,
           e.exported_at, e.run_id, e.sent_run
      FROM sync.pending_exports e JOIN sync.definitions d ON d.id = e.definition_id
     WHERE (e.run_id = run OR e.sent_run = run) AND e.status IN ('exported', 'confirmed') AND e.op <> 'provision'
     ORDER BY e.exported_at, e.id;
END $$;
COMMENT ON FUNCTION run_changes(bigint) IS 'What a run changed on the target, item by item: the exports it staged (stream, backfill, reconcile, rollback) or sent (export) that reached the target, with the previous values (update: of the changed fields; delete: of the whole item) and the new ones.';

-- ---------------------------------------------------------------------------
-- Rollback
-- ---------------------------------------------------------------------------

CREATE FUNCTION rollback(definition text, run bigint, force boolean DEFAULT false)
RETURNS TABLE (sync_key text, action text, op text, detail text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    d sync.definitions := sync._def(definition);
    r sync.runs := sync._run(run);
    rb bigint;
    k record;
    l sync.ledger;
    has_ledger boolean;
    before_fields jsonb;
    before_list text;
    payload jsonb;
    prev jsonb;
    e record;
    open_export sync.pending_exports;
    why text;
    n_staged int := 0;
    n_skipped int := 0;
    n_changes int;
BEGIN
    IF r.status = 'running' THEN
        RAISE EXCEPTION 'run % is still running', run
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('A %s run started %s by %s; what it changes is not known until it ends.', r.kind, r.started_at, coalesce(r.started_by, r.worker, '?')),
                  HINT = 'Wait for it to finish (SELECT status FROM sync.runs WHERE id = ...), or stop its worker.';
    END IF;
    IF r.definition_id IS NOT NULL AND r.definition_id <> d.id THEN
        RAISE EXCEPTION 'run % belongs to another definition', run
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('It is a %s run of definition %s, not of %s.', r.kind,
                                  coalesce((SELECT quote_literal(x.name) FROM sync.definitions x WHERE x.id = r.definition_id), '?'), quote_literal(d.name)),
                  HINT = 'Roll a run back through its own definition: SELECT * FROM sync.rollback(definition, run).';
    END IF;
    SELECT count(*) INTO n_changes FROM sync.pending_exports x
     WHERE x.definition_id = d.id AND (x.run_id = run OR x.sent_run = run) AND x.status IN ('exported', 'confirmed') AND x.op <> 'provision';
    IF n_changes = 0 THEN
        RAISE EXCEPTION 'run % changed nothing of definition %', run, quote_literal(d.name)
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = CASE WHEN EXISTS (SELECT 1 FROM sync.pending_exports x WHERE (x.run_id = run OR x.sent_run = run)
                                               AND x.status IN ('exported', 'confirmed') AND x.definition_id <> d.id)
                                THEN 'Its changes belong to other definitions.'
                                ELSE 'None of its exports reached the target (or they were purged).' END,
                  HINT = format('SELECT * FROM sync.run_changes(%s);', run);
    END IF;
    -- Serialized with staging and sync.complete for this definition.
    PERFORM pg_advisory_xact_lock(1937337955, d.id);
    rb := sync._own_run('rollback', d.id, session_user::text);
    FOR k IN
        SELECT x.sync_key,
               array_agg(x.id ORDER BY x.exported_at, x.id) AS ids,
               (array_agg(x.op ORDER BY x.exported_at, x.id))[1] AS first_op,
               (array_agg(coalesce(x.from_list, x.list) ORDER BY x.exported_at, x.id))[1] AS first_list,
               (array_agg(x.op ORDER BY x.exported_at DESC, x.id DESC))[1] AS last_op,
               (array_agg(x.list ORDER BY x.exported_at DESC, x.id DESC))[1] AS last_list,
               (array_agg(x.hash ORDER BY x.exported_at DESC, x.id DESC))[1] AS last_hash,
               max(x.id) AS last_id
          FROM sync.pending_exports x
         WHERE x.definition_id = d.id AND (x.run_id = run OR x.sent_run = run) AND x.status IN ('exported', 'confirmed') AND x.op <> 'provision'
           -- (an orphan's delete, sync.reconcile's: no row to give it back to)
           AND x.sync_key IS NOT NULL
         GROUP BY x.sync_key ORDER BY x.sync_key
    LOOP
        SELECT * INTO l FROM sync.ledger x WHERE x.definition_id = d.id AND x.sync_key = k.sync_key;
        has_ledger := FOUND;
        -- Changed again since the run? (the ledger no longer holds what the
        -- run left, or a later export of the key reached the target)
        why := CASE
            WHEN k.last_op = 'delete' AND has_ledger THEN 'the item was created again after the run'
            WHEN k.last_op <> 'delete' AND NOT has_ledger THEN 'the item was deleted after the run'
            WHEN k.last_op <> 'delete' AND (l.list IS DISTINCT FROM k.last_list OR l.hash IS DISTINCT FROM k.last_hash)
                THEN 'the item changed after the run'
            WHEN EXISTS (SELECT 1 FROM sync.pending_exports x WHERE x.definition_id = d.id AND x.sync_key = k.sync_key
                            AND x.status IN ('exported', 'confirmed') AND x.id > k.last_id AND x.op <> 'provision'
                            AND NOT x.id = ANY (k.ids))
                THEN 'the item was written again after the run' END;
        SELECT * INTO open_export FROM sync.pending_exports x
         WHERE x.definition_id = d.id AND x.sync_key = k.sync_key AND x.status IN ('pending', 'awaiting_approval', 'failed', 'error', 'executing')
         ORDER BY x.id DESC LIMIT 1;
        IF FOUND THEN
            sync_key := k.sync_key; action := 'skipped'; op := NULL;
            detail := format('a newer change of the row is queued (export %s, %s): decide it first (sync.reject or sync.approve)', open_export.id, open_export.status);
            n_skipped := n_skipped + 1;
            RETURN NEXT;
            CONTINUE;
        END IF;
        IF why IS NOT NULL AND NOT force THEN
            sync_key := k.sync_key; action := 'skipped'; op := NULL;
            detail := why || ': not overwritten (force => true overwrites it)';
            n_skipped := n_skipped + 1;
            RETURN NEXT;
            CONTINUE;
        END IF;
        -- The item as it was before the run: walk the run's exports of the
        -- key backwards from what the target holds now.
        before_fields := CASE WHEN has_ledger THEN l.fields END;
        FOR e IN SELECT x.op, x.previous FROM sync.pending_exports x WHERE x.id = ANY (k.ids) ORDER BY x.exported_at DESC, x.id DESC LOOP
            before_fields := CASE e.op WHEN 'add' THEN NULL
                                       WHEN 'update' THEN coalesce(before_fields, '{}') || coalesce(e.previous, '{}')
                                       ELSE e.previous END;
        END LOOP;
        before_fields := before_fields - 'SyncKey';
        before_list := k.first_list;
        op := NULL;
        IF k.first_op = 'add' THEN
            IF has_ledger THEN
                IF NOT (d.delete_scope = 'all' OR (d.delete_scope = 'provisioned' AND l.join_type = 'provisioned')) THEN
                    sync_key := k.sync_key; action := 'skipped'; op := 'delete';
                    detail := format('the run created it, but delete_scope %s does not allow its delete', d.delete_scope);
                    n_skipped := n_skipped + 1;
                    RETURN NEXT;
                    CONTINUE;
                END IF;
                op := 'delete';
                INSERT INTO sync.pending_exports (definition_id, sync_key, op, list, target_id, payload, previous, hash, status, run_id, rollback)
                VALUES (d.id, k.sync_key, 'delete', l.list, l.target_id, '{}', l.fields, NULL, 'awaiting_approval', rb, true);
            END IF;
        ELSIF NOT has_ledger THEN
            op := 'add';
            INSERT INTO sync.pending_exports (definition_id, sync_key, op, list, payload, previous, hash, status, run_id, verify, rollback)
            VALUES (d.id, k.sync_key, 'add', before_list, before_fields, NULL,
                    sha256(convert_to(before_fields::text, 'UTF8')), 'awaiting_approval', rb, true, true);
        ELSIF l.list IS DISTINCT FROM before_list THEN
            op := 'move';
            INSERT INTO sync.pending_exports (definition_id, sync_key, op, list, from_list, target_id, payload, previous, hash, status, run_id, rollback)
            VALUES (d.id, k.sync_key, 'move', before_list, l.list, l.target_id, before_fields, l.fields,
                    sha256(convert_to(before_fields::text, 'UTF8')), 'awaiting_approval', rb, true);
        ELSE
            SELECT coalesce(jsonb_object_agg(f.key, f.value), '{}'), coalesce(jsonb_object_agg(f.key, coalesce(l.fields -> f.key, 'null')), '{}')
              INTO payload, prev
              FROM jsonb_each(before_fields) f WHERE f.value IS DISTINCT FROM l.fields -> f.key;
            IF payload <> '{}' THEN
                op := 'update';
                INSERT INTO sync.pending_exports (definition_id, sync_key, op, list, target_id, etag, payload, previous, hash, status, run_id, rollback)
                VALUES (d.id, k.sync_key, 'update', l.list, l.target_id, l.etag, payload, prev,
                        sha256(convert_to((l.fields || payload)::text, 'UTF8')), 'awaiting_approval', rb, true);
            END IF;
        END IF;
        sync_key := k.sync_key;
        IF op IS NULL THEN
            action := 'unchanged'; detail := 'the target already holds what it held before the run';
        ELSE
            action := 'staged'; n_staged := n_staged + 1;
            detail := CASE WHEN why IS NOT NULL THEN why || ': overwritten (force)' END;
        END IF;
        RETURN NEXT;
    END LOOP;
    UPDATE sync.runs x SET staged = n_staged, detail = jsonb_build_object('rolls_back', run, 'staged', n_staged, 'skipped', n_skipped, 'force', force)
     WHERE x.id = rb;
    -- Paused, so that the next staging does not send again what was rolled
    -- back (the rollback's own exports still go once approved). Nothing
    -- staged: nothing to protect, the definition goes on.
    UPDATE sync.definitions x
       SET state = CASE WHEN x.state = 'active' THEN 'paused' ELSE x.state END,
           state_reason = CASE WHEN x.state IN ('active', 'paused')
                               THEN format('rolled back run %s (rollback run %s): fix the data or the mapping, then sync.resume', run, rb)
                               ELSE x.state_reason END,
           updated_at = now()
     WHERE x.id = d.id AND n_staged > 0;
    sync_key := NULL; action := 'run'; op := NULL;
    detail := CASE WHEN n_staged > 0
                   THEN format('rollback run %s: %s staged (awaiting approval: SELECT sync.approve_all(%L)), %s skipped; definition %s is paused',
                               rb, n_staged, d.name, n_skipped, d.name)
                   ELSE format('rollback run %s: nothing staged, %s skipped; definition %s goes on', rb, n_skipped, d.name) END;
    RETURN NEXT;
END $$;
COMMENT ON FUNCTION rollback(text, bigint, boolean) IS 'Stages the inverse of what a run changed on the target for a definition (created: deleted; updated: the previous values; deleted: created again; moved: moved back) as a rollback run of its own, every export awaiting approval (sync.plan shows them). An item changed after the run is listed and skipped unless force. The definition is paused, so that staging does not redo it; its rollback exports are still sent once approved.';

-- ---------------------------------------------------------------------------
-- Drift checks (the worker reads)
-- ---------------------------------------------------------------------------

CREATE FUNCTION _check_drift(d definitions, started_by text, auto_reconcile text DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    report bigint;
    run bigint;
BEGIN
    IF d.state NOT IN ('active', 'paused') THEN
        RAISE EXCEPTION 'definition % is %', quote_literal(d.name), d.state
            USING ERRCODE = 'object_not_in_prerequisite_state', DETAIL = 'A drift check compares an active or paused definition''s lists.',
                  HINT = CASE d.state WHEN 'error' THEN 'SELECT state_reason FROM sync.definitions; fix it, then sync.resume.' ELSE 'sync.enable it first.' END;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM sync.target_lists tl WHERE tl.definition_id = d.id AND tl.remote_id IS NOT NULL) THEN
        RAISE EXCEPTION 'definition % has no list on the target yet', quote_literal(d.name)
            USING ERRCODE = 'object_not_in_prerequisite_state', DETAIL = 'Its lists are created by its first exports.',
                  HINT = 'SELECT * FROM sync.target_lists;';
    END IF;
    SELECT x.id INTO report FROM sync.drift_reports x WHERE x.definition_id = d.id AND x.status = 'reading';
    IF FOUND THEN
        RAISE EXCEPTION 'a drift check of % is running', quote_literal(d.name)
            USING ERRCODE = 'object_not_in_prerequisite_state', DETAIL = format('Report %s is still reading the lists.', report),
                  HINT = format('SELECT * FROM sync.drift WHERE definition = %L; or sync.cancel_drift(%s).', d.name, report);
    END IF;
    run := sync._own_run('drift', d.id, started_by, 'running');
    BEGIN
        INSERT INTO sync.drift_reports (definition_id, run_id, requested_by, revision, auto_reconcile)
        VALUES (d.id, run, started_by, d.revision, auto_reconcile)
        RETURNING id INTO report;
    EXCEPTION WHEN unique_violation THEN
        RAISE EXCEPTION 'a drift check of % is running', quote_literal(d.name)
            USING ERRCODE = 'object_not_in_prerequisite_state', DETAIL = 'Another one was asked for at the same moment.',
                  HINT = format('SELECT * FROM sync.drift WHERE definition = %L;', d.name);
    END;
    INSERT INTO sync.drift_lists (report_id, list)
    SELECT report, tl.list FROM sync.target_lists tl WHERE tl.definition_id = d.id AND tl.remote_id IS NOT NULL;
    UPDATE sync.runs SET detail = jsonb_build_object('report', report) WHERE id = run;
    RETURN report;
END $$;

CREATE FUNCTION check_drift(definition text) RETURNS bigint
LANGUAGE plpgsql AS $$
BEGIN
    RETURN sync._check_drift(sync._def(definition), session_user::text);
END $$;
COMMENT ON FUNCTION check_drift(text) IS 'Asks the workers to read the definition''s lists whole (paged, from the target''s budget: sync.plan_summary shows the cost and time beforehand) and compare them with the ledger and the source. Returns the report id; sync.drift shows it.';

CREATE FUNCTION cancel_drift(report bigint) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    rep sync.drift_reports;
BEGIN
    SELECT * INTO rep FROM sync.drift_reports x WHERE x.id = report FOR NO KEY UPDATE;
    IF NOT FOUND OR rep.status <> 'reading' THEN
        RAISE EXCEPTION 'drift report % is not reading', coalesce(report::text, 'NULL')
            USING ERRCODE = 'object_not_in_prerequisite_state', DETAIL = format('Its status is %s.', coalesce(rep.status, 'unknown: no such report')),
                  HINT = 'SELECT * FROM sync.drift;';
    END IF;
    PERFORM sync._drift_end(rep, 'cancelled', 'cancelled by ' || session_user);
    RETURN 'cancelled';
END $$;
COMMENT ON FUNCTION cancel_drift(bigint) IS 'Stops a drift check that is reading (its items read so far are dropped).';

-- Ends a report that did not complete (failed or cancelled), with its run.
CREATE FUNCTION _drift_end(rep drift_reports, status text, error text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE sync.drift_reports x SET status = _drift_end.status, error = left(_drift_end.error, 2000), finished_at = now() WHERE x.id = rep.id;
    UPDATE sync.drift_lists x SET lease_until = NULL, leased_by = NULL WHERE x.report_id = rep.id;
    DELETE FROM sync.drift_seen x WHERE x.report_id = rep.id;
    UPDATE sync.runs x SET status = CASE WHEN _drift_end.status = 'cancelled' THEN 'cancelled' ELSE 'failed' END,
           finished_at = now(), error = left(_drift_end.error, 2000)
     WHERE x.id = rep.run_id AND x.status = 'running';
    IF status = 'failed' THEN
        PERFORM sync._notify(jsonb_build_object('event', 'drift_failed', 'report', rep.id,
            'definition', (SELECT x.name FROM sync.definitions x WHERE x.id = rep.definition_id), 'error', left(error, 500)));
    END IF;
END $$;

-- The fields a drift check compares: those the database owns (pushed only;
-- a field both ways changed on the target is a change for the pull to
-- decide, not drift), but references (their value is the referenced item's
-- id) and the key's own SyncKey.
CREATE FUNCTION _drift_fields(def_id int) RETURNS text[]
LANGUAGE sql AS $$
    SELECT coalesce(array_agg(DISTINCT f->>'field' ORDER BY f->>'field'), '{}')
      FROM jsonb_array_elements((sync._compile(def_id)).fields) f
     WHERE f->>'reference' IS NULL AND lower(f->>'field') <> 'synckey'
       AND coalesce((SELECT m.direction FROM sync.field_maps m WHERE m.definition_id = def_id AND m.field = f->>'field'),
                    (SELECT d.direction FROM sync.definitions d WHERE d.id = def_id)) = 'push'
$$;

CREATE FUNCTION drift_claim(target text, n int DEFAULT 1, lease_seconds int DEFAULT NULL, worker text DEFAULT NULL)
RETURNS TABLE (report bigint, definition text, list text, list_id text, link text, fields text[], round bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    lease interval;
    rep record;
    x record;
    want text[];
    got int := 0;
BEGIN
    PERFORM sync._check_target_call(target, n, 100, 'A drift claim (lists)', 'Nothing was claimed.', worker);
    IF lease_seconds IS NOT NULL AND lease_seconds NOT BETWEEN 1 AND 86400 THEN
        RAISE EXCEPTION 'invalid lease_seconds %', lease_seconds
            USING ERRCODE = 'invalid_parameter_value', DETAIL = 'A lease lasts 1 to 86400 seconds.',
                  HINT = format('The default is %s (setting sync.lease_seconds).', sync._setting('lease_seconds'));
    END IF;
    lease := make_interval(secs => coalesce(lease_seconds, sync._setting('lease_seconds')::int));
    FOR rep IN SELECT r.id, r.definition_id, d.name, d.state FROM sync.drift_reports r JOIN sync.definitions d ON d.id = r.definition_id
                WHERE d.target = drift_claim.target AND r.status = 'reading' ORDER BY r.id LOOP
        -- A check cannot go on once its definition cannot be compiled or is
        -- no longer active or paused: it ends, failed, with the reason
        -- (writers lock the report before its lists; one that is busy is
        -- left for the next claim).
        want := NULL;
        IF rep.state IN ('active', 'paused') THEN
            BEGIN
                want := ARRAY['SyncKey'] || sync._drift_fields(rep.definition_id);
            EXCEPTION WHEN OTHERS THEN
                PERFORM sync._drift_end(r, 'failed', 'the definition does not compile: ' || SQLERRM)
                   FROM sync.drift_reports r WHERE r.id = rep.id AND r.status = 'reading' FOR NO KEY UPDATE SKIP LOCKED;
                CONTINUE;
            END;
        ELSE
            PERFORM sync._drift_end(r, 'failed', format('definition %s is %s', rep.name, rep.state))
               FROM sync.drift_reports r WHERE r.id = rep.id AND r.status = 'reading' FOR NO KEY UPDATE SKIP LOCKED;
            CONTINUE;
        END IF;
        FOR x IN
            WITH due AS (
                SELECT y.report_id, y.list FROM sync.drift_lists y
                  JOIN sync.target_lists tl ON tl.definition_id = rep.definition_id AND tl.list = y.list AND tl.remote_id IS NOT NULL
                 WHERE y.report_id = rep.id AND NOT y.done AND y.next_read_at <= now()
                   AND (y.lease_until IS NULL OR y.lease_until < now())
                 ORDER BY y.list
                 LIMIT n - got
                   FOR UPDATE OF y SKIP LOCKED
            )
            UPDATE sync.drift_lists y
               SET round = y.round + 1, lease_until = now() + lease, leased_by = drift_claim.worker,
                   started_at = CASE WHEN y.link IS NULL THEN now() ELSE y.started_at END
              FROM due WHERE y.report_id = due.report_id AND y.list = due.list
            RETURNING y.list, y.link, y.round
        LOOP
            report := rep.id; definition := rep.name; list := x.list; link := x.link; round := x.round; fields := want;
            list_id := (SELECT tl.remote_id FROM sync.target_lists tl WHERE tl.definition_id = rep.definition_id AND tl.list = x.list);
            got := got + 1;
            RETURN NEXT;
        END LOOP;
        EXIT WHEN got >= n;
    END LOOP;
END $$;
COMMENT ON FUNCTION drift_claim(text, int, int, text) IS 'Leases up to n lists that drift checks of a target still have to read (FOR UPDATE SKIP LOCKED): the list''s id, the link to read next (NULL: the first page), the fields to select, the round to hand pages over under. A check whose definition is no longer active or paused, or no longer compiles, ends failed.';

CREATE FUNCTION drift_due(target text) RETURNS double precision
LANGUAGE sql STABLE AS $$
    SELECT greatest(0, extract(epoch FROM min(greatest(x.next_read_at, coalesce(x.lease_until, x.next_read_at))) - now()))::float8
      FROM sync.drift_lists x
      JOIN sync.drift_reports r ON r.id = x.report_id AND r.status = 'reading'
      JOIN sync.definitions d ON d.id = r.definition_id
     WHERE d.target = drift_due.target AND NOT x.done
$$;
COMMENT ON FUNCTION drift_due(text) IS 'Seconds until a list a drift check of the target still has to read may be claimed (0: now; NULL: no check is reading).';

CREATE FUNCTION _drift_lease(report bigint, list_name text, lease_round bigint, worker text) RETURNS drift_lists
LANGUAGE plpgsql AS $$
DECLARE
    x sync.drift_lists;
BEGIN
    SELECT * INTO x FROM sync.drift_lists y WHERE y.report_id = report AND y.list = list_name FOR UPDATE;
    IF NOT FOUND OR x.round <> lease_round OR x.leased_by IS DISTINCT FROM worker OR x.lease_until IS NULL
       OR NOT EXISTS (SELECT 1 FROM sync.drift_reports r WHERE r.id = report AND r.status = 'reading') THEN
        RAISE EXCEPTION 'the drift read of list % is no longer leased to this worker', quote_literal(list_name)
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('Report %s, round %s; the list''s round is %s, leased by %s.', report, lease_round, coalesce(x.round::text, 'none'), coalesce(x.leased_by, 'nobody')),
                  HINT = 'The lease expired (another worker took the list over) or the check ended: leave it.';
    END IF;
    RETURN x;
END $$;

CREATE FUNCTION drift_page(report bigint, list text, round bigint, items jsonb, link text, final boolean, worker text DEFAULT NULL)
RETURNS int
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    x sync.drift_lists;
    stored int;
    lease interval := make_interval(secs => sync._setting('lease_seconds')::int);
    rep sync.drift_reports;
BEGIN
    PERFORM sync._check_page(items, link, final);
    PERFORM sync._check_worker_name(worker);
    -- The report first, then the list (every writer's order): the pages of
    -- a report are stored one at a time, and its last one compares once.
    SELECT * INTO rep FROM sync.drift_reports r WHERE r.id = drift_page.report FOR NO KEY UPDATE;
    x := sync._drift_lease(report, list, round, worker);
    WITH page AS (
        SELECT DISTINCT ON (v ->> 'id') v ->> 'id' AS target_id, v ->> 'etag' AS etag,
               coalesce((v ->> 'deleted')::boolean, false) AS deleted,
               CASE WHEN jsonb_typeof(v -> 'fields') = 'object' THEN v -> 'fields' END AS fields
          FROM jsonb_array_elements(items) WITH ORDINALITY e(v, o)
         ORDER BY v ->> 'id', o DESC
    ), gone AS (
        DELETE FROM sync.drift_seen s USING page
         WHERE page.deleted AND s.report_id = drift_page.report AND s.list = drift_page.list AND s.target_id = page.target_id
    ), ins AS (
        INSERT INTO sync.drift_seen AS s (report_id, list, target_id, sync_key, etag, fields)
        SELECT drift_page.report, drift_page.list, page.target_id,
               nullif(sync._field_of(page.fields, 'SyncKey') #>> '{}', ''), page.etag, page.fields
          FROM page WHERE NOT page.deleted
        ON CONFLICT (report_id, list, target_id) DO UPDATE
           SET sync_key = EXCLUDED.sync_key, etag = EXCLUDED.etag, fields = EXCLUDED.fields
        RETURNING 1
    )
    SELECT count(*) INTO stored FROM ins;
    UPDATE sync.drift_lists y
       SET link = CASE WHEN final THEN NULL ELSE drift_page.link END, done = final,
           lease_until = CASE WHEN final THEN NULL ELSE now() + lease END, leased_by = CASE WHEN final THEN NULL ELSE y.leased_by END,
           pages = y.pages + 1, items = y.items + stored, attempts = 0, last_error = NULL
     WHERE y.report_id = drift_page.report AND y.list = drift_page.list;
    IF final AND NOT EXISTS (SELECT 1 FROM sync.drift_lists y WHERE y.report_id = drift_page.report AND NOT y.done) THEN
        -- A comparison that fails (a definition that no longer compiles, a
        -- timeout) ends the check, failed, with the reason: the worker's
        -- page stands.
        BEGIN
            PERFORM sync._drift_compare(rep);
        EXCEPTION WHEN OTHERS THEN
            PERFORM sync._drift_end(rep, 'failed', 'comparing failed: ' || SQLERRM);
        END;
    END IF;
    RETURN stored;
END $$;
COMMENT ON FUNCTION drift_page(bigint, text, bigint, jsonb, text, boolean, text) IS 'Stores one page of a list a drift check reads, with the link to the next page; after the last page of the last list the report is compared (and, for a reconcile job, reconciled). Raises 55000 when the caller no longer holds the lease.';

CREATE FUNCTION drift_failed(report bigint, list text, round bigint, error text, class text, restart boolean DEFAULT false,
                             retry_after double precision DEFAULT NULL, worker text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    x sync.drift_lists;
    rep sync.drift_reports;
BEGIN
    PERFORM sync._check_choice('error class', class, ARRAY['transient', 'throttled', 'auth', 'definite']);
    IF retry_after IS NOT NULL AND (retry_after = 'NaN' OR retry_after NOT BETWEEN 0 AND 86400) THEN
        RAISE EXCEPTION 'invalid retry_after %', retry_after
            USING ERRCODE = 'invalid_parameter_value', DETAIL = 'retry_after is 0 to 86400 seconds.', HINT = 'Pass the target''s Retry-After.';
    END IF;
    PERFORM sync._check_worker_name(worker);
    SELECT * INTO rep FROM sync.drift_reports r WHERE r.id = drift_failed.report FOR NO KEY UPDATE;
    x := sync._drift_lease(report, list, round, worker);
    IF restart THEN
        -- The page link is dead: the list is read again from its start.
        DELETE FROM sync.drift_seen s WHERE s.report_id = drift_failed.report AND s.list = drift_failed.list;
    END IF;
    UPDATE sync.drift_lists y
       SET lease_until = NULL, leased_by = NULL, link = CASE WHEN restart THEN NULL ELSE y.link END,
           attempts = y.attempts + CASE WHEN class = 'throttled' THEN 0 ELSE 1 END,
           last_error = left(coalesce(error, 'failed without a message'), 2000),
           next_read_at = now() + greatest(CASE WHEN class = 'throttled' THEN interval '0' ELSE sync._backoff(y.attempts + 1) END,
                                           make_interval(secs => coalesce(retry_after, 0)))
     WHERE y.report_id = drift_failed.report AND y.list = drift_failed.list
    RETURNING * INTO x;
    IF x.attempts >= 5 OR class IN ('definite', 'auth') AND x.attempts >= 2 THEN
        PERFORM sync._drift_end(rep, 'failed', format('reading list %s failed %s times; last: %s', x.list, x.attempts, x.last_error));
    END IF;
END $$;
COMMENT ON FUNCTION drift_failed(bigint, text, bigint, text, text, boolean, double precision, text) IS 'The worker reports a failed read of a drift check''s list: retried after a backoff (restart: from the list''s first page); after 5 failures (2 for auth or definite errors) the check fails and a drift_failed event is sent.';

-- Whether the row of a SyncKey read from an item exists and goes to `list`
-- (a SyncKey typed by hand that fits no key is simply not one).
CREATE FUNCTION _row_in_list(def_id int, sync_key text, list text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    -- (the key as syncbridge writes it: '007' is not the row 7's)
    RETURN EXISTS (SELECT 1 FROM sync._mapped_rows_by_key(def_id, sync._key_objects(def_id, ARRAY[sync_key])) w
                    WHERE w.present AND w.list = _row_in_list.list AND w.sync_key = _row_in_list.sync_key);
EXCEPTION WHEN data_exception OR invalid_parameter_value THEN
    RETURN false;
END $$;

-- Compares what a drift check read with the ledger and the source, records
-- the items, ends the report and its run.
CREATE FUNCTION _drift_compare(rep drift_reports) RETURNS void
LANGUAGE plpgsql
SET TimeZone = 'UTC'
AS $$
#variable_conflict use_column
DECLARE
    d sync.definitions;
    cmp_fields text[];
    counts jsonb;
BEGIN
    SELECT * INTO d FROM sync.definitions x WHERE x.id = rep.definition_id;
    cmp_fields := sync._drift_fields(d.id);
    -- Items matched with the ledger: by id in their list, else by SyncKey.
    UPDATE sync.drift_seen s
       SET (ledger_key, ledger_target, ledger_list, ledger_fields, fresh) = (
           SELECT y.sync_key, y.target_id, y.list, y.fields, y.last_synced_at >= dl.started_at FROM sync.ledger y
            WHERE y.definition_id = d.id
              AND ((y.target_id = s.target_id AND y.list = s.list) OR (s.sync_key IS NOT NULL AND y.sync_key = s.sync_key))
            ORDER BY (y.target_id IS NOT DISTINCT FROM s.target_id AND y.list = s.list) DESC LIMIT 1)
      FROM sync.drift_lists dl
     WHERE s.report_id = rep.id AND dl.report_id = s.report_id AND dl.list = s.list;
    -- Not judged either: an item whose change a pull read and is still to be
    -- decided (two-way: a person's edit on its way in, not drift).
    UPDATE sync.drift_seen s SET fresh = true
     WHERE s.report_id = rep.id
       AND EXISTS (SELECT 1 FROM sync.pending_imports i
                    WHERE i.definition_id = d.id AND i.list = s.list AND i.target_id = s.target_id
                      AND i.status IN ('pending', 'conflict', 'awaiting_approval', 'failed'));

    -- Drifted fields of known items (not judged: items written since the read began).
    INSERT INTO sync.drift_items (report_id, list, kind, sync_key, target_id, etag, field, expected, actual)
    SELECT rep.id, m.list, 'drifted', m.ledger_key, m.target_id, m.etag, f,
           m.ledger_fields -> f, sync._field_of(coalesce(m.fields, '{}'), f)
      FROM sync.drift_seen m CROSS JOIN unnest(cmp_fields) f
     WHERE m.report_id = rep.id AND m.ledger_target = m.target_id AND m.ledger_list = m.list
       AND NOT coalesce(m.fresh, false) AND m.ledger_fields ? f
       AND nullif(nullif(m.ledger_fields -> f, 'null'), '""') IS DISTINCT FROM nullif(nullif(sync._field_of(coalesce(m.fields, '{}'), f), 'null'), '""');
    -- Items syncbridge does not know.
    INSERT INTO sync.drift_items (report_id, list, kind, sync_key, target_id, etag, actual)
    SELECT rep.id, m.list,
           CASE WHEN m.ledger_key IS NOT NULL AND m.ledger_target IS NOT NULL THEN 'duplicate'
                WHEN m.ledger_key IS NOT NULL THEN 'adoptable'
                WHEN m.sync_key IS NOT NULL AND sync._row_in_list(d.id, m.sync_key, m.list) THEN 'adoptable'
                ELSE 'orphan' END,
           coalesce(m.ledger_key, m.sync_key), m.target_id, m.etag, m.fields
      FROM sync.drift_seen m
     WHERE m.report_id = rep.id AND NOT coalesce(m.fresh, false)
       AND (m.ledger_key IS NULL OR m.ledger_target IS DISTINCT FROM m.target_id OR m.ledger_list IS DISTINCT FROM m.list);
    -- Items the ledger expects that were not read (and were not written since
    -- the read began, nor are being written or deleted, nor wait as a
    -- change read by a pull).
    INSERT INTO sync.drift_items (report_id, list, kind, sync_key, target_id, expected)
    SELECT rep.id, l.list, 'missing', l.sync_key, l.target_id, l.fields
      FROM sync.ledger l JOIN sync.drift_lists dl ON dl.report_id = rep.id AND dl.list = l.list
     WHERE l.definition_id = d.id AND l.target_id IS NOT NULL AND l.last_synced_at < dl.started_at
       AND NOT EXISTS (SELECT 1 FROM sync.drift_seen s WHERE s.report_id = rep.id AND s.list = l.list AND s.target_id = l.target_id)
       AND NOT EXISTS (SELECT 1 FROM sync.pending_exports e WHERE e.definition_id = d.id AND e.sync_key = l.sync_key AND e.status = 'executing')
       AND NOT EXISTS (SELECT 1 FROM sync.pending_imports i
                        WHERE i.definition_id = d.id AND i.list = l.list AND i.target_id = l.target_id
                          AND i.status IN ('pending', 'conflict', 'awaiting_approval', 'failed'));
    -- A missing item whose key another item carries (re-created by hand,
    -- restored with a new id): that one is adopted rather than a third made.
    WITH pair AS (
        SELECT DISTINCT ON (mi.sync_key) mi.sync_key, mi.target_id AS gone_id, du.target_id AS twin_id, du.list AS twin_list
          FROM sync.drift_items mi
          JOIN sync.drift_items du ON du.report_id = mi.report_id AND du.kind = 'duplicate' AND du.sync_key = mi.sync_key
         WHERE mi.report_id = rep.id AND mi.kind = 'missing'
         ORDER BY mi.sync_key, (du.list = mi.list) DESC, du.target_id
    ), adopt AS (
        UPDATE sync.drift_items i SET kind = 'adoptable', expected = to_jsonb(pair.gone_id)
          FROM pair
         WHERE i.report_id = rep.id AND i.kind = 'duplicate' AND i.sync_key = pair.sync_key
           AND i.target_id = pair.twin_id AND i.list = pair.twin_list
        RETURNING i.sync_key
    )
    DELETE FROM sync.drift_items i USING adopt
     WHERE i.report_id = rep.id AND i.kind = 'missing' AND i.sync_key = adopt.sync_key;

    WITH seen AS (
        SELECT m.list, count(*) AS seen,
               count(*) FILTER (WHERE m.ledger_target = m.target_id AND m.ledger_list = m.list AND NOT coalesce(m.fresh, false)) AS known
          FROM sync.drift_seen m WHERE m.report_id = rep.id GROUP BY m.list
    ), found AS (
        SELECT i.list,
               count(*) FILTER (WHERE i.kind = 'orphan') AS orphans,
               count(*) FILTER (WHERE i.kind = 'adoptable') AS adoptable,
               count(*) FILTER (WHERE i.kind = 'duplicate') AS duplicates,
               count(*) FILTER (WHERE i.kind = 'missing') AS missing,
               count(DISTINCT i.target_id) FILTER (WHERE i.kind = 'drifted') AS drifted
          FROM sync.drift_items i WHERE i.report_id = rep.id GROUP BY i.list
    )
    SELECT jsonb_object_agg(dl.list, jsonb_build_object(
               'seen', coalesce(seen.seen, 0), 'in_sync', coalesce(seen.known, 0) - coalesce(found.drifted, 0),
               'orphans', coalesce(found.orphans, 0), 'adoptable', coalesce(found.adoptable, 0),
               'duplicates', coalesce(found.duplicates, 0), 'missing', coalesce(found.missing, 0),
               'drifted', coalesce(found.drifted, 0)))
      INTO counts
      FROM sync.drift_lists dl LEFT JOIN seen ON seen.list = dl.list LEFT JOIN found ON found.list = dl.list
     WHERE dl.report_id = rep.id;
    UPDATE sync.drift_reports r
       SET status = 'done', finished_at = now(), per_list = counts,
           seen = (SELECT coalesce(sum((v->>'seen')::bigint), 0) FROM jsonb_each(counts) c(k, v)),
           in_sync = (SELECT coalesce(sum((v->>'in_sync')::bigint), 0) FROM jsonb_each(counts) c(k, v)),
           orphans = (SELECT coalesce(sum((v->>'orphans')::bigint), 0) FROM jsonb_each(counts) c(k, v)),
           adoptable = (SELECT coalesce(sum((v->>'adoptable')::bigint), 0) FROM jsonb_each(counts) c(k, v)),
           duplicates = (SELECT coalesce(sum((v->>'duplicates')::bigint), 0) FROM jsonb_each(counts) c(k, v)),
           missing = (SELECT coalesce(sum((v->>'missing')::bigint), 0) FROM jsonb_each(counts) c(k, v)),
           drifted = (SELECT coalesce(sum((v->>'drifted')::bigint), 0) FROM jsonb_each(counts) c(k, v))
     WHERE r.id = rep.id
    RETURNING * INTO rep;
    DELETE FROM sync.drift_seen s WHERE s.report_id = rep.id;
    UPDATE sync.runs x SET status = 'succeeded', finished_at = now(),
           requests = (SELECT coalesce(sum(dl.pages), 0) FROM sync.drift_lists dl WHERE dl.report_id = rep.id),
           detail = jsonb_build_object('report', rep.id, 'seen', rep.seen, 'in_sync', rep.in_sync, 'orphans', rep.orphans,
                                       'adoptable', rep.adoptable, 'duplicates', rep.duplicates, 'missing', rep.missing, 'drifted', rep.drifted)
     WHERE x.id = rep.run_id AND x.status = 'running';
    PERFORM sync._notify(jsonb_build_object('event', 'drift_done', 'definition', d.name, 'report', rep.id,
        'drifted', rep.drifted, 'missing', rep.missing, 'orphans', rep.orphans, 'duplicates', rep.duplicates, 'adoptable', rep.adoptable));
    IF rep.auto_reconcile IS NOT NULL THEN
        -- (a reconcile job: its failure is the job's, recorded in the report
        -- and sent as an event; the report and the worker's page stand)
        BEGIN
            PERFORM sync._reconcile(rep, rep.auto_reconcile, rep.requested_by);
        EXCEPTION WHEN OTHERS THEN
            UPDATE sync.drift_reports r SET error = left('reconcile failed: ' || SQLERRM, 2000) WHERE r.id = rep.id;
            PERFORM sync._notify(jsonb_build_object('event', 'job_failed', 'job', substr(rep.requested_by, 5), 'report', rep.id,
                                                    'error', left('reconcile failed: ' || SQLERRM, 500)));
        END;
    END IF;
END $$;

-- The latest drift report per definition.
CREATE VIEW drift AS
SELECT d.name AS definition, r.id AS report, r.status, r.requested_by, r.requested_at, r.finished_at,
       (SELECT count(*) FROM sync.drift_lists x WHERE x.report_id = r.id) AS lists,
       (SELECT count(*) FROM sync.drift_lists x WHERE x.report_id = r.id AND x.done) AS lists_read,
       (SELECT coalesce(sum(x.items), 0) FROM sync.drift_lists x WHERE x.report_id = r.id) AS items_read,
       r.in_sync, r.orphans, r.adoptable, r.duplicates, r.missing, r.drifted, r.per_list, r.error,
       r.reconciled_at, r.reconcile_run, r.reconcile_mode
  FROM sync.definitions d
  JOIN LATERAL (SELECT * FROM sync.drift_reports x WHERE x.definition_id = d.id ORDER BY x.id DESC LIMIT 1) r ON true;
COMMENT ON VIEW drift IS 'The latest drift check of each definition: progress while reading, then what it found (items: sync.drift_items).';
COMMENT ON COLUMN drift.definition IS 'The definition.';
COMMENT ON COLUMN drift.report IS 'The report id (sync.reconcile takes it; items: sync.drift_items).';
COMMENT ON COLUMN drift.status IS 'reading, done, failed or cancelled.';
COMMENT ON COLUMN drift.requested_by IS 'Who asked: a role, or job:<name>.';
COMMENT ON COLUMN drift.requested_at IS 'When it was asked for.';
COMMENT ON COLUMN drift.finished_at IS 'When it ended.';
COMMENT ON COLUMN drift.lists IS 'Lists to read.';
COMMENT ON COLUMN drift.lists_read IS 'Lists read to their last page.';
COMMENT ON COLUMN drift.items_read IS 'Items read so far.';
COMMENT ON COLUMN drift.in_sync IS 'Items holding what syncbridge last wrote.';
COMMENT ON COLUMN drift.orphans IS 'Items syncbridge does not know.';
COMMENT ON COLUMN drift.adoptable IS 'Items with the SyncKey of a row without an item (reconcile adopts them).';
COMMENT ON COLUMN drift.duplicates IS 'Items with the SyncKey of a row whose item is another one.';
COMMENT ON COLUMN drift.missing IS 'Items the ledger expects that are gone.';
COMMENT ON COLUMN drift.drifted IS 'Items with a field that differs from what syncbridge last wrote.';
COMMENT ON COLUMN drift.per_list IS 'The counts per list.';
COMMENT ON COLUMN drift.error IS 'Why the check failed.';
COMMENT ON COLUMN drift.reconciled_at IS 'When sync.reconcile staged its repairs.';
COMMENT ON COLUMN drift.reconcile_run IS 'The reconcile run.';
COMMENT ON COLUMN drift.reconcile_mode IS 'repair or mirror.';

-- ---------------------------------------------------------------------------
-- Reconciliation
-- ---------------------------------------------------------------------------

-- The ledger learns what the report found on the target; staging then
-- sends exactly what makes the target match the source: the missing
-- created again, the drifted fields written, the adopted items brought to
-- the row's values. mirror also deletes orphans (beyond duplicates of our
-- own items: only where the delete scope is all).
CREATE FUNCTION _reconcile(rep drift_reports, mode text, started_by text,
                           OUT run bigint, OUT added int, OUT updated int, OUT deleted int, OUT moved int, OUT adopted int)
LANGUAGE plpgsql AS $$
DECLARE
    d sync.definitions;
    keys text[];
    st record;
    why text;
BEGIN
    PERFORM sync._check_choice('reconcile mode', mode, ARRAY['repair', 'mirror']);
    SELECT * INTO d FROM sync.definitions x WHERE x.id = rep.definition_id;
    PERFORM pg_advisory_xact_lock(1937337955, d.id);
    why := CASE
        WHEN rep.status <> 'done' THEN format('its status is %s', rep.status)
        WHEN rep.reconciled_at IS NOT NULL THEN format('it was reconciled already (run %s)', rep.reconcile_run)
        WHEN EXISTS (SELECT 1 FROM sync.drift_reports x WHERE x.definition_id = d.id AND x.id > rep.id AND x.status IN ('reading', 'done'))
            THEN 'a newer drift check of the definition exists'
        WHEN d.revision <> rep.revision THEN 'the definition changed since (its mappings, shards or filter)'
        WHEN EXISTS (SELECT 1 FROM sync.drift_items i JOIN sync.pending_exports e ON e.definition_id = d.id AND e.sync_key = i.sync_key
                      WHERE i.report_id = rep.id AND e.status = 'executing')
            THEN 'an export of an item of the report is in flight'
        -- (only the report's items: a busy definition's other rows go on)
        WHEN EXISTS (SELECT 1 FROM sync.drift_items i JOIN sync.ledger l ON l.definition_id = d.id AND l.sync_key = i.sync_key
                      WHERE i.report_id = rep.id AND l.last_synced_at >= rep.requested_at)
          OR EXISTS (SELECT 1 FROM sync.drift_items i JOIN sync.pending_exports e ON e.definition_id = d.id AND e.sync_key = i.sync_key
                      WHERE i.report_id = rep.id AND e.status IN ('exported', 'confirmed') AND e.exported_at >= rep.requested_at)
            THEN 'syncbridge wrote items of the report to the target since the check began'
        END;
    IF why IS NOT NULL THEN
        RAISE EXCEPTION 'drift report % is stale', rep.id
            USING ERRCODE = 'object_not_in_prerequisite_state', DETAIL = why || '; nothing was staged.',
                  HINT = format('Check again: SELECT sync.check_drift(%L);', d.name);
    END IF;
    IF d.state NOT IN ('active', 'paused') THEN
        RAISE EXCEPTION 'definition % is %', quote_literal(d.name), d.state
            USING ERRCODE = 'object_not_in_prerequisite_state', DETAIL = 'Nothing was staged.', HINT = 'SELECT * FROM sync.status;';
    END IF;
    run := sync._own_run('reconcile', d.id, started_by);
    -- Gone: the ledger forgets them (staging creates them again). Two-way:
    -- an item deleted on the target is the pull's to decide (inbound_deletes):
    -- the next pull reads the lists whole and finds it.
    IF d.direction = 'push' THEN
        DELETE FROM sync.ledger l USING sync.drift_items i
         WHERE i.report_id = rep.id AND i.kind = 'missing' AND l.definition_id = d.id AND l.sync_key = i.sync_key AND l.target_id = i.target_id;
    ELSIF EXISTS (SELECT 1 FROM sync.drift_items i WHERE i.report_id = rep.id AND i.kind = 'missing') THEN
        PERFORM sync.reset_pull(d.name);
    END IF;
    -- Drifted: the ledger holds what the target holds (staging sends the row's).
    UPDATE sync.ledger l SET fields = l.fields || c.actual,
           hash = sha256(convert_to((l.fields || c.actual)::text, 'UTF8')), etag = coalesce(c.etag, l.etag)
      FROM (SELECT i.sync_key, i.target_id, max(i.etag) AS etag, jsonb_object_agg(i.field, coalesce(i.actual, 'null')) AS actual
              FROM sync.drift_items i WHERE i.report_id = rep.id AND i.kind = 'drifted' GROUP BY i.sync_key, i.target_id) c
     WHERE l.definition_id = d.id AND l.sync_key = c.sync_key AND l.target_id = c.target_id;
    -- Adoptable: joined (a delete never reaches them unless the scope is all);
    -- one that replaces a gone item takes its ledger entry over.
    DELETE FROM sync.ledger l USING sync.drift_items i
     WHERE i.report_id = rep.id AND i.kind = 'adoptable' AND i.expected IS NOT NULL
       AND l.definition_id = d.id AND l.sync_key = i.sync_key AND l.target_id = i.expected #>> '{}';
    WITH a AS (
        INSERT INTO sync.ledger AS l (definition_id, sync_key, list, target_id, etag, fields, hash, join_type, provenance)
        SELECT DISTINCT ON (i.sync_key) d.id, i.sync_key, i.list, i.target_id, i.etag, f.fields,
               sha256(convert_to(f.fields::text, 'UTF8')), 'joined', 'pull'
          FROM sync.drift_items i
         CROSS JOIN LATERAL (SELECT coalesce(jsonb_object_agg(x, sync._field_of(coalesce(i.actual, '{}'), x)), '{}') AS fields
                               FROM unnest(sync._drift_fields(d.id)) x) f
         WHERE i.report_id = rep.id AND i.kind = 'adoptable'
         ORDER BY i.sync_key, i.target_id
        ON CONFLICT (definition_id, sync_key) DO UPDATE
           SET target_id = EXCLUDED.target_id, etag = EXCLUDED.etag, fields = EXCLUDED.fields, hash = EXCLUDED.hash,
               join_type = 'joined', provenance = 'pull', last_synced_at = now()
         WHERE l.target_id IS NULL
        RETURNING 1)
    SELECT count(*) INTO adopted FROM a;
    -- Orphans (mirror): deleted where the delete scope allows it. Their
    -- exports have no key (no row owns them), never a row's.
    deleted := 0;
    IF mode = 'mirror' THEN
        WITH o AS (
            INSERT INTO sync.pending_exports (definition_id, sync_key, op, list, target_id, etag, payload, previous, status, run_id)
            SELECT d.id, NULL, 'delete', i.list, i.target_id, i.etag, '{}', coalesce(i.actual, '{}'),
                   CASE WHEN d.approval IN ('all', 'deletes') THEN 'awaiting_approval' ELSE 'pending' END, run
              FROM sync.drift_items i
             WHERE i.report_id = rep.id
               AND ((i.kind = 'orphan' AND d.delete_scope = 'all')
                    OR (i.kind = 'duplicate' AND d.delete_scope IN ('all', 'provisioned')))
               AND NOT EXISTS (SELECT 1 FROM sync.pending_exports e
                                WHERE e.definition_id = d.id AND e.sync_key IS NULL AND e.op = 'delete' AND e.list = i.list
                                  AND e.target_id = i.target_id AND e.status IN ('pending', 'awaiting_approval', 'failed', 'error', 'executing'))
            RETURNING 1)
        SELECT count(*) INTO deleted FROM o;
    END IF;
    keys := ARRAY(SELECT DISTINCT i.sync_key FROM sync.drift_items i
                   WHERE i.report_id = rep.id AND i.sync_key IS NOT NULL
                     AND (i.kind IN ('drifted', 'adoptable') OR (i.kind = 'missing' AND d.direction = 'push')));
    added := 0; updated := 0; moved := 0;
    IF cardinality(keys) > 0 THEN
        SELECT * INTO st FROM sync._stage_def(d.id, sync._key_objects(d.id, keys), NULL, run);
        added := st.added; updated := st.updated; moved := st.moved; deleted := deleted + st.deleted;
        -- An item missing from a read may only be late in the list's view
        -- of itself: its creation looks its SyncKey up first (no twin).
        UPDATE sync.pending_exports e SET verify = true
          FROM sync.drift_items i
         WHERE i.report_id = rep.id AND i.kind = 'missing' AND e.definition_id = d.id AND e.sync_key = i.sync_key
           AND e.op IN ('add', 'move') AND e.status IN ('pending', 'awaiting_approval');
    END IF;
    UPDATE sync.drift_reports x SET reconciled_at = now(), reconcile_run = run, reconcile_mode = mode WHERE x.id = rep.id;
    UPDATE sync.runs x SET staged = added + updated + deleted + moved,
           detail = jsonb_build_object('report', rep.id, 'mode', mode, 'added', added, 'updated', updated,
                                       'deleted', deleted, 'moved', moved, 'adopted', adopted)
     WHERE x.id = run;
END $$;

CREATE FUNCTION reconcile(report bigint, mode text DEFAULT 'repair',
                          OUT run bigint, OUT added int, OUT updated int, OUT deleted int, OUT moved int, OUT adopted int)
LANGUAGE plpgsql AS $$
DECLARE
    rep sync.drift_reports;
BEGIN
    PERFORM sync._check_choice('reconcile mode', mode, ARRAY['repair', 'mirror']);
    SELECT * INTO rep FROM sync.drift_reports x WHERE x.id = report FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'drift report % does not exist', coalesce(report::text, 'NULL')
            USING ERRCODE = 'undefined_object', DETAIL = 'No drift check has that id.', HINT = 'SELECT * FROM sync.drift;';
    END IF;
    SELECT * INTO run, added, updated, deleted, moved, adopted FROM sync._reconcile(rep, mode, session_user::text);
END $$;
COMMENT ON FUNCTION reconcile(bigint, text) IS 'Stages exactly the exports that make the target match the source again, from a drift report: the missing created again, drifted fields rewritten, adoptable items adopted (joined) and brought to the row''s values; mode mirror also deletes duplicates of syncbridge''s items and, where the delete scope is all, orphans. Approvals apply as to any export; sync.plan shows them first. A stale report (reconciled, superseded, older than the definition, or followed by writes) is refused.';

-- ---------------------------------------------------------------------------
-- Scheduled jobs
-- ---------------------------------------------------------------------------

-- When a cron expression fires next after `after`, read in the IANA time
-- zone `tz` (the evaluation is Rust's: sync._cron_next_epoch). Raises 22023
-- for an expression that does not parse.
CREATE FUNCTION _cron_next(cron text, tz text, after timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE AS $$
    SELECT to_timestamp(sync._cron_next_epoch(cron, tz, floor(extract(epoch FROM after))::bigint))
$$;

CREATE FUNCTION _check_time_zone(tz text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF tz IS NULL OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_timezone_names n WHERE n.name = tz) THEN
        RAISE EXCEPTION 'unknown time zone %', coalesce(to_json(left(tz, 100))::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A schedule''s time zone is an IANA name PostgreSQL knows (pg_timezone_names), such as Europe/Paris.',
                  HINT = format('SELECT name FROM pg_timezone_names WHERE name ILIKE %L;', '%' || left(coalesce(tz, ''), 40) || '%');
    END IF;
    RETURN tz;
END $$;

CREATE FUNCTION schedule(name text, cron text, job text, definition text DEFAULT NULL, time_zone text DEFAULT 'UTC',
                         options jsonb DEFAULT '{}') RETURNS timestamptz
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    def_id int;
    next_at timestamptz;
BEGIN
    PERFORM sync._check_name('job', name);
    PERFORM sync._check_choice('job', job, ARRAY['drift', 'reconcile', 'restage', 'pull', 'purge']);
    PERFORM sync._check_time_zone(time_zone);
    next_at := sync._cron_next(cron, time_zone, now());
    IF job = 'purge' THEN
        IF definition IS NOT NULL THEN
            RAISE EXCEPTION 'a purge job takes no definition'
                USING ERRCODE = 'invalid_parameter_value', DETAIL = 'sync.purge works on every definition.', HINT = 'Leave definition out.';
        END IF;
    ELSE
        IF definition IS NULL THEN
            RAISE EXCEPTION 'a % job needs a definition', job
                USING ERRCODE = 'invalid_parameter_value', DETAIL = 'It works on one definition.', HINT = 'Pass definition => ''...''.';
        END IF;
        def_id := (sync._def(definition)).id;
        IF job = 'pull' AND (SELECT x.direction FROM sync.definitions x WHERE x.id = def_id) = 'push' THEN
            RAISE EXCEPTION 'definition % does not pull', quote_literal(definition)
                USING ERRCODE = 'invalid_parameter_value', DETAIL = 'Its direction is push.', HINT = 'Schedule a drift check instead.';
        END IF;
    END IF;
    IF options IS NULL OR jsonb_typeof(options) <> 'object'
       OR EXISTS (SELECT 1 FROM jsonb_object_keys(options) k WHERE k <> 'mode')
       OR (options ? 'mode' AND (job <> 'reconcile' OR NOT options ->> 'mode' = ANY (ARRAY['repair', 'mirror']))) THEN
        RAISE EXCEPTION 'invalid job options %', left(coalesce(options::text, 'NULL'), 200)
            USING ERRCODE = 'invalid_parameter_value', DETAIL = 'The only option is mode, for reconcile jobs: repair (the default) or mirror.',
                  HINT = 'options => ''{"mode": "mirror"}''';
    END IF;
    INSERT INTO sync.schedules AS s (name, cron, time_zone, job, definition_id, options, next_run_at)
    VALUES (name, cron, time_zone, job, def_id, options, next_at)
    ON CONFLICT ON CONSTRAINT schedules_name_key DO UPDATE
       SET cron = EXCLUDED.cron, time_zone = EXCLUDED.time_zone, job = EXCLUDED.job, definition_id = EXCLUDED.definition_id,
           options = EXCLUDED.options, next_run_at = EXCLUDED.next_run_at, created_by = session_user, created_at = now();
    RETURN next_at;
END $$;
COMMENT ON FUNCTION schedule(text, text, text, text, text, jsonb) IS 'Schedules a job (drift, reconcile, restage, pull, purge) with a five-field cron expression read in an IANA time zone (default UTC); a job of the same name is replaced. Returns its next run. Due jobs are run by exactly one worker (sync.run_jobs).';

CREATE FUNCTION _schedule(job_name text) RETURNS schedules
LANGUAGE plpgsql STABLE AS $$
DECLARE
    s sync.schedules;
BEGIN
    SELECT * INTO s FROM sync.schedules x WHERE x.name = job_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'job % does not exist', coalesce(quote_literal(job_name), 'NULL')
            USING ERRCODE = 'undefined_object', DETAIL = 'No scheduled job has that name.', HINT = 'SELECT * FROM sync.jobs;';
    END IF;
    RETURN s;
END $$;

CREATE FUNCTION unschedule(name text) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM sync.schedules x WHERE x.id = (sync._schedule(unschedule.name)).id;
    RETURN 'unscheduled';
END $$;
COMMENT ON FUNCTION unschedule(text) IS 'Deletes a scheduled job (its runs stay in sync.runs).';

CREATE FUNCTION pause_job(name text, paused boolean DEFAULT true) RETURNS timestamptz
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    s sync.schedules := sync._schedule(name);
BEGIN
    UPDATE sync.schedules x
       SET paused = pause_job.paused,
           -- resumed: from now on (what it missed while paused is not run)
           next_run_at = CASE WHEN pause_job.paused OR NOT x.paused THEN x.next_run_at ELSE sync._cron_next(x.cron, x.time_zone, now()) END
     WHERE x.id = s.id
    RETURNING CASE WHEN x.paused THEN NULL ELSE x.next_run_at END INTO s.next_run_at;
    RETURN s.next_run_at;
END $$;
COMMENT ON FUNCTION pause_job(text, boolean) IS 'Pauses a scheduled job (paused => false resumes it from its next occurrence after now). Returns its next run (NULL: paused).';

CREATE VIEW jobs AS
SELECT s.name, s.job, d.name AS definition, s.cron, s.time_zone, s.options, s.paused,
       CASE WHEN NOT s.paused THEN s.next_run_at END AS next_run,
       CASE WHEN NOT s.paused THEN (s.next_run_at AT TIME ZONE s.time_zone) END AS next_run_local,
       s.last_run_at, s.last_scheduled_for, s.last_status, s.last_error, s.last_run_id, s.runs, s.failures, s.created_by
  FROM sync.schedules s LEFT JOIN sync.definitions d ON d.id = s.definition_id
 ORDER BY s.name;
COMMENT ON VIEW jobs IS 'Scheduled jobs with their next run (in UTC and in the job''s time zone) and their last run.';
COMMENT ON COLUMN jobs.name IS 'The job''s name.';
COMMENT ON COLUMN jobs.job IS 'drift, reconcile, restage, pull or purge.';
COMMENT ON COLUMN jobs.definition IS 'The definition it works on (none for purge).';
COMMENT ON COLUMN jobs.cron IS 'Its cron expression.';
COMMENT ON COLUMN jobs.time_zone IS 'The time zone the expression is read in.';
COMMENT ON COLUMN jobs.options IS 'Job options (reconcile: mode).';
COMMENT ON COLUMN jobs.paused IS 'Paused (sync.pause_job).';
COMMENT ON COLUMN jobs.next_run IS 'The next occurrence (NULL while paused).';
COMMENT ON COLUMN jobs.next_run_local IS 'The same, as wall-clock time in the job''s time zone.';
COMMENT ON COLUMN jobs.last_run_at IS 'When it last ran.';
COMMENT ON COLUMN jobs.last_scheduled_for IS 'The occurrence it last ran for.';
COMMENT ON COLUMN jobs.last_status IS 'succeeded or failed.';
COMMENT ON COLUMN jobs.last_error IS 'Why the last run failed.';
COMMENT ON COLUMN jobs.last_run_id IS 'The last run (sync.runs).';
COMMENT ON COLUMN jobs.runs IS 'Runs so far.';
COMMENT ON COLUMN jobs.failures IS 'Failed runs so far.';
COMMENT ON COLUMN jobs.created_by IS 'Who scheduled it.';

-- One job's action (in the caller's transaction).
CREATE FUNCTION _run_job(s schedules) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    d sync.definitions;
    report bigint;
    n bigint;
    p record;
BEGIN
    IF s.definition_id IS NOT NULL THEN
        SELECT * INTO d FROM sync.definitions x WHERE x.id = s.definition_id;
    END IF;
    CASE s.job
    WHEN 'drift', 'reconcile' THEN
        IF EXISTS (SELECT 1 FROM sync.drift_reports x WHERE x.definition_id = d.id AND x.status = 'reading') THEN
            RETURN jsonb_build_object('skipped', 'a drift check of the definition is still reading');
        END IF;
        report := sync._check_drift(d, 'job:' || s.name,
                                    CASE WHEN s.job = 'reconcile' THEN coalesce(s.options ->> 'mode', 'repair') END);
        RETURN jsonb_build_object('report', report);
    WHEN 'restage' THEN
        IF d.state NOT IN ('active', 'paused') THEN
            RAISE EXCEPTION 'definition % is %', quote_literal(d.name), d.state
                USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'SELECT * FROM sync.status;';
        END IF;
        -- A backfill again: every row compared with the ledger, what
        -- differs staged (not over one that is running or due).
        PERFORM pg_advisory_xact_lock(1937337955, d.id);
        SELECT * INTO d FROM sync.definitions x WHERE x.id = s.definition_id;
        IF d.backfill <> 'done' THEN
            RETURN jsonb_build_object('skipped', format('a backfill of the definition is %s', d.backfill));
        END IF;
        PERFORM sync.reset_cursor(d.name, 'beginning');
        RETURN jsonb_build_object('restage', d.name);
    WHEN 'pull' THEN
        n := sync.pull_now(d.name);
        RETURN jsonb_build_object('lists', n);
    WHEN 'purge' THEN
        SELECT * INTO p FROM sync.purge();
        RETURN jsonb_build_object('exports', p.exports, 'runs', p.runs, 'abandoned', p.abandoned);
    END CASE;
END $$;

CREATE FUNCTION run_jobs(worker text DEFAULT NULL) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    s sync.schedules;
    run bigint;
    result jsonb;
    err text;
    state text;
    next_at timestamptz;
    n int := 0;
BEGIN
    PERFORM sync._check_worker_name(worker);
    -- Each due job is locked by one worker for the length of its run (SKIP
    -- LOCKED: the others pass it by); its occurrence is recorded once
    -- (runs_job_occurrence_idx), and the next computed from now: runs
    -- missed while no worker was up are run once.
    FOR s IN SELECT * FROM sync.schedules x WHERE NOT x.paused AND x.next_run_at <= now()
              ORDER BY x.next_run_at, x.id FOR UPDATE SKIP LOCKED LOOP
        INSERT INTO sync.runs (definition_id, kind, worker, started_by, job_id, scheduled_for)
        VALUES (s.definition_id, 'job', worker, 'job:' || s.name, s.id, s.next_run_at)
        ON CONFLICT (job_id, scheduled_for) WHERE job_id IS NOT NULL DO NOTHING
        RETURNING id INTO run;
        IF run IS NOT NULL THEN
            BEGIN
                result := sync._run_job(s);
                err := NULL;
            EXCEPTION WHEN OTHERS THEN
                GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE;
                err := format('%s (SQLSTATE %s)', SQLERRM, state);
                result := NULL;
            END;
            UPDATE sync.runs x SET status = CASE WHEN err IS NULL THEN 'succeeded' ELSE 'failed' END, finished_at = now(),
                   error = left(err, 2000), detail = result
             WHERE x.id = run;
            IF err IS NOT NULL THEN
                PERFORM sync._notify(jsonb_build_object('event', 'job_failed', 'job', s.name, 'run', run, 'error', left(err, 500)));
            END IF;
            n := n + 1;
        END IF;
        BEGIN
            next_at := sync._cron_next(s.cron, s.time_zone, greatest(now(), s.next_run_at));
        EXCEPTION WHEN OTHERS THEN
            -- (its time zone gone from the database the evaluator knows, ...)
            next_at := NULL;
            err := left('its next run cannot be computed: ' || SQLERRM, 2000);
            PERFORM sync._notify(jsonb_build_object('event', 'job_failed', 'job', s.name, 'run', run, 'error', left(err, 500)));
        END;
        UPDATE sync.schedules x
           SET next_run_at = next_at, paused = x.paused OR next_at IS NULL,
               last_run_at = CASE WHEN run IS NOT NULL THEN now() ELSE x.last_run_at END,
               last_scheduled_for = s.next_run_at,
               last_status = CASE WHEN run IS NULL THEN x.last_status WHEN err IS NULL THEN 'succeeded' ELSE 'failed' END,
               last_error = CASE WHEN run IS NULL AND next_at IS NOT NULL THEN x.last_error ELSE err END,
               last_run_id = coalesce(run, x.last_run_id),
               runs = x.runs + (run IS NOT NULL)::int,
               failures = x.failures + (run IS NOT NULL AND err IS NOT NULL)::int
         WHERE x.id = s.id;
        run := NULL;
        err := NULL;
    END LOOP;
    RETURN n;
END $$;
COMMENT ON FUNCTION run_jobs(text) IS 'Runs the scheduled jobs that are due, each by exactly one caller (the workers call it): records each occurrence as a run of kind job, computes the next one from now (a run missed while no worker was up is run once), and on failure sends a job_failed event on the channel syncbridge_events.';

CREATE FUNCTION jobs_due() RETURNS double precision
LANGUAGE sql STABLE AS $$
    SELECT greatest(0, extract(epoch FROM min(s.next_run_at) - now()))::float8 FROM sync.schedules s WHERE NOT s.paused
$$;
COMMENT ON FUNCTION jobs_due() IS 'Seconds until the next scheduled job is due (0: now; NULL: none).';

-- Schedules are configuration: part of a dump.
SELECT pg_catalog.pg_extension_config_dump('schedules', '');
