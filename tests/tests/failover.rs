//! Issue 18: failover slots (PostgreSQL 17 and later). The worker's slot is
//! a failover slot; a physical standby with `sync_replication_slots` keeps a
//! copy, and the primary (`synchronized_standby_slots`) sends the worker
//! nothing the standby lacks while the worker confirms nothing whose records
//! the standby lacks. The primary is stopped mid-stream, the standby
//! promoted, and the worker pointed at it resumes from the copy: the target
//! ends equal to the new primary's table, nothing lost, nothing twice.
//!
//! On PostgreSQL 15 and 16 the test says it is skipped: `make test` runs
//! the integration tests on 18 as well, where it runs.

use std::time::{Duration, Instant};

use syncbridge_tests::cluster::server_major;
use syncbridge_tests::graph::{assert_target_equals_source, sync_once, synced_items, worker_cmd};
use syncbridge_tests::process::spawn_quiet;
use syncbridge_tests::worker::worker;
use syncbridge_tests::{Cluster, ClusterOptions, TestDb};

const STANDBY_SLOT: &str = "sb_standby";

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_promoted_standby_resumes_from_the_synchronized_slot_with_nothing_lost_or_twice() {
    let major = server_major();
    if major < 17 {
        eprintln!(
            "skipped: failover slots need PostgreSQL 17 or later (this server is {major}; make test runs it on 18)"
        );
        return;
    }
    let mut conf = ClusterOptions::logical();
    conf.conf.push(format!("synchronized_standby_slots = '{STANDBY_SLOT}'"));
    let primary: &'static Cluster = Box::leak(Box::new(Cluster::start(conf)));
    primary.psql("postgres", &format!("SELECT pg_create_physical_replication_slot('{STANDBY_SLOT}', true)"));
    let standby: &'static Cluster = Box::leak(Box::new(primary.standby(
        STANDBY_SLOT,
        &[
            "wal_level = logical".into(),
            "track_commit_timestamp = on".into(),
            "hot_standby_feedback = on".into(),
            "sync_replication_slots = on".into(),
        ],
    )));
    wait_for("the standby to stream", Duration::from_secs(60), || {
        primary.psql("postgres", &format!("SELECT active FROM pg_replication_slots WHERE slot_name = '{STANDBY_SLOT}'"))
            == "t"
    });

    // The table, the target, the first sync (the worker creates the slot).
    let (env, db) = synced_items(
        primary,
        "failover",
        "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, qty int NOT NULL);
         INSERT INTO items SELECT g, 'item ' || g, g FROM generate_series(1, 20) g;",
    );
    let slot = db.name().to_owned();
    assert_eq!(
        db.psql(&format!("SELECT failover FROM pg_replication_slots WHERE slot_name = '{slot}'")),
        "t",
        "the worker makes its slot a failover slot"
    );
    assert_eq!(db.psql("SELECT failover FROM sync.slot_health"), "t");
    let check = worker().args(["check", "--dsn", &db.dsn()]).output().expect("run check");
    let check = String::from_utf8_lossy(&check.stdout);
    assert!(check.contains(&format!("synchronized_standby_slots ({STANDBY_SLOT})")), "{check}");

    // A worker streams; changes go on; the standby keeps a copy of the slot.
    let worker = spawn_quiet(worker_cmd(&db, &[]));
    for round in 0..5 {
        db.psql(&format!(
            "UPDATE items SET qty = qty + 1, name = name || '.' WHERE id % 5 = {round};
             INSERT INTO items VALUES ({}, 'new {round}', {round});
             DELETE FROM items WHERE id = {};",
            100 + round,
            round + 1
        ));
        std::thread::sleep(Duration::from_millis(150));
    }
    let written = db.psql("SELECT pg_current_wal_lsn()");
    wait_for("the target to catch up on the primary", Duration::from_secs(90), || {
        db.psql(&format!(
            "SELECT confirmed_flush_lsn >= '{written}' FROM pg_replication_slots WHERE slot_name = '{slot}'"
        )) == "t"
            && db.psql(
                "SELECT count(*) FROM sync.pending_exports WHERE status NOT IN ('exported', 'confirmed', 'cancelled')",
            ) == "0"
    });
    assert_target_equals_source(&env, &db, "items_sp", &["Items"]);
    wait_for("the standby's copy of the slot to be ready", Duration::from_secs(120), || {
        standby.psql(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}' AND synced AND NOT temporary"
            ),
        ) == "1"
    });

    // More changes, and the primary stops while the worker streams them.
    for round in 5..10 {
        db.psql(&format!(
            "UPDATE items SET qty = qty * 2 WHERE id % 3 = {};
             INSERT INTO items VALUES ({}, 'late {round}', {round});",
            round % 3,
            100 + round
        ));
    }
    primary.crash();
    drop(worker);

    // The standby is promoted; the worker is pointed at it.
    standby.promote();
    let db2 = TestDb::existing(standby, db.name());
    wait_for("the promoted standby to accept writes", Duration::from_secs(60), || {
        db2.psql("SELECT pg_is_in_recovery()") == "f"
    });
    let log = sync_once(&db2);
    assert!(log.contains("resuming a failover slot synchronized from the former primary"), "{log}");
    assert_eq!(db2.psql("SELECT state FROM sync.definitions WHERE name = 'items_sp'"), "active", "{log}");
    assert_target_equals_source(&env, &db2, "items_sp", &["Items"]);

    // Changes on the new primary sync as before.
    db2.psql(
        "UPDATE items SET name = 'after promotion' WHERE id = 10; INSERT INTO items VALUES (500, 'five hundred', 5)",
    );
    sync_once(&db2);
    assert_target_equals_source(&env, &db2, "items_sp", &["Items"]);

    // Nothing twice: item ids count up from 1, so the highest is the
    // number of items ever created: one per row ever synced (20 rows, 5 of
    // them deleted, and the rows inserted since that survived the primary),
    // no twin. And no write re-sent values an item already had.
    let lists = env.emu.lists();
    let list = lists.iter().find(|l| l.display_name == "Items").expect("the list");
    let created: u64 = list.items.iter().filter_map(|i| i.id.parse().ok()).max().unwrap_or(0);
    let rows: u64 = db2.psql("SELECT count(*) FROM items").parse().expect("count");
    assert_eq!(created, rows + 5, "items created (one per row ever synced)");
    assert_eq!(env.emu.unchanged_writes(), 0, "writes that changed nothing");
}
