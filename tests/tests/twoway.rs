//! Issue 16: two-way sync with SharePoint lists, end to end: the worker
//! pulls each list's delta from the Graph emulator, the extension decides
//! each item against the ledger and applies it to the table under the
//! replication origin `syncbridge`; nothing ever echoes back.

use serde_json::{json, Map, Value};
use syncbridge_tests::graph::{sync_once, worker_cmd, GraphEnv};
use syncbridge_tests::graph_emulator::{EmulatorConfig, Fault};
use syncbridge_tests::ingest::prepare;
use syncbridge_tests::random::{seed, Lcg};
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
fn a_tampered_delta_link_is_refused_before_any_request_and_the_list_read_in_full() {
    let (env, db) = setup("source_wins", "");
    sync_once(&db);
    env.emu.person_edit("Tasks", "1", &fields(json!({"Status": "remote"})), 7).unwrap();
    // A stored link leading elsewhere (a row written around the functions,
    // as only a superuser could): the worker's bearer token never goes there.
    db.psql("SELECT sync.pull_now('tasks_sp')");
    db.psql("UPDATE sync.pulls SET link = 'https://attacker.example/v1.0/sites/x/lists/y/items/delta?token=1'");
    let log = sync_once(&db);
    assert!(log.contains("was refused") && log.contains("attacker.example"), "{log}");
    assert_eq!(db.psql("SELECT concat_ws(' ', resyncs, link LIKE 'http://127.0.0.1:%') FROM sync.pulls"), "1 t");
    // The list was read again in full from the target's own base URL.
    assert_eq!(row(&db, 1), "Write docs|remote|3|f");
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

// ---------------------------------------------------------------------------
// Convergence: random concurrent edits on both sides, with faults and killed
// workers; afterwards both sides hold what the policy says, by an oracle
// computed from the recorded history alone.

/// A person's edit or delete "in SharePoint", done when the round's remote
/// side acts.
type RemoteOp = Box<dyn Fn(&GraphEnv)>;

/// The three fields both sides edit: Title (a), Points (b), Note (c).
type Vals = [Value; 3];
const FIELDS: [&str; 3] = ["Title", "Points", "Note"];
const COLUMNS: [&str; 3] = ["a", "b", "c"];

/// One row-and-item, as the oracle knows it.
#[derive(Debug, Clone)]
struct Ent {
    /// The row's id (a remote create gets it when it is synced).
    key: Option<i64>,
    /// What both sides agree on after the last round.
    base: Vals,
    /// Created locally (only those are deleted locally: a delete of an
    /// item created remotely is beyond delete_scope => provisioned).
    local_origin: bool,
}

fn random_value(rng: &mut Lcg, field: usize, round: usize) -> Value {
    match field {
        0 => json!(format!("t{round}-{}", rng.below(1000))),
        1 => json!(rng.below(100) as i64),
        _ => {
            if rng.chance(20) {
                Value::Null
            } else {
                json!(format!("note {round} {}", rng.below(1000)))
            }
        }
    }
}

fn sql_value(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::String(s) => format!("'{}'", s.replace('\'', "''")),
        other => other.to_string(),
    }
}

/// The database's rows: id → values.
fn db_rows(db: &TestDb) -> std::collections::BTreeMap<i64, Vals> {
    let out = db.psql("SELECT json_build_array(id, a, b, c)::text FROM items ORDER BY id");
    out.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("row");
            (v[0].as_i64().expect("id"), [v[1].clone(), v[2].clone(), v[3].clone()])
        })
        .collect()
}

/// The emulator's items: SyncKey → (item id, values).
fn remote_items(env: &GraphEnv) -> std::collections::BTreeMap<String, (u64, Vals)> {
    let mut out = std::collections::BTreeMap::new();
    for l in env.emu.lists().into_iter().filter(|l| l.display_name == "Items") {
        for i in l.items {
            let key = i.fields.get("SyncKey").and_then(Value::as_str).unwrap_or("").to_owned();
            let pts = match i.fields.get("Points") {
                Some(Value::Number(n)) => json!(n.as_f64().expect("a double") as i64),
                _ => Value::Null,
            };
            let vals = [
                i.fields.get("Title").cloned().unwrap_or(Value::Null),
                pts,
                i.fields.get("Note").cloned().unwrap_or(Value::Null),
            ];
            let id: u64 = i.id.parse().expect("a numeric item id");
            assert!(out.insert(key.clone(), (id, vals)).is_none(), "two items with SyncKey {key:?}");
        }
    }
    out
}

/// The queues, for a failure's message.
fn state(db: &TestDb) -> String {
    format!(
        "exports {} | imports {} | conflicts {}",
        db.psql("SELECT string_agg(concat_ws(':', id, sync_key, op, status, payload, error_class, last_error), E' |\n' ORDER BY id) FROM sync.pending_exports WHERE op <> 'provision'"),
        db.psql("SELECT string_agg(concat_ws(':', id, target_id, sync_key, origin, status, etag, remote, resolutions, decision, last_error), E' |\n' ORDER BY id) FROM sync.pending_imports WHERE origin <> 'write'"),
        db.psql("SELECT string_agg(concat_ws(':', id, sync_key, field, local_value, remote_value, resolution, import_id), E' |\n' ORDER BY id) FROM sync.conflicts")
    )
}

/// Runs the worker until nothing is left to do (manual: resolving the
/// conflicts the oracle predicts, as it chose); returns the rounds it took.
fn settle(db: &TestDb, resolve: &mut dyn FnMut(&TestDb) -> bool) {
    for _ in 0..16 {
        sync_once(db);
        let resolved = resolve(db);
        // Open: changes to apply or send, conflicts, and a list whose read is
        // unfinished or still leased (a killed worker's lease runs out after
        // sync.lease_seconds, 5 s here: only then is the list read again).
        let open = db.psql(
            "SELECT (SELECT count(*) FROM sync.pending_imports WHERE status = 'pending')
                  + (SELECT count(*) FROM sync.pending_exports WHERE status IN ('pending', 'failed', 'executing'))
                  + (SELECT count(*) FROM sync.conflicts WHERE resolution IS NULL)
                  + (SELECT count(*) FROM sync.pulls WHERE lease_until IS NOT NULL OR page_link IS NOT NULL OR link IS NULL)",
        );
        if open == "0" && !resolved {
            return;
        }
        if db.psql("SELECT count(*) FROM sync.pulls WHERE lease_until > now()") != "0" {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
    panic!(
        "not settled after 16 rounds: imports {} exports {}",
        db.psql("SELECT string_agg(concat_ws(':', id, sync_key, status, decision, last_error), ' | ') FROM sync.pending_imports WHERE status NOT IN ('applied', 'echo', 'ignored', 'superseded')"),
        db.psql("SELECT string_agg(concat_ws(':', id, sync_key, op, status, error_class, last_error), ' | ') FROM sync.pending_exports WHERE status NOT IN ('exported', 'confirmed', 'cancelled')")
    );
}

fn converge(policy: &str) {
    let seed = seed();
    let mut rng = Lcg(seed ^ policy.len() as u64);
    let env = GraphEnv::start_with(EmulatorConfig::default());
    let db = cluster().new_db("converge");
    prepare(&db, "CREATE TABLE items (id serial PRIMARY KEY, a text NOT NULL, b int, c text);");
    db.psql(&format!("ALTER DATABASE \"{}\" SET sync.backoff_base_seconds = 0.2", db.name()));
    // A killed worker's leases expire soon (its exports are sent again).
    db.psql(&format!("ALTER DATABASE \"{}\" SET sync.lease_seconds = 5", db.name()));
    env.create_target(&db, "sp", None);
    db.psql(&format!(
        "SELECT sync.define('items_sp', source => 'items', target => 'sp', list => 'Items', direction => 'both',
                            conflict => '{policy}', inbound_deletes => 'apply')"
    ));
    for (col, field) in COLUMNS.iter().zip(FIELDS) {
        db.psql(&format!("SELECT sync.map('items_sp', '{col}', '{field}')"));
    }
    db.psql("SELECT sync.provision('items_sp'); SELECT sync.enable('items_sp');");

    let mut ents: Vec<Ent> = Vec::new();
    let mut next_local_id = 100_000i64;
    // Round 0 seeds a few rows.
    for _ in 0..4 {
        let vals: Vals = [random_value(&mut rng, 0, 0), random_value(&mut rng, 1, 0), random_value(&mut rng, 2, 0)];
        db.psql(&format!(
            "INSERT INTO items VALUES ({next_local_id}, {}, {}, {})",
            sql_value(&vals[0]),
            sql_value(&vals[1]),
            sql_value(&vals[2])
        ));
        ents.push(Ent { key: Some(next_local_id), base: vals, local_origin: true });
        next_local_id += 1;
    }
    settle(&db, &mut |_| false);

    for round in 1..=6 {
        let alive: Vec<usize> = (0..ents.len()).collect();
        let mut local: std::collections::HashMap<usize, [Option<Value>; 3]> = Default::default();
        let mut remote: std::collections::HashMap<usize, [Option<Value>; 3]> = Default::default();
        let mut local_deleted = std::collections::HashSet::new();
        let mut remote_deleted = std::collections::HashSet::new();
        let mut local_sql = Vec::new();
        let mut remote_ops: Vec<RemoteOp> = Vec::new();
        let mut new_ents = Vec::new();
        for _ in 0..rng.below(4) + 1 {
            let e = alive[rng.below(alive.len() as u64) as usize];
            let f = rng.below(3) as usize;
            let v = random_value(&mut rng, f, round);
            local.entry(e).or_default()[f] = Some(v.clone());
            local_sql.push(format!(
                "UPDATE items SET {} = {} WHERE id = {}",
                COLUMNS[f],
                sql_value(&v),
                ents[e].key.unwrap()
            ));
        }
        for _ in 0..rng.below(4) + 1 {
            let e = alive[rng.below(alive.len() as u64) as usize];
            let f = rng.below(3) as usize;
            let v = random_value(&mut rng, f, round);
            remote.entry(e).or_default()[f] = Some(v.clone());
            let key = ents[e].key.unwrap().to_string();
            remote_ops.push(Box::new(move |env: &GraphEnv| {
                // (an item already deleted remotely this round is not edited)
                let _ = env.emu.person_edit("Items", &key, &fields(json!({ FIELDS[f]: v.clone() })), 7);
            }));
        }
        if rng.chance(40) {
            let vals: Vals =
                [random_value(&mut rng, 0, round), random_value(&mut rng, 1, round), random_value(&mut rng, 2, round)];
            local_sql.push(format!(
                "INSERT INTO items VALUES ({next_local_id}, {}, {}, {})",
                sql_value(&vals[0]),
                sql_value(&vals[1]),
                sql_value(&vals[2])
            ));
            new_ents.push(Ent { key: Some(next_local_id), base: vals, local_origin: true });
            next_local_id += 1;
        }
        let remote_create: Option<Vals> = rng.chance(40).then(|| {
            [random_value(&mut rng, 0, round), random_value(&mut rng, 1, round), random_value(&mut rng, 2, round)]
        });
        if alive.len() > 3 && rng.chance(30) {
            let locals: Vec<usize> = alive.iter().copied().filter(|e| ents[*e].local_origin).collect();
            if !locals.is_empty() {
                let e = locals[rng.below(locals.len() as u64) as usize];
                local_deleted.insert(e);
                local_sql.push(format!("DELETE FROM items WHERE id = {}", ents[e].key.unwrap()));
            }
        }
        if alive.len() > 3 && rng.chance(30) {
            let e = alive[rng.below(alive.len() as u64) as usize];
            remote_deleted.insert(e);
            let key = ents[e].key.unwrap().to_string();
            remote_ops.push(Box::new(move |env: &GraphEnv| {
                let _ = env.emu.person_delete("Items", &key);
            }));
        }
        // The two sides edit; under newest_wins a second apart, in a random
        // order (SharePoint's Modified has whole seconds).
        let local_first = rng.chance(50);
        let run_local = |db: &TestDb| {
            if !local_sql.is_empty() {
                db.psql(&format!("BEGIN; {}; COMMIT;", local_sql.join("; ")));
            }
        };
        let mut created_item = None;
        let mut run_remote = |env: &GraphEnv| {
            for op in &remote_ops {
                op(env);
            }
            if let Some(vals) = &remote_create {
                let mut f = Map::new();
                for (i, name) in FIELDS.iter().enumerate() {
                    if !vals[i].is_null() {
                        f.insert((*name).into(), vals[i].clone());
                    }
                }
                created_item = Some(env.emu.person_create("Items", &f, 7).expect("person_create"));
            }
        };
        let gap = std::time::Duration::from_millis(if policy == "newest_wins" { 1100 } else { 0 });
        if local_first {
            run_local(&db);
            std::thread::sleep(gap);
            run_remote(&env);
        } else {
            run_remote(&env);
            std::thread::sleep(gap);
            run_local(&db);
        }

        // The oracle, from the history alone.
        let mut expected: Vec<(usize, Vals)> = Vec::new();
        let mut predicted_conflicts: Vec<(i64, &str, bool)> = Vec::new();
        for &e in &alive {
            if local_deleted.contains(&e) || remote_deleted.contains(&e) {
                continue;
            }
            let mut vals = ents[e].base.clone();
            let l = local.get(&e).cloned().unwrap_or_default();
            let r = remote.get(&e).cloned().unwrap_or_default();
            for f in 0..3 {
                let lc = l[f].as_ref().filter(|v| **v != ents[e].base[f]);
                let rc = r[f].as_ref().filter(|v| **v != ents[e].base[f]);
                vals[f] = match (lc, rc) {
                    (Some(lv), Some(rv)) if lv != rv => {
                        let local_wins = match policy {
                            "source_wins" => true,
                            "target_wins" => false,
                            "newest_wins" => !local_first,
                            _ => {
                                let pick_local = rng.chance(50);
                                predicted_conflicts.push((ents[e].key.unwrap(), FIELDS[f], pick_local));
                                pick_local
                            }
                        };
                        if local_wins {
                            lv.clone()
                        } else {
                            rv.clone()
                        }
                    }
                    (Some(lv), _) => lv.clone(),
                    (None, Some(rv)) => rv.clone(),
                    (None, None) => ents[e].base[f].clone(),
                };
            }
            expected.push((e, vals));
        }

        // Faults and a killed worker now and then.
        if rng.chance(30) {
            let f = [Fault::Status(429), Fault::Status(503), Fault::RunThenStatus(500), Fault::RunThenDrop]
                [rng.below(4) as usize]
                .clone();
            env.emu.inject(f, 1 + rng.below(3) as u32);
        }
        if round == 3 {
            env.emu.reset_delta("Items", ["resyncRequired", "syncStateNotFound"][rng.below(2) as usize]).unwrap();
        }
        if rng.chance(30) {
            let mut w = worker_cmd(&db, &[]).spawn().expect("worker");
            std::thread::sleep(std::time::Duration::from_millis(200 + rng.below(1500)));
            let _ = w.kill();
            let _ = w.wait();
        }
        let mut conflicts_seen = false;
        settle(&db, &mut |db: &TestDb| {
            let open = db.psql(
                "SELECT string_agg(concat_ws(':', id, sync_key, field), ' ' ORDER BY sync_key, field) FROM sync.conflicts WHERE resolution IS NULL",
            );
            if open.is_empty() {
                return false;
            }
            let mut want: Vec<String> = predicted_conflicts.iter().map(|(k, f, _)| format!("{k}:{f}")).collect();
            want.sort();
            let mut have: Vec<String> = open.split(' ').map(|c| c.split_once(':').unwrap().1.to_owned()).collect();
            have.sort();
            assert_eq!(have, want, "the conflicts are the fields changed on both sides (seed {seed}, round {round})");
            for c in open.split(' ') {
                let (id, rest) = c.split_once(':').unwrap();
                let pick = predicted_conflicts.iter().find(|(k, f, _)| format!("{k}:{f}") == rest).unwrap().2;
                db.psql(&format!("SELECT sync.resolve({id}, '{}')", if pick { "local" } else { "remote" }));
            }
            conflicts_seen = true;
            true
        });
        assert!(
            policy != "manual" || predicted_conflicts.is_empty() || conflicts_seen,
            "conflicts expected (seed {seed}, round {round})"
        );

        // Link the remote create to its row by the SyncKey it got.
        let items = remote_items(&env);
        if let (Some(vals), Some(item_id)) = (remote_create, created_item) {
            let key = items
                .iter()
                .find(|(_, (id, _))| *id == item_id)
                .map(|(k, _)| {
                    k.parse::<i64>().unwrap_or_else(|_| {
                        panic!(
                            "the created item {item_id} has no SyncKey (seed {seed}, round {round}): imports {} exports {}",
                            db.psql("SELECT string_agg(concat_ws(':', id, target_id, sync_key, origin, status, decision, last_error), ' | ') FROM sync.pending_imports"),
                            db.psql("SELECT string_agg(concat_ws(':', id, sync_key, op, status, payload, error_class, last_error), ' | ') FROM sync.pending_exports WHERE op <> 'provision'")
                        )
                    })
                })
                .unwrap_or_else(|| panic!("the created item is gone (seed {seed}, round {round})"));
            ents.push(Ent { key: Some(key), base: vals.clone(), local_origin: false });
            expected.push((ents.len() - 1, vals));
        }
        for n in new_ents {
            ents.push(n.clone());
            expected.push((ents.len() - 1, n.base.clone()));
        }

        // Both sides and the ledger hold exactly what the oracle says.
        let rows = db_rows(&db);
        let want_rows: std::collections::BTreeMap<i64, Vals> =
            expected.iter().map(|(e, v)| (ents[*e].key.unwrap(), v.clone())).collect();
        assert_eq!(rows, want_rows, "the table (policy {policy}, seed {seed}, round {round}): {}", state(&db));
        let want_items: std::collections::BTreeMap<String, Vals> =
            want_rows.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        let have_items: std::collections::BTreeMap<String, Vals> =
            items.into_iter().map(|(k, (_, v))| (k, v)).collect();
        assert_eq!(have_items, want_items, "the list (policy {policy}, seed {seed}, round {round})");
        let ledger = db.psql("SELECT string_agg(sync_key || '=' || (fields->>'Title') || '/' || coalesce(fields->>'Points', '-') || '/' || coalesce(fields->>'Note', '-'), ' ' ORDER BY sync_key::int) FROM sync.ledger");
        let want_ledger = want_rows
            .iter()
            .map(|(k, v)| {
                let s = |x: &Value| {
                    x.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| if x.is_null() { "-".into() } else { x.to_string() })
                };
                format!("{k}={}/{}/{}", s(&v[0]), s(&v[1]), s(&v[2]))
            })
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(ledger, want_ledger, "the ledger (policy {policy}, seed {seed}, round {round})");
        assert_eq!(
            env.emu.unchanged_writes(),
            0,
            "echo writes (policy {policy}, seed {seed}, round {round}): exports {} imports {}",
            db.psql("SELECT string_agg(concat_ws(':', id, sync_key, op, status, payload, error_class, last_error), E' |\n' ORDER BY id) FROM sync.pending_exports WHERE op <> 'provision'"),
            db.psql("SELECT string_agg(concat_ws(':', id, target_id, sync_key, origin, status, etag, remote, decision), E' |\n' ORDER BY id) FROM sync.pending_imports")
        );

        // What both sides hold is the next round's base.
        let kept: Vec<Ent> = expected.iter().map(|(e, v)| Ent { base: v.clone(), ..ents[*e].clone() }).collect();
        ents = kept;
    }
}

#[test]
fn converges_under_source_wins() {
    converge("source_wins");
}

#[test]
fn converges_under_target_wins() {
    converge("target_wins");
}

#[test]
fn converges_under_newest_wins() {
    converge("newest_wins");
}

#[test]
fn converges_under_manual() {
    converge("manual");
}

#[test]
fn a_pull_definition_reads_the_list_into_the_table_and_sends_nothing() {
    let env = GraphEnv::start_with(EmulatorConfig::default());
    let db = cluster().new_db("pullonly");
    prepare(&db, "CREATE TABLE contacts (id serial PRIMARY KEY, name text NOT NULL, phone text, sp_editor int);");
    env.create_target(&db, "sp", None);
    db.psql(
        "SELECT sync.define('contacts_sp', source => 'contacts', target => 'sp', list => 'Contacts', direction => 'pull',
                            inbound_deletes => 'apply');
         SELECT sync.map('contacts_sp', 'name', 'Title');
         SELECT sync.map('contacts_sp', 'phone', 'Phone');
         SELECT sync.map('contacts_sp', 'sp_editor', 'EditorLookupId');
         SELECT sync.provision('contacts_sp'); SELECT sync.enable('contacts_sp');",
    );
    assert_eq!(db.psql("SELECT string_agg(direction, ',' ORDER BY position) FROM sync.field_maps"), "pull,pull,pull");
    sync_once(&db);
    // The list has the pulled columns (not the read-only EditorLookupId).
    let list = env.emu.lists().into_iter().find(|l| l.display_name == "Contacts").expect("the list");
    let names: Vec<&str> = list.columns.iter().filter_map(|c| c["name"].as_str()).collect();
    assert!(names.contains(&"Title") && names.contains(&"Phone") && !names.contains(&"EditorLookupId"), "{names:?}");
    env.emu.person_create("Contacts", &fields(json!({"Title": "Ada", "Phone": "+44 1"})), 7).unwrap();
    env.emu.person_create("Contacts", &fields(json!({"Title": "Grace"})), 8).unwrap();
    sync_once(&db);
    assert_eq!(
        db.psql("SELECT string_agg(concat_ws('|', name, phone, sp_editor), ',' ORDER BY id) FROM contacts"),
        "Ada|+44 1|7,Grace|8"
    );
    // Local changes are never sent; remote ones keep coming.
    let writes = env.emu.stats().writes;
    db.psql("UPDATE contacts SET phone = 'local' WHERE name = 'Grace'");
    db.psql("INSERT INTO contacts (name) VALUES ('Local only')");
    let keyed = env.emu.lists().into_iter().flat_map(|l| l.items).filter(|i| i.fields.contains_key("SyncKey")).count();
    assert_eq!(keyed, 0, "a pull definition writes nothing, not even a SyncKey");
    sync_once(&db);
    assert_eq!(env.emu.stats().writes, writes, "nothing sent");
    assert_eq!(db.psql("SELECT count(*) FROM contacts"), "3");
}
