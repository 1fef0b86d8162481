-- syncbridge: what a DBA looks at first.

CREATE VIEW status AS
SELECT d.name AS definition,
       d.state,
       d.state_reason,
       d.source_rel AS source,
       d.target,
       d.list,
       d.backfill,
       coalesce(q.pending, 0) AS pending,
       coalesce(q.awaiting_approval, 0) AS awaiting_approval,
       coalesce(q.executing, 0) AS executing,
       coalesce(q.failed, 0) AS failed,
       coalesce(q.error, 0) AS error,
       coalesce(q.exported, 0) AS exported,
       (SELECT count(*) FROM sync.ledger l WHERE l.definition_id = d.id) AS items,
       now() - q.oldest_pending AS oldest_pending_age,
       le.last_error,
       le.last_error_at,
       cur.lsn AS staged_lsn,
       CASE WHEN pg_is_in_recovery() THEN NULL
            ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint END AS slot_lag_bytes,
       bf.position AS backfill_progress,
       lr.finished_at AS last_run_at,
       d.direction,
       coalesce(im.pending, 0) AS imports_pending,
       coalesce(im.applied, 0) AS imports_applied,
       coalesce(im.awaiting_approval, 0) AS imports_awaiting_approval,
       coalesce(im.failed, 0) AS imports_failed,
       (SELECT count(*) FROM sync.conflicts c WHERE c.definition_id = d.id AND c.resolution IS NULL) AS conflicts_open,
       pl.last_pull_at,
       pl.next_pull_at,
       pl.pull_state,
       pl.pull_error,
       sh.state AS slot_state,
       sh.reason AS slot_reason,
       t.status AS target_status,
       (SELECT coalesce(sum(k.n), 0) FROM sync.deferred_keys k WHERE k.definition_id = d.id)::bigint AS deferred
  FROM sync.definitions d
  JOIN sync.targets t ON t.name = d.target
  CROSS JOIN (SELECT h.state, h.reason FROM sync.slot_health h) sh
  LEFT JOIN LATERAL (
      SELECT count(*) FILTER (WHERE e.status = 'pending') AS pending,
             count(*) FILTER (WHERE e.status = 'awaiting_approval') AS awaiting_approval,
             count(*) FILTER (WHERE e.status = 'executing') AS executing,
             count(*) FILTER (WHERE e.status = 'failed') AS failed,
             count(*) FILTER (WHERE e.status = 'error') AS error,
             count(*) FILTER (WHERE e.status IN ('exported', 'confirmed')) AS exported,
             min(e.created_at) FILTER (WHERE e.status IN ('pending', 'failed', 'executing')) AS oldest_pending
        FROM sync.pending_exports e WHERE e.definition_id = d.id) q ON true
  LEFT JOIN LATERAL (
      SELECT e.last_error, e.updated_at AS last_error_at FROM sync.pending_exports e
       WHERE e.definition_id = d.id AND e.status IN ('failed', 'error') AND e.last_error IS NOT NULL
       ORDER BY e.updated_at DESC LIMIT 1) le ON true
  LEFT JOIN sync.cursors cur ON cur.kind = 'slot' AND cur.scope = sync._setting('slot_name')
  LEFT JOIN pg_replication_slots s ON s.slot_name = sync._setting('slot_name')
  LEFT JOIN sync.cursors bf ON bf.kind = 'backfill' AND bf.definition_id = d.id
  LEFT JOIN LATERAL (SELECT r.finished_at FROM sync.runs r WHERE r.definition_id = d.id ORDER BY r.id DESC LIMIT 1) lr ON true
  LEFT JOIN LATERAL (
      SELECT count(*) FILTER (WHERE i.status = 'pending') AS pending,
             count(*) FILTER (WHERE i.status IN ('applied', 'echo')) AS applied,
             count(*) FILTER (WHERE i.status = 'awaiting_approval') AS awaiting_approval,
             count(*) FILTER (WHERE i.status = 'failed') AS failed
        FROM sync.pending_imports i WHERE i.definition_id = d.id) im ON true
  LEFT JOIN LATERAL (
      SELECT min(p.last_pull_at) AS last_pull_at, min(p.next_pull_at) AS next_pull_at,
             -- per list: reading (leased), full read due, delta (a link held)
             string_agg(format('%s: %s%s', p.list,
                               CASE WHEN p.lease_until > now() THEN 'reading' WHEN p.link IS NULL THEN 'full read due' ELSE 'delta' END,
                               CASE WHEN p.resyncs > 0 THEN format(' (%s resyncs)', p.resyncs) ELSE '' END), ', ' ORDER BY p.list) AS pull_state,
             string_agg(p.list || ': ' || p.last_error, '; ' ORDER BY p.list) AS pull_error
        FROM sync.pulls p WHERE p.definition_id = d.id) pl ON true;
COMMENT ON VIEW status IS 'Per definition: state, queue counts (pending, awaiting approval, executing, failed, error, exported), items on the target, age of the oldest pending export, last error, staged LSN, slot lag in bytes, backfill progress; two-way: inbound changes pending, applied, awaiting approval and failed, open conflicts, the last and next pull and each list''s delta state and pull error; the slot''s state and its reason (sync.slot_health); the target''s status (sync.targets.status: disabled when it asked to be, see sync.enable_target); keys deferred while the target is far behind (sync.deferred_keys, staged as the queue drains).';

-- For the worker's metrics: the open queues, every open state of every
-- definition (0 included, so a drained queue reads 0, not absent).
CREATE FUNCTION queue_depths() RETURNS TABLE (queue text, target text, definition text, state text, items bigint,
    oldest_age double precision)
LANGUAGE sql STABLE AS $$
    SELECT 'export', d.target, d.name, s.state, count(e.id),
           coalesce(extract(epoch FROM now() - min(e.created_at))::float8, 0)
      FROM sync.definitions d
     CROSS JOIN unnest(ARRAY['pending', 'awaiting_approval', 'executing', 'failed', 'error']) AS s(state)
      LEFT JOIN sync.pending_exports e ON e.definition_id = d.id AND e.status = s.state
     GROUP BY d.target, d.name, s.state
    UNION ALL
    SELECT 'import', d.target, d.name, s.state, count(i.id),
           coalesce(extract(epoch FROM now() - min(i.created_at))::float8, 0)
      FROM sync.definitions d
     CROSS JOIN unnest(ARRAY['pending', 'conflict', 'awaiting_approval', 'failed']) AS s(state)
      LEFT JOIN sync.pending_imports i ON i.definition_id = d.id AND i.status = s.state
     GROUP BY d.target, d.name, s.state
     ORDER BY 1, 2, 3, 4;
$$;
COMMENT ON FUNCTION queue_depths() IS 'The open exports (pending, awaiting_approval, executing, failed, error) and inbound changes (pending, conflict, awaiting_approval, failed) per definition and state, 0 included, with the age in seconds of the oldest: what the worker''s metrics sample.';
