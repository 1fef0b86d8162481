//! Issue 5: source → worker → Graph emulator, end to end. The emulator's
//! items must equal the mapped source rows (sync.preview) after every kind of
//! change, and nothing may be lost or sent twice when anything fails. The
//! scenarios every target kind shares (injected failures, throttling,
//! killed workers, concurrent exporters, outages, tokens) are in
//! `robustness.rs`; what is Graph's own stays here.

use std::time::Duration;

use syncbridge_tests::graph::{assert_target_equals_source, sync_once, GraphEnv};
use syncbridge_tests::graph_emulator::{EmulatorConfig, Fault};
use syncbridge_tests::ingest::{open_count, prepare};
use syncbridge_tests::random::{seed, Lcg};
use syncbridge_tests::{cluster, TestDb};

const EMPLOYEES: &str = "
CREATE TABLE departments (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE employees (id int PRIMARY KEY, name text NOT NULL, region text NOT NULL, qty int, big bigint,
    price numeric(10,2), score float8, ok boolean, at timestamptz, born date, notes text, tags text[], meta jsonb,
    dept int REFERENCES departments);
ALTER TABLE employees ALTER notes SET STORAGE EXTERNAL;
INSERT INTO departments VALUES (10, 'Research'), (20, 'Operations');
INSERT INTO employees VALUES
  (1, 'Ada', 'EU', 1, 9000000000, 12.50, 0.25, true, '2024-05-01 10:00:00+00', '1815-12-10', 'short', '{a,b}', '{\"k\": 1}', 10),
  (2, 'Grace', 'US', 2, NULL, NULL, NULL, false, NULL, NULL, NULL, NULL, NULL, 20),
  (3, 'Émilie ✓ ünïcödé', 'EU', 3, -1, -0.01, -1e10, NULL, '1999-12-31 23:59:59+00', '2000-02-29', repeat('long text ', 3000), '{}', '[]', NULL);
";

fn define_employees(db: &TestDb) {
    db.psql("SELECT sync.define('depts', source => 'departments', target => 'sp', list => 'Departments')");
    db.psql("SELECT sync.map('depts', 'name', 'Title')");
    db.psql("SELECT sync.define('emps', source => 'employees', target => 'sp')");
    for (col, field) in [
        ("name", "Title"),
        ("region", "Region"),
        ("qty", "Qty"),
        ("big", "Big"),
        ("price", "Price"),
        ("score", "Score"),
        ("ok", "Ok"),
        ("at", "At"),
        ("born", "Born"),
        ("notes", "Notes"),
        ("tags", "Tags"),
        ("meta", "Meta"),
    ] {
        db.psql(&format!("SELECT sync.map('emps', '{col}', '{field}')"));
    }
    db.psql("SELECT sync.map('emps', 'dept', 'Dept', reference => 'depts')");
    db.psql("SELECT sync.shard('emps', $$region = 'EU'$$, list => 'Staff EU')");
    db.psql("SELECT sync.shard('emps', $$region <> 'EU'$$, list => 'Staff Other')");
    for d in ["depts", "emps"] {
        db.psql(&format!("SELECT sync.provision('{d}')"));
        db.psql(&format!("SELECT sync.enable('{d}')"));
    }
}

fn setup(budget: Option<u32>, ddl: &str) -> (GraphEnv, TestDb) {
    setup_with(EmulatorConfig { budget_per_min: budget, ..EmulatorConfig::default() }, ddl)
}

fn setup_with(config: EmulatorConfig, ddl: &str) -> (GraphEnv, TestDb) {
    let budget = config.budget_per_min;
    let env = GraphEnv::start_with(config);
    let db = cluster().new_db("graph");
    prepare(&db, ddl);
    // Quick retries: the tests inject failures on purpose.
    db.psql(&format!("ALTER DATABASE \"{}\" SET sync.backoff_base_seconds = 1", db.name()));
    env.create_target(&db, "sp", budget);
    (env, db)
}

#[test]
fn rows_appear_change_move_and_disappear_in_sharepoint_lists() {
    let (env, db) = setup(None, EMPLOYEES);
    define_employees(&db);
    sync_once(&db);
    // Lists provisioned with their columns and the hidden, indexed SyncKey.
    let lists = env.emu.lists();
    let staff = lists.iter().find(|l| l.display_name == "Staff EU").expect("list Staff EU");
    let key_col = staff.columns.iter().find(|c| c["name"] == "SyncKey").expect("a SyncKey column");
    assert_eq!((key_col["indexed"].as_bool(), key_col["hidden"].as_bool()), (Some(true), Some(true)), "{key_col}");
    assert!(staff.columns.iter().any(|c| c["name"] == "Dept" && c.get("lookup").is_some()), "{:?}", staff.columns);
    assert_target_equals_source(&env, &db, "depts", &["Departments"]);
    assert_target_equals_source(&env, &db, "emps", &["Staff EU", "Staff Other"]);
    let items = env.items();
    assert_eq!(items["Staff EU"]["3"]["Notes"].as_str().map(str::len), Some(30_000), "the TOASTed text whole");
    assert_eq!(items["Staff EU"]["3"]["Title"], "Émilie ✓ ünïcödé");

    // Inserts, updates (a TOASTed one too), a shard move, a delete, NULLs.
    db.psql(
        "INSERT INTO departments VALUES (30, 'Sales');
         INSERT INTO employees (id, name, region, dept) VALUES (4, 'Hedy', 'US', 30), (5, 'Rosalind', 'EU', NULL);
         UPDATE employees SET qty = 42, notes = repeat('changed ', 5000), price = NULL WHERE id = 3;
         UPDATE employees SET region = 'US' WHERE id = 1;
         UPDATE departments SET name = 'R&D' WHERE id = 10;
         DELETE FROM employees WHERE id = 2;",
    );
    sync_once(&db);
    assert_target_equals_source(&env, &db, "depts", &["Departments"]);
    assert_target_equals_source(&env, &db, "emps", &["Staff EU", "Staff Other"]);
    let items = env.items();
    assert!(items["Staff Other"].contains_key("1") && !items["Staff EU"].contains_key("1"), "moved");
    assert!(!items["Staff Other"].contains_key("2"), "deleted");
    assert_eq!(open_count(&db), "0");
    let status = db.psql("SELECT string_agg(definition || ':' || state, ' ' ORDER BY definition) FROM sync.status");
    assert_eq!(status, "depts:active emps:active");
    assert_eq!(db.psql("SELECT status FROM sync.targets WHERE name = 'sp'"), "ok");
}

#[test]
fn a_value_graph_refuses_is_an_error_until_the_data_is_fixed_and_retried() {
    // Title is always a single line of text: SharePoint takes 255 characters.
    let (env, db) =
        setup(None, "CREATE TABLE t (id int PRIMARY KEY, code varchar(400)); INSERT INTO t VALUES (1, 'ok');");
    db.psql("SELECT sync.define('t', source => 't', target => 'sp', list => 'T')");
    db.psql("SELECT sync.map('t', 'code', 'Title')");
    db.psql("SELECT sync.provision('t'), sync.enable('t')");
    sync_once(&db);
    db.psql("INSERT INTO t VALUES (2, repeat('x', 300))");
    sync_once(&db);
    let err = db.psql("SELECT status || '|' || error_class FROM sync.pending_exports WHERE sync_key = '2'");
    assert_eq!(err, "error|definite");
    let shown = db.psql("SELECT error || '|' || last_error FROM sync.status WHERE definition = 't'");
    assert!(shown.starts_with("1|") && shown.contains("400"), "sync.status shows the target's message: {shown}");
    assert!(!env.items()["T"].contains_key("2"), "nothing was marked exported that was not");
    // Fix the data, re-queue, deliver.
    db.psql("UPDATE t SET code = 'fixed' WHERE id = 2");
    db.psql("SELECT sync.retry(id) FROM sync.pending_exports WHERE sync_key = '2' AND status = 'error'");
    sync_once(&db);
    assert_target_equals_source(&env, &db, "t", &["T"]);
    assert_eq!(env.items()["T"]["2"]["Title"], "fixed");
}

/// History retention: the exporter purges finished exports and runs older
/// than `sync.history_retention_days`; what the target holds, the ledger and
/// recent history stay.
#[test]
fn the_exporter_purges_history_past_its_retention_and_nothing_else() {
    let (env, db) = setup(
        None,
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 20) g;",
    );
    db.psql("SELECT sync.define('t', source => 't', target => 'sp', list => 'T')");
    db.psql("SELECT sync.provision('t'), sync.enable('t')");
    sync_once(&db);
    // 20 items and the list's provisioning, all exported; then a month passes.
    assert_eq!(db.psql("SELECT count(*) FROM sync.pending_exports WHERE status = 'exported'"), "21");
    db.psql(
        "UPDATE sync.pending_exports SET updated_at = now() - interval '31 days';
         UPDATE sync.runs SET started_at = now() - interval '31 days', finished_at = now() - interval '31 days'",
    );
    let old_runs = db.psql("SELECT count(*) FROM sync.runs");
    db.psql("UPDATE t SET v = 'changed' WHERE id = 7");
    let log = sync_once(&db);
    assert!(
        log.lines().any(|l| l.contains("purged finished exports and runs")
            && l.contains("exports=21 ")
            && l.trim_end().ends_with(&format!(" runs={old_runs}"))),
        "{log}"
    );
    // The update of row 7 is recent history: kept. The ledger is untouched.
    assert_eq!(db.psql("SELECT string_agg(sync_key || ':' || op, ',') FROM sync.pending_exports"), "7:update");
    assert_eq!(db.psql("SELECT count(*) FROM sync.ledger"), "20");
    assert_target_equals_source(&env, &db, "t", &["T"]);
}

// ---------------------------------------------------------------------------
// Issue 14: the adapter against an emulator as strict as the service.

const SHARDED: &str = "CREATE TABLE t (id int PRIMARY KEY, v text, region text NOT NULL);";

fn define_sharded(db: &TestDb) {
    db.psql("SELECT sync.define('t', source => 't', target => 'sp', list => 'T Other')");
    db.psql("SELECT sync.shard('t', $$region = 'EU'$$, list => 'T EU')");
    db.psql("SELECT sync.provision('t'), sync.enable('t')");
}

fn errors(db: &TestDb) -> String {
    db.psql("SELECT count(*) || coalesce(': ' || string_agg(DISTINCT left(last_error, 200), ' / '), '') FROM sync.pending_exports WHERE status = 'error'")
}

#[test]
fn moves_mixed_with_other_changes_in_one_claim_all_arrive() {
    let (env, db) = setup(None, SHARDED);
    db.psql(
        "INSERT INTO t SELECT g, 'v' || g, CASE WHEN g % 2 = 0 THEN 'EU' ELSE 'US' END FROM generate_series(1, 40) g",
    );
    define_sharded(&db);
    sync_once(&db);
    assert_target_equals_source(&env, &db, "t", &["T EU", "T Other"]);
    // One claim: moves both ways, updates, deletes and inserts together.
    db.psql(
        "UPDATE t SET region = CASE region WHEN 'EU' THEN 'US' ELSE 'EU' END WHERE id % 5 = 0;
         UPDATE t SET v = v || '!' WHERE id % 3 = 0;
         DELETE FROM t WHERE id % 7 = 0;
         INSERT INTO t SELECT g, 'n' || g, CASE WHEN g % 2 = 0 THEN 'EU' ELSE 'US' END FROM generate_series(41, 60) g;",
    );
    sync_once(&db);
    assert_eq!(errors(&db), "0", "nothing goes to error");
    assert_target_equals_source(&env, &db, "t", &["T EU", "T Other"]);
    let items = env.items();
    for id in [5, 10, 15, 20, 25, 30, 40] {
        let (now, old) = if id % 2 == 0 { ("T Other", "T EU") } else { ("T EU", "T Other") };
        assert!(items[now].contains_key(&id.to_string()), "{id} arrived in {now}");
        assert!(!items[old].contains_key(&id.to_string()), "{id} left {old}");
    }
    assert_eq!(open_count(&db), "0");
}

#[test]
fn a_refused_batch_condemns_none_of_the_exports_it_carried() {
    let (env, db) = setup(None, SHARDED);
    db.psql("INSERT INTO t VALUES (1, 'one', 'EU')");
    define_sharded(&db);
    sync_once(&db);
    db.psql("INSERT INTO t SELECT g, 'v' || g, 'US' FROM generate_series(2, 15) g; UPDATE t SET v = 'uno'");
    // The next $batch (all fifteen exports) is refused as a whole.
    env.emu.inject(Fault::Status(400), 1);
    sync_once(&db);
    assert_eq!(errors(&db), "0", "a refused envelope says nothing about its exports");
    assert_target_equals_source(&env, &db, "t", &["T EU", "T Other"]);
    assert_eq!(open_count(&db), "0");
}

#[test]
fn answers_lost_after_execution_during_a_2000_row_sync_with_moves_make_no_twins() {
    let seed = seed();
    let mut rng = Lcg(seed);
    let env = GraphEnv::start_with(syncbridge_tests::graph_emulator::EmulatorConfig {
        seed,
        ..syncbridge_tests::graph_emulator::EmulatorConfig::default()
    });
    let db = cluster().new_db("graph lost answers");
    prepare(&db, SHARDED);
    db.psql(&format!("ALTER DATABASE \"{}\" SET sync.backoff_base_seconds = 1", db.name()));
    env.create_target(&db, "sp", None);
    db.psql(
        "INSERT INTO t SELECT g, 'v' || g, CASE WHEN g % 2 = 0 THEN 'EU' ELSE 'US' END FROM generate_series(1, 2000) g",
    );
    define_sharded(&db);
    // Every n-th Graph request runs, then loses its answer.
    let faults = [Fault::RunThenStatus(500), Fault::RunThenStatus(502), Fault::RunThenStatus(503), Fault::RunThenDrop];
    let fault = faults[rng.below(faults.len() as u64) as usize].clone();
    let every = 4 + rng.below(5) as u32;
    eprintln!("lost answers: {fault:?} on every {every}th request");
    env.emu.inject_every(Some(fault.clone()), every);
    sync_once(&db);
    assert_eq!(env.items().values().map(|l| l.len()).sum::<usize>(), 2000, "exactly one item per row");
    assert_target_equals_source(&env, &db, "t", &["T EU", "T Other"]);
    // Moves (a seeded tenth of the rows), updates and inserts, under the same faults.
    let moved: Vec<String> = (1..=2000).filter(|_| rng.below(10) == 0).map(|i: u32| i.to_string()).collect();
    db.psql(&format!(
        "UPDATE t SET region = CASE region WHEN 'EU' THEN 'US' ELSE 'EU' END WHERE id IN ({});
         UPDATE t SET v = v || '!' WHERE id % 11 = 0;
         INSERT INTO t SELECT g, 'n' || g, 'EU' FROM generate_series(2001, 2100) g;",
        moved.join(",")
    ));
    sync_once(&db);
    env.emu.inject_every(None, 0);
    assert_eq!(errors(&db), "0", "nothing goes to error");
    let items = env.items(); // panics on a twin within a list
    assert_eq!(items.values().map(|l| l.len()).sum::<usize>(), 2100, "exactly one item per row, across the lists");
    assert_target_equals_source(&env, &db, "t", &["T EU", "T Other"]);
    assert_eq!(open_count(&db), "0");
}

#[test]
fn json_scalars_bound_for_text_columns_arrive_as_strings() {
    let (env, db) = setup(
        None,
        "CREATE TABLE t (id int PRIMARY KEY, meta jsonb, doc json);
         INSERT INTO t VALUES (1, '42', '1.5'), (2, 'true', 'false'), (3, '\"s\"', '\"t\"'), (4, '{\"a\": 1}', '[1, 2]'),
                              (5, 'null', NULL);",
    );
    db.psql("SELECT sync.define('t', source => 't', target => 'sp', list => 'T')");
    db.psql("SELECT sync.provision('t'), sync.enable('t')");
    sync_once(&db);
    assert_eq!(errors(&db), "0");
    let items = env.items();
    let got = |k: &str, f: &str| items["T"][k].get(f).cloned();
    assert_eq!(got("1", "meta"), Some(serde_json::json!("42")));
    assert_eq!(got("1", "doc"), Some(serde_json::json!("1.5")));
    assert_eq!(got("2", "meta"), Some(serde_json::json!("true")));
    assert_eq!(got("2", "doc"), Some(serde_json::json!("false")));
    assert_eq!(got("3", "meta"), Some(serde_json::json!("s")));
    // A document as its JSON text, as PostgreSQL writes jsonb.
    assert_eq!(got("4", "meta"), Some(serde_json::json!("{\"a\": 1}")));
    assert_eq!(got("4", "doc"), Some(serde_json::json!("[1, 2]")));
    assert_eq!(got("5", "meta"), None);
    assert_target_equals_source(&env, &db, "t", &["T"]);
}

#[test]
fn a_batch_that_ran_but_timed_out_is_looked_up_not_sent_again() {
    let (env, db) = setup(None, SHARDED);
    db.psql("SELECT sync.alter_target('sp', config => '{\"timeout_ms\": 1000}')");
    db.psql(
        "INSERT INTO t SELECT g, 'v' || g, CASE WHEN g % 2 = 0 THEN 'EU' ELSE 'US' END FROM generate_series(1, 30) g",
    );
    define_sharded(&db);
    sync_once(&db); // the lists, then the items
    db.psql("INSERT INTO t SELECT g, 'n' || g, 'EU' FROM generate_series(31, 60) g; UPDATE t SET region = 'US' WHERE id <= 10");
    // Each of the next two requests runs, then answers only after the worker gave up waiting.
    env.emu.inject(Fault::RunThenStall(1500), 2);
    sync_once(&db);
    assert_eq!(errors(&db), "0");
    let items = env.items(); // panics on a twin within a list
    assert_eq!(items.values().map(|l| l.len()).sum::<usize>(), 60, "exactly one item per row");
    assert_target_equals_source(&env, &db, "t", &["T EU", "T Other"]);
    assert_eq!(open_count(&db), "0");
}

/// Issue 14, defects 3 and 5: text that can exceed 255 characters is
/// provisioned as multi-line text (SharePoint's single-line text holds 255),
/// and a numeric a double cannot hold exactly as text with every digit;
/// numeric(12,2) stays a number. Everything arrives unchanged.
#[test]
fn long_text_and_precise_numbers_arrive_unchanged() {
    let (env, db) = setup(
        None,
        "CREATE TABLE t (id int PRIMARY KEY, long varchar(400), free varchar, short varchar(40), big numeric, price numeric(12,2));
         INSERT INTO t VALUES (1, repeat('x', 300), repeat('y', 1000), 'z', 3.14159265358979323846264338327950288, 1234567890.12);",
    );
    db.psql("SELECT sync.define('t', source => 't', target => 'sp', list => 'T')");
    db.psql("SELECT sync.provision('t')"); // compiles the definition
    let kinds = db.psql(
        "SELECT string_agg(f->>'field' || ':' || (f->>'kind'), ',' ORDER BY f->>'field')
           FROM sync.compiled c, jsonb_array_elements(c.fields) f",
    );
    assert_eq!(kinds, "big:note,free:note,long:note,price:number,short:text");
    db.psql("SELECT sync.enable('t')");
    sync_once(&db);
    assert_target_equals_source(&env, &db, "t", &["T"]);
    let items = env.items();
    let item = &items["T"]["1"];
    assert_eq!(item["long"].as_str().map(str::len), Some(300), "{item:?}");
    assert_eq!(item["free"].as_str().map(str::len), Some(1000), "{item:?}");
    assert_eq!(item["big"], "3.14159265358979323846264338327950288", "{item:?}");
    assert_eq!(item["price"], serde_json::json!(1234567890.12), "{item:?}");
}

/// Issue 14, defect 7: a site in New York shows each date on its day and
/// each timestamp at its wall-clock time, across the start of daylight
/// saving time (2026-03-08); SharePoint keeps whole seconds, so a change of
/// a fraction of a second sends nothing.
#[test]
fn dates_and_times_arrive_as_the_sites_time_zone_shows_them() {
    let (env, db) = setup_with(
        EmulatorConfig { time_zone: "America/New_York".into(), ..EmulatorConfig::default() },
        "CREATE TABLE t (id int PRIMARY KEY, day date, at timestamp, stamp timestamptz);
         INSERT INTO t VALUES (1, '2026-03-07', '2026-03-07 09:30:00', '2026-03-07 14:30:00.25+00'),
                              (2, '2026-03-09', '2026-03-09 09:30:00.75', '2026-03-09 13:30:00+00');",
    );
    db.psql("SELECT sync.alter_target('sp', config => '{\"time_zone\": \"America/New_York\"}')");
    db.psql("SELECT sync.define('t', source => 't', target => 'sp', list => 'T')");
    db.psql("SELECT sync.provision('t'), sync.enable('t')");
    sync_once(&db);
    assert_eq!(errors(&db), "0");
    let items = env.items();
    let got = |k: &str, f: &str| items["T"][k][f].as_str().unwrap_or_default().to_owned();
    // Local midnight: EST (UTC-5) before the change, EDT (UTC-4) after.
    assert_eq!(got("1", "day"), "2026-03-07T05:00:00Z");
    assert_eq!(got("2", "day"), "2026-03-09T04:00:00Z");
    assert_eq!(got("1", "at"), "2026-03-07T14:30:00Z");
    assert_eq!(got("2", "at"), "2026-03-09T13:30:00Z");
    assert_eq!(got("1", "stamp"), "2026-03-07T14:30:00Z");
    assert_target_equals_source(&env, &db, "t", &["T"]);
    let writes = env.emu.stats().writes;
    db.psql("UPDATE t SET stamp = stamp + interval '0.5 seconds', at = at + interval '0.2 seconds' WHERE id = 2");
    sync_once(&db);
    assert_eq!(env.emu.stats().writes, writes, "nothing the target would hold changed");
    assert_eq!(db.psql("SELECT count(*) FROM sync.pending_exports WHERE op = 'update'"), "0");
}

/// Issue 14, defects 3 and 5: a value its column cannot hold (Title over 255
/// characters; a bigint a double would round) is named by sync.plan() before
/// anything is sent, then refused with a definite error; nothing is cut or
/// rounded, and the other rows arrive.
#[test]
fn values_a_column_cannot_hold_are_warned_of_and_refused_never_rounded() {
    let (env, db) = setup(
        None,
        "CREATE TABLE t (id int PRIMARY KEY, name text, big bigint);
         INSERT INTO t VALUES (1, 'ok', 9007199254740991), (2, repeat('x', 300), 1), (3, 'big', 9007199254740993);",
    );
    db.psql("SELECT sync.define('t', source => 't', target => 'sp', list => 'T')");
    db.psql("SELECT sync.map('t', 'name', 'Title'), sync.map('t', 'big', 'Big')");
    db.psql("SELECT sync.provision('t')");
    let warned = db.psql(
        "SELECT string_agg(sync_key || ': ' || warning, E'\\n' ORDER BY sync_key) FROM sync.plan('t') WHERE warning IS NOT NULL",
    );
    let lines: Vec<&str> = warned.lines().collect();
    assert_eq!(lines.len(), 2, "{warned}");
    assert!(lines[0].starts_with("2: Title holds 300 characters"), "{warned}");
    assert!(lines[1].starts_with("3: Big is 9007199254740993"), "{warned}");
    assert_eq!(db.psql("SELECT warnings FROM sync.plan_summary('t')"), "2");
    db.psql("SELECT sync.enable('t')");
    sync_once(&db);
    let state = |k: &str| {
        db.psql(&format!(
            "SELECT status || '|' || coalesce(error_class, '') || '|' || coalesce(last_error, '') FROM sync.pending_exports
              WHERE sync_key = '{k}' AND op = 'add'"
        ))
    };
    assert!(state("1").starts_with("exported|"), "{}", state("1"));
    assert!(state("2").starts_with("error|definite|") && state("2").contains("255"), "{}", state("2"));
    assert!(state("3").starts_with("error|definite|") && state("3").contains("cannot hold exactly"), "{}", state("3"));
    let items = env.items();
    assert_eq!(items["T"].keys().collect::<Vec<_>>(), ["1"], "only the row that fits arrived");
    assert_eq!(items["T"]["1"]["Big"], serde_json::json!(9007199254740991_i64));
    // Fixed and retried, everything arrives.
    db.psql("UPDATE t SET name = 'short' WHERE id = 2; UPDATE t SET big = 42 WHERE id = 3");
    db.psql("SELECT sync.retry(id) FROM sync.pending_exports WHERE status = 'error'");
    sync_once(&db);
    assert_eq!(errors(&db), "0");
    assert_target_equals_source(&env, &db, "t", &["T"]);
    assert_eq!(db.psql("SELECT count(*) FROM sync.plan('t') WHERE warning IS NOT NULL"), "0");
}

/// Issue 14, defect 6: `writes_per_second` caps the writes. 61 writes (the
/// list, then 60 rows) at 10 a second with a burst of 10 cannot be done in
/// less than 5.1 s, whatever the machine (a cap only slows down: the bound
/// cannot fail on a slow one); without the cap they all land within a second.
#[test]
fn writes_per_second_caps_the_write_rate() {
    let (env, db) = setup(
        None,
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 60) g;",
    );
    db.psql("SELECT sync.alter_target('sp', config => '{\"writes_per_second\": 10}')");
    db.psql("SELECT sync.define('t', source => 't', target => 'sp', list => 'T')");
    db.psql("SELECT sync.provision('t'), sync.enable('t')");
    sync_once(&db);
    assert_eq!(errors(&db), "0");
    assert_target_equals_source(&env, &db, "t", &["T"]);
    let (writes, span) = env.emu.write_span();
    assert_eq!(writes, 61, "the list and 60 items");
    assert!(span >= Duration::from_secs(5), "61 writes at writes_per_second 10 took only {span:?}");
}
