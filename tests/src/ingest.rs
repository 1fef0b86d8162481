//! Helpers for tests that run the worker's ingest against a test database.

use crate::TestDb;

/// Makes `db` ready for streaming: its own slot name (slots are cluster-wide),
/// a Graph target `t`, and the given definitions' tables created by `ddl`.
pub fn prepare(db: &TestDb, ddl: &str) {
    db.psql(&format!("ALTER DATABASE \"{0}\" SET sync.slot_name = '{0}'", db.name()));
    db.psql(ddl);
    db.psql(
        "SELECT sync.create_target('t', kind => 'graph', config => '{\"tenant_id\": \"x\", \"client_id\": \"y\", \"site_id\": \"z\"}')",
    );
}

/// Has staging defer batches of `min(500, open)` keys or more once a
/// definition holds `open` open exports (`sync.defer_after`, for the
/// database's every session).
pub fn defer_after(db: &TestDb, open: u32) {
    db.psql(&format!("ALTER DATABASE \"{}\" SET sync.defer_after = {open}", db.name()));
}

/// Stages every deferred key now (what `sync.claim` does as the queue
/// drains), whatever the queue holds; returns how many keys were deferred.
pub fn stage_deferred(db: &TestDb, target: &str) -> u64 {
    let before: u64 = db.psql("SELECT coalesce(sum(n), 0) FROM sync.deferred_keys").parse().expect("a count");
    db.psql(&format!(
        "DO $$ BEGIN
           PERFORM set_config('sync.defer_after', '0', true);
           WHILE EXISTS (SELECT 1 FROM sync.deferred_keys) LOOP PERFORM sync._undefer('{target}'); END LOOP;
         END $$"
    ));
    before
}

/// How many exports are neither exported nor cancelled, as text.
pub fn open_count(db: &TestDb) -> String {
    db.psql("SELECT count(*) FROM sync.pending_exports WHERE status NOT IN ('exported', 'cancelled')")
}

/// The open pending exports of a definition as `(sync_key, op)` sorted by key.
pub fn open_exports(db: &TestDb, definition: &str) -> Vec<(String, String)> {
    let out = db.psql(&format!(
        "SELECT e.sync_key || '|' || e.op FROM sync.pending_exports e JOIN sync.definitions d ON d.id = e.definition_id
          WHERE d.name = '{definition}' AND e.status IN ('pending', 'awaiting_approval', 'failed', 'error')
          ORDER BY e.sync_key COLLATE \"C\""
    ));
    out.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, op) = l.split_once('|').expect("key|op");
            (k.to_owned(), op.to_owned())
        })
        .collect()
}

/// Plays a target that takes everything: claims and completes every open
/// export of `target` (1,000 at a time), returning how many were completed.
pub fn complete_all(db: &TestDb, target: &str) -> u64 {
    let mut total = 0;
    loop {
        let n: u64 = db
            .psql(&format!(
                "WITH c AS (SELECT * FROM sync.claim('{target}', 1000, worker => 'test'))
                 SELECT exported FROM sync.complete((SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'id', id, 'ok', true, 'target_id', 'i' || sync_key)), '[]') FROM c))"
            ))
            .parse()
            .expect("a count");
        if n == 0 {
            return total;
        }
        total += n;
    }
}
