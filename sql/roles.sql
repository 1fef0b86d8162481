-- syncbridge: privileges, applied last (after every object exists). The
-- threat model is SECURITY.md's; in short:
--
--   syncbridge_admin   configures and operates through the sync.* functions
--                      (create_target, define, map, plan, approve, ...);
--                      reads every table; writes none directly.
--   syncbridge_worker  what the worker needs: stage, claim, complete, the
--                      pulls (pull_claim, pull_page, apply_imports, ...),
--                      drift reads (drift_claim, drift_page, drift_failed),
--                      scheduled jobs (run_jobs, jobs_due), the slot's
--                      check and progress (slot_check, slot_progress),
--                      checkpoint, runs, report_target_status; reads every
--                      table; writes none directly. Grant the login role
--                      REPLICATION (a role attribute, not inherited):
--                        CREATE ROLE sb_worker LOGIN REPLICATION IN ROLE syncbridge_worker;
--   syncbridge_owner   (nobody logs in as it, nobody is a member) owns the
--                      tables and the functions; the functions run as it
--                      (SECURITY DEFINER, search_path pinned), so every
--                      write goes through their checks. It has no right on
--                      any other table.
--   syncbridge_writer  (nobody logs in as it, nobody is a member) writes
--                      what comes back from targets (two-way sync) into
--                      the source tables: it owns sync._source_write and may
--                      SELECT, INSERT, UPDATE and DELETE the tables of the
--                      definitions that bring values back (granted once the
--                      definer was checked for the same rights), nothing else.
--   syncbridge_reader  (nobody logs in as it, nobody is a member) evaluates
--                      row filters, shard predicates and transforms: it owns
--                      sync._mapped_rows_all / _mapped_rows_by_key /
--                      _keys_of / _source_keys / _source_range /
--                      _source_bounds and may SELECT the definitions' source
--                      tables (granted and revoked by syncbridge as
--                      definitions come and go), nothing else.
--
-- Only sync._publication_refresh and sync._reader_grants stay the installing
-- superuser's: they alter the publication and grant the reader its SELECTs,
-- and check the session user's rights first.
-- Roles are cluster-wide: created once, kept when the extension is dropped.

DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['syncbridge_admin', 'syncbridge_worker', 'syncbridge_owner', 'syncbridge_reader', 'syncbridge_writer'] LOOP
        -- Two databases creating the extension at once race here: the loser
        -- finds the role made by the winner.
        BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r);
            END IF;
        EXCEPTION WHEN unique_violation OR duplicate_object THEN NULL;
        END;
    END LOOP;
END $$;

-- Ownership and rights of execution.
DO $$
DECLARE
    o record;
BEGIN
    FOR o IN SELECT c.oid::regclass AS rel FROM pg_class c
              WHERE c.relnamespace = '@extschema@'::regnamespace AND c.relkind IN ('r', 'p', 'v') LOOP
        EXECUTE format('ALTER TABLE %s OWNER TO syncbridge_owner', o.rel);
    END LOOP;
    FOR o IN SELECT p.oid::regprocedure AS fn, p.proname
               FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
              WHERE p.pronamespace = '@extschema@'::regnamespace AND l.lanname IN ('plpgsql', 'sql') LOOP
        IF o.proname = 'define' THEN
            -- Runs as its caller, in the caller's search_path: it only
            -- resolves the table name, then calls sync._define.
            EXECUTE format('ALTER FUNCTION %s OWNER TO syncbridge_owner', o.fn);
            CONTINUE;
        END IF;
        EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, pg_temp', o.fn);
        EXECUTE format('ALTER FUNCTION %s SET standard_conforming_strings = on', o.fn);
        CONTINUE WHEN o.proname IN ('_publication_refresh', '_reader_grants');
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER', o.fn);
        EXECUTE format('ALTER FUNCTION %s OWNER TO %s', o.fn,
                       CASE WHEN o.proname IN ('_mapped_rows_all', '_mapped_rows_by_key', '_keys_of', '_source_keys', '_source_range', '_source_bounds')
                            THEN 'syncbridge_reader'
                            WHEN o.proname = '_source_write' THEN 'syncbridge_writer'
                            ELSE 'syncbridge_owner' END);
    END LOOP;
END $$;

-- From nothing (this file also runs in upgrades, where older grants exist).
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA @extschema@ FROM PUBLIC, syncbridge_admin, syncbridge_worker, syncbridge_reader, syncbridge_writer;
REVOKE ALL ON ALL TABLES IN SCHEMA @extschema@ FROM PUBLIC, syncbridge_admin, syncbridge_worker, syncbridge_reader, syncbridge_writer;
GRANT USAGE ON SCHEMA @extschema@ TO syncbridge_admin, syncbridge_worker, syncbridge_owner, syncbridge_reader, syncbridge_writer;

-- The version, for whoever may use the schema.
GRANT EXECUTE ON FUNCTION @extschema@.version() TO PUBLIC;

-- owner: every function (its own, the checks written in Rust, the reader's
-- and the publication's).
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA @extschema@ TO syncbridge_owner;

-- reader: compiling a definition (as syncbridge_owner), and reading keys
-- (its own function, which _mapped_rows_by_key calls), nothing else of ours.
GRANT EXECUTE ON FUNCTION @extschema@._compile(int), @extschema@._backfill_keyset_sql(int),
    @extschema@._backfill_bounds_sql(int), @extschema@._keys_of(int, jsonb) TO syncbridge_reader;

-- writer: compiling a definition, and the conversions its statements call.
GRANT EXECUTE ON FUNCTION @extschema@._compile(int), @extschema@._from_json_expr(text, regtype, text, text),
    @extschema@._whole(text) TO syncbridge_writer;
GRANT SELECT ON @extschema@.definitions, @extschema@.targets TO syncbridge_writer;

-- admin: the functions of the SQL surface (and _define, which define calls
-- as its caller), read-only access to every table.
DO $$
DECLARE
    f record;
BEGIN
    FOR f IN SELECT p.oid::regprocedure AS fn FROM pg_proc p
              WHERE p.pronamespace = '@extschema@'::regnamespace
                AND (left(p.proname, 1) <> '_' OR p.proname = '_define') LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO syncbridge_admin', f.fn);
    END LOOP;
END $$;
GRANT SELECT ON ALL TABLES IN SCHEMA @extschema@ TO syncbridge_admin, syncbridge_worker;
-- (sync.status and sync.slot_health read a setting and the slot's state; a
-- view's functions run as its reader)
GRANT EXECUTE ON FUNCTION @extschema@._setting(text), @extschema@._slot_state(text) TO syncbridge_admin;

-- worker: what it calls.
GRANT EXECUTE ON FUNCTION
    @extschema@.stage(regclass, jsonb, pg_lsn, text, bigint),
    @extschema@.stage_truncate(regclass, pg_lsn),
    @extschema@.checkpoint(pg_lsn, text),
    @extschema@.backfill_step(text, int, bigint, jsonb, jsonb, jsonb),
    @extschema@.backfill_keys(text, jsonb, int),
    @extschema@.backfills_pending(),
    @extschema@.claim(text, int, int, text, bigint),
    @extschema@.complete(jsonb, text),
    @extschema@.extend_leases(bigint[], text, int),
    @extschema@.export_backlog(text, double precision),
    @extschema@.target_list_ids(text),
    @extschema@.worker_targets(text[]),
    @extschema@.slot_cursor(text),
    @extschema@.report_target_status(text, text, text),
    @extschema@.budget_take(text, double precision, double precision),
    @extschema@.purge(interval),
    @extschema@.start_run(text, text, text),
    @extschema@.finish_run(bigint, text, text, jsonb),
    @extschema@.settings(),
    @extschema@._setting(text),
    @extschema@.pull_claim(text, int, int, text, boolean),
    @extschema@.pull_page(text, text, bigint, jsonb, text, boolean, text),
    @extschema@.pull_failed(text, text, bigint, text, text, boolean, double precision, text),
    @extschema@.pull_due(text),
    @extschema@.apply_imports(text, int, text),
    @extschema@.drift_claim(text, int, int, text),
    @extschema@.drift_due(text),
    @extschema@.drift_page(bigint, text, bigint, jsonb, text, boolean, text),
    @extschema@.drift_failed(bigint, text, bigint, text, text, boolean, double precision, text),
    @extschema@.run_jobs(text),
    @extschema@.slot_check(text),
    @extschema@.slot_progress(text, pg_lsn),
    @extschema@.standbys_have(),
    @extschema@._standby_snapshot(),
    @extschema@._nudge_slot(text),
    @extschema@._log_standby_snapshot(),
    @extschema@.jobs_due(),
    @extschema@.queue_depths(),
    @extschema@._slot_state(text)
  TO syncbridge_worker;

-- The standby snapshot: on 16 and later sync._standby_snapshot() (run
-- as syncbridge_owner, callable by the worker only) calls the server's
-- pg_log_standby_snapshot(), which only superusers may call unless granted.
DO $$
BEGIN
    IF current_setting('server_version_num')::int >= 160000 THEN
        EXECUTE 'GRANT EXECUTE ON FUNCTION pg_catalog.pg_log_standby_snapshot() TO syncbridge_owner';
    END IF;
END $$;

-- Two-way sync: the worker applies inbound changes in sessions under the
-- replication origin syncbridge (the stream skips what such sessions
-- commit). The origin is cluster-wide, made once; the worker may set up and
-- reset its session's origin, nothing else of replication origins.
DO $$
BEGIN
    IF pg_catalog.pg_replication_origin_oid('syncbridge') IS NULL THEN
        PERFORM pg_catalog.pg_replication_origin_create('syncbridge');
    END IF;
EXCEPTION WHEN unique_violation OR duplicate_object THEN NULL;
END $$;
-- Only through sync._origin_setup / _origin_reset (the origin syncbridge,
-- no other: a subscription's origin stays out of the worker's reach).
GRANT EXECUTE ON FUNCTION pg_catalog.pg_replication_origin_session_setup(text),
    pg_catalog.pg_replication_origin_session_reset() TO syncbridge_owner;
GRANT EXECUTE ON FUNCTION @extschema@._origin_setup(), @extschema@._origin_reset() TO syncbridge_worker;
