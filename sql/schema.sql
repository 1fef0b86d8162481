-- syncbridge: the state of schema sync. Loaded first (bootstrap); functions
-- come from Rust (pg_ext/src) and from the other files in sql/.
--
-- Everything a DBA may ask about syncbridge is a SELECT over these tables and
-- the views in sql/status.sql.

-- ---------------------------------------------------------------------------
-- Target kinds: what each kind of target needs and what it costs.
-- ---------------------------------------------------------------------------
CREATE TABLE target_kinds (
    kind              text PRIMARY KEY,
    description       text NOT NULL,
    implemented       boolean NOT NULL DEFAULT false,
    required_config   text[] NOT NULL DEFAULT '{}',
    optional_config   text[] NOT NULL DEFAULT '{}',
    batch_size        int NOT NULL CHECK (batch_size BETWEEN 1 AND 1000),
    cost_per_write    numeric NOT NULL CHECK (cost_per_write >= 0),
    cost_per_read     numeric NOT NULL CHECK (cost_per_read >= 0),
    cost_unit         text NOT NULL,
    default_budget_per_min numeric NOT NULL CHECK (default_budget_per_min > 0),
    field_name_pattern text NOT NULL,
    containers        text NOT NULL CHECK (containers IN ('none', 'existing', 'provisioned')),
    delete_mode       text NOT NULL CHECK (delete_mode IN ('remove', 'close', 'unsupported')),
    moves             text NOT NULL CHECK (moves IN ('native', 'delete_create', 'unsupported')),
    key_lookup        boolean NOT NULL,
    pull              text NOT NULL CHECK (pull IN ('delta', 'updated_since', 'none')),
    bulk_ops          text[] NOT NULL DEFAULT '{}' CHECK (bulk_ops <@ '{add,update,delete,move}'),
    item_costs        jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(item_costs) = 'object'),
    disable           boolean NOT NULL DEFAULT false
);
COMMENT ON COLUMN target_kinds.kind IS 'Kind name used by sync.create_target(kind => ...).';
COMMENT ON COLUMN target_kinds.description IS 'What the kind talks to.';
COMMENT ON COLUMN target_kinds.implemented IS 'Whether the worker has an adapter for this kind yet.';
COMMENT ON COLUMN target_kinds.required_config IS 'Keys that a target''s config must hold.';
COMMENT ON COLUMN target_kinds.optional_config IS 'Further keys a target''s config may hold; any other key is refused.';
COMMENT ON COLUMN target_kinds.batch_size IS 'Most requests the API accepts in one batch (Graph $batch: 20).';
COMMENT ON COLUMN target_kinds.cost_per_write IS 'Cost of one create/update/delete in the kind''s cost unit (Graph: 2 resource units).';
COMMENT ON COLUMN target_kinds.cost_per_read IS 'Cost of one single-item read (Graph: 1 resource unit).';
COMMENT ON COLUMN target_kinds.cost_unit IS 'Unit of the cost model (RU for Graph resource units, requests elsewhere).';
COMMENT ON COLUMN target_kinds.default_budget_per_min IS 'Budget per minute when the target''s config sets none (Graph: 1250 RU/min, a small tenant).';
COMMENT ON COLUMN target_kinds.field_name_pattern IS 'Regular expression a target field name must match.';
COMMENT ON COLUMN target_kinds.containers IS 'Where items live: none (a webhook), existing containers (a repository, a project, an OU), or provisioned ones syncbridge creates with their fields (SharePoint lists, sync.provision).';
COMMENT ON COLUMN target_kinds.delete_mode IS 'What a delete does: remove (or trash) the item, close it (GitHub), or unsupported.';
COMMENT ON COLUMN target_kinds.moves IS 'What a move to another container costs: native (one request), delete_create (a create and a delete: two), unsupported.';
COMMENT ON COLUMN target_kinds.key_lookup IS 'Whether an item can be found by the row''s key, to adopt it rather than create a twin after a create whose answer was lost.';
COMMENT ON COLUMN target_kinds.pull IS 'How changes are read back for two-way sync: delta (a cursor), updated_since, none.';
COMMENT ON COLUMN target_kinds.bulk_ops IS 'The operations whose items share a request, batch_size at a time (Graph $batch, Jira bulk create, Linear aliased mutations); the others take a request each.';
COMMENT ON COLUMN target_kinds.item_costs IS 'Per operation, what one item costs in cost_unit when it is not cost_per_write (a move: cost_per_write per request it takes): Jira''s bulk create, 3 requests (the twin search, the create, the read of the new issues) per 50 issues, is 0.06 an issue.';
COMMENT ON COLUMN target_kinds.disable IS 'Whether an item can be disabled before it is deleted (a directory account: locked): with a definition''s delete_grace, a delete first disables, and removes after the grace period.';
COMMENT ON TABLE target_kinds IS 'The kinds of target syncbridge knows: required configuration, batch size, API cost model and capabilities. Read-only reference data; the worker holds the same facts (a test compares them).';

INSERT INTO target_kinds (kind, description, implemented, required_config, optional_config,
                          batch_size, cost_per_write, cost_per_read, cost_unit, default_budget_per_min, field_name_pattern,
                          containers, delete_mode, moves, key_lookup, pull) VALUES
 ('graph',   'SharePoint / Teams lists through Microsoft Graph', true,
   '{tenant_id,client_id,site_id}', '{base_url,authority_url,budget_per_min,writes_per_second,timeout_ms,max_concurrent_batches,time_zone,pull_interval}',
   20, 2, 1, 'RU', 1250, '^[A-Za-z_][A-Za-z0-9_]{0,254}$',
   'provisioned', 'remove', 'delete_create', true, 'delta'),
 ('github',  'GitHub Issues (REST)', true, '{owner}', '{repo,base_url,budget_per_min,content_per_min,content_per_hour,timeout_ms,marker_label,close_reason,pull_interval}',
   1, 1, 1, 'requests', 80, '^[A-Za-z_][A-Za-z0-9_]{0,99}$',
   'existing', 'close', 'unsupported', true, 'updated_since'),
 ('jira',    'Jira Cloud issues (REST v3)', true, '{site,project_key}', '{base_url,budget_per_min,email,issue_type,timeout_ms,pull_interval}',
   50, 1, 1, 'requests', 100, '^[A-Za-z_][A-Za-z0-9_]{0,99}$',
   'existing', 'remove', 'unsupported', true, 'updated_since'),
 ('linear',  'Linear issues (GraphQL)', true, '{team_id}', '{base_url,budget_per_min,timeout_ms,on_delete,pull_interval}',
   50, 3, 1, 'complexity', 4000, '^[A-Za-z_][A-Za-z0-9_]{0,99}$',
   'existing', 'remove', 'native', true, 'updated_since'),
 ('webhook', 'Signed webhooks (Standard Webhooks, HMAC-SHA256)', true, '{url}', '{budget_per_min,timeout_ms,concurrency,batch_max_events,batch_max_bytes}',
   100, 1, 0, 'requests', 600, '^[A-Za-z_][A-Za-z0-9_.-]{0,99}$',
   'none', 'remove', 'native', false, 'none'),
 ('ldap',    'LDAP directory provisioning', true, '{url,base_dn}', '{bind_dn,starttls,ca_pem,disable_mechanism,disabled_container,placeholder_member,budget_per_min,timeout_ms,pull_interval}',
   1, 1, 1, 'operations', 6000, '^[A-Za-z][A-Za-z0-9-]{0,99}$',
   'existing', 'remove', 'native', true, 'updated_since');
-- How writes are priced (sync.plan): which operations go many to a request,
-- and the items whose cost is not cost_per_write.
UPDATE target_kinds k SET bulk_ops = v.bulk_ops, item_costs = v.item_costs
  FROM (VALUES ('graph', '{add,update,delete,move}'::text[], '{}'::jsonb),
               ('jira', '{add}', '{"add": 0.06}'),
               ('linear', '{add,update,delete,move}', '{}')) AS v(kind, bulk_ops, item_costs)
 WHERE k.kind = v.kind;
UPDATE target_kinds SET disable = true WHERE kind = 'ldap';

-- ---------------------------------------------------------------------------
-- Targets
-- ---------------------------------------------------------------------------
CREATE TABLE targets (
    name        text PRIMARY KEY,
    kind        text NOT NULL REFERENCES target_kinds (kind),
    config      jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(config) = 'object'),
    secret_ref  text CHECK (secret_ref ~ '^(env:[A-Za-z_][A-Za-z0-9_]*|file:/.+)$'),
    status      text NOT NULL DEFAULT 'unknown' CHECK (status IN ('unknown', 'ok', 'throttled', 'unreachable', 'auth_failed', 'misconfigured', 'disabled')),
    status_detail text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    disabled_at timestamptz
);
COMMENT ON TABLE targets IS 'External systems syncbridge writes to (one row per tenant/site/repository). Secrets are never stored here: only a reference.';
COMMENT ON COLUMN targets.name IS 'Name used by sync.define(target => ...).';
COMMENT ON COLUMN targets.kind IS 'Kind of target (sync.target_kinds).';
COMMENT ON COLUMN targets.config IS 'Non-secret configuration (for graph: tenant_id, client_id, site_id, base_url, authority_url, budget_per_min).';
COMMENT ON COLUMN targets.secret_ref IS 'Where the worker finds the secret: env:NAME (an environment variable of the worker) or file:/path (a file on the worker''s machine). Never the secret itself.';
COMMENT ON COLUMN targets.status IS 'Last known health as reported by the worker: unknown, ok, throttled, unreachable, auth_failed (credentials refused or the secret unreadable), misconfigured (its configuration is wrong or its kind has no adapter in the worker), disabled (the target asked to be disabled, a webhook receiver''s 410 Gone: nothing is sent until sync.enable_target).';
COMMENT ON COLUMN targets.status_detail IS 'The worker''s last message about the target''s health.';
COMMENT ON COLUMN targets.disabled_at IS 'When the target asked to be disabled (a webhook receiver answered 410 Gone); NULL: enabled. While set, sync.claim hands out nothing for it (its exports wait, none is dropped) and its status stays disabled; sync.enable_target clears it.';
COMMENT ON COLUMN targets.created_at IS 'When the target was created.';
COMMENT ON COLUMN targets.updated_at IS 'When the target was last changed.';

CREATE TABLE target_budgets (
    target      text PRIMARY KEY REFERENCES targets (name) ON UPDATE CASCADE ON DELETE CASCADE,
    tokens      double precision NOT NULL,
    refreshed_at timestamptz NOT NULL,
    granted     double precision NOT NULL DEFAULT 0,
    takes       bigint NOT NULL DEFAULT 0
);
COMMENT ON TABLE target_budgets IS 'Each target''s request budget, shared by every exporter of every worker (sync.budget_take): a token bucket refilled at budget_per_min less its capacity, so that no sliding minute sees more than budget_per_min spent in all.';
COMMENT ON COLUMN target_budgets.target IS 'The target (sync.targets.name).';
COMMENT ON COLUMN target_budgets.tokens IS 'Units left in the bucket at refreshed_at (negative: a request costlier than the bucket holds was granted, and is paid back first).';
COMMENT ON COLUMN target_budgets.refreshed_at IS 'When tokens was last computed.';
COMMENT ON COLUMN target_budgets.granted IS 'Units granted to exporters in all (the budget spent, or held by an exporter for its next requests).';
COMMENT ON COLUMN target_budgets.takes IS 'Grants made in all.';

-- ---------------------------------------------------------------------------
-- Definitions
-- ---------------------------------------------------------------------------
CREATE TABLE definitions (
    id            int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name          text NOT NULL UNIQUE,
    source_rel    regclass NOT NULL,
    target        text NOT NULL REFERENCES targets (name) ON UPDATE CASCADE,
    list          text,
    key_columns   name[] NOT NULL CHECK (cardinality(key_columns) BETWEEN 1 AND 32),
    direction     text NOT NULL DEFAULT 'push' CHECK (direction IN ('push', 'pull', 'both')),
    conflict      text NOT NULL DEFAULT 'source_wins' CHECK (conflict IN ('source_wins', 'target_wins', 'newest_wins', 'manual')),
    row_filter    text,
    approval      text NOT NULL DEFAULT 'none' CHECK (approval IN ('none', 'deletes', 'all')),
    delete_scope  text NOT NULL DEFAULT 'provisioned' CHECK (delete_scope IN ('provisioned', 'all', 'none')),
    max_attempts  int NOT NULL DEFAULT 10 CHECK (max_attempts BETWEEN 1 AND 1000),
    state         text NOT NULL DEFAULT 'configuring' CHECK (state IN ('configuring', 'active', 'paused', 'error', 'disabled')),
    state_reason  text,
    revision      int NOT NULL DEFAULT 1,
    start_lsn     pg_lsn,
    backfill      text NOT NULL DEFAULT 'needed' CHECK (backfill IN ('needed', 'running', 'done')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    inbound_deletes text NOT NULL DEFAULT 'approve' CHECK (inbound_deletes IN ('apply', 'approve', 'ignore')),
    inbound_inserts text NOT NULL DEFAULT 'apply' CHECK (inbound_inserts IN ('apply', 'approve', 'ignore')),
    source_name   text,
    delete_grace  interval CHECK (delete_grace >= interval '0')
);
CREATE INDEX definitions_source_rel_idx ON definitions (source_rel);
COMMENT ON TABLE definitions IS 'Sync definitions: which table goes to which target list, keyed how, filtered how, under which policies. Create with sync.define().';
COMMENT ON COLUMN definitions.id IS 'Surrogate key, referenced by the state tables.';
COMMENT ON COLUMN definitions.name IS 'The definition''s name, used by every sync.* function.';
COMMENT ON COLUMN definitions.source_rel IS 'The source table.';
COMMENT ON COLUMN definitions.target IS 'The target (sync.targets) rows go to.';
COMMENT ON COLUMN definitions.list IS 'Default target list (SharePoint list, repository, project...); rows matching no shard go here; NULL means such rows are not synced.';
COMMENT ON COLUMN definitions.key_columns IS 'Columns identifying a row (a primary key or NOT NULL unique index covers them); their value becomes the item''s SyncKey.';
COMMENT ON COLUMN definitions.direction IS 'push (database to target), pull (target to database) or both.';
COMMENT ON COLUMN definitions.conflict IS 'Policy when both sides changed a field (two-way): source_wins, target_wins, newest_wins or manual (queued in sync.conflicts).';
COMMENT ON COLUMN definitions.row_filter IS 'SQL boolean expression over the source row; only rows for which it is true are synced (privacy: only shareable rows leave).';
COMMENT ON COLUMN definitions.approval IS 'Which exports wait for sync.approve(): none, deletes, or all.';
COMMENT ON COLUMN definitions.delete_scope IS 'Which target items a delete may reach: provisioned (only items syncbridge created), all (joined items too), none (never delete remotely).';
COMMENT ON COLUMN definitions.max_attempts IS 'Attempts before a failing export goes to state error (then only sync.retry re-queues it).';
COMMENT ON COLUMN definitions.state IS 'configuring (defined, not enabled), active, paused (staging goes on, nothing is sent), error (see state_reason), disabled.';
COMMENT ON COLUMN definitions.state_reason IS 'Why the definition is in its state (set for error and by pause).';
COMMENT ON COLUMN definitions.revision IS 'Bumped on every change of the definition, its mappings or shards, and on DDL of its source table; compiled SQL is cached per revision.';
COMMENT ON COLUMN definitions.start_lsn IS 'Changes committed before this LSN are ignored by staging (set by sync.reset_cursor(to => ''now'' | lsn)).';
COMMENT ON COLUMN definitions.backfill IS 'Initial load of the whole table: needed, running, done.';
COMMENT ON COLUMN definitions.created_at IS 'When the definition was created.';
COMMENT ON COLUMN definitions.updated_at IS 'When the definition was last changed.';
COMMENT ON COLUMN definitions.inbound_deletes IS 'Two-way: what an item deleted on the target does to its row: apply (the row is deleted), approve (it waits for sync.approve_import; the default: an external change never removes local data without a person''s say), ignore (the row stays).';
COMMENT ON COLUMN definitions.inbound_inserts IS 'Two-way: what an item created on the target (without a SyncKey) does: apply (a row is inserted, its key from the table''s defaults, and the item gets its SyncKey), approve (it waits for sync.approve_import), ignore.';
COMMENT ON COLUMN definitions.delete_grace IS 'Kinds that can disable (sync.target_kinds.disable, LDAP): a deleted or filtered-out row''s item is disabled at once and deleted only this long after (a scheduled delete export, approvable); a row back within it re-enables the same item. NULL: deleted at once.';
COMMENT ON COLUMN definitions.source_name IS 'The source table''s schema-qualified name when the definition was made or last enabled: a rename is a schema change (the definition goes to error until sync.resume).';

-- ---------------------------------------------------------------------------
-- Field mappings
-- ---------------------------------------------------------------------------
CREATE TABLE field_maps (
    definition_id int NOT NULL REFERENCES definitions (id) ON DELETE CASCADE,
    column_name   name,
    field         text NOT NULL,
    direction     text NOT NULL DEFAULT 'push' CHECK (direction IN ('push', 'pull', 'both')),
    transform     text,
    transform_type regtype,
    reference     text,
    position      int NOT NULL,
    PRIMARY KEY (definition_id, field),
    CHECK (column_name IS NOT NULL OR transform IS NOT NULL)
);
COMMENT ON TABLE field_maps IS 'Source column to target field mappings. A definition without any mapping sends every column under its own name.';
COMMENT ON COLUMN field_maps.definition_id IS 'The definition (sync.definitions.id).';
COMMENT ON COLUMN field_maps.column_name IS 'Source column (NULL for a field computed by a transform alone).';
COMMENT ON COLUMN field_maps.field IS 'Target field (SharePoint column internal name, issue field...).';
COMMENT ON COLUMN field_maps.direction IS 'push (sent to the target), pull (read back from the target, e.g. read-only system fields), both.';
COMMENT ON COLUMN field_maps.transform IS 'Optional SQL expression over the source row computing the value sent (instead of the column itself).';
COMMENT ON COLUMN field_maps.transform_type IS 'Type of the transform''s result (decides its JSON serialization).';
COMMENT ON COLUMN field_maps.reference IS 'Name of the definition whose rows this column references; the value sent is the referenced row''s target item id (resolved by the exporter).';
COMMENT ON COLUMN field_maps.position IS 'Order of the mapping (the order fields are shown in).';

-- ---------------------------------------------------------------------------
-- Shards
-- ---------------------------------------------------------------------------
CREATE TABLE shards (
    definition_id int NOT NULL REFERENCES definitions (id) ON DELETE CASCADE,
    position      int NOT NULL,
    predicate     text NOT NULL,
    list          text NOT NULL,
    PRIMARY KEY (definition_id, position)
);
COMMENT ON TABLE shards IS 'Shard rules: a row goes to the list of the first predicate it matches, in position order, else to the definition''s list.';
COMMENT ON COLUMN shards.definition_id IS 'The definition (sync.definitions.id).';
COMMENT ON COLUMN shards.position IS 'Evaluation order (lowest first).';
COMMENT ON COLUMN shards.predicate IS 'SQL boolean expression over the source row.';
COMMENT ON COLUMN shards.list IS 'Target list for rows matching the predicate.';

-- ---------------------------------------------------------------------------
-- Target lists (per definition): what exists on the target side
-- ---------------------------------------------------------------------------
CREATE TABLE target_lists (
    definition_id  int NOT NULL REFERENCES definitions (id) ON DELETE CASCADE,
    list           text NOT NULL,
    remote_id      text,
    provisioned_at timestamptz,
    columns        jsonb,
    PRIMARY KEY (definition_id, list)
);
COMMENT ON TABLE target_lists IS 'Target lists a definition writes to, with their id on the target once known (provisioned or found).';
COMMENT ON COLUMN target_lists.definition_id IS 'The definition (sync.definitions.id).';
COMMENT ON COLUMN target_lists.list IS 'List name (display name).';
COMMENT ON COLUMN target_lists.remote_id IS 'The list''s id on the target, once created or found.';
COMMENT ON COLUMN target_lists.provisioned_at IS 'When syncbridge created the list (NULL: not created by syncbridge, or not yet).';
COMMENT ON COLUMN target_lists.columns IS 'Columns as provisioned: [{name, type, indexed, hidden}].';

-- ---------------------------------------------------------------------------
-- Runs
-- ---------------------------------------------------------------------------
CREATE TABLE runs (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    definition_id int REFERENCES definitions (id) ON DELETE SET NULL,
    kind          text NOT NULL CHECK (kind IN ('stream', 'backfill', 'export', 'pull', 'reconcile', 'manual', 'drift', 'rollback', 'job')),
    worker        text,
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    status        text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'succeeded', 'failed', 'cancelled')),
    staged        bigint NOT NULL DEFAULT 0,
    exported      bigint NOT NULL DEFAULT 0,
    failed        bigint NOT NULL DEFAULT 0,
    requests      bigint NOT NULL DEFAULT 0,
    error         text,
    started_by    text,
    job_id        bigint,
    scheduled_for timestamptz,
    detail        jsonb
);
CREATE INDEX runs_definition_idx ON runs (definition_id, started_at DESC);
-- A scheduled job's occurrence runs once, whichever worker claims it.
CREATE UNIQUE INDEX runs_job_occurrence_idx ON runs (job_id, scheduled_for) WHERE job_id IS NOT NULL;
COMMENT ON TABLE runs IS 'One row per sync run (a backfill, a stream session, an exporter session): counts, timings, errors.';
COMMENT ON COLUMN runs.id IS 'Run id (referenced by pending exports it staged or sent).';
COMMENT ON COLUMN runs.definition_id IS 'The definition, when the run concerns one.';
COMMENT ON COLUMN runs.kind IS 'stream, backfill, export, pull, drift (a drift check), reconcile, rollback, job (a scheduled job''s occurrence) or manual.';
COMMENT ON COLUMN runs.worker IS 'Which worker ran it (host:pid).';
COMMENT ON COLUMN runs.started_at IS 'Start time.';
COMMENT ON COLUMN runs.finished_at IS 'End time (NULL while running).';
COMMENT ON COLUMN runs.status IS 'running, succeeded, failed, cancelled.';
COMMENT ON COLUMN runs.staged IS 'Pending exports staged by the run.';
COMMENT ON COLUMN runs.exported IS 'Exports the run delivered.';
COMMENT ON COLUMN runs.failed IS 'Exports that failed during the run.';
COMMENT ON COLUMN runs.requests IS 'Requests sent to the target.';
COMMENT ON COLUMN runs.error IS 'Why the run failed.';
COMMENT ON COLUMN runs.started_by IS 'Who or what started it: a role (sync.check_drift, sync.reconcile, sync.rollback), worker host:pid, or job:<name> (a scheduled job).';
COMMENT ON COLUMN runs.job_id IS 'For kind job, and for what a job started: the scheduled job (sync.schedules.id).';
COMMENT ON COLUMN runs.scheduled_for IS 'For kind job: the occurrence it ran (unique per job: each runs once).';
COMMENT ON COLUMN runs.detail IS 'What the run did beyond the counts (a drift check''s findings, a reconcile''s or rollback''s staged operations, a job''s result).';

-- ---------------------------------------------------------------------------
-- Ledger
-- ---------------------------------------------------------------------------
CREATE TABLE ledger (
    definition_id int NOT NULL REFERENCES definitions (id) ON DELETE CASCADE,
    sync_key      text NOT NULL,
    list          text NOT NULL,
    target_id     text,
    etag          text,
    fields        jsonb NOT NULL,
    hash          bytea NOT NULL,
    join_type     text NOT NULL DEFAULT 'provisioned' CHECK (join_type IN ('provisioned', 'joined', 'projected')),
    provenance    text NOT NULL DEFAULT 'push' CHECK (provenance IN ('push', 'pull')),
    first_synced_at timestamptz NOT NULL DEFAULT now(),
    last_synced_at  timestamptz NOT NULL DEFAULT now(),
    disabled_at   timestamptz,
    PRIMARY KEY (definition_id, sync_key)
);
-- Inbound changes arrive by item id. (Not led by definition_id, so that the
-- planner never mistakes it for the key lookup.)
CREATE INDEX ledger_target_id_idx ON ledger (target_id) WHERE target_id IS NOT NULL;
COMMENT ON TABLE ledger IS 'What syncbridge knows is on the target: per definition and key, the item, its eTag and the fields last sent (with their hash).';
COMMENT ON COLUMN ledger.definition_id IS 'The definition (sync.definitions.id).';
COMMENT ON COLUMN ledger.sync_key IS 'The row''s key as text (one column: its text value; several: a JSON array of texts); stored in the item''s SyncKey field.';
COMMENT ON COLUMN ledger.list IS 'The list the item is in.';
COMMENT ON COLUMN ledger.target_id IS 'The item''s id on the target.';
COMMENT ON COLUMN ledger.etag IS 'The item''s eTag after syncbridge''s last write.';
COMMENT ON COLUMN ledger.fields IS 'The mapped fields as last sent (JSON object).';
COMMENT ON COLUMN ledger.hash IS 'SHA-256 of the fields as last sent; an unchanged row hashes the same and is never sent again.';
COMMENT ON COLUMN ledger.join_type IS 'provisioned (syncbridge created the item), joined (an existing item adopted by key), projected (known, not yet written).';
COMMENT ON COLUMN ledger.provenance IS 'Whether the last change came from the database (push) or the target (pull).';
COMMENT ON COLUMN ledger.first_synced_at IS 'When the item was first written or joined.';
COMMENT ON COLUMN ledger.last_synced_at IS 'When the item was last written.';
COMMENT ON COLUMN ledger.disabled_at IS 'When the item was disabled (definitions.delete_grace): its delete is scheduled for disabled_at + delete_grace; a row back before then re-enables it.';

-- ---------------------------------------------------------------------------
-- Pending exports
-- ---------------------------------------------------------------------------
CREATE TABLE pending_exports (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- No foreign key: its per-row RI check (a query per inserted row) was a
    -- sixth of staging. It is kept as RI keeps it: every writer locks the
    -- definition row FOR KEY SHARE before inserting for it (once per
    -- statement), and deleting a definition deletes its exports (trigger
    -- definitions_delete_exports below).
    definition_id int NOT NULL,
    sync_key      text,
    op            text NOT NULL CHECK (op IN ('add', 'update', 'delete', 'move', 'provision', 'disable')),
    list          text NOT NULL,
    from_list     text,
    target_id     text,
    etag          text,
    payload       jsonb NOT NULL DEFAULT '{}',
    previous      jsonb,
    hash          bytea,
    status        text NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'awaiting_approval', 'executing', 'exported', 'failed', 'error', 'confirmed', 'cancelled')),
    attempts      int NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    lease_until   timestamptz,
    leased_by     text,
    last_error    text,
    error_class   text CHECK (error_class IN ('transient', 'throttled', 'auth', 'definite', 'conflict')),
    approved_by   name,
    approved_at   timestamptz,
    lsn           pg_lsn,
    verify        boolean NOT NULL DEFAULT false,
    -- No foreign key: a per-row RI check costs ~5 us on the staging path
    -- (a sixth of it); the run is informational, and may have been purged.
    run_id        bigint,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    exported_at   timestamptz,
    sent_run      bigint,
    rollback      boolean NOT NULL DEFAULT false,
    changed_since boolean NOT NULL DEFAULT false,
    -- (no key: a provision, or the delete of an item no row owns, staged by
    -- a mirror reconcile)
    CHECK (CASE WHEN op = 'provision' THEN sync_key IS NULL ELSE sync_key IS NOT NULL OR op = 'delete' END),
    CHECK (op <> 'move' OR from_list IS NOT NULL)
);
-- At most one open (not yet sent) export per key: later changes coalesce into it.
CREATE UNIQUE INDEX pending_exports_open_key_idx ON pending_exports (definition_id, sync_key)
    WHERE status IN ('pending', 'awaiting_approval', 'failed', 'error') AND sync_key IS NOT NULL;
CREATE UNIQUE INDEX pending_exports_open_provision_idx ON pending_exports (definition_id, list)
    WHERE status IN ('pending', 'awaiting_approval', 'failed', 'error', 'executing') AND op = 'provision';
-- The exporter's queue: a definition's claimable rows in order (claim walks
-- it and stops after n rows, whatever the size of the backlog).
CREATE INDEX pending_exports_claim_idx ON pending_exports (definition_id, next_attempt_at, id)
    WHERE status IN ('pending', 'failed');
CREATE INDEX pending_exports_lease_idx ON pending_exports (lease_until) WHERE status = 'executing';
-- Staging compares a key with the export in flight for it.
CREATE INDEX pending_exports_executing_key_idx ON pending_exports (definition_id, sync_key, id) WHERE status = 'executing';
CREATE INDEX pending_exports_status_idx ON pending_exports (definition_id, status);
-- A rollback's exports: claimed while their definition is paused; staging
-- leaves their keys alone.
CREATE INDEX pending_exports_rollback_idx ON pending_exports (definition_id, next_attempt_at, id)
    WHERE rollback AND status IN ('pending', 'failed');
CREATE INDEX pending_exports_rollback_key_idx ON pending_exports (definition_id, sync_key)
    WHERE rollback AND status IN ('pending', 'awaiting_approval', 'failed', 'error');

CREATE FUNCTION _delete_exports_of_definition() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM sync.pending_exports WHERE definition_id = OLD.id;
    RETURN NULL;
END $$;
-- The ON DELETE CASCADE pending_exports.definition_id does not have. A writer
-- holding the definition row FOR KEY SHARE makes the DELETE wait for its
-- commit, so its exports are deleted too.
CREATE TRIGGER definitions_delete_exports AFTER DELETE ON definitions
    FOR EACH ROW EXECUTE FUNCTION _delete_exports_of_definition();
COMMENT ON TABLE pending_exports IS 'The export queue. Lifecycle: pending -> (awaiting_approval ->) executing -> exported -> confirmed; on failure failed -> pending with backoff until max_attempts, then error (sync.retry re-queues).';
COMMENT ON COLUMN pending_exports.id IS 'Export id (used by sync.approve, sync.retry).';
COMMENT ON COLUMN pending_exports.definition_id IS 'The definition (sync.definitions.id).';
COMMENT ON COLUMN pending_exports.sync_key IS 'The row''s key (NULL for provision, and for the delete of an item no row owns: a mirror reconcile''s orphan).';
COMMENT ON COLUMN pending_exports.op IS 'add, update, delete, move (delete from from_list + create in list, one export), provision (create the list and its columns), disable (definitions.delete_grace: the item disabled; its delete follows after the grace).';
COMMENT ON COLUMN pending_exports.list IS 'Target list.';
COMMENT ON COLUMN pending_exports.from_list IS 'For a move: the list the item leaves.';
COMMENT ON COLUMN pending_exports.target_id IS 'The target item id when known (update, delete, move: from the ledger).';
COMMENT ON COLUMN pending_exports.etag IS 'The eTag the ledger knows, for If-Match.';
COMMENT ON COLUMN pending_exports.payload IS 'Fields to send: all mapped fields for add and move, the changed ones for update; for provision the list''s columns.';
COMMENT ON COLUMN pending_exports.previous IS 'Previous values of the changed fields (update), or of the whole item (delete).';
COMMENT ON COLUMN pending_exports.hash IS 'Hash of all mapped fields after this export (goes to the ledger).';
COMMENT ON COLUMN pending_exports.status IS 'pending, awaiting_approval, executing, exported, failed, error, confirmed, cancelled.';
COMMENT ON COLUMN pending_exports.attempts IS 'Attempts so far.';
COMMENT ON COLUMN pending_exports.next_attempt_at IS 'Not claimed before this time (exponential backoff after failures, Retry-After).';
COMMENT ON COLUMN pending_exports.lease_until IS 'While executing: the claim expires at this time and the export becomes claimable again (recovered safely).';
COMMENT ON COLUMN pending_exports.leased_by IS 'Which worker holds the claim.';
COMMENT ON COLUMN pending_exports.last_error IS 'The target''s last error message.';
COMMENT ON COLUMN pending_exports.error_class IS 'How the last error was classified: transient, throttled, auth, definite, conflict (the item changed on the target: 412 to If-Match; its change is pulled and decided first).';
COMMENT ON COLUMN pending_exports.approved_by IS 'Who approved it (approval mode).';
COMMENT ON COLUMN pending_exports.approved_at IS 'When it was approved.';
COMMENT ON COLUMN pending_exports.lsn IS 'LSN of the last change staged into it.';
COMMENT ON COLUMN pending_exports.verify IS 'An earlier attempt may have reached the target (its outcome is unknown): the exporter looks the item up by SyncKey first and adopts it instead of creating a twin.';
COMMENT ON COLUMN pending_exports.run_id IS 'The run that staged it (its last change: a stream, a backfill, a reconcile, a rollback; sync.runs.id, not a foreign key, for staging speed: it may name a purged run).';
COMMENT ON COLUMN pending_exports.sent_run IS 'The exporter run that last sent it (sync.runs.id).';
COMMENT ON COLUMN pending_exports.rollback IS 'Staged by sync.rollback: sent (once approved) while its definition is paused; staging does not merge a change of the row into it.';
COMMENT ON COLUMN pending_exports.changed_since IS 'A rollback export whose row changed after it was staged: the row is staged again once it is sent.';
COMMENT ON COLUMN pending_exports.created_at IS 'When it was first staged.';
COMMENT ON COLUMN pending_exports.updated_at IS 'When it last changed (a coalesced change, a claim, a result).';
COMMENT ON COLUMN pending_exports.exported_at IS 'When the target accepted it.';

-- ---------------------------------------------------------------------------
-- Cursors
-- ---------------------------------------------------------------------------
CREATE TABLE cursors (
    kind          text NOT NULL CHECK (kind IN ('slot', 'delta', 'backfill', 'watermark')),
    scope         text NOT NULL,
    definition_id int REFERENCES definitions (id) ON DELETE CASCADE,
    lsn           pg_lsn,
    token         text,
    position      jsonb,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, scope)
);
COMMENT ON TABLE cursors IS 'Where each stream stands: the confirmed LSN per slot, the delta token per target list, the backfill position per definition.';
COMMENT ON COLUMN cursors.kind IS 'slot (LSN staged for a replication slot), delta (a target list''s delta token), backfill (last key done), watermark.';
COMMENT ON COLUMN cursors.scope IS 'The slot name, or definition/list, the cursor belongs to.';
COMMENT ON COLUMN cursors.definition_id IS 'The definition, for per-definition cursors.';
COMMENT ON COLUMN cursors.lsn IS 'LSN up to which everything is durably staged (slot), or the snapshot LSN (backfill).';
COMMENT ON COLUMN cursors.token IS 'Opaque continuation token (Graph deltaLink token).';
COMMENT ON COLUMN cursors.position IS 'Structured position (backfill: last key, rows done, rows total).';
COMMENT ON COLUMN cursors.updated_at IS 'When the cursor last moved.';

-- ---------------------------------------------------------------------------
-- Conflicts (two-way sync)
-- ---------------------------------------------------------------------------
CREATE TABLE conflicts (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    definition_id int NOT NULL REFERENCES definitions (id) ON DELETE CASCADE,
    sync_key      text NOT NULL,
    field         text NOT NULL,
    base_value    jsonb,
    local_value   jsonb,
    remote_value  jsonb,
    detected_at   timestamptz NOT NULL DEFAULT now(),
    resolution    text CHECK (resolution IN ('local', 'remote', 'custom', 'superseded')),
    resolved_value jsonb,
    resolved_by   name,
    resolved_at   timestamptz,
    import_id     bigint,
    target_id     text,
    local_time    timestamptz,
    remote_time   timestamptz
);
CREATE INDEX conflicts_open_idx ON conflicts (definition_id, detected_at) WHERE resolution IS NULL;
COMMENT ON TABLE conflicts IS 'Fields changed on both sides since the last sync (two-way definitions with conflict => manual): both values, awaiting sync.resolve().';
COMMENT ON COLUMN conflicts.id IS 'Conflict id (used by sync.resolve).';
COMMENT ON COLUMN conflicts.definition_id IS 'The definition (sync.definitions.id).';
COMMENT ON COLUMN conflicts.sync_key IS 'The row''s key.';
COMMENT ON COLUMN conflicts.field IS 'The target field in conflict.';
COMMENT ON COLUMN conflicts.base_value IS 'The value both sides last agreed on (from the ledger).';
COMMENT ON COLUMN conflicts.local_value IS 'The database''s value.';
COMMENT ON COLUMN conflicts.remote_value IS 'The target''s value.';
COMMENT ON COLUMN conflicts.detected_at IS 'When the conflict was detected.';
COMMENT ON COLUMN conflicts.resolution IS 'local, remote or custom (sync.resolve), superseded (a newer change of the item replaced it); NULL while open.';
COMMENT ON COLUMN conflicts.resolved_value IS 'The value chosen.';
COMMENT ON COLUMN conflicts.resolved_by IS 'Who resolved it.';
COMMENT ON COLUMN conflicts.resolved_at IS 'When it was resolved.';
COMMENT ON COLUMN conflicts.import_id IS 'The inbound change it came with (sync.pending_imports.id).';
COMMENT ON COLUMN conflicts.target_id IS 'The item''s id on the target.';
COMMENT ON COLUMN conflicts.local_time IS 'When the database''s value was committed (or staged, or first seen: see the README on newest_wins).';
COMMENT ON COLUMN conflicts.remote_time IS 'When the target''s value was written (its Modified).';

-- The configuration is part of a dump of the database; the state tables too,
-- so that a restored database knows what is already on the targets.
SELECT pg_catalog.pg_extension_config_dump('targets', '');
SELECT pg_catalog.pg_extension_config_dump('definitions', '');
SELECT pg_catalog.pg_extension_config_dump('field_maps', '');
SELECT pg_catalog.pg_extension_config_dump('shards', '');
SELECT pg_catalog.pg_extension_config_dump('target_lists', '');
SELECT pg_catalog.pg_extension_config_dump('ledger', '');
SELECT pg_catalog.pg_extension_config_dump('pending_exports', '');
SELECT pg_catalog.pg_extension_config_dump('cursors', '');
SELECT pg_catalog.pg_extension_config_dump('runs', '');
SELECT pg_catalog.pg_extension_config_dump('conflicts', '');
