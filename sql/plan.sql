-- syncbridge: the dry run. sync.plan() compares every source row with the
-- ledger and shows, per key, what would be sent; it changes nothing.

CREATE FUNCTION _plan_sql() RETURNS text
LANGUAGE sql IMMUTABLE AS $outer$ SELECT $sql$
SELECT x.op, x.sync_key, x.list, x.from_list, x.changed
  FROM (
    SELECT coalesce(w.sync_key, l.sync_key) AS sync_key,
           CASE WHEN l.sync_key IS NULL THEN 'add'
                WHEN w.sync_key IS NULL THEN CASE WHEN $2 = 'all' OR ($2 = 'provisioned' AND l.join_type = 'provisioned')
                                                  THEN 'delete' ELSE 'forget' END
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
           END AS changed
      FROM sync._mapped_rows_all($1) w
      FULL JOIN (SELECT * FROM sync.ledger WHERE definition_id = $1) l ON l.sync_key = w.sync_key
  ) x
 WHERE x.op IS NOT NULL
$sql$ $outer$;

CREATE FUNCTION plan(name text DEFAULT NULL)
RETURNS TABLE (definition text, op text, sync_key text, list text, from_list text, changed jsonb,
               requests int, cost numeric, queued text, export_id bigint)
LANGUAGE plpgsql
SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'iso_8601' SET extra_float_digits = 1
AS $$
DECLARE
    d record;
BEGIN
    IF $1 IS NOT NULL THEN
        PERFORM sync._check_may_read((sync._def($1)).source_rel);
    END IF;
    FOR d IN SELECT x.id, x.name, x.delete_scope, x.source_rel, k.cost_per_write
               FROM sync.definitions x JOIN sync.targets t ON t.name = x.target JOIN sync.target_kinds k ON k.kind = t.kind
              WHERE x.state <> 'disabled' AND ($1 IS NULL OR x.name = $1)
              ORDER BY x.name LOOP
        IF NOT has_table_privilege(session_user, d.source_rel, 'SELECT') THEN
            RAISE NOTICE 'definition % left out: % may not read %', d.name, session_user, d.source_rel;
            CONTINUE;
        END IF;
        RETURN QUERY EXECUTE format(
            'SELECT %L::text, p.op, p.sync_key, p.list, p.from_list, p.changed, r.n, r.n * %s::numeric, e.status, e.id '
            'FROM (%s) p '
            'CROSS JOIN LATERAL (SELECT CASE p.op WHEN ''move'' THEN 2 WHEN ''forget'' THEN 0 ELSE 1 END AS n) r '
            'LEFT JOIN sync.pending_exports e ON e.definition_id = $1 AND e.sync_key = p.sync_key '
            '     AND e.status IN (''pending'', ''awaiting_approval'', ''failed'', ''error'', ''executing'') '
            'ORDER BY CASE p.op WHEN ''add'' THEN 1 WHEN ''update'' THEN 2 WHEN ''move'' THEN 3 WHEN ''delete'' THEN 4 ELSE 5 END, p.sync_key',
            d.name, d.cost_per_write, sync._plan_sql())
          USING d.id, d.delete_scope;
        -- Provisioning exports (they have no key) awaiting approval are shown too.
        RETURN QUERY
            SELECT d.name, e.op, e.sync_key, e.list, e.from_list,
                   (SELECT jsonb_object_agg(n.key, jsonb_build_object('new', n.value)) FROM jsonb_each(e.payload) n),
                   CASE e.op WHEN 'move' THEN 2 ELSE 1 END, CASE e.op WHEN 'move' THEN 2 ELSE 1 END * d.cost_per_write,
                   e.status, e.id
              FROM sync.pending_exports e
             WHERE e.definition_id = d.id AND e.status = 'awaiting_approval' AND e.op = 'provision';
    END LOOP;
END $$;
COMMENT ON FUNCTION plan(text) IS 'Dry run: per key, the op (add, update, delete, move, forget), list, changed fields (old -> new), requests and API cost a full reconcile would send; queued shows the state of an export already staged for the key. Changes nothing.';

CREATE FUNCTION plan_summary(name text DEFAULT NULL)
RETURNS TABLE (definition text, target text, adds bigint, updates bigint, deletes bigint, moves bigint,
               awaiting_approval bigint, requests bigint, batches bigint, cost numeric, cost_unit text,
               budget_per_min numeric, est_drain interval)
LANGUAGE sql AS $$
    SELECT p.definition, t.name,
           count(*) FILTER (WHERE p.op = 'add'), count(*) FILTER (WHERE p.op = 'update'),
           count(*) FILTER (WHERE p.op = 'delete'), count(*) FILTER (WHERE p.op = 'move'),
           count(*) FILTER (WHERE p.queued = 'awaiting_approval'),
           sum(p.requests), ceil(sum(p.requests)::numeric / k.batch_size)::bigint, sum(p.cost), k.cost_unit,
           b.budget,
           make_interval(secs => greatest(sum(p.cost) / b.budget * 60,
                                          sum(p.requests) / coalesce((t.config->>'writes_per_second')::numeric, k.default_writes_per_second))::float8)
      FROM sync.plan($1) p
      JOIN sync.definitions d ON d.name = p.definition
      JOIN sync.targets t ON t.name = d.target
      JOIN sync.target_kinds k ON k.kind = t.kind
      CROSS JOIN LATERAL (SELECT coalesce((t.config->>'budget_per_min')::numeric, k.default_budget_per_min) AS budget) b
     GROUP BY p.definition, t.name, t.config, k.batch_size, k.cost_unit, k.default_writes_per_second, b.budget
     ORDER BY p.definition
$$;
COMMENT ON FUNCTION plan_summary(text) IS 'Totals of sync.plan() per definition, with requests, batches, API cost and the estimated drain time at the target''s budget (budget_per_min) and write rate.';
