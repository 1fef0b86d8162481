-- What the generated part of the upgrade cannot say by re-creating the
-- functions and views of sql/*.sql (see scripts/make-upgrade.py).

-- Signatures that changed.
DROP FUNCTION @extschema@._resolve_table(text);
DROP FUNCTION @extschema@._check_row_expression(regclass, text, text, boolean);
DROP FUNCTION @extschema@._field_kind(regtype);
DROP FUNCTION @extschema@._json_expr(text, regtype);
DROP FUNCTION @extschema@.plan_summary(text);
DROP FUNCTION @extschema@.plan(text);

-- The configuration keys max_concurrent_batches (read by the worker since
-- 0.1.0) and time_zone (the site's, for dates and times). writes_per_second
-- is a cap the worker keeps when it is set, without a default.
UPDATE @extschema@.target_kinds
   SET optional_config = '{base_url,authority_url,budget_per_min,writes_per_second,timeout_ms,max_concurrent_batches,time_zone}'
 WHERE kind = 'graph';
ALTER TABLE @extschema@.target_kinds DROP COLUMN default_writes_per_second;

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
