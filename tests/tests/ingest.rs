//! Issue 4: the worker's ingest against a real cluster: slot creation with
//! the initial backfill in its exported snapshot, streaming, staging,
//! LSN checkpoints, origin skipping, TRUNCATE, idle slots, one reader per
//! slot, SIGTERM, large transactions, crashes, and clear refusals.

use std::process::Stdio;
use std::time::{Duration, Instant};

use syncbridge_tests::ingest::{open_exports, prepare};
use syncbridge_tests::process::{run_cmd, run_once, run_once_ok, signal, wait_with_limit, ChildGuard};
use syncbridge_tests::{cluster, worker::worker, Cluster, ClusterOptions};

const ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY, title text, qty int);
    INSERT INTO items SELECT g, 'item ' || g, g FROM generate_series(1, 50) g;";

fn define_items(db: &syncbridge_tests::TestDb) {
    db.psql("SELECT sync.define('items', source => 'items', target => 't', list => 'Items')");
    db.psql("SELECT sync.enable('items')");
}

fn slot_confirmed(db: &syncbridge_tests::TestDb) -> String {
    db.psql(&format!("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{}'", db.name()))
}

/// A running worker (`run`, continuous) with `args`, its output captured.
fn spawn_worker(db: &syncbridge_tests::TestDb, args: &[&str]) -> ChildGuard {
    ChildGuard::new(run_cmd(db, args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start a worker"))
}

/// Waits (at most 30 s) until a worker streams the database's slot.
fn wait_streaming(db: &syncbridge_tests::TestDb) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while db.psql(&format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{}' AND active", db.name()))
        != "1"
    {
        assert!(Instant::now() < deadline, "no worker started streaming");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn first_run_creates_the_slot_backfills_in_its_snapshot_then_streams() {
    let db = cluster().new_db("ingest basic");
    prepare(&db, ITEMS);
    define_items(&db);
    let first = run_once_ok(&db);
    assert!(first.contains("created the slot"), "{first}");
    // The backfill staged every row once.
    let exports = open_exports(&db, "items");
    assert_eq!(exports.len(), 50, "{exports:?}");
    assert!(exports.iter().all(|(_, op)| op == "add"));
    assert_eq!(db.psql("SELECT backfill FROM sync.definitions WHERE name = 'items'"), "done");
    let progress = db.psql("SELECT backfill_progress ->> 'rows_done' FROM sync.status");
    assert_eq!(progress, "50");

    // Changes now stream: insert, update, delete, a key change.
    db.psql(
        "INSERT INTO items VALUES (51, 'new', 1);
         UPDATE items SET title = 'changed' WHERE id = 2;
         DELETE FROM items WHERE id = 3;
         UPDATE items SET id = 100 WHERE id = 4;",
    );
    let lsn_after = db.psql("SELECT pg_current_wal_lsn()");
    let slot_before = slot_confirmed(&db);
    let log = run_once_ok(&db);
    assert!(log.contains("resuming the slot"), "{log}");
    let exports = open_exports(&db, "items");
    let keys: Vec<&str> = exports.iter().map(|(k, _)| k.as_str()).collect();
    // 3 and 4 were never sent: their adds are cancelled; 51 and 100 are adds.
    assert!(
        !keys.contains(&"3") && !keys.contains(&"4"),
        "{keys:?}\nfirst run:\n{first}\nslot at {slot_before} before the second; changes end at {lsn_after}\n{log}"
    );
    assert!(keys.contains(&"51") && keys.contains(&"100"), "{keys:?}");
    assert_eq!(exports.len(), 50, "{exports:?}");
    let title =
        db.psql("SELECT payload ->> 'title' FROM sync.pending_exports WHERE sync_key = '2' AND status = 'pending'");
    assert_eq!(title, "changed");
    // The slot and the cursor moved past the changes.
    let ok = db.psql(&format!(
        "SELECT '{}'::pg_lsn >= '{lsn_after}'::pg_lsn AND lsn >= '{lsn_after}'::pg_lsn FROM sync.cursors WHERE kind = 'slot'",
        slot_confirmed(&db)
    ));
    assert_eq!(ok, "t");
    // A run is recorded.
    assert_eq!(db.psql("SELECT count(*) FROM sync.runs WHERE kind = 'stream' AND status = 'succeeded'"), "2");
}

#[test]
fn staged_changes_of_sent_rows_become_updates_and_deletes_and_truncate_deletes_all() {
    let db = cluster().new_db("ingest ledger");
    prepare(&db, ITEMS);
    define_items(&db);
    run_once_ok(&db);
    // Pretend the target took everything.
    db.psql(
        "SELECT sync.complete((SELECT jsonb_agg(jsonb_build_object('id', id, 'ok', true, 'target_id', 'item-' || sync_key))
                               FROM sync.claim('t', 1000, worker => 'test')))",
    );
    assert_eq!(db.psql("SELECT count(*) FROM sync.ledger"), "50");
    db.psql("UPDATE items SET qty = qty + 1 WHERE id <= 5; DELETE FROM items WHERE id = 6;");
    run_once_ok(&db);
    let exports = open_exports(&db, "items");
    assert_eq!(
        exports,
        vec![
            ("1".into(), "update".into()),
            ("2".into(), "update".into()),
            ("3".into(), "update".into()),
            ("4".into(), "update".into()),
            ("5".into(), "update".into()),
            ("6".into(), "delete".into()),
        ]
    );
    let payload = db.psql("SELECT payload FROM sync.pending_exports WHERE sync_key = '1' AND status = 'pending'");
    assert_eq!(payload, r#"{"qty": 2}"#);
    db.psql("TRUNCATE items");
    run_once_ok(&db);
    let exports = open_exports(&db, "items");
    assert_eq!(exports.len(), 50);
    assert!(exports.iter().all(|(_, op)| op == "delete"), "{exports:?}");
}

#[test]
fn transactions_under_the_syncbridge_origin_are_skipped() {
    let db = cluster().new_db("ingest origin");
    prepare(&db, ITEMS);
    define_items(&db);
    let first = run_once_ok(&db);
    let before = db.psql("SELECT confirmed_flush_lsn || ' ' || pg_current_wal_lsn() FROM pg_replication_slots WHERE slot_name = current_database()");
    db.psql(
        "SELECT sync.complete((SELECT jsonb_agg(jsonb_build_object('id', id, 'ok', true)) FROM sync.claim('t', 1000)))",
    );
    db.psql(
        "SELECT pg_replication_origin_create('syncbridge') WHERE NOT EXISTS (SELECT 1 FROM pg_replication_origin WHERE roname = 'syncbridge')",
    );
    // psql -c runs its statements as one transaction: one call each.
    db.psql("SELECT pg_replication_origin_session_setup('syncbridge'); UPDATE items SET title = 'from the target' WHERE id = 7");
    db.psql("UPDATE items SET title = 'local' WHERE id = 8");
    let at = db.psql("SELECT pg_current_wal_lsn()");
    let log = run_once_ok(&db);
    assert!(
        log.contains("skipped_own=1"),
        "first run:\n{first}\nslot before: {before}, after the updates: {at}\n{log}"
    );
    let exports = open_exports(&db, "items");
    assert_eq!(exports, vec![("8".into(), "update".into())]);
}

#[test]
fn an_idle_slot_still_advances() {
    let db = cluster().new_db("ingest idle");
    prepare(&db, ITEMS);
    define_items(&db);
    run_once_ok(&db);
    // WAL that touches no watched table.
    db.psql("CREATE TABLE noise (x int); INSERT INTO noise SELECT generate_series(1, 20000);");
    let before = db.psql("SELECT pg_current_wal_lsn()");
    run_once_ok(&db);
    let ok = db.psql(&format!("SELECT '{}'::pg_lsn >= '{before}'::pg_lsn", slot_confirmed(&db)));
    assert_eq!(ok, "t", "confirmed {} < {before}", slot_confirmed(&db));
    assert_eq!(open_exports(&db, "items").len(), 50);
}

#[test]
fn a_large_transaction_is_staged_in_bounded_chunks() {
    let db = cluster().new_db("ingest large");
    prepare(&db, ITEMS);
    define_items(&db);
    run_once_ok(&db);
    db.psql("INSERT INTO items SELECT g, 'bulk', g FROM generate_series(1000, 30999) g");
    let out = run_once(&db, &["--batch-keys", "2000"], Duration::from_secs(120));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    // 30,000 keys in batches of at most 2,000: at least 15 staging transactions.
    let batches: u64 = log
        .split("batches=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no batches= in the log:\n{log}"));
    assert!(batches >= 15, "{batches} batches:\n{log}");
    assert_eq!(open_exports(&db, "items").len(), 30_050);
}

#[test]
fn one_reader_per_slot_and_sigterm_confirms_then_exits_zero() {
    let db = cluster().new_db("ingest lock");
    prepare(&db, ITEMS);
    define_items(&db);
    run_once_ok(&db);
    let first = spawn_worker(&db, &[]);
    wait_streaming(&db);
    let second = spawn_worker(&db, &["--once"]);
    std::thread::sleep(Duration::from_secs(2));
    db.psql("UPDATE items SET qty = -1 WHERE id = 9");
    std::thread::sleep(Duration::from_millis(800));
    signal(&first, libc::SIGTERM);
    let out1 = wait_with_limit(first, Duration::from_secs(30));
    let log1 = String::from_utf8_lossy(&out1.stderr);
    assert_eq!(out1.status.code(), Some(0), "{log1}");
    assert!(log1.contains("SIGTERM received"), "{log1}");
    let out2 = wait_with_limit(second, Duration::from_secs(60));
    let log2 = String::from_utf8_lossy(&out2.stderr);
    assert!(out2.status.success(), "{log2}");
    assert!(log2.contains("another worker reads slot"), "{log2}");
    // The first worker staged the update before it left.
    let qty = db.psql("SELECT payload ->> 'qty' FROM sync.pending_exports WHERE sync_key = '9' AND status = 'pending'");
    assert_eq!(qty, "-1");
}

#[test]
fn a_role_without_replication_is_told_what_to_do() {
    let db = cluster().new_db("ingest norepl");
    prepare(&db, ITEMS);
    define_items(&db);
    db.psql(
        "DO $$ BEGIN CREATE ROLE sb_plain LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         GRANT syncbridge_worker TO sb_plain; GRANT SELECT ON items TO sb_plain;",
    );
    let dsn = format!("{} user=sb_plain", db.dsn().replace("user=postgres", ""));
    let out = worker()
        .args(["run", "--once", "--dsn", &dsn])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map(|c| wait_with_limit(c, Duration::from_secs(60)))
        .expect("run the worker");
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("REPLICATION"), "{log}");
}

#[test]
fn wal_level_replica_is_refused_with_a_hint() {
    let c: &'static Cluster = Box::leak(Box::new(Cluster::start(ClusterOptions {
        conf: vec!["wal_level = replica".into()],
        hba: Vec::new(),
        files: Vec::new(),
    })));
    let db = c.new_db("ingest replica");
    prepare(&db, ITEMS);
    define_items(&db);
    let out = run_once(&db, &[], Duration::from_secs(60));
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("wal_level"), "{log}");
    assert!(log.contains("wal_level = logical"), "{log}");
}

/// Staging runs on its own session, overlapping decoding. When that session
/// dies (a DBA terminates it, a failover), the ingest stops, restarts from
/// the last confirmed LSN and stages everything: nothing is lost.
#[test]
fn a_terminated_staging_session_restarts_the_ingest_and_loses_nothing() {
    let db = cluster().new_db("ingest stager lost");
    prepare(&db, ITEMS);
    define_items(&db);
    run_once_ok(&db);
    let stager_pid = || {
        db.psql(
            "SELECT coalesce(min(pid), 0) FROM pg_stat_activity
              WHERE application_name = 'syncbridge-stage' AND datname = current_database()",
        )
    };
    let wait_stager = |not: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let pid = stager_pid();
            if pid != "0" && pid != not {
                return Some(pid);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let worker = spawn_worker(&db, &["--no-export"]);
    let first = wait_stager("0").expect("no staging session");
    // Changes before, while and after the staging session is gone.
    let mut before_last = String::new();
    for round in 0..6 {
        let lo = 1000 + round * 500;
        if round == 5 {
            before_last = db.psql("SELECT pg_current_wal_lsn()");
        }
        db.psql(&format!("INSERT INTO items SELECT g, 'round {round}', g FROM generate_series({lo}, {}) g", lo + 499));
        if round == 2 {
            assert_eq!(db.psql(&format!("SELECT pg_terminate_backend({first})")), "t", "the staging session was gone");
        }
    }
    if wait_stager(&first).is_none() {
        signal(&worker, libc::SIGTERM);
        let out = wait_with_limit(worker, Duration::from_secs(30));
        panic!("no new staging session:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while open_exports(&db, "items").len() != 50 + 3000 {
        assert!(Instant::now() < deadline, "only {} of 3,050 keys staged", open_exports(&db, "items").len());
        std::thread::sleep(Duration::from_millis(200));
    }
    signal(&worker, libc::SIGTERM);
    let out = wait_with_limit(worker, Duration::from_secs(30));
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{log}");
    // Restarted for that reason: its staging session's connection was lost.
    assert!(
        log.lines().any(|l| l.contains("ingest failed; restarting") && l.contains("stag")),
        "the ingest did not notice:\n{log}"
    );
    // Each key once, with its last value; the slot is confirmed past all of it.
    assert_eq!(
        db.psql("SELECT count(DISTINCT sync_key) || ' ' || count(*) FROM sync.pending_exports WHERE payload ->> 'title' LIKE 'round %'"),
        "3000 3000"
    );
    let past_last = db.psql(&format!(
        "SELECT confirmed_flush_lsn >= '{before_last}' FROM pg_replication_slots WHERE slot_name = '{}'",
        db.name()
    ));
    assert_eq!(past_last, "t", "the slot is not confirmed past the last round");
}

/// An idle source: the slot follows WAL that touches no watched table, and
/// the worker writes nothing for it (recording each such position in
/// sync.cursors would itself be WAL that moves the position again: a write
/// per status interval, forever).
#[test]
fn an_idle_worker_confirms_foreign_wal_without_writing_any() {
    let db = cluster().new_db("ingest idle quiet");
    prepare(&db, ITEMS);
    define_items(&db);
    run_once_ok(&db);
    let cursor = || db.psql("SELECT lsn || ' ' || updated_at FROM sync.cursors WHERE kind = 'slot'");
    let worker = spawn_worker(&db, &["--no-export"]);
    wait_streaming(&db);
    std::thread::sleep(Duration::from_secs(1));
    let before = cursor();
    db.psql("CREATE TABLE noise (x int); INSERT INTO noise SELECT generate_series(1, 20000);");
    let target = db.psql("SELECT pg_current_wal_lsn()");
    let deadline = Instant::now() + Duration::from_secs(30);
    while db.psql(&format!("SELECT '{}'::pg_lsn >= '{target}'::pg_lsn", slot_confirmed(&db))) != "t" {
        assert!(Instant::now() < deadline, "the slot stayed at {} < {target}", slot_confirmed(&db));
        std::thread::sleep(Duration::from_millis(100));
    }
    // Several status intervals (200 ms) later, still nothing written.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(cursor(), before);
    signal(&worker, libc::SIGTERM);
    let out = wait_with_limit(worker, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

/// sync.runs tells the truth about a killed worker: its run is marked failed
/// (abandoned) by the next sync.purge(), while a live worker's run stays
/// running, and ends succeeded.
#[test]
fn runs_of_a_killed_worker_are_marked_abandoned_and_live_ones_are_not() {
    let db = cluster().new_db("ingest abandoned runs");
    prepare(&db, ITEMS);
    define_items(&db);
    run_once_ok(&db);
    let killed = spawn_worker(&db, &["--no-export"]);
    wait_streaming(&db);
    let killed_run = db.psql("SELECT max(id) FROM sync.runs WHERE kind = 'stream' AND status = 'running'");
    signal(&killed, libc::SIGKILL);
    let _ = wait_with_limit(killed, Duration::from_secs(10));
    let live = spawn_worker(&db, &["--no-export"]);
    // Once the new worker streams, the killed one's sessions are gone.
    let deadline = Instant::now() + Duration::from_secs(30);
    while db.psql(&format!(
        "SELECT count(*) FROM sync.runs WHERE kind = 'stream' AND status = 'running' AND id > {killed_run}"
    )) != "1"
    {
        assert!(Instant::now() < deadline, "the second worker never started its run");
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_streaming(&db);
    // The new worker's stream purges at start; this purge is for certain.
    db.psql("SELECT sync.purge()");
    assert_eq!(
        db.psql(&format!("SELECT status || ' ' || left(error, 9) FROM sync.runs WHERE id = {killed_run}")),
        "failed abandoned"
    );
    // Nothing else was running without a session; a second purge finds none.
    assert_eq!(db.psql("SELECT abandoned FROM sync.purge()"), "0");
    signal(&live, libc::SIGTERM);
    let out = wait_with_limit(live, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    // (The new worker may have met the killed one's walsender still holding
    // the slot once, a failed run, before its own.)
    assert_eq!(db.psql("SELECT status FROM sync.runs WHERE kind = 'stream' ORDER BY id DESC LIMIT 1"), "succeeded");
}

/// The session holding the stream's run and the slot's lock is lost (a DBA
/// terminates it, idle_session_timeout, a cut): the ingest notices within
/// seconds and restarts instead of streaming on without its run and lock.
#[test]
fn a_terminated_run_session_restarts_the_ingest() {
    let db = cluster().new_db("ingest run session lost");
    prepare(&db, ITEMS);
    define_items(&db);
    run_once_ok(&db);
    let worker = spawn_worker(&db, &["--no-export"]);
    wait_streaming(&db);
    let first_run = db.psql("SELECT max(id) FROM sync.runs WHERE kind = 'stream' AND status = 'running'");
    let killed = db.psql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE application_name = 'syncbridge-ingest' AND datname = current_database()",
    );
    assert_eq!(killed, "t");
    let deadline = Instant::now() + Duration::from_secs(30);
    while db.psql(&format!(
        "SELECT count(*) FROM sync.runs WHERE kind = 'stream' AND status = 'running' AND id > {first_run}"
    )) != "1"
    {
        assert!(Instant::now() < deadline, "the ingest did not restart");
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_streaming(&db);
    db.psql("UPDATE items SET qty = -7 WHERE id = 3");
    let deadline = Instant::now() + Duration::from_secs(30);
    while db.psql("SELECT count(*) FROM sync.pending_exports WHERE sync_key = '3' AND payload ->> 'qty' = '-7'") != "1"
    {
        assert!(Instant::now() < deadline, "the change after the restart was not staged");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The lost session's run could not be finished: purge (the restarted
    // stream's, or this one) says so.
    db.psql("SELECT sync.purge()");
    assert_eq!(
        db.psql(&format!("SELECT status || ' ' || left(error, 9) FROM sync.runs WHERE id = {first_run}")),
        "failed abandoned"
    );
    signal(&worker, libc::SIGTERM);
    let out = wait_with_limit(worker, Duration::from_secs(30));
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(
        log.lines().any(|l| l.contains("ingest failed; restarting") && l.contains("checking the run's session")),
        "{log}"
    );
}
