//! Issue 18: the replication slot is never resumed silently. A stall shows
//! in `sync.status`; a slot dropped, dropped and created again, or
//! invalidated through `max_slot_wal_keep_size` puts the definitions in
//! `error` with the way back, nothing is staged from the gap, and after
//! `sync.resume` the target equals the table again.

use std::time::{Duration, Instant};

use syncbridge_tests::graph::{assert_target_equals_source, sync_once, synced_items, GraphEnv};
use syncbridge_tests::ingest::prepare;
use syncbridge_tests::{cluster, Cluster, ClusterOptions, TestDb};

const ITEMS: &str = "
CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, qty int NOT NULL);
INSERT INTO items SELECT g, 'item ' || g, g FROM generate_series(1, 6) g;
CREATE TABLE filler (id int, pad text);   -- not synced: WAL for the tests
";

fn setup(c: &'static Cluster, hint: &str) -> (GraphEnv, TestDb) {
    synced_items(c, hint, ITEMS)
}

fn state(db: &TestDb) -> String {
    db.psql("SELECT state FROM sync.definitions WHERE name = 'items_sp'")
}

fn reason(db: &TestDb) -> String {
    db.psql("SELECT state_reason FROM sync.definitions WHERE name = 'items_sp'")
}

/// Exports staged for the rows changed in the gap (none may be).
fn staged(db: &TestDb) -> String {
    db.psql("SELECT count(*) FROM sync.pending_exports WHERE status NOT IN ('exported', 'confirmed', 'cancelled') AND op <> 'provision'")
}

/// After the documented way back the target equals the table.
fn way_back(env: &GraphEnv, db: &TestDb) {
    db.psql("SELECT sync.resume('items_sp')");
    let log = sync_once(db);
    assert_eq!(state(db), "active", "{log}");
    assert_target_equals_source(env, db, "items_sp", &["Items"]);
}

#[test]
fn a_slot_dropped_or_created_again_behind_the_worker_is_never_resumed_silently() {
    let (env, db) = setup(cluster(), "slot_dropped");
    let slot = db.name().to_owned();
    assert_eq!(db.psql("SELECT state FROM sync.slot_health"), "no worker");

    // Dropped, a change made, created again, another change: the gap.
    db.psql(&format!("SELECT pg_drop_replication_slot('{slot}')"));
    db.psql("UPDATE items SET qty = 100 WHERE id = 1");
    assert_eq!(db.psql("SELECT state FROM sync.slot_health"), "missing");
    db.psql(&format!("SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"));
    db.psql("UPDATE items SET name = 'after the gap' WHERE id = 2");
    let writes = env.emu.stats().writes;
    let log = sync_once(&db);
    assert_eq!(state(&db), "error", "{log}");
    let r = reason(&db);
    assert!(
        r.contains("was moved or created again")
            && r.contains("sync.resume('items_sp')")
            && r.contains("sync.check_drift"),
        "{r}"
    );
    assert_eq!(staged(&db), "0", "nothing staged from the gap");
    assert_eq!(env.emu.stats().writes, writes, "nothing sent");
    assert_eq!(db.psql("SELECT slot_state FROM sync.status"), "no worker");
    way_back(&env, &db);

    // Dropped and left so: the worker creates a new slot, the definitions wait.
    db.psql(&format!("SELECT pg_drop_replication_slot('{slot}')"));
    db.psql("DELETE FROM items WHERE id = 3");
    let log = sync_once(&db);
    assert_eq!(state(&db), "error", "{log}");
    assert!(reason(&db).contains("was dropped"), "{}", reason(&db));
    assert_eq!(db.psql(&format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'")), "1");
    assert_eq!(staged(&db), "0");
    way_back(&env, &db);
    // And from then on, the stream goes on as before.
    db.psql("UPDATE items SET qty = 7 WHERE id = 4");
    sync_once(&db);
    assert_target_equals_source(&env, &db, "items_sp", &["Items"]);
}

#[test]
fn a_slot_invalidated_by_max_slot_wal_keep_size_is_not_resumed() {
    let c: &'static Cluster = Box::leak(Box::new(Cluster::start(ClusterOptions {
        conf: [ClusterOptions::logical().conf, vec!["max_slot_wal_keep_size = '1MB'".into()]].concat(),
        ..ClusterOptions::logical()
    })));
    let (env, db) = setup(c, "slot_lost");
    db.psql("UPDATE items SET qty = 200 WHERE id = 5");
    // WAL well past the slot's reserve, segments switched, a checkpoint:
    // the slot's WAL is removed.
    let deadline = Instant::now() + Duration::from_secs(120);
    while db.psql("SELECT wal_status FROM sync.slot_health") != "lost" {
        assert!(
            Instant::now() < deadline,
            "the slot was not invalidated: {}",
            db.psql("SELECT wal_status, wal_held_bytes FROM sync.slot_health")
        );
        db.psql("INSERT INTO filler SELECT g, repeat('x', 2000) FROM generate_series(1, 10000) g");
        db.psql("SELECT pg_switch_wal()");
        db.psql("CHECKPOINT");
    }
    assert_eq!(db.psql("SELECT state FROM sync.slot_health"), "lost");
    let writes = env.emu.stats().writes;
    let log = sync_once(&db);
    assert_eq!(state(&db), "error", "{log}");
    let r = reason(&db);
    assert!(r.contains("was invalidated") && r.contains("max_slot_wal_keep_size 1MB"), "{r}");
    assert_eq!(staged(&db), "0");
    assert_eq!(env.emu.stats().writes, writes);
    assert_eq!(db.psql("SELECT wal_status <> 'lost' FROM sync.slot_health"), "t", "a new slot");
    way_back(&env, &db);
}

#[test]
fn a_stall_shows_in_sync_status_with_its_reason() {
    let (_env, db) = setup(cluster(), "slot_stall");
    db.psql(&format!("ALTER DATABASE \"{}\" SET sync.stall_seconds = 10", db.name()));
    // No worker runs; WAL is written (2 MB, not synced) for longer than
    // sync.stall_seconds.
    db.psql("INSERT INTO filler SELECT g, repeat('x', 2000) FROM generate_series(1, 1000) g");
    let deadline = Instant::now() + Duration::from_secs(60);
    while db.psql("SELECT slot_state FROM sync.status") != "stalled" {
        assert!(Instant::now() < deadline, "no stall shown: {}", db.psql("SELECT * FROM sync.slot_health"));
        std::thread::sleep(Duration::from_millis(500));
    }
    let r = db.psql("SELECT slot_reason FROM sync.status");
    assert!(r.contains("has not moved for") && r.contains("no worker is attached"), "{r}");
    // A worker catches up: no longer stalled.
    sync_once(&db);
    assert_ne!(db.psql("SELECT state FROM sync.slot_health"), "stalled");
}

#[test]
fn a_mapped_column_renamed_under_a_running_sync_resumes_with_nothing_lost() {
    let (env, db) = setup(cluster(), "ddl_rename");
    db.psql("UPDATE items SET qty = qty + 10 WHERE id <= 2");
    // Renamed between two runs, with changes on both sides of the DDL.
    let out = db
        .psql("ALTER TABLE items RENAME COLUMN name TO title; UPDATE items SET title = 'renamed ' || id WHERE id >= 5");
    assert!(out.is_empty() || !out.contains("ERROR"), "{out}");
    assert_eq!(state(&db), "error");
    let r = reason(&db);
    assert!(r.contains("mapped column name no longer exists") && r.contains("sync.resume('items_sp')"), "{r}");
    let writes = env.emu.stats().writes;
    let log = sync_once(&db);
    assert_eq!(env.emu.stats().writes, writes, "nothing sent from a definition in error:\n{log}");
    // The documented fix: map the field to the new column, resume.
    db.psql("SELECT sync.map('items_sp', 'title', 'Name')");
    way_back(&env, &db);
    // A new column is ignored until mapped; a type change that keeps the
    // values sends nothing.
    db.psql("ALTER TABLE items ADD COLUMN color text; ALTER TABLE items ALTER COLUMN qty TYPE bigint");
    assert_eq!(state(&db), "active");
    let writes = env.emu.stats().writes;
    sync_once(&db);
    assert_eq!(env.emu.stats().writes, writes);
}

#[test]
fn a_worker_refuses_an_extension_version_it_cannot_work_with() {
    let db = cluster().new_db("version");
    prepare(&db, ITEMS);
    // (as if the extension were still at 0.1.0: a superuser's edit of the catalog)
    db.psql("UPDATE pg_extension SET extversion = '0.1.0' WHERE extname = 'syncbridge'");
    let out = syncbridge_tests::process::run_once(&db, &[], Duration::from_secs(60));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains("the syncbridge extension is at version 0.1.0")
            && log.contains("ALTER EXTENSION syncbridge UPDATE"),
        "{log}"
    );
    db.psql("UPDATE pg_extension SET extversion = '0.2.0' WHERE extname = 'syncbridge'");
}
