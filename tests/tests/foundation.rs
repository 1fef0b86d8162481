//! Issue 2: the throwaway cluster, the extension's smallest slice, and
//! `syncbridge-worker check` with each thing that can be wrong.

use syncbridge_tests::{cluster, worker::worker, Cluster, ClusterOptions};

#[test]
fn cluster_is_logical_and_extension_creates_schema_sync() {
    let db = cluster().new_db("foundation");
    assert_eq!(db.psql("SHOW wal_level"), "logical");
    assert_eq!(db.psql("SELECT sync.version()"), syncbridge_worker::VERSION);
    assert_eq!(
        db.psql("SELECT nspname FROM pg_namespace n JOIN pg_extension e ON e.extnamespace = n.oid WHERE extname = 'syncbridge'"),
        "sync"
    );
    // Databases are separate per test.
    let other = cluster().new_empty_db("foundation other");
    assert_ne!(other.name(), db.name());
    assert_eq!(other.psql("SELECT count(*) FROM pg_extension WHERE extname = 'syncbridge'"), "0");
}

#[test]
fn check_passes_on_a_ready_database() {
    let db = cluster().new_db("check ok");
    let out = worker().args(["check", "--dsn", &db.dsn()]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("wal_level    logical"), "{stdout}");
    assert!(stdout.contains(&format!("syncbridge {} installed", syncbridge_worker::VERSION)), "{stdout}");
    assert!(stdout.contains("may replicate (superuser)"), "{stdout}");
    assert!(stdout.contains("PostgreSQL 15"), "{stdout}");
    assert!(stdout.ends_with("all checks passed\n"), "{stdout}");

    let json = worker().args(["check", "--json", "--dsn", &db.dsn()]).output().unwrap();
    assert!(json.status.success());
    let text = String::from_utf8_lossy(&json.stdout);
    assert!(text.contains("\"wal_level\": \"logical\""), "{text}");
    assert!(text.contains("\"can_replicate\": true"), "{text}");
}

#[test]
fn check_fails_without_the_extension_and_says_how_to_fix_it() {
    let db = cluster().new_empty_db("check noext");
    let out = worker().args(["check", "--dsn", &db.dsn()]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL  extension"), "{stdout}");
    assert!(stdout.contains("hint: run CREATE EXTENSION syncbridge"), "{stdout}");
    assert!(stdout.contains("1 check(s) failed"), "{stdout}");
}

#[test]
fn check_fails_for_a_role_that_cannot_replicate() {
    let db = cluster().new_db("check norepl");
    db.psql("DO $$ BEGIN CREATE ROLE sb_plain LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$");
    let dsn = format!("host=127.0.0.1 port={} user=sb_plain dbname={}", cluster().port(), db.name());
    let out = worker().args(["check", "--dsn", &dsn]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL  replication  role sb_plain has neither REPLICATION nor superuser"), "{stdout}");
    assert!(stdout.contains("ALTER ROLE sb_plain REPLICATION"), "{stdout}");
}

#[test]
fn check_fails_when_wal_level_is_not_logical() {
    let replica = Box::leak(Box::new(Cluster::start(ClusterOptions {
        conf: vec!["wal_level = replica".into()],
        hba: Vec::new(),
        files: Vec::new(),
    })));
    let db = replica.new_db("check replica");
    let out = worker().args(["check", "--dsn", &db.dsn()]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL  wal_level    wal_level is 'replica', not 'logical'"), "{stdout}");
    assert!(stdout.contains("hint: set wal_level = logical"), "{stdout}");
}

#[test]
fn check_reports_an_unreachable_server_with_exit_code_2() {
    // A port nothing listens on: bind one, then close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dsn = format!("host=127.0.0.1 port={port} user=postgres password=hunter2 dbname=x connect_timeout=2");
    let out = worker().args(["check", "--dsn", &dsn]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("cannot connect to postgres@127.0.0.1:{port}/x")), "{stderr}");
    assert!(!stderr.contains("hunter2"), "the password leaked: {stderr}");

    let bad = worker().args(["check", "--dsn", "host=a port=notaport"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid connection string"));
}
