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
DROP FUNCTION @extschema@.claim(text, int, int, text, bigint);
DROP FUNCTION @extschema@.define(text, text, text, text, text[], text, text, text, text, text, int);
DROP FUNCTION @extschema@.map(text, text, text, text, text, text);
DROP FUNCTION @extschema@.finish_run(bigint, text, text);
-- (deferred keys, issue 21: a column deferred, a parameter may_defer)
DROP FUNCTION @extschema@.stage(regclass, jsonb, pg_lsn, text, bigint);
DROP FUNCTION @extschema@.stage_truncate(regclass, pg_lsn);
DROP FUNCTION @extschema@._stage_def(int, jsonb, pg_lsn, bigint);
DROP FUNCTION @extschema@.backfill_step(text, int, bigint, jsonb, jsonb, jsonb);

-- The configuration keys max_concurrent_batches (read by the worker since
-- 0.1.0) and time_zone (the site's, for dates and times). writes_per_second
-- is a cap the worker keeps when it is set, without a default.
UPDATE @extschema@.target_kinds
   SET optional_config = '{base_url,authority_url,budget_per_min,writes_per_second,timeout_ms,max_concurrent_batches,time_zone,pull_interval}'
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
-- Jira Cloud: implemented (bulk creates, labels and a property for the row's
-- key); changes are pulled back by search on `updated` (pull_interval: the
-- seconds between two pulls of a list).
UPDATE @extschema@.target_kinds
   SET implemented = true, optional_config = '{base_url,budget_per_min,email,issue_type,timeout_ms,pull_interval}',
       pull = 'updated_since'
 WHERE kind = 'jira';
COMMENT ON TABLE @extschema@.target_kinds IS 'The kinds of target syncbridge knows: required configuration, batch size, API cost model and capabilities. Read-only reference data; the worker holds the same facts (a test compares them).';
COMMENT ON COLUMN @extschema@.target_kinds.containers IS 'Where items live: none (a webhook), existing containers (a repository, a project, an OU), or provisioned ones syncbridge creates with their fields (SharePoint lists, sync.provision).';
COMMENT ON COLUMN @extschema@.target_kinds.delete_mode IS 'What a delete does: remove (or trash) the item, close it (GitHub), or unsupported.';
COMMENT ON COLUMN @extschema@.target_kinds.moves IS 'What a move to another container costs: native (one request), delete_create (a create and a delete: two), unsupported.';
COMMENT ON COLUMN @extschema@.target_kinds.key_lookup IS 'Whether an item can be found by the row''s key, to adopt it rather than create a twin after a create whose answer was lost.';
COMMENT ON COLUMN @extschema@.target_kinds.pull IS 'How changes are read back for two-way sync: delta (a cursor), updated_since, none.';

-- GitHub Issues is implemented (issue 19): the repository is the
-- definition's list (config repo: the default), pacing by GitHub's
-- secondary limits, the close reason of a delete, the marker label; its
-- issues read back (pull updated_since) every pull_interval seconds.
UPDATE @extschema@.target_kinds
   SET implemented = true, required_config = '{owner}',
       optional_config = '{repo,base_url,budget_per_min,content_per_min,content_per_hour,timeout_ms,marker_label,close_reason,pull_interval}'
 WHERE kind = 'github';
-- Linear (issue 19): implemented; costs in complexity points (a write
-- selecting the issue's updatedAt, its eTag, about 2.2); a delete trashes
-- (or archives, config on_delete); changes are pulled by updatedAt.
UPDATE @extschema@.target_kinds
   SET implemented = true, optional_config = '{base_url,budget_per_min,timeout_ms,on_delete,pull_interval}',
       cost_per_write = 3, cost_per_read = 1, cost_unit = 'complexity', default_budget_per_min = 4000, pull = 'updated_since'
 WHERE kind = 'linear';

-- How writes are priced (sync.plan, issue 19): which operations go many to a
-- request, and the items whose cost is not cost_per_write.
ALTER TABLE @extschema@.target_kinds
    ADD COLUMN bulk_ops text[] NOT NULL DEFAULT '{}' CHECK (bulk_ops <@ '{add,update,delete,move}'),
    ADD COLUMN item_costs jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(item_costs) = 'object');
COMMENT ON COLUMN @extschema@.target_kinds.bulk_ops IS 'The operations whose items share a request, batch_size at a time (Graph $batch, Jira bulk create, Linear aliased mutations); the others take a request each.';
COMMENT ON COLUMN @extschema@.target_kinds.item_costs IS 'Per operation, what one item costs in cost_unit when it is not cost_per_write (a move: cost_per_write per request it takes): Jira''s bulk create, 3 requests (the twin search, the create, the read of the new issues) per 50 issues, is 0.06 an issue.';
UPDATE @extschema@.target_kinds k SET bulk_ops = v.bulk_ops, item_costs = v.item_costs
  FROM (VALUES ('graph', '{add,update,delete,move}'::text[], '{}'::jsonb),
               ('jira', '{add}', '{"add": 0.06}'),
               ('linear', '{add,update,delete,move}', '{}')) AS v(kind, bulk_ops, item_costs)
 WHERE k.kind = v.kind;

-- LDAP directories (issue 20): implemented; the bind password is the
-- secret, TLS by ldaps:// or StartTLS with an optional inline CA, the way
-- accounts are disabled, where disabled entries go, the placeholder member;
-- entries are read back by modifyTimestamp (pull_interval).
UPDATE @extschema@.target_kinds
   SET implemented = true,
       optional_config = '{bind_dn,starttls,ca_pem,disable_mechanism,disabled_container,placeholder_member,budget_per_min,timeout_ms,pull_interval}',
       pull = 'updated_since'
 WHERE kind = 'ldap';

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

-- Two-way sync: what inbound deletes and creates do, conflicts with their
-- item and times, the export class conflict (412 to If-Match), the compiled
-- inbound fields.
ALTER TABLE @extschema@.definitions
    ADD COLUMN inbound_deletes text NOT NULL DEFAULT 'approve' CHECK (inbound_deletes IN ('apply', 'approve', 'ignore')),
    ADD COLUMN inbound_inserts text NOT NULL DEFAULT 'apply' CHECK (inbound_inserts IN ('apply', 'approve', 'ignore'));
COMMENT ON COLUMN @extschema@.definitions.inbound_deletes IS 'Two-way: what an item deleted on the target does to its row: apply (the row is deleted), approve (it waits for sync.approve_import; the default: an external change never removes local data without a person''s say), ignore (the row stays).';
COMMENT ON COLUMN @extschema@.definitions.inbound_inserts IS 'Two-way: what an item created on the target (without a SyncKey) does: apply (a row is inserted, its key from the table''s defaults, and the item gets its SyncKey), approve (it waits for sync.approve_import), ignore.';
ALTER TABLE @extschema@.pending_exports DROP CONSTRAINT pending_exports_error_class_check,
    ADD CONSTRAINT pending_exports_error_class_check CHECK (error_class IN ('transient', 'throttled', 'auth', 'definite', 'conflict'));
COMMENT ON COLUMN @extschema@.pending_exports.error_class IS 'How the last error was classified: transient, throttled, auth, definite, conflict (the item changed on the target: 412 to If-Match; its change is pulled and decided first).';
ALTER TABLE @extschema@.conflicts DROP CONSTRAINT conflicts_resolution_check,
    ADD CONSTRAINT conflicts_resolution_check CHECK (resolution IN ('local', 'remote', 'custom', 'superseded')),
    ADD COLUMN import_id bigint,
    ADD COLUMN target_id text,
    ADD COLUMN local_time timestamptz,
    ADD COLUMN remote_time timestamptz;
COMMENT ON COLUMN @extschema@.conflicts.resolution IS 'local, remote or custom (sync.resolve), superseded (a newer change of the item replaced it); NULL while open.';
COMMENT ON COLUMN @extschema@.conflicts.import_id IS 'The inbound change it came with (sync.pending_imports.id).';
COMMENT ON COLUMN @extschema@.conflicts.target_id IS 'The item''s id on the target.';
COMMENT ON COLUMN @extschema@.conflicts.local_time IS 'When the database''s value was committed (or staged, or first seen: see the README on newest_wins).';
COMMENT ON COLUMN @extschema@.conflicts.remote_time IS 'When the target''s value was written (its Modified).';
DELETE FROM @extschema@.compiled;
ALTER TABLE @extschema@.compiled ADD COLUMN inbound jsonb NOT NULL DEFAULT '[]';

-- Operating from SQL: the run history says who started each run and what it
-- did; an export keeps the run that staged it (run_id) apart from the one
-- that sent it (sent_run); scheduled jobs' occurrences are runs.
ALTER TABLE @extschema@.runs DROP CONSTRAINT runs_kind_check,
    ADD CONSTRAINT runs_kind_check CHECK (kind IN ('stream', 'backfill', 'export', 'pull', 'reconcile', 'manual', 'drift', 'rollback', 'job')),
    ADD COLUMN started_by text,
    ADD COLUMN job_id bigint,
    ADD COLUMN scheduled_for timestamptz,
    ADD COLUMN detail jsonb;
CREATE UNIQUE INDEX runs_job_occurrence_idx ON @extschema@.runs (job_id, scheduled_for) WHERE job_id IS NOT NULL;
UPDATE @extschema@.runs SET started_by = worker WHERE started_by IS NULL;
COMMENT ON COLUMN @extschema@.runs.kind IS 'stream, backfill, export, pull, drift (a drift check), reconcile, rollback, job (a scheduled job''s occurrence) or manual.';
COMMENT ON COLUMN @extschema@.runs.started_by IS 'Who or what started it: a role (sync.check_drift, sync.reconcile, sync.rollback), worker host:pid, or job:<name> (a scheduled job).';
COMMENT ON COLUMN @extschema@.runs.job_id IS 'For kind job, and for what a job started: the scheduled job (sync.schedules.id).';
COMMENT ON COLUMN @extschema@.runs.scheduled_for IS 'For kind job: the occurrence it ran (unique per job: each runs once).';
COMMENT ON COLUMN @extschema@.runs.detail IS 'What the run did beyond the counts (a drift check''s findings, a reconcile''s or rollback''s staged operations, a job''s result).';
ALTER TABLE @extschema@.pending_exports ADD COLUMN sent_run bigint,
    ADD COLUMN rollback boolean NOT NULL DEFAULT false,
    ADD COLUMN changed_since boolean NOT NULL DEFAULT false,
    DROP CONSTRAINT pending_exports_check,
    ADD CONSTRAINT pending_exports_check CHECK (CASE WHEN op = 'provision' THEN sync_key IS NULL ELSE sync_key IS NOT NULL OR op = 'delete' END);
CREATE INDEX pending_exports_rollback_idx ON @extschema@.pending_exports (definition_id, next_attempt_at, id)
    WHERE rollback AND status IN ('pending', 'failed');
CREATE INDEX pending_exports_rollback_key_idx ON @extschema@.pending_exports (definition_id, sync_key)
    WHERE rollback AND status IN ('pending', 'awaiting_approval', 'failed', 'error');
COMMENT ON COLUMN @extschema@.pending_exports.rollback IS 'Staged by sync.rollback: sent (once approved) while its definition is paused; staging does not merge a change of the row into it.';
COMMENT ON COLUMN @extschema@.pending_exports.changed_since IS 'A rollback export whose row changed after it was staged: the row is staged again once it is sent.';
COMMENT ON COLUMN @extschema@.pending_exports.sync_key IS 'The row''s key (NULL for provision, and for the delete of an item no row owns: a mirror reconcile''s orphan).';
UPDATE @extschema@.pending_exports e SET sent_run = e.run_id
  FROM @extschema@.runs r WHERE r.id = e.run_id AND r.kind = 'export';
COMMENT ON COLUMN @extschema@.pending_exports.run_id IS 'The run that staged it (its last change: a stream, a backfill, a reconcile, a rollback; sync.runs.id, not a foreign key, for staging speed: it may name a purged run).';
COMMENT ON COLUMN @extschema@.pending_exports.sent_run IS 'The exporter run that last sent it (sync.runs.id).';

-- Cron expressions are evaluated in Rust.
CREATE FUNCTION @extschema@."_cron_next_epoch"(
	"cron" TEXT,
	"time_zone" TEXT,
	"after" bigint
) RETURNS bigint
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', '_cron_next_epoch_wrapper';

-- The standby snapshot on PostgreSQL 15 (sync.log_standby_snapshot).
CREATE FUNCTION @extschema@."_log_standby_snapshot"() RETURNS bigint
VOLATILE STRICT PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', '_log_standby_snapshot_wrapper';

-- Schema changes: the source table's name, to tell a rename.
ALTER TABLE @extschema@.definitions ADD COLUMN source_name text;
UPDATE @extschema@.definitions d SET source_name = format('%I.%I', n.nspname, c.relname)
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = d.source_rel;
COMMENT ON COLUMN @extschema@.definitions.source_name IS 'The source table''s schema-qualified name when the definition was made or last enabled: a rename is a schema change (the definition goes to error until sync.resume).';

-- Disable before delete (issue 20): kinds whose items can be disabled, and a
-- definition's grace period between the disable and the delete.
ALTER TABLE @extschema@.target_kinds ADD COLUMN disable boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN @extschema@.target_kinds.disable IS 'Whether an item can be disabled before it is deleted (a directory account: locked): with a definition''s delete_grace, a delete first disables, and removes after the grace period.';
UPDATE @extschema@.target_kinds SET disable = true WHERE kind = 'ldap';
ALTER TABLE @extschema@.definitions ADD COLUMN delete_grace interval CHECK (delete_grace >= interval '0');
COMMENT ON COLUMN @extschema@.definitions.delete_grace IS 'Kinds that can disable (sync.target_kinds.disable, LDAP): a deleted or filtered-out row''s item is disabled at once and deleted only this long after (a scheduled delete export, approvable); a row back within it re-enables the same item. NULL: deleted at once.';
ALTER TABLE @extschema@.ledger ADD COLUMN disabled_at timestamptz;
COMMENT ON COLUMN @extschema@.ledger.disabled_at IS 'When the item was disabled (definitions.delete_grace): its delete is scheduled for disabled_at + delete_grace; a row back before then re-enables it.';
ALTER TABLE @extschema@.pending_exports DROP CONSTRAINT pending_exports_op_check,
    ADD CONSTRAINT pending_exports_op_check CHECK (op IN ('add', 'update', 'delete', 'move', 'provision', 'disable'));
COMMENT ON COLUMN @extschema@.pending_exports.op IS 'add, update, delete, move (delete from from_list + create in list, one export), provision (create the list and its columns), disable (definitions.delete_grace: the item disabled; its delete follows after the grace).';

-- One budget for many workers (issue 21): each target's token bucket.
CREATE TABLE @extschema@.target_budgets (
    target      text PRIMARY KEY REFERENCES @extschema@.targets (name) ON UPDATE CASCADE ON DELETE CASCADE,
    tokens      double precision NOT NULL,
    refreshed_at timestamptz NOT NULL,
    granted     double precision NOT NULL DEFAULT 0,
    takes       bigint NOT NULL DEFAULT 0
);
COMMENT ON TABLE @extschema@.target_budgets IS 'Each target''s request budget, shared by every exporter of every worker (sync.budget_take): a token bucket refilled at budget_per_min less its capacity, so that no sliding minute sees more than budget_per_min spent in all.';
COMMENT ON COLUMN @extschema@.target_budgets.target IS 'The target (sync.targets.name).';
COMMENT ON COLUMN @extschema@.target_budgets.tokens IS 'Units left in the bucket at refreshed_at (negative: a request costlier than the bucket holds was granted, and is paid back first).';
COMMENT ON COLUMN @extschema@.target_budgets.refreshed_at IS 'When tokens was last computed.';
COMMENT ON COLUMN @extschema@.target_budgets.granted IS 'Units granted to exporters in all (the budget spent, or held by an exporter for its next requests).';
COMMENT ON COLUMN @extschema@.target_budgets.takes IS 'Grants made in all.';
-- Signed webhooks (issue 20): implemented (Standard Webhooks signatures,
-- requests at once, optional batches). A target may ask to be disabled (a
-- receiver's 410 Gone): status disabled and the time it asked, until
-- sync.enable_target.
UPDATE @extschema@.target_kinds
   SET implemented = true, description = 'Signed webhooks (Standard Webhooks, HMAC-SHA256)',
       optional_config = '{budget_per_min,timeout_ms,concurrency,batch_max_events,batch_max_bytes}'
 WHERE kind = 'webhook';
ALTER TABLE @extschema@.targets DROP CONSTRAINT targets_status_check,
    ADD CONSTRAINT targets_status_check CHECK (status IN ('unknown', 'ok', 'throttled', 'unreachable', 'auth_failed', 'misconfigured', 'disabled')),
    ADD COLUMN disabled_at timestamptz;
COMMENT ON COLUMN @extschema@.targets.status IS 'Last known health as reported by the worker: unknown, ok, throttled, unreachable, auth_failed (credentials refused or the secret unreadable), misconfigured (its configuration is wrong or its kind has no adapter in the worker), disabled (the target asked to be disabled, a webhook receiver''s 410 Gone: nothing is sent until sync.enable_target).';
COMMENT ON COLUMN @extschema@.targets.disabled_at IS 'When the target asked to be disabled (a webhook receiver answered 410 Gone); NULL: enabled. While set, sync.claim hands out nothing for it (its exports wait, none is dropped) and its status stays disabled; sync.enable_target clears it.';
