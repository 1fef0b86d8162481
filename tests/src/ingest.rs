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
