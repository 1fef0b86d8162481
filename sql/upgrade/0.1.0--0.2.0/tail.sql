-- Data: 0.1.0 stored expressions as they were given; 0.2.0 stores
-- PostgreSQL's deparse of checked ones. An expression 0.2.0 refuses (a
-- volatile function, a subquery, ...) puts its definition in state error with
-- the reason; the upgrade itself goes on.
DO $$
DECLARE
    r record;
    msg text;
BEGIN
    FOR r IN
        SELECT d.id, d.name, d.source_rel, 'row filter' AS what, d.row_filter AS expr, NULL::text AS field, NULL::int AS pos
          FROM @extschema@.definitions d WHERE d.row_filter IS NOT NULL
        UNION ALL
        SELECT d.id, d.name, d.source_rel, 'transform', m.transform, m.field, NULL
          FROM @extschema@.field_maps m JOIN @extschema@.definitions d ON d.id = m.definition_id WHERE m.transform IS NOT NULL
        UNION ALL
        SELECT d.id, d.name, d.source_rel, 'shard predicate', s.predicate, NULL, s.position
          FROM @extschema@.shards s JOIN @extschema@.definitions d ON d.id = s.definition_id
    LOOP
        BEGIN
            msg := (@extschema@._check_row_expression(r.source_rel, r.expr, r.what, r.what <> 'transform')).expression;
            IF r.what = 'row filter' THEN
                UPDATE @extschema@.definitions SET row_filter = msg WHERE id = r.id;
            ELSIF r.what = 'transform' THEN
                UPDATE @extschema@.field_maps SET transform = msg WHERE definition_id = r.id AND field = r.field;
            ELSE
                UPDATE @extschema@.shards SET predicate = msg WHERE definition_id = r.id AND position = r.pos;
            END IF;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
            UPDATE @extschema@.definitions
               SET state = 'error', state_reason = left('upgrade to 0.2.0: ' || msg, 1000), updated_at = now()
             WHERE id = r.id;
            RAISE WARNING 'syncbridge: definition % stopped: its % is refused by 0.2.0: %', r.name, r.what, msg
                USING HINT = 'Fix it with sync.map(), sync.shard() or a new definition, then SELECT sync.resume(...).';
        END;
    END LOOP;
    UPDATE @extschema@.definitions SET revision = revision + 1;
    DELETE FROM @extschema@.compiled;
END $$;

-- 0.1.0 took direction both/pull without checking that the definer may
-- write the table; 0.2.0 writes what comes back. Such definitions stop (the
-- writing role gets no right on their tables) until sync.enable, which
-- checks the caller's rights, starts them again.
UPDATE @extschema@.definitions d
   SET state = 'error', updated_at = now(),
       state_reason = 'upgrade to 0.2.0: two-way sync writes into the table: SELECT sync.enable(' || quote_literal(d.name) || ') as a role that may INSERT, UPDATE and DELETE it'
 WHERE d.direction <> 'push'
    OR EXISTS (SELECT 1 FROM @extschema@.field_maps m WHERE m.definition_id = d.id AND m.direction <> 'push');

-- The evaluating role gets SELECT on the definitions' tables.
SELECT @extschema@._publication_refresh();
