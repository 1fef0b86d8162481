//! Issue 16: two-way sync with SharePoint lists, end to end: the worker
//! pulls each list's delta from the Graph emulator, the extension decides
//! each item against the ledger and applies it to the table under the
//! replication origin `syncbridge`; nothing ever echoes back.

use serde_json::{json, Map, Value};
use syncbridge_tests::graph::{sync_once, worker_cmd, GraphEnv};
use syncbridge_tests::graph_emulator::EmulatorConfig;
use syncbridge_tests::ingest::prepare;
use syncbridge_tests::{cluster, TestDb};

const TASKS: &str = "
CREATE TABLE tasks (id serial PRIMARY KEY, title text NOT NULL, status varchar(20), points int, done boolean,
    sp_modified timestamptz, sp_editor int, sp_version text, sp_id int);
INSERT INTO tasks (title, status, points, done) VALUES ('Write docs', 'open', 3, false), ('Fix bug', 'open', 5, false),
    ('Plan sprint', 'open', 2, true);
";

fn fields(v: Value) -> Map<String, Value> {
    v.as_object().cloned().expect("an object")
}

/// A two-way definition of `tasks` on the list Tasks: Title, Status and
/// Points both ways, Done pushed only, four system fields pulled.
fn setup(conflict: &str, extra: &str) -> (GraphEnv, TestDb) {
    let env = GraphEnv::start_with(EmulatorConfig::default());
    let db = cluster().new_db("twoway");
    prepare(&db, TASKS);
    db.psql(&format!("ALTER DATABASE \"{}\" SET sync.backoff_base_seconds = 1", db.name()));
    env.create_target(&db, "sp", None);
    db.psql(&format!(
        "SELECT sync.define('tasks_sp', source => 'tasks', target => 'sp', list => 'Tasks', direction => 'both',
                            conflict => '{conflict}'{extra})"
    ));
    for (col, field, dir) in [
        ("title", "Title", "both"),
        ("status", "Status", "both"),
        ("points", "Points", "both"),
        ("done", "Done", "push"),
        ("sp_modified", "Modified", "pull"),
        ("sp_editor", "EditorLookupId", "pull"),
        ("sp_version", "_UIVersionString", "pull"),
        ("sp_id", "ID", "pull"),
    ] {
        db.psql(&format!("SELECT sync.map('tasks_sp', '{col}', '{field}', direction => '{dir}')"));
    }
    db.psql("SELECT sync.provision('tasks_sp')");
    db.psql("SELECT sync.enable('tasks_sp')");
    (env, db)
}

/// The emulator's item of a row, by its SyncKey.
fn item(env: &GraphEnv, key: &str) -> Option<Map<String, Value>> {
    env.items().get("Tasks").and_then(|l| l.get(key).cloned())
}

fn row(db: &TestDb, id: i32) -> String {
    db.psql(&format!("SELECT concat_ws('|', title, status, points, done) FROM tasks WHERE id = {id}"))
}

fn imports(db: &TestDb) -> String {
    db.psql("SELECT string_agg(status || ':' || coalesce(last_error, ''), ',' ORDER BY id) FROM sync.pending_imports WHERE origin <> 'write'")
}

#[test]
fn a_person_edit_lands_in_the_table_system_fields_come_back_and_nothing_echoes() {
    let (env, db) = setup("source_wins", "");
    sync_once(&db);
    // The write answers bring the read-only fields into their columns,
    // without a request of their own.
    let ids = db.psql("SELECT string_agg(concat_ws(':', id, sp_id, sp_editor, sp_version, sp_modified IS NOT NULL), ' ' ORDER BY id) FROM tasks");
    let one = item(&env, "1").expect("item 1");
    assert_eq!(ids.split(' ').next().unwrap(), format!("1:{}:1073741822:1.0:t", one["@id"].as_str().unwrap()), "{ids}");

    // A person edits Title and Points of item 1 "in SharePoint".
    env.emu.person_edit("Tasks", "1", &fields(json!({"Title": "Write the docs", "Points": 8})), 7).unwrap();
    let log = sync_once(&db);
    assert_eq!(row(&db, 1), "Write the docs|open|8|f", "{log}");
    assert_eq!(db.psql("SELECT concat_ws(':', sp_editor, sp_version) FROM tasks WHERE id = 1"), "7:2.0");
    assert_eq!(imports(&db).matches("applied").count(), 1, "{}", imports(&db));
    // What came from the target is not sent back: no write changed nothing,
    // the ledger holds the remote eTag, the queue is empty.
    assert_eq!(env.emu.unchanged_writes(), 0);
    assert_eq!(db.psql("SELECT provenance FROM sync.ledger WHERE sync_key = '1'"), "pull");
    assert_eq!(
        db.psql("SELECT count(*) FROM sync.pending_exports WHERE status IN ('pending', 'failed', 'error')"),
        "0"
    );
    // The stream skipped the applying transaction (origin syncbridge), and a
    // further round sends nothing and applies nothing.
    let writes = env.emu.stats().writes;
    sync_once(&db);
    assert_eq!(env.emu.stats().writes, writes, "nothing more written");
    assert_eq!(row(&db, 1), "Write the docs|open|8|f");

    // A local change goes out as before.
    db.psql("UPDATE tasks SET status = 'done' WHERE id = 2");
    sync_once(&db);
    assert_eq!(item(&env, "2").unwrap()["Status"], "done");
    assert_eq!(env.emu.unchanged_writes(), 0);
    let s = db.psql("SELECT concat_ws(' ', direction, imports_pending, imports_failed, conflicts_open, pull_state IS NOT NULL, last_pull_at IS NOT NULL) FROM sync.status");
    assert_eq!(s, "both 0 0 0 t t");
}

#[test]
fn per_field_direction_puts_push_fields_back_and_never_sends_pull_fields() {
    let (env, db) = setup("source_wins", "");
    sync_once(&db);
    // Done is the database's: a remote change of it is put back.
    env.emu.person_edit("Tasks", "3", &fields(json!({"Done": false, "Status": "doing"})), 7).unwrap();
    sync_once(&db);
    assert_eq!(row(&db, 3), "Plan sprint|doing|2|t", "Status applied, Done kept");
    assert_eq!(item(&env, "3").unwrap()["Done"], true, "Done put back on the target");
    // A pull-only column changed locally is never sent.
    let writes = env.emu.stats().writes;
    db.psql("UPDATE tasks SET sp_version = 'local', sp_editor = 99 WHERE id = 3");
    sync_once(&db);
    assert_eq!(env.emu.stats().writes, writes, "a change of pull-only columns sends nothing");
    assert_eq!(env.emu.unchanged_writes(), 0);
}

#[test]
fn remote_creates_become_rows_and_get_their_synckey() {
    let (env, db) = setup("source_wins", "");
    sync_once(&db);
    let id = env
        .emu
        .person_create("Tasks", &fields(json!({"Title": "Made in SharePoint", "Status": "new", "Points": 1})), 7)
        .unwrap_or_else(|e| panic!("{e}"));
    sync_once(&db);
    assert_eq!(
        db.psql(
            "SELECT concat_ws('|', id, title, status, points, sp_id) FROM tasks WHERE title = 'Made in SharePoint'"
        ),
        format!("4|Made in SharePoint|new|1|{id}")
    );
    // The item got its SyncKey (written back, no twin), and the ledger knows it as projected.
    let it = item(&env, "4").expect("the created item now carries SyncKey 4");
    assert_eq!(it["@id"], id.to_string());
    assert_eq!(env.items()["Tasks"].len(), 4);
    assert_eq!(db.psql("SELECT join_type FROM sync.ledger WHERE sync_key = '4'"), "projected");
    assert_eq!(env.emu.unchanged_writes(), 0);
}

#[test]
fn a_412_turns_into_a_conflict_that_a_person_resolves() {
    let (env, db) = setup("manual", "");
    sync_once(&db);
    // Both sides change Points of item 2 between two rounds: the export's
    // If-Match meets the person's newer eTag (412), the change is pulled
    // and, under manual, becomes a conflict; the export waits.
    env.emu.person_edit("Tasks", "2", &fields(json!({"Points": 9})), 7).unwrap();
    db.psql("UPDATE tasks SET points = 7 WHERE id = 2");
    // The list is not due for a while: a running worker sends the update
    // first, meets the 412, and pulls the list at once because of it.
    db.psql("SELECT sync.pull_now('tasks_sp')");
    db.psql("UPDATE sync.pulls SET link = NULL, next_pull_at = now() + interval '1 hour'");
    db.psql("SELECT sync.alter_target('sp', config => (SELECT config || '{\"pull_interval\": 3600}' FROM sync.targets WHERE name = 'sp'))");
    let mut worker = worker_cmd(&db, &[]).spawn().expect("worker");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while db.psql("SELECT count(*) FROM sync.conflicts") == "0" {
        assert!(std::time::Instant::now() < deadline, "no conflict within 60 s");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let _ = worker.kill();
    let _ = worker.wait();
    assert_eq!(item(&env, "2").unwrap()["Points"], 9.0, "the remote value is not overwritten");
    let c = db.psql("SELECT concat_ws('|', sync_key, field, base_value, local_value, remote_value) FROM sync.conflicts WHERE resolution IS NULL");
    assert_eq!(c, "2|Points|5|7|9");
    assert_eq!(
        db.psql("SELECT count(*) FROM sync.pending_exports WHERE error_class = 'conflict'"),
        "1",
        "the update met a 412"
    );
    assert_eq!(db.psql("SELECT conflicts_open FROM sync.status"), "1");
    // A value of the wrong shape is refused, and changes nothing.
    let err = db
        .try_psql("SELECT sync.resolve((SELECT id FROM sync.conflicts WHERE resolution IS NULL), '\"many\"'::jsonb)")
        .unwrap_err();
    assert!(err.contains("does not fit field Points") && err.contains("invalid input syntax"), "{err}");
    // Resolved with the local value: the table keeps it, the target gets it.
    db.psql("SELECT sync.resolve((SELECT id FROM sync.conflicts WHERE resolution IS NULL), 'local')");
    sync_once(&db);
    assert_eq!(row(&db, 2), "Fix bug|open|7|f");
    assert_eq!(item(&env, "2").unwrap()["Points"], 7.0);
    assert_eq!(db.psql("SELECT count(*) FROM sync.conflicts WHERE resolution IS NULL"), "0");
    // A second conflict, resolved with a value of one's own: both sides get it.
    env.emu.person_edit("Tasks", "1", &fields(json!({"Title": "Docs (remote)"})), 7).unwrap();
    db.psql("UPDATE tasks SET title = 'Docs (local)' WHERE id = 1");
    sync_once(&db);
    db.psql(
        "SELECT sync.resolve((SELECT id FROM sync.conflicts WHERE resolution IS NULL), '\"Docs (agreed)\"'::jsonb)",
    );
    sync_once(&db);
    assert_eq!(row(&db, 1), "Docs (agreed)|open|3|f");
    assert_eq!(item(&env, "1").unwrap()["Title"], "Docs (agreed)");
    assert_eq!(env.emu.unchanged_writes(), 0);
}

#[test]
fn inbound_deletes_wait_for_approval_and_a_410_resync_finds_them() {
    let (env, db) = setup("source_wins", "");
    sync_once(&db);
    env.emu.person_delete("Tasks", "3").unwrap();
    sync_once(&db);
    assert_eq!(db.psql("SELECT count(*) FROM tasks WHERE id = 3"), "1", "not without a person's say");
    assert_eq!(db.psql("SELECT concat_ws(' ', imports_awaiting_approval) FROM sync.status"), "1");
    assert_eq!(db.psql("SELECT op FROM sync.plan('tasks_sp') WHERE op LIKE 'inbound%'"), "inbound_delete");
    db.psql("SELECT sync.approve_import(id) FROM sync.pending_imports WHERE status = 'awaiting_approval'");
    sync_once(&db);
    assert_eq!(db.psql("SELECT count(*) FROM tasks WHERE id = 3"), "0");

    // The list's delta tokens are reset (410 resyncRequired) while an item
    // goes: the full re-read finds it missing, a remote delete, applied at
    // once under inbound_deletes => apply.
    db.psql("UPDATE sync.definitions SET inbound_deletes = 'apply'");
    env.emu.person_delete("Tasks", "2").unwrap();
    env.emu.reset_delta("Tasks", "resyncRequired").unwrap();
    let log = sync_once(&db);
    assert_eq!(db.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM tasks"), "1", "{log}");
    assert_eq!(db.psql("SELECT resyncs FROM sync.pulls"), "1");
    assert_eq!(db.psql("SELECT count(*) FROM sync.ledger"), "1");
    assert_eq!(env.emu.unchanged_writes(), 0);
}

#[test]
fn two_workers_pulling_at_once_read_each_page_once() {
    let (env, db) = setup("source_wins", "");
    sync_once(&db);
    for k in ["1", "2", "3"] {
        env.emu.person_edit("Tasks", k, &fields(json!({"Status": format!("remote {k}")})), 7).unwrap();
    }
    db.psql("SELECT sync.pull_now('tasks_sp')");
    let pages = env.emu.delta_pages();
    let rounds = db.psql("SELECT round FROM sync.pulls");
    assert!(!rounds.is_empty(), "the list has its pull row");
    let a = worker_cmd(&db, &["--once"]).spawn().expect("worker a");
    let b = worker_cmd(&db, &["--once"]).spawn().expect("worker b");
    for mut c in [a, b] {
        assert!(c.wait().expect("wait").success());
    }
    // Each worker's --once reads every list once unless another holds it.
    let read = env.emu.delta_pages() - pages;
    let new_rounds: u64 =
        db.psql("SELECT round FROM sync.pulls").parse::<u64>().unwrap() - rounds.parse::<u64>().unwrap();
    assert_eq!(read, new_rounds, "one page per round (the list fits one page), never two workers in one round");
    assert_eq!(
        db.psql("SELECT count(*) FROM sync.pending_imports WHERE origin IN ('full', 'delta') AND status = 'applied'"),
        "3"
    );
    assert_eq!(db.psql("SELECT string_agg(status, ',' ORDER BY id) FROM tasks"), "remote 1,remote 2,remote 3");
}
