//! Issue 17: operating from SQL, end to end. Drift checks read the
//! emulator's lists through the worker and reconcile repairs them; a run is
//! rolled back item by item; scheduled jobs run once per occurrence however
//! many workers run, and failures reach LISTENers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use syncbridge_tests::graph::{assert_target_equals_source, sync_once, GraphEnv, SECRET_ENV};
use syncbridge_tests::graph_emulator::EmulatorConfig;
use syncbridge_tests::ingest::prepare;
use syncbridge_tests::process::spawn_quiet;
use syncbridge_tests::worker::worker;
use syncbridge_tests::{cluster, TestDb};

const ITEMS: &str = "
CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, qty int NOT NULL);
INSERT INTO items SELECT g, 'item ' || g, g FROM generate_series(1, 6) g;
";

fn fields(v: Value) -> Map<String, Value> {
    v.as_object().cloned().expect("an object")
}

/// A push definition of `items`: Name and Qty, rows with qty >= 100 in the
/// list Big, the others in Items.
fn setup(hint: &str, extra: &str) -> (GraphEnv, TestDb) {
    let env = GraphEnv::start_with(EmulatorConfig::default());
    let db = cluster().new_db(hint);
    prepare(&db, ITEMS);
    env.create_target(&db, "sp", None);
    db.psql(&format!("SELECT sync.define('items_sp', source => 'items', target => 'sp', list => 'Items'{extra})"));
    db.psql("SELECT sync.map('items_sp', 'name', 'Name'), sync.map('items_sp', 'qty', 'Qty')");
    db.psql("SELECT sync.shard('items_sp', 'qty >= 100', 'Big')");
    db.psql("SELECT sync.provision('items_sp')");
    db.psql("SELECT sync.enable('items_sp')");
    (env, db)
}

/// list → SyncKey → (Name, Qty) as the emulator holds them (twins kept
/// apart by their id; an item without a SyncKey under its id).
fn target(env: &GraphEnv) -> BTreeMap<String, BTreeMap<String, (String, f64)>> {
    let mut out: BTreeMap<String, BTreeMap<String, (String, f64)>> = BTreeMap::new();
    for l in env.emu.lists() {
        let list = out.entry(l.display_name.clone()).or_default();
        for i in l.items {
            let key =
                i.fields.get("SyncKey").and_then(Value::as_str).map_or_else(|| format!("#{}", i.id), str::to_owned);
            let name = i.fields.get("Name").and_then(Value::as_str).unwrap_or_default().to_owned();
            let qty = i.fields.get("Qty").and_then(Value::as_f64).unwrap_or(f64::NAN);
            let key = if list.contains_key(&key) { format!("{key}#{}", i.id) } else { key };
            list.insert(key, (name, qty));
        }
    }
    out
}

fn drift_items(db: &TestDb, report: &str) -> String {
    db.psql(&format!(
        "SELECT string_agg(concat_ws(':', kind, list, coalesce(sync_key, '-'), coalesce(field, '-'), coalesce(expected::text, '-'), coalesce(actual ->> 'Name', actual::text, '-')), ' '
                ORDER BY kind, list, sync_key, field)
           FROM sync.drift_items WHERE report_id = {report}"
    ))
}

#[test]
fn drift_names_what_changed_behind_our_back_and_reconcile_repairs_it_with_the_fewest_writes() {
    let (env, db) = setup("ops_drift", ", delete_scope => 'all'");
    db.psql("UPDATE items SET qty = 150 WHERE id = 6");
    sync_once(&db);
    assert_target_equals_source(&env, &db, "items_sp", &["Items", "Big"]);

    // Behind syncbridge's back: item 2 deleted, Qty of 3 edited, an item
    // made by hand (an orphan), a twin of 4 (its SyncKey: a duplicate); and
    // the ledger forgets 5's item (a restore of an older backup): adoptable.
    env.emu.person_delete("Items", "2").unwrap();
    env.emu.person_edit("Items", "3", &fields(json!({"Qty": 33})), 7).unwrap();
    env.emu.person_create("Items", &fields(json!({"Name": "made by hand", "Qty": 0})), 7).unwrap();
    env.emu.person_create("Items", &fields(json!({"SyncKey": "4", "Name": "item 4", "Qty": 4})), 7).unwrap();
    db.psql("DELETE FROM sync.ledger WHERE sync_key = '5'");

    // Its cost beforehand: one page per list, the first of a read twice.
    assert_eq!(
        db.psql("SELECT concat_ws(' ', drift_check_requests, drift_check_cost, drift_check_time > interval '0') FROM sync.plan_summary('items_sp')"),
        "2 4 t"
    );
    let report = db.psql("SELECT sync.check_drift('items_sp')");
    let log = sync_once(&db);
    assert_eq!(
        db.psql("SELECT concat_ws(' ', status, lists_read, items_read, in_sync, orphans, adoptable, duplicates, missing, drifted) FROM sync.drift"),
        "done 2 7 3 1 1 1 1 1",
        "{log}"
    );
    assert_eq!(
        drift_items(&db, &report),
        "adoptable:Items:5:-:-:item 5 drifted:Items:3:Qty:3:33 duplicate:Items:4:-:-:item 4 missing:Items:2:-:{\"Qty\": 2, \"Name\": \"item 2\"}:- orphan:Items:-:-:-:made by hand"
    );
    assert_eq!(
        db.psql(&format!("SELECT concat_ws(' ', kind, status, started_by = current_user, requests) FROM sync.runs WHERE id = (SELECT run_id FROM sync.drift_reports WHERE id = {report})")),
        "drift succeeded t 2"
    );

    // Reconcile: exactly the repairs, seen in the plan before anything goes.
    let writes = env.emu.stats().writes;
    assert_eq!(
        db.psql(&format!(
            "SELECT concat_ws(' ', added, updated, deleted, moved, adopted) FROM sync.reconcile({report}, 'mirror')"
        )),
        "1 1 2 0 1"
    );
    assert_eq!(
        db.psql("SELECT string_agg(op || ':' || coalesce(sync_key, '-'), ' ' ORDER BY op, sync_key) FROM sync.plan('items_sp') WHERE queued IS NOT NULL"),
        "add:2 delete:- delete:- update:3"
    );
    sync_once(&db);
    assert_eq!(env.emu.stats().writes - writes, 4, "one write per repair: 2 created, Qty of 3, two deletes");
    assert_target_equals_source(&env, &db, "items_sp", &["Items", "Big"]);
    assert_eq!(db.psql("SELECT join_type FROM sync.ledger WHERE sync_key = '5'"), "joined");

    // The same report again is stale; a new check finds nothing and its
    // reconcile sends nothing.
    let err = db.try_psql(&format!("SELECT sync.reconcile({report})")).unwrap_err();
    assert!(err.contains("55000") || err.contains("is stale"), "{err}");
    let report2 = db.psql("SELECT sync.check_drift('items_sp')");
    sync_once(&db);
    assert_eq!(
        db.psql(
            "SELECT concat_ws(' ', status, in_sync, orphans, adoptable, duplicates, missing, drifted) FROM sync.drift"
        ),
        "done 6 0 0 0 0 0"
    );
    let writes = env.emu.stats().writes;
    assert_eq!(
        db.psql(&format!(
            "SELECT concat_ws(' ', added, updated, deleted, moved, adopted) FROM sync.reconcile({report2})"
        )),
        "0 0 0 0 0"
    );
    sync_once(&db);
    assert_eq!(env.emu.stats().writes, writes, "nothing sent the second time");
}

#[test]
fn a_rolled_back_run_leaves_the_target_as_it_was_and_skips_what_changed_since() {
    let (env, db) = setup("ops_rollback", "");
    sync_once(&db);
    let before = target(&env);

    // One run creates 7, updates 1 and 4, moves 3 to Big and deletes 2.
    db.psql(
        "INSERT INTO items VALUES (7, 'item 7', 7);
         UPDATE items SET name = 'renamed' WHERE id IN (1, 4);
         UPDATE items SET qty = 300 WHERE id = 3;
         DELETE FROM items WHERE id = 2;",
    );
    sync_once(&db);
    let run = db.psql(
        "SELECT DISTINCT run_id FROM sync.pending_exports WHERE sync_key = '7' AND status IN ('exported', 'confirmed')",
    );
    assert_eq!(
        db.psql(&format!(
            "SELECT string_agg(sync_key || ':' || op, ' ' ORDER BY sync_key) FROM sync.run_changes({run})"
        )),
        "1:update 2:delete 3:move 4:update 7:add"
    );
    assert_eq!(db.psql(&format!("SELECT kind FROM sync.runs WHERE id = {run}")), "stream");
    // Item 4 changes again after the run.
    db.psql("UPDATE items SET qty = 44 WHERE id = 4");
    sync_once(&db);

    let rows = db.psql(&format!(
        "SELECT string_agg(concat_ws(':', sync_key, action, op), ' ' ORDER BY sync_key) FROM sync.rollback('items_sp', {run}) WHERE sync_key IS NOT NULL"
    ));
    assert_eq!(rows, "1:staged:update 2:staged:add 3:staged:move 4:skipped 7:staged:delete");
    assert_eq!(db.psql("SELECT state FROM sync.definitions"), "paused");
    // Nothing goes before it is approved.
    let writes = env.emu.stats().writes;
    sync_once(&db);
    assert_eq!(env.emu.stats().writes, writes, "awaiting approval");
    db.psql("SELECT sync.approve_all('items_sp')");
    // A change staged meanwhile waits: the definition is paused.
    db.psql("UPDATE items SET name = 'not yet' WHERE id = 5");
    sync_once(&db);

    let mut want = before.clone();
    // 4 changed after the run: not overwritten (its values are the later sync's).
    want.get_mut("Items").unwrap().insert("4".into(), ("renamed".into(), 44.0));
    assert_eq!(target(&env), want, "the target as it was before the run, item by item");
    assert_eq!(
        db.psql("SELECT string_agg(op || ':' || sync_key || ':' || status, ' ') FROM sync.pending_exports WHERE status IN ('pending', 'awaiting_approval')"),
        "update:5:pending"
    );
    let rollback = db.psql("SELECT max(id) FROM sync.runs WHERE kind = 'rollback'");
    assert_eq!(
        db.psql(&format!(
            "SELECT string_agg(sync_key || ':' || op, ' ' ORDER BY sync_key) FROM sync.run_changes({rollback})"
        )),
        "1:update 2:add 3:move 7:delete"
    );
    // Forced, the item changed since is taken back too: the field the run
    // changed (Name), not the one changed after it (Qty).
    db.psql(&format!("SELECT count(*) FROM sync.rollback('items_sp', {run}, force => true)"));
    db.psql("SELECT sync.approve_all('items_sp')");
    sync_once(&db);
    let mut want = before;
    want.get_mut("Items").unwrap().insert("4".into(), ("item 4".into(), 44.0));
    assert_eq!(target(&env)["Items"]["4"], want["Items"]["4"]);
    // Resumed, what the table holds goes again.
    db.psql("SELECT sync.resume('items_sp')");
    sync_once(&db);
    assert_eq!(target(&env)["Items"]["5"], ("not yet".into(), 5.0));
}

/// Notifications received on `channel` until `until` holds or the time is up.
fn listen(db: &TestDb, channel: &str, act: impl FnOnce(), until: impl Fn(&[String]) -> bool) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (client, mut conn) = tokio_postgres::connect(&db.dsn(), tokio_postgres::NoTls).await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let pump = tokio::spawn(async move {
            while let Some(m) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                if let Ok(tokio_postgres::AsyncMessage::Notification(n)) = m {
                    let _ = tx.send(n.payload().to_owned());
                }
            }
        });
        client.batch_execute(&format!("LISTEN {channel}")).await.unwrap();
        // (blocking: the notifications wait in the socket meanwhile)
        act();
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while !until(&got) {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(p)) => got.push(p),
                _ => break,
            }
        }
        pump.abort();
        got
    })
}

#[test]
fn two_workers_run_each_occurrence_of_a_minute_schedule_once_and_failures_are_notified() {
    let (_env, db) = setup("ops_jobs", "");
    sync_once(&db);
    // Bad input changes nothing.
    for (sql, want) in [
        ("SELECT sync.schedule('j', '*/0 * * * *', 'purge')", "invalid cron expression"),
        ("SELECT sync.schedule('j', '* * * * *', 'purge', time_zone => 'Mars/Olympus')", "unknown time zone"),
    ] {
        let err = db.try_psql(sql).unwrap_err();
        assert!(err.contains(want), "{err}");
    }
    assert_eq!(db.psql("SELECT count(*) FROM sync.schedules"), "0");

    // A job due three minutes ago, missed while no worker was up: it runs
    // once when the workers come, then every minute, each minute once.
    db.psql("SELECT sync.schedule('every_minute', '* * * * *', 'purge', time_zone => 'Europe/Paris')");
    let start = db.psql("SELECT date_trunc('minute', now())");
    db.psql(&format!("UPDATE sync.schedules SET next_run_at = '{start}'::timestamptz - interval '3 minutes'"));
    // Two exporter processes (each worker process runs the jobs loop).
    let exporter = || {
        let mut c = worker();
        c.args(["export", "--dsn", &db.dsn()]).env(SECRET_ENV, EmulatorConfig::default().client_secret);
        spawn_quiet(c)
    };
    let (a, b) = (exporter(), exporter());
    // Three occurrences after the missed one.
    let deadline = Instant::now() + Duration::from_secs(240);
    while db.psql("SELECT count(*) FROM sync.runs WHERE kind = 'job'").parse::<i32>().unwrap() < 4 {
        assert!(Instant::now() < deadline, "the schedule did not run 4 times in 4 minutes");
        std::thread::sleep(Duration::from_millis(500));
    }

    // A failing job and a definition going to error reach LISTENers.
    let got = listen(
        &db,
        "syncbridge_events",
        || {
            db.psql("SELECT sync.schedule('restage_gone', '* * * * *', 'restage', 'items_sp')");
            db.psql("SELECT sync.disable('items_sp')");
            db.psql("UPDATE sync.schedules SET next_run_at = now() WHERE name = 'restage_gone'");
            db.psql("UPDATE sync.definitions SET state = 'error', state_reason = 'test: the table was dropped'");
        },
        |got| got.iter().any(|p| p.contains("job_failed")) && got.iter().any(|p| p.contains("definition_error")),
    );
    drop((a, b));
    let failed: Value =
        serde_json::from_str(got.iter().find(|p| p.contains("job_failed")).expect("job_failed")).unwrap();
    assert_eq!(failed["job"], "restage_gone");
    // (disabled, or in error if the job ran after the state changed)
    assert!(failed["error"].as_str().unwrap().contains("definition 'items_sp' is "), "{failed}");
    let error: Value = serde_json::from_str(got.iter().find(|p| p.contains("definition_error")).unwrap()).unwrap();
    assert_eq!(
        error,
        json!({"event": "definition_error", "definition": "items_sp", "reason": "test: the table was dropped"})
    );

    // Each occurrence once: consecutive minutes, no gaps, no twins; the
    // missed one (three minutes before the start) ran once, not three times.
    let job = "(SELECT id FROM sync.schedules WHERE name = 'every_minute')";
    let occ = db.psql(&format!(
        "SELECT string_agg(((extract(epoch FROM scheduled_for - '{start}'::timestamptz) / 60)::int)::text, ' ' ORDER BY scheduled_for)
           FROM sync.runs WHERE job_id = {job}"
    ));
    let minutes: Vec<i32> = occ.split(' ').map(|m| m.parse().unwrap()).collect();
    assert_eq!(minutes[0], -3, "the missed run first: {occ}");
    assert!(minutes.len() >= 4, "{occ}");
    for w in minutes[1..].windows(2) {
        assert_eq!(w[1] - w[0], 1, "one run a minute: {occ}");
    }
    assert!((1..=2).contains(&minutes[1]), "then every minute from the start: {occ}");
    assert_eq!(
        db.psql(&format!("SELECT count(*) = count(DISTINCT scheduled_for) AND bool_and(status = 'succeeded') FROM sync.runs WHERE job_id = {job}")),
        "t"
    );
    assert_eq!(
        db.psql("SELECT concat_ws(' ', last_status, runs = (SELECT count(*) FROM sync.runs WHERE kind = 'job' AND started_by = 'job:every_minute'), failures) FROM sync.jobs WHERE name = 'every_minute'"),
        "succeeded t 0"
    );
}
