-- What the generated part of the upgrade cannot say by re-creating the
-- functions and views of sql/*.sql (see scripts/make-upgrade.py).

-- Signatures that changed.
DROP FUNCTION @extschema@._resolve_table(text);
DROP FUNCTION @extschema@._check_row_expression(regclass, text, text, boolean);
DROP FUNCTION @extschema@._field_kind(regtype);
DROP FUNCTION @extschema@._json_expr(text, regtype);
DROP FUNCTION @extschema@.plan_summary(text);
DROP FUNCTION @extschema@.plan(text);
DROP FUNCTION @extschema@.target_list_ids(text);

-- The configuration keys max_concurrent_batches (read by the worker since
-- 0.1.0) and time_zone (the site's, for dates and times). writes_per_second
-- is a cap the worker keeps when it is set, without a default.
UPDATE @extschema@.target_kinds
   SET optional_config = '{base_url,authority_url,budget_per_min,writes_per_second,timeout_ms,max_concurrent_batches,time_zone}'
 WHERE kind = 'graph';
ALTER TABLE @extschema@.target_kinds DROP COLUMN default_writes_per_second;

-- What each kind can do (the worker's registry states the same facts).
ALTER TABLE @extschema@.target_kinds
    ADD COLUMN containers text CHECK (containers IN ('none', 'existing', 'provisioned')),
    ADD COLUMN delete_mode text CHECK (delete_mode IN ('remove', 'close', 'unsupported')),
    ADD COLUMN moves text CHECK (moves IN ('native', 'delete_create', 'unsupported')),
    ADD COLUMN key_lookup boolean,
    ADD COLUMN pull text CHECK (pull IN ('delta', 'updated_since', 'none'));
UPDATE @extschema@.target_kinds k
   SET containers = v.containers, delete_mode = v.delete_mode, moves = v.moves, key_lookup = v.key_lookup, pull = v.pull
  FROM (VALUES ('graph', 'provisioned', 'remove', 'delete_create', true, 'delta'),
               ('github', 'existing', 'close', 'unsupported', true, 'updated_since'),
               ('jira', 'existing', 'remove', 'unsupported', true, 'updated_since'),
               ('linear', 'existing', 'remove', 'native', true, 'updated_since'),
               ('webhook', 'none', 'remove', 'native', false, 'none'),
               ('ldap', 'existing', 'remove', 'native', true, 'none'))
       AS v(kind, containers, delete_mode, moves, key_lookup, pull)
 WHERE k.kind = v.kind;
ALTER TABLE @extschema@.target_kinds
    ALTER COLUMN containers SET NOT NULL, ALTER COLUMN delete_mode SET NOT NULL, ALTER COLUMN moves SET NOT NULL,
    ALTER COLUMN key_lookup SET NOT NULL, ALTER COLUMN pull SET NOT NULL;
COMMENT ON TABLE @extschema@.target_kinds IS 'The kinds of target syncbridge knows: required configuration, batch size, API cost model and capabilities. Read-only reference data; the worker holds the same facts (a test compares them).';
COMMENT ON COLUMN @extschema@.target_kinds.containers IS 'Where items live: none (a webhook), existing containers (a repository, a project, an OU), or provisioned ones syncbridge creates with their fields (SharePoint lists, sync.provision).';
COMMENT ON COLUMN @extschema@.target_kinds.delete_mode IS 'What a delete does: remove (or trash) the item, close it (GitHub), or unsupported.';
COMMENT ON COLUMN @extschema@.target_kinds.moves IS 'What a move to another container costs: native (one request), delete_create (a create and a delete: two), unsupported.';
COMMENT ON COLUMN @extschema@.target_kinds.key_lookup IS 'Whether an item can be found by the row''s key, to adopt it rather than create a twin after a create whose answer was lost.';
COMMENT ON COLUMN @extschema@.target_kinds.pull IS 'How changes are read back for two-way sync: delta (a cursor), updated_since, none.';

-- Row filters, shard predicates and transforms are analyzed in Rust.
CREATE FUNCTION @extschema@."_analyze_expression"(
	"rel" oid,
	"expr" TEXT,
	"what" TEXT
) RETURNS TABLE (
	"expression" TEXT,
	"type_oid" oid
)
STRICT STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'analyze_expression_sql_wrapper';
