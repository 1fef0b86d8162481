-- Issue 20, the extension's side of directory provisioning: DN templates
-- checked at enable, disable before delete with a grace period, array
-- references (a group's members) resolved and waited for.
\set SHOW_CONTEXT never
BEGIN;
-- (the worker's adapter is another matter: the queue is driven by hand here)
UPDATE sync.target_kinds SET implemented = true WHERE kind = 'ldap';
SELECT sync.create_target('dir', kind => 'ldap', config => '{"url": "ldap://127.0.0.1:3389", "base_dn": "dc=example,dc=com"}');
CREATE TABLE hr.people (uid text PRIMARY KEY, cn text NOT NULL, sn text NOT NULL, active boolean NOT NULL DEFAULT true);
INSERT INTO hr.people VALUES ('ada', 'Ada Lovelace', 'Lovelace'), ('bob', 'Bob Builder', 'Builder'), ('cy', 'Cy Young', 'Young');
CREATE TABLE hr.groups (cn text PRIMARY KEY, members text[] NOT NULL DEFAULT '{}');
INSERT INTO hr.groups VALUES ('admins', '{ada,bob}'), ('empty', '{}');
-- delete_grace is for kinds that can disable an item, and within bounds.
SELECT * FROM regress.err($$SELECT sync.define('p_sp', source => 'hr.people', target => 'sp_hr', list => 'P', delete_grace => '1 day')$$);
SELECT * FROM regress.err($$SELECT sync.define('p_bad', source => 'hr.people', target => 'dir', list => 'uid={uid},ou=People', delete_grace => '-1 day')$$);
SELECT sync.define('people', source => 'hr.people', target => 'dir', list => 'uid={uid},ou=People',
                   row_filter => 'active', approval => 'deletes', delete_grace => '7 days') > 0 AS defined;
SELECT sync.map('people', 'uid', 'uid'), sync.map('people', 'cn', 'cn'), sync.map('people', 'sn', 'sn');
-- A DN template naming a field the definition does not send, one without a
-- placeholder in its first RDN, {base} anywhere but at the end: refused at enable.
UPDATE sync.definitions SET list = 'uid={login},ou=People' WHERE name = 'people';
SELECT * FROM regress.err($$SELECT sync.enable('people')$$);
UPDATE sync.definitions SET list = 'ou=People' WHERE name = 'people';
SELECT * FROM regress.err($$SELECT sync.enable('people')$$);
UPDATE sync.definitions SET list = 'uid={uid},{base},ou=People' WHERE name = 'people';
SELECT * FROM regress.err($$SELECT sync.enable('people')$$);
UPDATE sync.definitions SET list = 'uid={uid},ou=People' WHERE name = 'people';
SELECT sync.enable('people');
-- ... and a shard added to an enabled definition is checked at once.
SELECT * FROM regress.err($$SELECT sync.shard('people', 'sn = ''Young''', list => 'cn={name},ou=Staff')$$);
SELECT sync.shard('people', 'sn = ''Young''', list => 'uid={uid},ou=Staff');
-- Groups: members is an array of people's keys, a reference to 'people'.
SELECT sync.define('groups', source => 'hr.groups', target => 'dir', list => 'cn={cn},ou=Groups') > 0 AS defined;
SELECT sync.map('groups', 'cn', 'cn'), sync.map('groups', 'members', 'member', reference => 'people');
SELECT sync.enable('groups');

SELECT * FROM sync.stage('hr.people', '[{"uid": "ada"}, {"uid": "bob"}, {"uid": "cy"}]');
SELECT * FROM sync.stage('hr.groups', '[{"cn": "admins"}, {"cn": "empty"}]');
SELECT d.name, e.op, e.sync_key, e.list, e.payload FROM sync.pending_exports e JOIN sync.definitions d ON d.id = e.definition_id ORDER BY e.id;
-- Objects first: the groups wait while their members' creates are queued
-- (a group with no member goes at once).
SELECT op, sync_key, payload FROM sync.claim('dir', 10, worker => 'w1') ORDER BY sync_key;
SELECT * FROM sync.complete((SELECT jsonb_agg(jsonb_build_object('id', e.id, 'ok', true, 'target_id', 'uuid-' || e.sync_key,
                                                                  'etag', 'csn-1', 'join_type', CASE WHEN e.sync_key = 'cy' THEN 'joined' ELSE 'provisioned' END))
                               FROM sync.pending_exports e WHERE e.status = 'executing'), worker => 'w1');
-- Then the references, resolved to the members' item ids in their order.
SELECT op, sync_key, payload -> 'member' AS member FROM sync.claim('dir', 10, worker => 'w1') ORDER BY sync_key;
SELECT * FROM sync.complete((SELECT jsonb_agg(jsonb_build_object('id', e.id, 'ok', true, 'target_id', 'uuid-g-' || e.sync_key))
                               FROM sync.pending_exports e WHERE e.status = 'executing'), worker => 'w1');

-- A row filtered out: its entry is disabled first (no approval needed: it
-- can be undone) ... but an entry syncbridge did not create (cy, joined)
-- is only forgotten.
UPDATE hr.people SET active = false WHERE uid IN ('ada', 'bob', 'cy');
SELECT * FROM sync.stage('hr.people', '[{"uid": "ada"}, {"uid": "bob"}, {"uid": "cy"}]');
SELECT op, sync_key, status FROM sync.pending_exports WHERE status NOT IN ('exported') ORDER BY id;
SELECT op, sync_key FROM sync.plan('people');
SELECT op, sync_key, target_id, disabled FROM sync.claim('dir', 10, worker => 'w1');
SELECT * FROM sync.complete((SELECT jsonb_agg(jsonb_build_object('id', e.id, 'ok', true))
                               FROM sync.pending_exports e WHERE e.status = 'executing'), worker => 'w1');
-- ... and its delete is scheduled after the grace, waiting for an approval
-- (approval => 'deletes'), visible in the queue and in sync.plan().
SELECT sync_key, disabled_at IS NOT NULL AS disabled, hash = '\x' AS hash_cleared FROM sync.ledger
 WHERE definition_id = (SELECT id FROM sync.definitions WHERE name = 'people') ORDER BY 1;
SELECT op, sync_key, status, next_attempt_at - now() BETWEEN interval '6 days 23 hours' AND interval '7 days' AS in_7_days
  FROM sync.pending_exports WHERE status NOT IN ('exported') ORDER BY id;
SELECT op, sync_key, queued FROM sync.plan('people');
-- Staging the key again changes nothing (idempotent: no second disable, no
-- earlier delete).
SELECT * FROM sync.stage('hr.people', '[{"uid": "ada"}]');
SELECT op, sync_key, status, next_attempt_at - now() > interval '6 days' AS still_scheduled
  FROM sync.pending_exports WHERE status NOT IN ('exported') ORDER BY id;
-- Approved, it still waits for the grace.
SELECT sync.approve((SELECT id FROM sync.pending_exports WHERE op = 'delete' AND sync_key = 'ada'));
SELECT count(*) AS claimable FROM sync.claim('dir', 10, worker => 'w1');
-- The row back within the grace: the same entry is re-enabled, now, with
-- its fields (the scheduled delete became the update).
UPDATE hr.people SET active = true WHERE uid = 'ada';
SELECT * FROM sync.stage('hr.people', '[{"uid": "ada"}]');
SELECT op, sync_key, status, attempts, next_attempt_at <= now() AS due FROM sync.pending_exports WHERE status NOT IN ('exported') ORDER BY id;
SELECT op, sync_key, target_id, disabled FROM sync.claim('dir', 10, worker => 'w1');
SELECT * FROM sync.complete((SELECT jsonb_agg(jsonb_build_object('id', e.id, 'ok', true, 'etag', 'csn-2'))
                               FROM sync.pending_exports e WHERE e.status = 'executing'), worker => 'w1');
SELECT sync_key, disabled_at IS NULL AS enabled, hash <> '\x' AS hashed FROM sync.ledger
 WHERE definition_id = (SELECT id FROM sync.definitions WHERE name = 'people') AND sync_key = 'ada';
-- The grace over (and approved): the delete goes.
UPDATE sync.pending_exports SET next_attempt_at = now() WHERE op = 'delete' AND sync_key = 'bob';
SELECT sync.approve((SELECT id FROM sync.pending_exports WHERE op = 'delete' AND sync_key = 'bob'));
SELECT op, sync_key, target_id, disabled FROM sync.claim('dir', 10, worker => 'w1');
ROLLBACK;
