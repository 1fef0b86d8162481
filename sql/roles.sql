-- syncbridge: privileges, applied last (after every function exists).
--
--   syncbridge_admin   configures and operates: every sync.* function, all
--                      configuration and state tables.
--   syncbridge_worker  what the worker needs: read configuration, stage,
--                      claim, complete, checkpoint, runs. Grant SELECT on the
--                      source tables and give the login role REPLICATION
--                      (a role attribute, not inherited):
--                        CREATE ROLE sb_worker LOGIN REPLICATION IN ROLE syncbridge_worker;
--                        GRANT SELECT ON hr.employees TO sb_worker;
-- Roles are cluster-wide: created once, kept when the extension is dropped.

DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['syncbridge_admin', 'syncbridge_worker'] LOOP
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

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA @extschema@ FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA @extschema@ FROM PUBLIC;
GRANT USAGE ON SCHEMA @extschema@ TO syncbridge_admin, syncbridge_worker;

-- Read-only for everyone with the schema: the version and the settings.
GRANT EXECUTE ON FUNCTION @extschema@.version() TO PUBLIC;

-- admin: everything.
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA @extschema@ TO syncbridge_admin;
GRANT SELECT, INSERT, UPDATE, DELETE ON targets, definitions, field_maps, shards, target_lists,
      ledger, pending_exports, cursors, runs, conflicts TO syncbridge_admin;
GRANT SELECT ON target_kinds, compiled, status TO syncbridge_admin;

-- worker: read the configuration, write the state.
GRANT SELECT ON target_kinds, targets, definitions, field_maps, shards, compiled, status TO syncbridge_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON ledger, pending_exports, cursors, runs, target_lists, conflicts TO syncbridge_worker;
GRANT UPDATE (state, state_reason, updated_at, backfill) ON definitions TO syncbridge_worker;
GRANT UPDATE (status, status_detail, updated_at) ON targets TO syncbridge_worker;
GRANT EXECUTE ON FUNCTION
    @extschema@.stage(regclass, jsonb, pg_lsn, text, bigint),
    @extschema@.stage_truncate(regclass, pg_lsn),
    @extschema@.checkpoint(pg_lsn, text),
    @extschema@.backfill_step(text, int, bigint, jsonb, jsonb, jsonb),
    @extschema@.backfill_keys(text, jsonb, int),
    @extschema@._backfill_check_chunk(int),
    @extschema@.backfills_pending(),
    @extschema@._backfill_keyset_sql(int),
    @extschema@.claim(text, int, int, text, bigint),
    @extschema@.complete(jsonb, text),
    @extschema@.export_backlog(text, double precision),
    @extschema@.target_list_ids(text),
    @extschema@.purge(interval),
    @extschema@._reap_runs(),
    @extschema@._run_lock_key(bigint),
    @extschema@._run_lock_held(bigint),
    @extschema@.start_run(text, text, text),
    @extschema@.finish_run(bigint, text, text),
    @extschema@.settings(),
    @extschema@._setting(text),
    @extschema@._stage_def(int, jsonb, pg_lsn, bigint),
    @extschema@._stage_sql(),
    @extschema@._compile(int),
    @extschema@._rebase(int, text[]),
    @extschema@._key_objects(int, text[]),
    @extschema@._recover_expired(text),
    @extschema@._backoff(int),
    @extschema@._def(text),
    @extschema@._check_choice(text, text, text[]),
    @extschema@._check_expression(text, text),
    @extschema@._json_expr(text, regtype),
    @extschema@._field_kind(regtype),
    @extschema@._fingerprint(regclass)
  TO syncbridge_worker;
