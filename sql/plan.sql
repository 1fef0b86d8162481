-- syncbridge: the dry run. sync.plan() compares every source row with the
-- ledger and shows, per key, what would be sent; it changes nothing.

CREATE FUNCTION _plan_sql() RETURNS text
LANGUAGE sql IMMUTABLE AS $outer$ SELECT $sql$
SELECT x.op, x.sync_key, x.list, x.from_list, x.changed, x.warning
  FROM (
    SELECT coalesce(w.sync_key, l.sync_key) AS sync_key,
           CASE WHEN l.sync_key IS NULL THEN 'add'
                WHEN w.sync_key IS NULL THEN CASE WHEN NOT ($2 = 'all' OR ($2 = 'provisioned' AND l.join_type = 'provisioned')) THEN 'forget'
                                                  -- (delete_grace: disabled first; the delete follows)
                                                  WHEN $5 AND l.disabled_at IS NULL THEN 'disable'
                                                  ELSE 'delete' END
                WHEN w.list IS DISTINCT FROM l.list THEN 'move'
                WHEN w.hash IS DISTINCT FROM l.hash THEN 'update' END AS op,
           coalesce(w.list, l.list) AS list,
           CASE WHEN w.sync_key IS NOT NULL AND l.sync_key IS NOT NULL AND w.list IS DISTINCT FROM l.list THEN l.list END AS from_list,
           CASE WHEN l.sync_key IS NULL THEN
                     (SELECT jsonb_object_agg(n.key, jsonb_build_object('new', n.value)) FROM jsonb_each(w.fields) n)
                WHEN w.sync_key IS NULL THEN
                     (SELECT jsonb_object_agg(o.key, jsonb_build_object('old', o.value)) FROM jsonb_each(l.fields) o)
                ELSE (SELECT coalesce(jsonb_object_agg(n.key, jsonb_build_object('old', l.fields -> n.key, 'new', n.value)), '{}')
                        FROM jsonb_each(w.fields) n WHERE n.value IS DISTINCT FROM l.fields -> n.key)
                     || CASE WHEN w.list IS DISTINCT FROM l.list
                             THEN jsonb_build_object('@list', jsonb_build_object('old', l.list, 'new', w.list)) ELSE '{}' END
           END AS changed,
           CASE WHEN w.sync_key IS NOT NULL THEN sync._unfit(w.fields, $3) END AS warning
      FROM sync._mapped_rows_all($1) w
      FULL JOIN (SELECT * FROM sync.ledger WHERE definition_id = $1) l ON l.sync_key = w.sync_key
  ) x
 WHERE x.op IS NOT NULL
$sql$ $outer$;

-- What a target column cannot hold, for the values of a row (`kinds`:
-- field -> kind, as compiled): a warning naming each such field, or NULL.
-- Graph: single-line text holds 255 characters; a number column is a double
-- (integers exactly up to 2^53 - 1: the worker refuses a bigger one rather
-- than let it be rounded); number and date columns take no text.
CREATE FUNCTION _unfit(fields jsonb, kinds jsonb) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT string_agg(x.msg, '; ' ORDER BY x.key)
      FROM (SELECT n.key, CASE
                WHEN kinds->>n.key = 'text' AND jsonb_typeof(n.value) = 'string' AND length(n.value #>> '{}') > 255 THEN
                    format('%s holds %s characters: a single-line text column holds 255, the target refuses the row',
                           n.key, length(n.value #>> '{}'))
                WHEN kinds->>n.key = 'number' AND jsonb_typeof(n.value) = 'number'
                     AND abs((n.value #>> '{}')::numeric) > 9007199254740991 THEN
                    format('%s is %s: a number column (a double) cannot hold it exactly, the worker refuses the row rather than round it',
                           n.key, n.value #>> '{}')
                WHEN (kinds->>n.key = 'number' AND jsonb_typeof(n.value) = 'string')
                     OR (kinds->>n.key IN ('dateTime', 'date') AND (n.value #>> '{}') !~ '^[0-9]{4}-') THEN
                    format('%s is %s: a %s column cannot hold it, the target refuses the row',
                           n.key, n.value #>> '{}', kinds->>n.key)
            END AS msg
              FROM jsonb_each(fields) n) x
     WHERE x.msg IS NOT NULL
$$;

CREATE FUNCTION plan(name text DEFAULT NULL)
RETURNS TABLE (definition text, op text, sync_key text, list text, from_list text, changed jsonb,
               requests int, cost numeric, queued text, export_id bigint, warning text)
LANGUAGE plpgsql
SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'iso_8601' SET extra_float_digits = 1
AS $$
DECLARE
    d record;
    inbound jsonb;
BEGIN
    IF $1 IS NOT NULL THEN
        PERFORM sync._check_may_read((sync._def($1)).source_rel);
    END IF;
    FOR d IN SELECT x.id, x.name, x.delete_scope, x.source_rel, k.cost_per_write, k.item_costs, x.direction,
                    k.disable AND x.delete_grace IS NOT NULL AS disables,
                    -- a move as the kind makes it (NULL: it cannot)
                    CASE k.moves WHEN 'native' THEN 1 WHEN 'delete_create' THEN 2 END AS move_requests
               FROM sync.definitions x JOIN sync.targets t ON t.name = x.target JOIN sync.target_kinds k ON k.kind = t.kind
              WHERE x.state <> 'disabled' AND ($1 IS NULL OR x.name = $1)
              ORDER BY x.name LOOP
        IF NOT has_table_privilege(session_user, d.source_rel, 'SELECT') THEN
            RAISE NOTICE 'definition % left out: % may not read %', d.name, session_user, d.source_rel;
            CONTINUE;
        END IF;
        inbound := (sync._compile(d.id)).inbound;
        -- Inbound changes read from the target, not yet decided or waiting
        -- for a person: what they would do to the row (sync.apply_imports
        -- decides field by field; see the README).
        RETURN QUERY
            SELECT d.name,
                   CASE WHEN i.deleted THEN 'inbound_delete' WHEN l.sync_key IS NULL THEN 'inbound_insert' ELSE 'inbound_update' END,
                   coalesce(i.sync_key, l.sync_key), i.list, NULL::text,
                   CASE WHEN i.deleted THEN NULL
                        ELSE (SELECT jsonb_object_agg(e->>'field', jsonb_build_object('old', l.fields -> (e->>'field'), 'new', coalesce(i.remote -> (e->>'field'), 'null')))
                                FROM jsonb_array_elements(inbound) e
                               WHERE coalesce(i.remote -> (e->>'field'), 'null') IS DISTINCT FROM coalesce(l.fields -> (e->>'field'), 'null')
                                 AND (i.origin = 'write') = (e->>'direction' = 'pull')) END,
                   0, 0::numeric, 'import ' || i.status, NULL::bigint,
                   concat_ws('; ', 'import ' || i.id, i.decision, i.last_error)
              FROM sync.pending_imports i
              LEFT JOIN sync.ledger l ON l.definition_id = d.id AND l.target_id = i.target_id AND l.list = i.list
             WHERE i.definition_id = d.id AND i.status IN ('pending', 'conflict', 'awaiting_approval', 'failed')
             ORDER BY i.id;
        CONTINUE WHEN d.direction = 'pull';
        RETURN QUERY EXECUTE format(
            'SELECT %L::text, p.op, p.sync_key, p.list, p.from_list, p.changed, r.n, '
            'CASE WHEN r.n = 0 THEN 0 ELSE coalesce(($4 ->> p.op)::numeric, r.n * %s::numeric) END, e.status, e.id, p.warning '
            'FROM (%s) p '
            'CROSS JOIN LATERAL (SELECT CASE p.op WHEN ''move'' THEN %s::int WHEN ''forget'' THEN 0 ELSE 1 END AS n) r '
            'LEFT JOIN sync.pending_exports e ON e.definition_id = $1 AND e.sync_key = p.sync_key '
            '     AND e.status IN (''pending'', ''awaiting_approval'', ''failed'', ''error'', ''executing'') '
            'ORDER BY CASE p.op WHEN ''add'' THEN 1 WHEN ''update'' THEN 2 WHEN ''move'' THEN 3 WHEN ''disable'' THEN 4 WHEN ''delete'' THEN 5 ELSE 6 END, p.sync_key',
            d.name, d.cost_per_write, sync._plan_sql(), coalesce(d.move_requests::text, 'NULL'))
          USING d.id, d.delete_scope,
                (SELECT jsonb_object_agg(f->>'field', f->>'kind') FROM jsonb_array_elements((sync._compile(d.id)).fields) f),
                d.item_costs, d.disables;
        -- Exports a rollback or a reconcile staged that the comparison of
        -- the rows with the ledger does not show (a rollback's inverse, an
        -- orphan's delete).
        RETURN QUERY
            SELECT d.name, e.op, e.sync_key, e.list, e.from_list,
                   CASE WHEN e.op = 'delete' THEN (SELECT jsonb_object_agg(o.key, jsonb_build_object('old', o.value)) FROM jsonb_each(e.previous) o)
                        ELSE (SELECT jsonb_object_agg(n.key, jsonb_build_object('old', e.previous -> n.key, 'new', n.value)) FROM jsonb_each(e.payload) n) END,
                   CASE WHEN e.op = 'move' THEN coalesce(d.move_requests, 1) ELSE 1 END,
                   coalesce((d.item_costs ->> e.op)::numeric, CASE WHEN e.op = 'move' THEN coalesce(d.move_requests, 1) ELSE 1 END * d.cost_per_write),
                   e.status, e.id, format('%s run %s', CASE WHEN e.rollback THEN 'rollback' ELSE 'reconcile' END, e.run_id)
              FROM sync.pending_exports e
             WHERE e.definition_id = d.id AND e.status IN ('pending', 'awaiting_approval', 'failed', 'error')
               AND (e.rollback OR (e.sync_key IS NULL AND e.op = 'delete'))
             ORDER BY e.id;
        -- Provisioning exports (they have no key) awaiting approval are shown too.
        RETURN QUERY
            SELECT d.name, e.op, e.sync_key, e.list, e.from_list,
                   (SELECT jsonb_object_agg(n.key, jsonb_build_object('new', n.value)) FROM jsonb_each(e.payload) n),
                   1, d.cost_per_write,
                   e.status, e.id, NULL::text
              FROM sync.pending_exports e
             WHERE e.definition_id = d.id AND e.status = 'awaiting_approval' AND e.op = 'provision';
    END LOOP;
END $$;
COMMENT ON FUNCTION plan(text) IS 'Dry run: per key, the op (add, update, delete, move, forget, disable: the first step of a delete under delete_grace), list, changed fields (old -> new), requests and API cost a full reconcile would send; queued shows the state of an export already staged for the key; warning names each value its target column cannot hold (the row would be refused). Two-way: inbound changes read from the target and not yet applied (inbound_update, inbound_insert, inbound_delete: the fields that differ from the ledger, old -> new; queued the import''s status, warning its id and decision). Changes nothing.';

CREATE FUNCTION plan_summary(name text DEFAULT NULL)
RETURNS TABLE (definition text, target text, adds bigint, updates bigint, deletes bigint, moves bigint,
               awaiting_approval bigint, warnings bigint, requests bigint, batches bigint, cost numeric, cost_unit text,
               budget_per_min numeric, est_drain interval,
               drift_check_requests bigint, drift_check_cost numeric, drift_check_time interval)
LANGUAGE sql AS $$
    WITH a AS (
        SELECT p.definition,
               count(*) FILTER (WHERE p.op = 'add') AS adds, count(*) FILTER (WHERE p.op = 'update') AS updates,
               -- (a disable is the first step of a delete: counted as one)
               count(*) FILTER (WHERE p.op IN ('delete', 'disable')) AS deletes, count(*) FILTER (WHERE p.op = 'move') AS moves,
               count(*) FILTER (WHERE p.queued = 'awaiting_approval') AS awaiting, count(*) FILTER (WHERE p.warning IS NOT NULL) AS warnings,
               coalesce(sum(p.requests), 0) AS requests, coalesce(sum(p.cost), 0) AS cost,
               -- the requests they go in: the kind's bulk operations share
               -- them (any mix), batch_size items at a time; the others
               -- take one each
               sum(p.requests) FILTER (WHERE p.op IN ('add', 'update', 'delete', 'move', 'disable')) AS writes,
               sum(p.requests) FILTER (WHERE p.op = 'add') AS n_add, sum(p.requests) FILTER (WHERE p.op = 'update') AS n_update,
               sum(p.requests) FILTER (WHERE p.op = 'delete') AS n_delete, sum(p.requests) FILTER (WHERE p.op = 'move') AS n_move,
               sum(p.requests) FILTER (WHERE p.op = 'disable') AS n_disable
          FROM sync.plan($1) p GROUP BY p.definition)
    SELECT d.name, t.name, coalesce(a.adds, 0), coalesce(a.updates, 0), coalesce(a.deletes, 0), coalesce(a.moves, 0),
           coalesce(a.awaiting, 0), coalesce(a.warnings, 0), coalesce(a.requests, 0),
           (coalesce(a.requests, 0) - coalesce(a.writes, 0)
            + (SELECT ceil(coalesce(sum(o.n) FILTER (WHERE o.op = ANY (k.bulk_ops)), 0)::numeric / k.batch_size)
                      + coalesce(sum(o.n) FILTER (WHERE o.op <> ALL (k.bulk_ops)), 0)
                 FROM (VALUES ('add', a.n_add), ('update', a.n_update), ('delete', a.n_delete), ('move', a.n_move),
                              ('disable', a.n_disable)) o(op, n)))::bigint,
           coalesce(a.cost, 0), k.cost_unit,
           b.budget,
           make_interval(secs => greatest(coalesce(a.cost, 0) / b.budget * 60,
                                          coalesce(a.requests, 0) / (t.config->>'writes_per_second')::numeric)::float8),
           dr.requests, dr.cost, make_interval(secs => (dr.cost / b.budget * 60)::float8)
      FROM sync.definitions d
      JOIN sync.targets t ON t.name = d.target
      JOIN sync.target_kinds k ON k.kind = t.kind
      LEFT JOIN a ON a.definition = d.name
      CROSS JOIN LATERAL (SELECT coalesce((t.config->>'budget_per_min')::numeric, k.default_budget_per_min) AS budget) b
      -- A drift check reads each list whole, 200 items a page; the first
      -- page of a read without a link costs twice (Graph's delta).
      CROSS JOIN LATERAL (
          SELECT coalesce(sum(x.pages), 0)::bigint AS requests, coalesce(sum(x.pages + 1), 0) * k.cost_per_read AS cost
            FROM (SELECT greatest(1, ceil((SELECT count(*) FROM sync.ledger l WHERE l.definition_id = d.id AND l.list = tl.list) / 200.0)) AS pages
                    FROM sync.target_lists tl WHERE tl.definition_id = d.id AND tl.remote_id IS NOT NULL) x) dr
     WHERE d.state <> 'disabled' AND ($1 IS NULL OR d.name = $1)
       AND (a.definition IS NOT NULL OR d.direction <> 'pull' OR dr.requests > 0)
       -- (as plan(): not the definitions of tables the caller may not read)
       AND has_table_privilege(session_user, d.source_rel, 'SELECT')
     ORDER BY d.name
$$;
COMMENT ON FUNCTION plan_summary(text) IS 'Totals of sync.plan() per definition, with requests (one per item and operation), batches (the HTTP requests they go in: the kind''s bulk_ops share one per batch_size items), API cost in the kind''s unit (cost_per_write, or item_costs), the rows with a warning, and the estimated drain time at the target''s budget (budget_per_min) and its writes_per_second cap when set; and what a drift check (sync.check_drift) would cost: requests, cost and time at the budget.';
