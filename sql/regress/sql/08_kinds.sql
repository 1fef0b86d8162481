-- Issue 15: what each kind can do is data (sync.target_kinds, the same facts
-- as the worker's registry). A kind whose containers exist already has
-- nothing to provision; a move costs what the kind's moves say.
SELECT kind, containers, delete_mode, moves, key_lookup, pull FROM sync.target_kinds ORDER BY kind;
SELECT sync.create_target('gh', kind => 'github', config => '{"owner": "o", "repo": "r"}');
CREATE TABLE hr.tickets (id int PRIMARY KEY, title text NOT NULL, team text NOT NULL);
INSERT INTO hr.tickets VALUES (1, 'one', 'a'), (2, 'two', 'b');
SELECT sync.define('issues_gh', source => 'hr.tickets', target => 'gh', list => 'Issues') > 0 AS defined;
\x on
SELECT * FROM regress.err($sql$SELECT sync.provision('issues_gh')$sql$);
\x off
-- On Graph a move is a create and a delete: 2 requests.
SELECT sync.create_target('sp_kinds', kind => 'graph', config => '{"tenant_id": "t", "client_id": "c", "site_id": "s"}');
SELECT sync.define('tickets_sp', source => 'hr.tickets', target => 'sp_kinds', list => 'Tickets') > 0 AS defined;
SELECT sync.shard('tickets_sp', $$team = 'b'$$, list => 'Tickets B');
INSERT INTO sync.ledger (definition_id, sync_key, list, target_id, hash, fields, join_type)
SELECT d.id, '2', 'Tickets', 'item-2', '\x00', '{}', 'provisioned' FROM sync.definitions d WHERE d.name = 'tickets_sp';
SELECT op, sync_key, list, from_list, requests, cost FROM sync.plan('tickets_sp') ORDER BY sync_key;

-- GitHub reads its issues back (pull updated_since) every pull_interval
-- seconds (the end-to-end tests pull its repositories).
BEGIN;
SELECT sync.alter_target('gh', config => '{"owner": "o", "repo": "r", "pull_interval": 120}');
SELECT extract(epoch FROM sync._pull_interval('gh')) AS pull_interval;
ROLLBACK;
