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
    assert!(stdout.contains(&format!("PostgreSQL {}.", syncbridge_tests::cluster::server_major())), "{stdout}");
    assert!(stdout.contains("ok    failover"), "{stdout}");
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

/// Everything `CREATE EXTENSION` makes in schema sync, one line per fact
/// (functions with their body, rights, owner and settings; tables, columns,
/// constraints, indexes, triggers, views, comments, reference data, grants).
fn catalog(db: &syncbridge_tests::TestDb) -> std::collections::BTreeSet<String> {
    db.psql(
        r#"SELECT x FROM (
  SELECT format('function %s -> %s lang=%s secdef=%s owner=%s config=%s acl=%s vol=%s strict=%s src=%s comment=%s',
                p.oid::regprocedure, pg_get_function_result(p.oid), l.lanname, p.prosecdef, p.proowner::regrole,
                p.proconfig, p.proacl, p.provolatile, p.proisstrict, md5(p.prosrc), obj_description(p.oid, 'pg_proc'))
    FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang WHERE p.pronamespace = 'sync'::regnamespace
  UNION ALL
  SELECT format('relation %s kind=%s owner=%s acl=%s comment=%s', c.relname, c.relkind, c.relowner::regrole, c.relacl,
                obj_description(c.oid, 'pg_class'))
    FROM pg_class c WHERE c.relnamespace = 'sync'::regnamespace
  UNION ALL
  SELECT format('column %s.%s %s notnull=%s identity=%s default=%s acl=%s comment=%s', c.relname, a.attname,
                format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attidentity, pg_get_expr(d.adbin, d.adrelid),
                a.attacl, col_description(c.oid, a.attnum))
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
   WHERE c.relnamespace = 'sync'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
  UNION ALL
  SELECT format('constraint %s on %s: %s', conname, conrelid::regclass, pg_get_constraintdef(oid))
    FROM pg_constraint WHERE connamespace = 'sync'::regnamespace
  UNION ALL
  SELECT format('index %s', pg_get_indexdef(i.indexrelid))
    FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid WHERE c.relnamespace = 'sync'::regnamespace
  UNION ALL
  SELECT format('trigger %s', pg_get_triggerdef(t.oid))
    FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid WHERE c.relnamespace = 'sync'::regnamespace AND NOT t.tgisinternal
  UNION ALL
  SELECT format('view %s: %s', c.relname, pg_get_viewdef(c.oid))
    FROM pg_class c WHERE c.relkind = 'v' AND c.relnamespace = 'sync'::regnamespace
  UNION ALL
  SELECT format('target kind %s', to_jsonb(k)) FROM sync.target_kinds k
  UNION ALL
  SELECT format('schema acl %s', nspacl) FROM pg_namespace WHERE nspname = 'sync'
  UNION ALL
  SELECT format('extension %s config %s', extversion, extconfig::regclass[]) FROM pg_extension WHERE extname = 'syncbridge'
) s(x) ORDER BY x"#,
    )
    .lines()
    .map(str::to_owned)
    .collect()
}

/// The upgrade from the last released version: a database made with
/// 0.1.0's install script (sql/upgrade/syncbridge--0.1.0.sql) and updated
/// holds what a fresh install holds, object for object; its stored
/// expressions are carried over as 0.2.0 stores them, and a definition whose
/// expression 0.2.0 refuses is stopped with the reason.
#[test]
fn upgrade_from_the_last_release_equals_a_fresh_install() {
    let setup = "CREATE TABLE public.emp (id int PRIMARY KEY, name text, code varchar(5));
        INSERT INTO public.emp VALUES (1, 'Ada', 'EU'), (2, 'Grace', 'US');
        SELECT sync.create_target('t', kind => 'graph', config => '{\"tenant_id\": \"t\", \"client_id\": \"c\", \"site_id\": \"s\"}');
        SELECT sync.define('d', source => 'public.emp', target => 't', list => 'L', row_filter => 'id > 0');
        SELECT sync.map('d', 'name', 'Title', transform => 'upper(name)');
        SELECT sync.map('d', 'code', 'Code');
        SELECT sync.shard('d', $$code = 'EU'$$, list => 'EU');";
    let old = cluster().new_empty_db("upgrade old");
    old.psql("CREATE EXTENSION syncbridge VERSION '0.1.0'");
    old.psql(setup);
    old.psql(
        "SELECT sync.define('bad', source => 'public.emp', target => 't', list => 'B');
         SELECT sync.map('bad', NULL, 'When', transform => 'now()::text');",
    );
    old.psql("ALTER EXTENSION syncbridge UPDATE");
    assert_eq!(old.psql("SELECT sync.version()"), syncbridge_worker::VERSION);

    let fresh = cluster().new_db("upgrade fresh");
    fresh.psql(setup);
    let (a, b) = (catalog(&old), catalog(&fresh));
    let only_upgraded: Vec<_> = a.difference(&b).collect();
    let only_fresh: Vec<_> = b.difference(&a).collect();
    assert!(
        only_upgraded.is_empty() && only_fresh.is_empty(),
        "the upgraded schema differs from a fresh install\nonly after the upgrade:\n{}\nonly in a fresh install:\n{}",
        only_upgraded.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n"),
        only_fresh.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n")
    );

    // Expressions are stored as 0.2.0 stores them, and still work.
    let stored = "SELECT d.row_filter || ' | ' || m.transform || ' | ' || s.predicate
                    FROM sync.definitions d JOIN sync.field_maps m ON m.definition_id = d.id AND m.field = 'Title'
                    JOIN sync.shards s ON s.definition_id = d.id WHERE d.name = 'd'";
    assert_eq!(old.psql(stored), fresh.psql(stored));
    let preview =
        "SELECT string_agg(list || ':' || (fields ->> 'Title'), ',' ORDER BY sync_key) FROM sync.preview('d')";
    assert_eq!(old.psql(preview), "EU:ADA,L:GRACE");
    assert_eq!(old.psql(preview), fresh.psql(preview));
    let bad = old.psql("SELECT state || ': ' || state_reason FROM sync.definitions WHERE name = 'bad'");
    assert!(bad.starts_with("error: upgrade to 0.2.0: transform refused: "), "{bad}");
    // The evaluating role may read the definitions' table.
    assert_eq!(old.psql("SELECT has_table_privilege('syncbridge_reader', 'public.emp', 'SELECT')"), "t");
}

/// Issue 15: one source of truth for target kinds. The worker's registry
/// and `sync.target_kinds` state the same facts (configuration keys, batch
/// size, costs, capabilities, implemented); any difference fails, named.
#[test]
fn the_workers_kind_registry_and_sync_target_kinds_agree() {
    let db = cluster().new_db("kinds");
    let rows = db.psql("SELECT to_jsonb(k)::text FROM sync.target_kinds k ORDER BY kind");
    let sql: std::collections::BTreeMap<String, serde_json::Value> = rows
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a kind as JSON");
            (v["kind"].as_str().expect("kind").to_owned(), v)
        })
        .collect();
    let worker: std::collections::BTreeMap<String, serde_json::Value> = syncbridge_worker::target::registry::as_json()
        .into_iter()
        .map(|v| (v["kind"].as_str().expect("kind").to_owned(), v))
        .collect();
    assert_eq!(
        sql.keys().collect::<Vec<_>>(),
        worker.keys().collect::<Vec<_>>(),
        "the kinds: sync.target_kinds vs the worker's registry"
    );
    let mut differences = Vec::new();
    for (kind, s) in &sql {
        let w = &worker[kind];
        let (s, w) = (s.as_object().expect("object"), w.as_object().expect("object"));
        for key in s.keys().chain(w.keys()).collect::<std::collections::BTreeSet<_>>() {
            // Numbers compare as numbers (numeric 2 and 2 are the same fact).
            let same = match (s.get(key), w.get(key)) {
                (Some(a), Some(b)) if a.is_number() && b.is_number() => a.as_f64() == b.as_f64(),
                (a, b) => a == b,
            };
            if !same {
                differences.push(format!("{kind}.{key}: sql {:?} vs worker {:?}", s.get(key), w.get(key)));
            }
        }
    }
    assert!(differences.is_empty(), "sync.target_kinds and the worker's registry differ:\n{}", differences.join("\n"));
}

/// Issue 15: the spellings both sides use agree: the target statuses the
/// worker reports, the error classes it sends `sync.complete`, and the
/// secret references the extension accepts (the worker never refuses one of
/// those for its form, nor reads one the extension would refuse).
#[test]
fn the_worker_and_the_extension_spell_statuses_classes_and_secret_references_alike() {
    use syncbridge_worker::target::{ErrorClass, Health, TargetPolicy};
    let db = cluster().new_db("spellings");
    db.psql(
        "SELECT sync.create_target('t', kind => 'graph', config => '{\"tenant_id\": \"a\", \"client_id\": \"b\", \"site_id\": \"c\"}')",
    );
    let checks = |constraint: &str| {
        db.psql(&format!("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = '{constraint}'"))
    };
    let quoted = |def: &str| -> std::collections::BTreeSet<String> {
        def.split('\'').skip(1).step_by(2).map(str::to_owned).collect()
    };
    // Statuses: what the table allows is what the worker reports, plus
    // unknown (before any report), misconfigured (a target it cannot set
    // up) and disabled (a target that asked to be: a webhook's 410).
    let mut worker: std::collections::BTreeSet<String> = Health::ALL.iter().map(|h| h.as_str().to_owned()).collect();
    worker.extend(["unknown".to_owned(), "misconfigured".to_owned()]);
    worker.insert(syncbridge_worker::target::DISABLED_STATUS.to_owned());
    assert_eq!(quoted(&checks("targets_status_check")), worker, "sync.targets.status");
    for h in &worker {
        db.psql(&format!("SELECT sync.report_target_status('t', '{h}', NULL)"));
    }
    // Error classes.
    let worker: std::collections::BTreeSet<String> =
        ErrorClass::ALL.iter().map(|c| serde_json::to_value(c).unwrap().as_str().unwrap().to_owned()).collect();
    assert_eq!(quoted(&checks("pending_exports_error_class_check")), worker, "pending_exports.error_class");
    // Secret references.
    let policy = TargetPolicy::default();
    for r in [
        "env:SYNCBRIDGE_SECRET_X",
        "env:OTHER",
        "file:/etc/syncbridge/secrets/x",
        "file:relative",
        "env:",
        "env:1X",
        "vault:kv/x",
        "plain-secret-value",
        "file:/",
    ] {
        let sql = db.try_psql(&format!("SELECT sync._check_secret_ref('{r}')")).is_ok();
        let worker_form = !matches!(policy.resolve_secret(r), Err(e) if e.to_string().contains("a secret reference is env:NAME or file:/path"));
        if sql {
            assert!(worker_form, "{r}: the extension accepts it, the worker refuses its form");
        } else {
            assert!(policy.resolve_secret(r).is_err(), "{r}: the extension refuses it, the worker would read it");
        }
    }
}
