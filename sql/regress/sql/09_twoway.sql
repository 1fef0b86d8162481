-- Two-way sync in the extension: directions, pulls (leases, pages, full
-- reads), the three-way decision per field, conflicts and their policies,
-- inbound creates and deletes, If-Match and read-back fields in the queue.
\set SHOW_CONTEXT never
BEGIN;
CREATE TABLE hr.tasks (
    id serial PRIMARY KEY,
    title text NOT NULL,
    status varchar(20),
    points int,
    done boolean,
    sp_modified timestamptz,
    sp_id int
);
INSERT INTO hr.tasks (title, status, points, done) VALUES ('Write docs', 'open', 3, false), ('Fix bug', 'open', 5, false);
SELECT sync.create_target('sp', kind => 'graph', config => '{"tenant_id": "t", "client_id": "c", "site_id": "s", "pull_interval": 30}');
SELECT sync.define('tasks_sp', source => 'hr.tasks', target => 'sp', list => 'Tasks', direction => 'both', conflict => 'manual',
                   inbound_deletes => 'approve');
-- A field goes the definition's way unless told otherwise.
SELECT sync.map('tasks_sp', 'title', 'Title'), sync.map('tasks_sp', 'status', 'Status'), sync.map('tasks_sp', 'points', 'Points'),
       sync.map('tasks_sp', 'done', 'Done', direction => 'push'),
       sync.map('tasks_sp', 'sp_modified', 'Modified', direction => 'pull'), sync.map('tasks_sp', 'sp_id', 'ID', direction => 'pull');
SELECT field, column_name, direction FROM sync.field_maps ORDER BY position;
-- Bad input.
SELECT * FROM regress.err($$SELECT sync.map('tasks_sp', 'id', 'RowId', direction => 'both')$$);
SELECT * FROM regress.err($$SELECT sync.map('tasks_sp', 'points', 'Modified', direction => 'pull')$$);
SELECT * FROM regress.err($$SELECT sync.map('tasks_sp', 'done', 'EditorLookupId', direction => 'pull')$$);
SELECT * FROM regress.err($$SELECT sync.define('x', source => 'hr.tasks', target => 'sp', list => 'X', direction => 'both', inbound_deletes => 'maybe')$$);
SELECT * FROM regress.err($$SELECT sync.create_target('sp2', kind => 'graph', config => '{"tenant_id": "t", "client_id": "c", "site_id": "s", "pull_interval": 0}')$$);
SELECT sync.enable('tasks_sp');
SELECT sync.provision('tasks_sp');
SELECT op FROM sync.claim('sp', 10, worker => 'w1');
SELECT * FROM sync.complete(jsonb_build_array(jsonb_build_object(
    'id', (SELECT id FROM sync.pending_exports WHERE op = 'provision'), 'ok', true, 'list_id', 'L1')));
SELECT * FROM sync.stage('hr.tasks', '[{"id": "1"}, {"id": "2"}]');
-- Two-way: the claim carries read_back (pull-only fields) and, once the
-- item is known, its eTag for If-Match.
SELECT sync_key, op, etag, payload, read_back FROM sync.claim('sp', 10, worker => 'w1') ORDER BY sync_key;
SELECT * FROM sync.complete(jsonb_build_array(
    jsonb_build_object('id', (SELECT id FROM sync.pending_exports WHERE sync_key = '1'), 'ok', true, 'target_id', '11', 'etag', '"a,1"',
                       'fields', jsonb_build_object('Modified', '2026-01-01T10:00:00Z', 'ID', 11)),
    jsonb_build_object('id', (SELECT id FROM sync.pending_exports WHERE sync_key = '2'), 'ok', true, 'target_id', '12', 'etag', '"b,1"',
                       'fields', jsonb_build_object('Modified', '2026-01-01T10:00:01Z', 'ID', 12))), worker => 'w1');
SELECT target_id, sync_key, origin, status FROM sync.pending_imports ORDER BY id;
-- The answers' read-only fields reach the row; they are echoes otherwise.
SELECT * FROM sync.apply_imports('sp', worker => 'w1');
SELECT id, title, sp_modified, sp_id FROM hr.tasks ORDER BY id;
SELECT target_id, status, decision, last_error FROM sync.pending_imports ORDER BY id;

-- Pulling: one worker leases the list; a second gets nothing.
SELECT sync.pull_due('sp') AS due_now, sync.pull_due('sp_nothing_to_pull') AS no_lists;
SELECT definition, list, list_id, link, fields, round FROM sync.pull_claim('sp', worker => 'w1');
SELECT count(*) AS second_worker FROM sync.pull_claim('sp', worker => 'w2', force => true);
-- A page under another worker's name or an old round is refused.
SELECT * FROM regress.err($$SELECT sync.pull_page('tasks_sp', 'Tasks', 1, '[]', 'https://x/next', false, 'w2')$$);
SELECT * FROM regress.err($$SELECT sync.pull_page('tasks_sp', 'Tasks', 1, '[{"id": 7}]', 'https://x/next', false, 'w1')$$);
-- A full read: item 11 as it is (our own write), 12 edited by a person, 13
-- created by a person; 12 comes twice, the last counts.
SELECT sync.pull_page('tasks_sp', 'Tasks', 1, '[
  {"id": "11", "etag": "\"a,1\"", "fields": {"SyncKey": "1", "Title": "Write docs", "Status": "open", "Points": 3, "Done": false, "Modified": "2026-01-01T10:00:00Z", "ID": 11}},
  {"id": "12", "etag": "\"b,2\"", "fields": {"SyncKey": "2", "Title": "Fix bug", "Status": "open", "Points": 5}}
]', 'https://graph.example/next1', false, 'w1') AS stored;
SELECT page_link, full_read, pages FROM sync.pulls;
SELECT sync.pull_page('tasks_sp', 'Tasks', 1, '[
  {"id": "12", "etag": "\"b,3\"", "modified": "2026-01-02T09:00:00Z", "fields": {"SyncKey": "2", "Title": "Fix the bug", "Status": "doing", "Points": 8.0, "Done": true, "Modified": "2026-01-02T09:00:00Z", "ID": 12}},
  {"id": "13", "etag": "\"c,1\"", "fields": {"Title": "Made in SharePoint", "Status": "new", "Points": 1, "Modified": "2026-01-02T09:30:00Z", "ID": 13}}
]', 'https://graph.example/delta1', true, 'w1') AS stored;
SELECT link, page_link, full_read, leased_by, next_pull_at > now() + interval '25 seconds' AS next_in_30s FROM sync.pulls;
SELECT op, sync_key, changed, queued FROM sync.plan('tasks_sp') WHERE op LIKE 'inbound%' ORDER BY sync_key NULLS LAST;
SELECT * FROM sync.apply_imports('sp', worker => 'w1');
-- Remote-only changes are applied; Done is push-only: put back (the
-- database's value goes again); the new item became a row, whose SyncKey
-- is written back.
SELECT id, title, status, points, done, sp_modified, sp_id FROM hr.tasks ORDER BY id;
SELECT target_id, sync_key, status, decision, last_error FROM sync.pending_imports WHERE origin <> 'write' ORDER BY id;
SELECT sync_key, etag, fields, join_type, provenance FROM sync.ledger WHERE definition_id = (SELECT id FROM sync.definitions WHERE name = 'tasks_sp') ORDER BY sync_key;
SELECT sync_key, op, payload, status FROM sync.pending_exports WHERE status = 'pending' ORDER BY sync_key;

-- Both sides change Title of item 11: under manual, a conflict; the key's
-- exports wait.
UPDATE hr.tasks SET title = 'Write the docs', points = 4 WHERE id = 1;
SELECT * FROM sync.stage('hr.tasks', '[{"id": "1"}]');
SELECT round FROM sync.pull_claim('sp', worker => 'w1', force => true);
SELECT sync.pull_page('tasks_sp', 'Tasks', 2, '[
  {"id": "11", "etag": "\"a,2\"", "modified": "2026-01-03T00:00:00Z", "fields": {"SyncKey": "1", "Title": "Write all docs", "Status": "done", "Points": 3}}
]', 'https://graph.example/delta2', true, 'w1');
SELECT * FROM sync.apply_imports('sp', worker => 'w1');
SELECT sync_key, field, base_value, local_value, remote_value, resolution FROM sync.conflicts ORDER BY id;
SELECT id, title, status, points FROM hr.tasks WHERE id = 1;
CREATE TEMP TABLE claimed AS SELECT * FROM sync.claim('sp', 10, worker => 'w1');
SELECT sync_key, op FROM claimed ORDER BY sync_key;
SELECT exported FROM sync.complete((SELECT jsonb_agg(jsonb_build_object('id', id, 'ok', true, 'etag', '"b,4"')) FROM claimed), worker => 'w1');
SELECT definition, imports_pending, imports_awaiting_approval, conflicts_open, pull_state FROM sync.status ORDER BY definition;
-- Resolving: a value of the wrong shape is refused; 'remote' takes the target's.
SELECT * FROM regress.err($$SELECT sync.resolve((SELECT id FROM sync.conflicts WHERE resolution IS NULL), 'mine')$$);
SELECT * FROM regress.err($$SELECT sync.resolve((SELECT id FROM sync.conflicts WHERE resolution IS NULL), 'nope')$$);
-- An admin who may read the table but not write it cannot settle it: a
-- person's say is made with their own rights, never syncbridge_writer's.
CREATE ROLE regress_tw_reader IN ROLE syncbridge_admin;
GRANT USAGE ON SCHEMA hr TO regress_tw_reader;
GRANT SELECT ON hr.tasks TO regress_tw_reader;
SET SESSION AUTHORIZATION regress_tw_reader;
SELECT * FROM regress.err($$SELECT sync.resolve((SELECT id FROM sync.conflicts WHERE resolution IS NULL), 'remote')$$);
RESET SESSION AUTHORIZATION;
SELECT sync.resolve((SELECT id FROM sync.conflicts WHERE resolution IS NULL), 'remote');
SELECT * FROM sync.apply_imports('sp', worker => 'w1');
SELECT id, title, status, points FROM hr.tasks WHERE id = 1;
SELECT sync_key, op, payload FROM sync.pending_exports WHERE sync_key = '1' AND status = 'pending';

-- A remote delete waits for approval (the default); approved, the row goes.
SELECT round FROM sync.pull_claim('sp', worker => 'w1', force => true);
SELECT sync.pull_page('tasks_sp', 'Tasks', 3, '[{"id": "12", "deleted": true}]', 'https://graph.example/delta3', true, 'w1');
SELECT * FROM sync.apply_imports('sp', worker => 'w1');
SELECT op, sync_key, queued FROM sync.plan('tasks_sp') WHERE op LIKE 'inbound%';
SELECT sync.approve_import((SELECT id FROM sync.pending_imports WHERE status = 'awaiting_approval'));
SELECT * FROM sync.apply_imports('sp', worker => 'w1');
SELECT id FROM hr.tasks ORDER BY id;
SELECT sync_key FROM sync.ledger WHERE definition_id = (SELECT id FROM sync.definitions WHERE name = 'tasks_sp') ORDER BY sync_key;

-- A remote value that does not fit its column fails alone, visibly, and
-- the row is untouched; so does a remote create the table refuses.
SELECT round FROM sync.pull_claim('sp', worker => 'w1', force => true);
SELECT sync.pull_page('tasks_sp', 'Tasks', 4, '[
  {"id": "11", "etag": "\"a,9\"", "fields": {"SyncKey": "1", "Title": "Write it all", "Status": "a status far too long for its column", "Points": 4}},
  {"id": "14", "etag": "\"d,1\"", "fields": {"Title": null, "Status": "new", "Points": 1}},
  {"id": "15", "etag": "\"e,1\"", "fields": {"Title": "Half", "Points": 1.5}},
  {"id": "16", "etag": "\"f,1\"", "fields": {"SyncKey": "99", "Title": "Someone else''s"}}
]', 'https://graph.example/delta4', true, 'w1');
SELECT * FROM sync.apply_imports('sp', worker => 'w1');
SELECT target_id, status, sqlstate, last_error, decision FROM sync.pending_imports WHERE round = 4 ORDER BY target_id;
SELECT id, title, status, points FROM hr.tasks ORDER BY id;
SELECT definition, imports_failed FROM sync.status WHERE definition = 'tasks_sp';

-- A 410: the next round is a full read; an item the ledger knows that it
-- does not see is a remote delete.
SELECT round FROM sync.pull_claim('sp', worker => 'w1', force => true);
SELECT sync.pull_failed('tasks_sp', 'Tasks', 5, '410 resyncRequired', 'definite', resync => true, worker => 'w1');
SELECT link, full_read, resyncs FROM sync.pulls;
-- (what the ledger holds was written before the read began; in this one
-- transaction now() does not move)
UPDATE sync.ledger SET last_synced_at = now() - interval '1 minute';
SELECT round, link FROM sync.pull_claim('sp', worker => 'w1', force => true);
SELECT sync.pull_page('tasks_sp', 'Tasks', 6, '[]', 'https://graph.example/delta6', true, 'w1');
SELECT target_id, deleted, origin, status FROM sync.pending_imports WHERE round = 6 ORDER BY target_id;
SELECT * FROM sync.apply_imports('sp', worker => 'w1');
SELECT target_id, status, decision FROM sync.pending_imports WHERE round = 6 ORDER BY target_id;
ROLLBACK;
