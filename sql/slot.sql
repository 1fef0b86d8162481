-- syncbridge: the replication slot's health. A slot that silently stalled
-- holds WAL on the primary; one that was lost, invalidated, or dropped and
-- created again lost changes: syncbridge never resumes from it as if nothing
-- happened.
--
-- What the worker has confirmed is known from two records: sync.cursors
-- (kind slot: the LSN up to which everything is durably staged, written with
-- each staging transaction) and sync.slot_progress, where the worker records
-- a position before it confirms it without staging anything (WAL that
-- touches no watched table). The record is a logged row, so that it survives
-- a crash of the server and reaches a physical standby (whose failover copy
-- of the slot must not look ahead of it after a promotion); the worker makes
-- it only when the position moved by more than the record itself writes
-- (slot_check's record_margin), and the slot may be that much ahead. The
-- slot is never further ahead of the greater of the two unless someone else
-- moved it, or dropped and created it again.
--
-- On PostgreSQL 17 and later the slot is a failover slot (setting
-- sync.failover_slot): a physical standby with sync_replication_slots keeps
-- a copy that a promotion makes usable. With synchronized_standby_slots set
-- on the primary, the server sends no change the standbys lack, and the
-- worker confirms no position whose records (staging, progress) the
-- standbys lack (sync.standbys_have): after a promotion, the copy of the
-- slot is never ahead of the records on the new primary.

CREATE TABLE slot_progress (
    slot        text PRIMARY KEY,
    lsn         pg_lsn NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE slot_progress IS 'The last position the worker confirmed to each slot without staging anything, recorded before the confirmation. Written by sync.slot_progress only.';
COMMENT ON COLUMN slot_progress.slot IS 'The replication slot.';
COMMENT ON COLUMN slot_progress.lsn IS 'The position, recorded before the worker confirmed it.';
COMMENT ON COLUMN slot_progress.updated_at IS 'When it was recorded.';

-- A slot name as the worker passes it (1 to 63 lower-case letters, digits
-- and underscores), or 42602.
CREATE FUNCTION _check_slot_name(slot text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF slot IS NULL OR slot !~ '^[a-z0-9_]{1,63}$' THEN
        RAISE EXCEPTION 'invalid slot name %', to_json(left(slot, 100))
            USING ERRCODE = 'invalid_name', DETAIL = 'Replication slot names have 1 to 63 lower-case letters, digits and underscores.',
                  HINT = 'Pass the slot the worker reads.';
    END IF;
END $$;

-- The worker records a position before it confirms it.
CREATE FUNCTION slot_progress(slot text, lsn pg_lsn) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM sync._check_slot_name(slot);
    INSERT INTO sync.slot_progress AS p (slot, lsn) VALUES (slot_progress.slot, slot_progress.lsn)
    ON CONFLICT ON CONSTRAINT slot_progress_pkey DO UPDATE SET lsn = EXCLUDED.lsn, updated_at = now() WHERE p.lsn < EXCLUDED.lsn;
END $$;
COMMENT ON FUNCTION slot_progress(text, pg_lsn) IS 'The worker records a position it is about to confirm to the slot without staging (never moves back).';

-- The slot, its records and what they say, in one row.
CREATE FUNCTION _slot_state(slot_name text,
    OUT slot_exists boolean, OUT active boolean, OUT active_pid int, OUT wal_status text, OUT safe_wal_size bigint,
    OUT restart_lsn pg_lsn, OUT confirmed_lsn pg_lsn, OUT staged_lsn pg_lsn, OUT recorded_lsn pg_lsn,
    OUT moved_at timestamptz, OUT wal_held_bytes bigint, OUT confirmed_lag_bytes bigint,
    OUT failover boolean, OUT synced boolean)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    s record;
BEGIN
    -- (failover and synced exist from PostgreSQL 17 on: read by name)
    SELECT x.active, x.active_pid, x.wal_status, x.safe_wal_size, x.restart_lsn, x.confirmed_flush_lsn,
           (to_jsonb(x) ->> 'failover')::boolean AS failover, (to_jsonb(x) ->> 'synced')::boolean AS synced
      INTO s FROM pg_catalog.pg_replication_slots x WHERE x.slot_name = _slot_state.slot_name;
    slot_exists := FOUND;
    active := s.active; active_pid := s.active_pid; wal_status := s.wal_status; safe_wal_size := s.safe_wal_size;
    restart_lsn := s.restart_lsn; confirmed_lsn := s.confirmed_flush_lsn;
    failover := s.failover; synced := s.synced;
    SELECT c.lsn, c.updated_at INTO staged_lsn, moved_at FROM sync.cursors c WHERE c.kind = 'slot' AND c.scope = _slot_state.slot_name;
    SELECT p.lsn, greatest(p.updated_at, moved_at) INTO recorded_lsn, moved_at
      FROM sync.slot_progress p WHERE p.slot = _slot_state.slot_name AND p.lsn >= coalesce(staged_lsn, '0/0');
    IF NOT FOUND THEN
        recorded_lsn := NULL;
        SELECT c.updated_at INTO moved_at FROM sync.cursors c WHERE c.kind = 'slot' AND c.scope = _slot_state.slot_name;
    END IF;
    wal_held_bytes := pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), s.restart_lsn)::bigint;
    confirmed_lag_bytes := pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint;
END $$;

-- What a slot's trouble does: every definition reading it (all that are
-- active or paused: one slot per database) goes to error with the reason
-- and the way back, and the records of the old slot are forgotten (the
-- worker starts a new one; nothing is staged from the gap: definitions in
-- error stage nothing, and their resume stages the whole table again).
CREATE FUNCTION _slot_lost(slot_name text, what text, detail text) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    n int;
BEGIN
    UPDATE sync.definitions d
       SET state = 'error', updated_at = now(),
           state_reason = left(format('replication slot %s %s: %s. Changes in between may be lost. '
                                      'Way back: SELECT sync.resume(%L); (stages the whole table again), then '
                                      'SELECT sync.check_drift(%L); and sync.reconcile the report for what the target got meanwhile.',
                                      slot_name, what, detail, d.name, d.name), 1000)
     WHERE d.state IN ('active', 'paused');
    GET DIAGNOSTICS n = ROW_COUNT;
    DELETE FROM sync.cursors c WHERE c.kind = 'slot' AND c.scope = slot_name;
    DELETE FROM sync.slot_progress p WHERE p.slot = slot_name;
    RETURN n;
END $$;

-- The worker asks before it streams: 'use' the slot, 'create' it (there is
-- none and none was read before), or 'recreate' it (drop what is left of
-- it and create it: it was lost). A slot that was lost or invalidated,
-- dropped, or dropped and created again behind the worker's back, is never
-- resumed silently: the definitions go to error first (sync._slot_lost).
CREATE FUNCTION slot_check(slot text, OUT action text, OUT detail text, OUT failover boolean,
    OUT enable_failover boolean, OUT record_margin int)
LANGUAGE plpgsql AS $$
DECLARE
    st record;
    known pg_lsn;
    n int;
BEGIN
    PERFORM sync._check_slot_name(slot);
    -- A position the worker confirms without staging is recorded first when
    -- it moved by more than this (the record's own WAL moves it by less);
    -- the slot may be this much ahead of the records.
    record_margin := 512;
    -- Failover slots (PostgreSQL 17 and later), unless sync.failover_slot is off.
    failover := current_setting('server_version_num')::int >= 170000 AND sync._setting('failover_slot')::boolean;
    -- One worker at a time decides for a slot (it holds the slot's reader
    -- lock already; this keeps two checks from racing all the same).
    PERFORM pg_advisory_xact_lock(1937337959, hashtext(slot));
    SELECT * INTO st FROM sync._slot_state(slot);
    enable_failover := failover AND st.slot_exists AND NOT coalesce(st.failover, false);
    known := greatest(st.staged_lsn, st.recorded_lsn);
    IF known IS NULL THEN
        action := CASE WHEN st.slot_exists THEN 'use' ELSE 'create' END;
        detail := CASE WHEN st.slot_exists THEN 'first read of an existing slot' ELSE 'no slot yet' END;
        RETURN;
    END IF;
    IF NOT st.slot_exists THEN
        n := sync._slot_lost(slot, 'was dropped', format('it is gone; syncbridge had staged up to %s', known));
        action := 'create';
        detail := format('the slot was dropped: %s definitions in error', n);
    ELSIF st.wal_status = 'lost' OR st.restart_lsn IS NULL THEN
        n := sync._slot_lost(slot, 'was invalidated',
                             format('its WAL was removed (wal_status %s, max_slot_wal_keep_size %s); syncbridge had staged up to %s',
                                    coalesce(st.wal_status, 'none'), current_setting('max_slot_wal_keep_size'), known));
        action := 'recreate';
        detail := format('the slot was invalidated: %s definitions in error', n);
    ELSIF st.confirmed_lsn > known + record_margin THEN
        n := sync._slot_lost(slot, 'was moved or created again behind syncbridge''s back',
                             format('it starts at %s, syncbridge had confirmed up to %s', st.confirmed_lsn, known));
        action := 'use';
        detail := format('the slot is ahead of what syncbridge confirmed: %s definitions in error', n);
    ELSIF coalesce(st.synced, false) AND NOT pg_is_in_recovery() THEN
        action := 'use';
        detail := 'resuming a failover slot synchronized from the former primary';
    ELSE
        action := 'use';
        detail := 'resuming';
    END IF;
END $$;
COMMENT ON FUNCTION slot_check(text) IS 'The worker asks before it streams: use, create or recreate the slot; whether to make it a failover slot (PostgreSQL 17 and later, setting sync.failover_slot) or turn failover on for the existing one; how far it may confirm ahead of its records. A slot that was dropped, invalidated (wal_status lost), or moved or created again behind the worker''s back puts every active or paused definition in error with the way back (sync.resume, then a drift check) and forgets the old slot''s records: nothing is staged from the gap.';

-- The worker asks after each commit of its records (staging, progress)
-- and before it confirms the position they cover: do the physical standbys
-- named in synchronized_standby_slots (PostgreSQL 17 and later) have all
-- WAL written so far? True when none are named.
CREATE FUNCTION standbys_have() RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    names text[];
    missing int;
    behind int;
BEGIN
    IF current_setting('server_version_num')::int < 170000 THEN
        RETURN true;
    END IF;
    names := array_remove(string_to_array(replace(current_setting('synchronized_standby_slots'), ' ', ''), ','), '');
    IF names IS NULL OR cardinality(names) = 0 THEN
        RETURN true;
    END IF;
    SELECT count(*) FILTER (WHERE s.slot_name IS NULL),
           count(*) FILTER (WHERE s.restart_lsn IS NULL OR s.restart_lsn < pg_current_wal_insert_lsn())
      INTO missing, behind
      FROM unnest(names) AS n(name)
      LEFT JOIN pg_catalog.pg_replication_slots s ON s.slot_name = n.name AND s.slot_type = 'physical';
    RETURN missing = 0 AND behind = 0;
END $$;
COMMENT ON FUNCTION standbys_have() IS 'Whether the physical standbys named in synchronized_standby_slots (PostgreSQL 17 and later) have received all WAL written so far (true when none are named): the worker confirms a position only once the records covering it are on them.';

CREATE VIEW slot_health AS
SELECT s.slot,
       st.slot_exists, st.active AS worker_attached, st.active_pid, st.wal_status, st.safe_wal_size,
       st.wal_held_bytes, st.confirmed_lag_bytes,
       st.restart_lsn, st.confirmed_lsn, st.staged_lsn, st.recorded_lsn,
       st.moved_at AS confirmed_moved_at,
       now() - st.moved_at AS confirmed_age,
       st.failover, st.synced,
       CASE WHEN NOT st.slot_exists AND greatest(st.staged_lsn, st.recorded_lsn) IS NOT NULL THEN 'missing'
            WHEN NOT st.slot_exists THEN 'not created'
            WHEN st.wal_status = 'lost' OR st.restart_lsn IS NULL THEN 'lost'
            WHEN st.confirmed_lag_bytes > 1048576 AND now() - st.moved_at > make_interval(secs => sync._setting('stall_seconds')::int)
                THEN 'stalled'
            WHEN st.wal_status = 'unreserved' THEN 'unreserved'
            WHEN st.wal_status = 'extended' THEN 'extended'
            WHEN NOT st.active THEN 'no worker'
            ELSE 'ok' END AS state,
       CASE WHEN NOT st.slot_exists AND greatest(st.staged_lsn, st.recorded_lsn) IS NOT NULL
                THEN 'the slot syncbridge read is gone: the worker puts the definitions in error when it starts'
            WHEN NOT st.slot_exists THEN 'the worker creates it when it first starts'
            WHEN st.wal_status = 'lost' OR st.restart_lsn IS NULL
                THEN format('its WAL was removed (max_slot_wal_keep_size %s): changes are lost', current_setting('max_slot_wal_keep_size'))
            WHEN st.confirmed_lag_bytes > 1048576 AND now() - st.moved_at > make_interval(secs => sync._setting('stall_seconds')::int)
                THEN format('the confirmed position has not moved for %s while %s bytes of WAL were written%s',
                            date_trunc('second', now() - st.moved_at), st.confirmed_lag_bytes,
                            CASE WHEN NOT st.active THEN ' (no worker is attached)' ELSE ' (a worker is attached: is it stuck?)' END)
            WHEN st.wal_status = 'unreserved'
                THEN format('it holds more WAL than max_wal_size; %s bytes more and it is invalidated', st.safe_wal_size)
            WHEN st.wal_status = 'extended' THEN 'it holds more WAL than max_wal_size (within max_slot_wal_keep_size)'
            WHEN NOT st.active THEN 'no worker is attached'
       END AS reason,
       current_setting('max_slot_wal_keep_size') AS max_slot_wal_keep_size
  FROM (SELECT sync._setting('slot_name') AS slot) s
 CROSS JOIN LATERAL sync._slot_state(s.slot) st;
COMMENT ON VIEW slot_health IS 'The replication slot (setting sync.slot_name): whether it exists and a worker is attached, wal_status against max_slot_wal_keep_size, WAL held (current position - restart_lsn), how far the confirmed position lags and since when it has not moved, and a state: ok, no worker, extended/unreserved, stalled (the confirmed position stands still for sync.stall_seconds while WAL is written), lost, missing, not created; reason says why.';
COMMENT ON COLUMN slot_health.slot IS 'The slot (setting sync.slot_name).';
COMMENT ON COLUMN slot_health.slot_exists IS 'Whether the slot exists.';
COMMENT ON COLUMN slot_health.worker_attached IS 'Whether a worker streams from it now.';
COMMENT ON COLUMN slot_health.active_pid IS 'The walsender''s process id while a worker streams.';
COMMENT ON COLUMN slot_health.wal_status IS 'reserved, extended, unreserved or lost (pg_replication_slots).';
COMMENT ON COLUMN slot_health.safe_wal_size IS 'Bytes of WAL that may still be written before the slot is invalidated (max_slot_wal_keep_size; NULL: unlimited).';
COMMENT ON COLUMN slot_health.wal_held_bytes IS 'WAL the slot keeps on disk: the current position minus its restart_lsn.';
COMMENT ON COLUMN slot_health.confirmed_lag_bytes IS 'The current position minus the slot''s confirmed position.';
COMMENT ON COLUMN slot_health.restart_lsn IS 'The slot''s restart_lsn.';
COMMENT ON COLUMN slot_health.confirmed_lsn IS 'The slot''s confirmed_flush_lsn.';
COMMENT ON COLUMN slot_health.staged_lsn IS 'Up to where everything is durably staged (sync.cursors).';
COMMENT ON COLUMN slot_health.recorded_lsn IS 'The last position the worker recorded before confirming it without staging (sync.slot_progress).';
COMMENT ON COLUMN slot_health.confirmed_moved_at IS 'When the worker last moved its position.';
COMMENT ON COLUMN slot_health.confirmed_age IS 'How long ago that was.';
COMMENT ON COLUMN slot_health.failover IS 'Whether it is a failover slot, kept on physical standbys with sync_replication_slots (PostgreSQL 17 and later; NULL before).';
COMMENT ON COLUMN slot_health.synced IS 'Whether it was synchronized from a former primary (PostgreSQL 17 and later; NULL before).';
COMMENT ON COLUMN slot_health.state IS 'ok, no worker, extended, unreserved, stalled, lost, missing or not created.';
COMMENT ON COLUMN slot_health.reason IS 'Why the state is not ok.';
COMMENT ON COLUMN slot_health.max_slot_wal_keep_size IS 'The server''s max_slot_wal_keep_size (-1: unlimited).';

-- A standby snapshot (a running-transactions record): a logical slot's
-- restart position moves only past one, and the server writes one only
-- every 15 seconds or at a checkpoint. The worker asks for one when the
-- slot's restart position lags its confirmed position, so that an idle
-- source (or one busy with unpublished tables) does not keep WAL for it.
CREATE FUNCTION _standby_snapshot() RETURNS pg_lsn
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF current_setting('server_version_num')::int >= 160000 THEN
        RETURN pg_catalog.pg_log_standby_snapshot();
    END IF;
    RETURN '0/0'::pg_lsn + sync._log_standby_snapshot();
END $$;
COMMENT ON FUNCTION _standby_snapshot() IS 'Writes a running-transactions record (pg_log_standby_snapshot() on 16 and later, the server''s LogStandbySnapshot() on 15), so that the slot''s restart position can move on; for the worker''s role only.';

-- The worker calls this every second while it streams: when the slot's
-- restart position lags its confirmed position by more than 64 kB, a
-- standby snapshot lets it move on at the next confirmation.
CREATE FUNCTION _nudge_slot(slot text) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    st record;
BEGIN
    SELECT s.restart_lsn, s.confirmed_flush_lsn INTO st FROM pg_catalog.pg_replication_slots s WHERE s.slot_name = slot;
    IF NOT FOUND OR st.restart_lsn IS NULL OR st.confirmed_flush_lsn IS NULL OR pg_is_in_recovery() THEN
        RETURN false;
    END IF;
    IF pg_catalog.pg_wal_lsn_diff(st.confirmed_flush_lsn, st.restart_lsn) > 65536 THEN
        PERFORM sync._standby_snapshot();
        RETURN true;
    END IF;
    RETURN false;
END $$;
COMMENT ON FUNCTION _nudge_slot(text) IS 'When the slot''s restart position lags its confirmed position by more than 64 kB, writes a standby snapshot (sync._standby_snapshot) so that the WAL between them can be removed; true when it did. Called by the worker every second while it streams.';
