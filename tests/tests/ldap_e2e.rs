//! Issue 20, LDAP: source → worker → a real slapd (see
//! `syncbridge_tests::ldap`), end to end. People are added, renamed, moved
//! between shards (OUs) and changed with their entryUUID kept; naming values
//! with RFC 4514's special characters and unicode; an entry that existed
//! already is joined (and never deleted), an add whose answer was lost is
//! adopted, not doubled; LDAPS and StartTLS; a refused bind; bad data fails
//! alone with the server's message. Adapter-level tests (the worker's
//! `Target` against the server) cover disabling, re-enabling and groups.
//! The scenarios every kind shares are in `robustness.rs`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use syncbridge_tests::emulator::Fault;
use syncbridge_tests::ingest::{open_count, prepare};
use syncbridge_tests::ldap::{LdapTargetEnv, Slapd, BASE, HR_DN, HR_PW, PLACEHOLDER, SB_DN, SB_PW, SECRET_ENV};
use syncbridge_tests::process::{signal, wait_with_limit, ChildGuard};
use syncbridge_tests::target_env::{EnvOptions, TargetEnv};
use syncbridge_tests::{cluster, TestDb};
use syncbridge_worker::target::ldap::dn;
use syncbridge_worker::target::{ApplyContext, Export, Target, TargetPolicy};

const PEOPLE: &str = "
CREATE TABLE people (id int PRIMARY KEY, uid text, given text, family text, mail text, dept text);
INSERT INTO people VALUES
  (1, 'alice', 'Alice', 'Archer', 'alice@example.com', 'ops'),
  (2, '# Smith, J+R \"x\" <y>; \\z', 'J', 'Smith', NULL, 'ops'),
  (3, ' zoë.東京', 'Zoë', 'Tanaka', 'zoe@example.com', 'ops'),
  (4, 'dave', 'Dave', 'Diaz', NULL, 'eng');
";

/// Definition `people`: ops in ou=People, eng in ou=Eng; cn made of the names.
fn define(env: &LdapTargetEnv, db: &TestDb) {
    env.slapd.ensure_ou("Eng");
    db.psql("SELECT sync.define('people', source => 'people', target => 'dir', list => 'uid={uid},ou=People')");
    db.psql("SELECT sync.shard('people', $$dept = 'eng'$$, 'uid={uid},ou=Eng')");
    for (col, field) in [("uid", "uid"), ("given", "givenName"), ("family", "sn"), ("mail", "mail")] {
        db.psql(&format!("SELECT sync.map('people', '{col}', '{field}')"));
    }
    db.psql("SELECT sync.map('people', NULL, 'cn', transform => $$given || ' ' || family$$)");
    db.psql("SELECT sync.map('people', NULL, 'objectClass', transform => $$ARRAY['inetOrgPerson']$$)");
    db.psql("SELECT sync.enable('people')");
}

fn setup(ddl: &str) -> (LdapTargetEnv, TestDb) {
    let env = LdapTargetEnv::start(EnvOptions::default());
    let db = cluster().new_db("ldap e2e");
    prepare(&db, ddl);
    db.psql(&format!("ALTER DATABASE \"{}\" SET sync.backoff_base_seconds = 1", db.name()));
    env.create_target(&db, "dir");
    (env, db)
}

/// The ledger's entryUUID of row `key`.
fn uuid_of(db: &TestDb, key: &str) -> String {
    db.psql(&format!(
        "SELECT target_id FROM sync.ledger l JOIN sync.definitions d ON d.id = l.definition_id
          WHERE d.name = 'people' AND sync_key = '{key}'"
    ))
}

fn error_of(db: &TestDb, key: &str) -> String {
    db.psql(&format!(
        "SELECT status || '|' || coalesce(error_class, '') || '|' || coalesce(last_error, '')
           FROM sync.pending_exports WHERE sync_key = '{key}' ORDER BY id DESC LIMIT 1"
    ))
}

/// The naming value and the parent of an entry's DN.
fn name_and_parent(d: &str) -> (String, String) {
    let (rdn, parent) = dn::split_first(d);
    let value = rdn.split_once('=').map(|(_, v)| dn::unescape(v)).unwrap_or_default();
    (value, parent.to_owned())
}

#[test]
fn people_are_added_renamed_moved_and_changed_keeping_their_entry_uuid() {
    let (env, db) = setup(PEOPLE);
    define(&env, &db);
    env.sync_once(&db);
    assert_eq!(open_count(&db), "0", "{}", db.psql("SELECT string_agg(last_error, E'\\n') FROM sync.pending_exports"));
    let people = format!("ou=People,{BASE}");
    let eng = format!("ou=Eng,{BASE}");
    let mut uuids = HashMap::new();
    for (key, uid, parent) in [
        ("1", "alice", &people),
        ("2", "# Smith, J+R \"x\" <y>; \\z", &people),
        ("3", " zoë.東京", &people),
        ("4", "dave", &eng),
    ] {
        let uuid = uuid_of(&db, key);
        let e = env.slapd.by_uuid(&uuid).unwrap_or_else(|| panic!("row {key}: no entry with entryUUID {uuid}"));
        // The naming value is escaped into the DN and reads back as the row's.
        assert!(dn::same(name_and_parent(&e.dn).1.as_str(), parent), "{}", e.dn);
        assert_eq!(name_and_parent(&e.dn).0, uid, "{}", e.dn);
        assert_eq!(e.all("uid"), [uid.to_owned()], "{}", e.dn);
        assert_eq!(e.get("creatorsName").map(|c| dn::same(c, SB_DN)), Some(true), "{}: created by syncbridge", e.dn);
        uuids.insert(key, uuid);
    }
    env.assert_target_equals_source(&db, "people", &["People", "Eng"]);
    let alice = env.slapd.by_uuid(&uuids["1"]).expect("alice");
    assert_eq!(
        (alice.get("cn"), alice.get("sn"), alice.get("mail")),
        (Some("Alice Archer"), Some("Archer"), Some("alice@example.com"))
    );
    assert_eq!(env.slapd.by_uuid(&uuids["2"]).expect("smith").get("mail"), None, "NULL: no attribute");

    // A rename (the naming value), a move (another shard), an attribute
    // removed (NULL), one changed, a move back with a rename at once.
    db.psql("UPDATE people SET uid = 'alice.archer', mail = NULL WHERE id = 1");
    db.psql("UPDATE people SET dept = 'eng', family = 'Smythe' WHERE id = 2");
    db.psql("UPDATE people SET dept = 'ops', uid = 'd.diaz' WHERE id = 4");
    env.sync_once(&db);
    assert_eq!(open_count(&db), "0", "{}", db.psql("SELECT string_agg(last_error, E'\\n') FROM sync.pending_exports"));
    for key in ["1", "2", "3", "4"] {
        assert_eq!(uuid_of(&db, key), uuids[key], "row {key} kept its entry");
    }
    let a = env.slapd.by_uuid(&uuids["1"]).expect("alice, renamed");
    assert_eq!(name_and_parent(&a.dn).0, "alice.archer");
    assert_eq!(a.all("uid"), ["alice.archer"], "the old naming value went with the rename");
    assert_eq!(a.get("mail"), None, "mail removed");
    let s = env.slapd.by_uuid(&uuids["2"]).expect("smith, moved");
    assert!(dn::same(&name_and_parent(&s.dn).1, &eng), "{}", s.dn);
    assert_eq!((s.get("sn"), s.get("cn")), (Some("Smythe"), Some("J Smythe")));
    let d = env.slapd.by_uuid(&uuids["4"]).expect("dave, moved and renamed");
    assert_eq!(name_and_parent(&d.dn), ("d.diaz".to_owned(), people.clone()));
    env.assert_target_equals_source(&db, "people", &["People", "Eng"]);
    // Nothing was deleted and added: four entries, the same four.
    assert_eq!(env.count("People") + env.count("Eng"), 4);

    db.psql("DELETE FROM people WHERE id = 3");
    env.sync_once(&db);
    assert!(env.slapd.by_uuid(&uuids["3"]).is_none(), "row 3's entry is deleted");
    env.assert_target_equals_source(&db, "people", &["People", "Eng"]);
}

#[test]
fn an_existing_entry_is_joined_never_deleted_and_a_lost_add_is_adopted_not_doubled() {
    let (env, db) = setup(PEOPLE);
    // HR made bob's entry before syncbridge came.
    let bob = format!("uid=bob,ou=People,{BASE}");
    env.slapd
        .add_as(
            (HR_DN, HR_PW),
            &bob,
            &[("objectClass", &["inetOrgPerson"]), ("uid", &["bob"]), ("cn", &["Bob"]), ("sn", &["Old"])],
        )
        .expect("HR adds bob");
    let hr_uuid = env.slapd.uuid_at(&bob);
    db.psql("INSERT INTO people VALUES (5, 'bob', 'Bob', 'Baker', 'bob@example.com', 'ops')");
    define(&env, &db);
    // Row 6's add runs, but its answer is lost: the next attempt looks first.
    db.psql("INSERT INTO people VALUES (6, 'carol', 'Carol', 'Cole', NULL, 'ops')");
    env.sync_once(&db);
    assert_eq!(open_count(&db), "0");
    assert_eq!(uuid_of(&db, "5"), hr_uuid, "bob's existing entry is the item");
    let join = |key: &str| {
        db.psql(&format!(
            "SELECT join_type FROM sync.ledger l JOIN sync.definitions d ON d.id = l.definition_id
              WHERE d.name = 'people' AND sync_key = '{key}'"
        ))
    };
    assert_eq!(join("5"), "joined");
    assert_eq!(join("1"), "provisioned");
    let b = env.slapd.by_uuid(&hr_uuid).expect("bob");
    assert_eq!((b.get("sn"), b.get("mail")), (Some("Baker"), Some("bob@example.com")), "the row's values flowed in");
    assert!(dn::same(b.get("creatorsName").unwrap_or(""), HR_DN));
    env.assert_target_equals_source(&db, "people", &["People", "Eng"]);

    // An add whose answer is lost (carried out, then the connection drops).
    db.psql("INSERT INTO people VALUES (7, 'erin', 'Erin', 'Eve', NULL, 'ops')");
    env.inject(Fault::RunThenDrop, 1);
    env.sync_once(&db);
    assert_eq!(open_count(&db), "0");
    let erin = env.slapd.search(BASE, "(uid=erin)", &["1.1"]);
    assert_eq!(erin.len(), 1, "one entry for erin, not two");
    assert_eq!(join("7"), "provisioned", "our own add, adopted");
    let verified = db.psql("SELECT bool_or(verify) FROM sync.pending_exports WHERE sync_key = '7'");
    assert_eq!(verified, "t", "the second attempt looked before adding");

    // Deleting the rows: the provisioned entries go, the joined one stays.
    db.psql("DELETE FROM people WHERE id IN (5, 7)");
    env.sync_once(&db);
    assert!(env.slapd.by_uuid(&hr_uuid).is_some(), "a joined entry is never deleted");
    assert!(env.slapd.search(BASE, "(uid=erin)", &["1.1"]).is_empty(), "a provisioned one is");
}

#[test]
fn ldaps_and_starttls_carry_the_sync_and_a_refused_bind_is_auth_failed() {
    let env = LdapTargetEnv::start(EnvOptions::default());
    let db = cluster().new_db("ldap tls");
    prepare(
        &db,
        "CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (id int PRIMARY KEY, v text);
                  INSERT INTO a VALUES (1, 'over ldaps'); INSERT INTO b VALUES (2, 'over starttls');",
    );
    let ca = env.slapd.ca_pem.clone();
    env.create_target_with(&db, "tls", json!({"url": env.slapd.ldaps_url(), "ca_pem": ca}));
    env.create_target_with(&db, "stls", json!({"url": env.slapd.url(), "starttls": true, "ca_pem": ca}));
    env.define(&db, "a", "a", "tls", "A");
    env.define(&db, "b", "b", "stls", "B");
    db.psql("SELECT sync.enable('a'), sync.enable('b')");
    env.sync_once(&db);
    assert_eq!(open_count(&db), "0", "{}", db.psql("SELECT string_agg(last_error, E'\\n') FROM sync.pending_exports"));
    env.assert_target_equals_source(&db, "a", &["A"]);
    env.assert_target_equals_source(&db, "b", &["B"]);
    assert_eq!(env.count("A") + env.count("B"), 2);
    // Nothing went through the plain-text proxy.
    assert_eq!(env.stats().requests, 0);

    // Another CA: the server is not trusted, nothing is sent.
    let other = rcgen_ca();
    db.psql(&format!("SELECT sync.alter_target('tls', config => '{}')", json!({"ca_pem": other})));
    db.psql("INSERT INTO a VALUES (3, 'not trusted')");
    let status = status_while_running(&env, &db, "tls", "unreachable", SB_PW);
    assert!(status.contains("certificate"), "{status}");
    assert_eq!(env.count("A"), 1);

    // A wrong password: the bind is refused, the target is auth_failed, and
    // the password shows nowhere.
    db.psql("INSERT INTO b VALUES (4, 'refused')");
    let wrong = "not-the-password-42";
    let status = status_while_running(&env, &db, "stls", "auth_failed", wrong);
    assert!(status.contains("invalidCredentials (49)"), "{status}");
    assert!(!status.contains(wrong));
    let errors = db.psql("SELECT string_agg(coalesce(last_error, ''), ' ') FROM sync.pending_exports");
    assert!(!errors.contains(wrong));
    assert_eq!(env.count("B"), 1, "nothing written with a refused bind");
    assert_ne!(db.psql("SELECT status FROM sync.pending_exports WHERE sync_key = '4'"), "exported");
}

/// Runs the worker (with `password`) until target `name`'s status is
/// `want`; returns `status|status_detail` and checks the log never shows
/// the password.
fn status_while_running(env: &LdapTargetEnv, db: &TestDb, name: &str, want: &str, password: &str) -> String {
    let mut cmd = env.worker_cmd(db, &[]);
    cmd.env(SECRET_ENV, password).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    let child = ChildGuard::new(cmd.spawn().expect("worker"));
    let sql = format!("SELECT status || '|' || coalesce(status_detail, '') FROM sync.targets WHERE name = '{name}'");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let s = db.psql(&sql);
        if s.starts_with(&format!("{want}|")) {
            break s;
        }
        assert!(Instant::now() < deadline, "target {name} is not {want}: {s}");
        std::thread::sleep(Duration::from_millis(100));
    };
    signal(&child, libc::SIGTERM);
    let out = wait_with_limit(child, Duration::from_secs(30));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!log.contains(password), "the log shows the password");
    status
}

/// A CA certificate (PEM) that signed nothing the server has.
fn rcgen_ca() -> String {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.self_signed(&key).expect("CA").pem()
}

#[test]
fn bad_data_fails_alone_with_the_servers_message_and_nothing_is_lost() {
    let (env, db) = setup(PEOPLE);
    // No sn (inetOrgPerson requires it: 65), no naming value.
    db.psql("INSERT INTO people VALUES (8, 'nosn', 'No', NULL, NULL, 'ops'), (9, NULL, 'No', 'Name', NULL, 'ops')");
    define(&env, &db);
    env.sync_once(&db);
    let e8 = error_of(&db, "8");
    assert!(e8.starts_with("error|definite|") && e8.contains("objectClassViolation (65)"), "{e8}");
    assert!(e8.contains("requires attribute 'sn'"), "the server's text: {e8}");
    let e9 = error_of(&db, "9");
    assert!(e9.starts_with("error|definite|") && e9.contains("naming field uid"), "{e9}");
    // The others went on.
    assert_eq!(env.count("People"), 3);
    assert_eq!(env.count("Eng"), 1);
    // Fixed and retried: nothing was lost.
    db.psql("UPDATE people SET family = 'Sn' WHERE id = 8; UPDATE people SET uid = 'named' WHERE id = 9");
    db.psql("SELECT sync.retry(id) FROM sync.pending_exports WHERE status = 'error'");
    env.sync_once(&db);
    assert_eq!(open_count(&db), "0", "{}", db.psql("SELECT string_agg(last_error, E'\\n') FROM sync.pending_exports"));
    env.assert_target_equals_source(&db, "people", &["People", "Eng"]);
}

// --- The adapter against the server (disable, enable, groups) --------------

/// The worker's adapter for `slapd`, with `extra` configuration.
fn adapter(slapd: &Slapd, extra: Value) -> Box<dyn Target> {
    std::env::set_var(SECRET_ENV, SB_PW);
    let mut config = json!({"url": slapd.url(), "base_dn": BASE, "bind_dn": SB_DN});
    for (k, v) in extra.as_object().into_iter().flatten() {
        config[k] = v.clone();
    }
    let policy = TargetPolicy { allow_loopback: true, ..TargetPolicy::default() };
    let rt = runtime();
    rt.block_on(syncbridge_worker::target::build(
        "dir",
        "ldap",
        &config,
        Some(&format!("env:{SECRET_ENV}")),
        &policy,
        None,
    ))
    .expect("the adapter")
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("rt"))
}

fn export(id: i64, op: &str, list: &str, target_id: Option<&str>, payload: Value, disabled: bool) -> Export {
    serde_json::from_value(json!({
        "id": id, "definition": "people", "op": op, "sync_key": id.to_string(), "list": list, "from_list": null,
        "target_id": target_id, "etag": null, "payload": payload, "attempts": 1, "verify": false, "disabled": disabled,
    }))
    .expect("export")
}

/// Applies one export; its result's target id (panics on a failure).
fn apply(t: &dyn Target, e: Export) -> Option<String> {
    let r = runtime().block_on(t.apply(std::slice::from_ref(&e), &ApplyContext::default()));
    assert!(r[0].ok, "{:?}: {:?}", e.op, r[0].error);
    r[0].target_id.clone()
}

fn person(uid: &str) -> Value {
    json!({"objectClass": "[\"inetOrgPerson\"]", "uid": uid, "cn": uid, "sn": "S", "userPassword": "pw-of-person"})
}

#[test]
fn a_disabled_account_refuses_binds_moves_aside_and_comes_back_as_the_same_entry() {
    let slapd = Slapd::start();
    let t = adapter(&slapd, json!({"disabled_container": "ou=Disabled"}));
    let list = "uid={uid},ou=People";
    let uuid = apply(&*t, export(1, "add", list, None, person("frank"), false)).expect("entryUUID");
    let dn_people = format!("uid=frank,ou=People,{BASE}");
    assert_eq!(slapd.bind_rc(&dn_people, "pw-of-person"), 0, "enabled: binds");
    apply(&*t, export(2, "disable", list, Some(&uuid), Value::Null, false));
    let e = slapd.by_uuid(&uuid).expect("the entry is kept");
    assert!(dn::same(&e.dn, &format!("uid=frank,ou=Disabled,{BASE}")), "moved aside: {}", e.dn);
    assert_eq!(e.get("pwdAccountLockedTime"), Some("000001010000Z"));
    assert_eq!(slapd.bind_rc(&e.dn, "pw-of-person"), 49, "a disabled account refuses binds");
    // The row came back within the grace period: an update marked disabled.
    apply(&*t, export(3, "update", list, Some(&uuid), json!({"cn": "Frank"}), true));
    let e = slapd.by_uuid(&uuid).expect("the same entry");
    assert!(dn::same(&e.dn, &dn_people), "back in People: {}", e.dn);
    assert_eq!((e.get("pwdAccountLockedTime"), e.get("cn")), (None, Some("Frank")));
    assert_eq!(slapd.bind_rc(&dn_people, "pw-of-person"), 0, "enabled again");
    // The delete after the grace period.
    apply(&*t, export(4, "delete", list, Some(&uuid), Value::Null, false));
    assert!(slapd.by_uuid(&uuid).is_none());
    apply(&*t, export(5, "delete", list, Some(&uuid), Value::Null, false));
}

#[test]
fn groups_hold_the_dns_of_their_members_and_follow_renames() {
    // Without refint: the adapter itself rewrites members after a rename.
    let slapd = Slapd::start_without_refint();
    let t = adapter(&slapd, json!({}));
    let people = "uid={uid},ou=People";
    let groups = "cn={cn},ou=Groups";
    let a = apply(&*t, export(1, "add", people, None, person("gina"), false)).expect("a");
    let b = apply(&*t, export(2, "add", people, None, person("hank"), false)).expect("b");
    let group = |refs: &[Option<&str>]| {
        json!({"objectClass": "[\"groupOfNames\"]", "cn": "ops team",
               "member": {"@refs": refs.iter().map(|_| "k").collect::<Vec<_>>(), "@def": "people", "target_ids": refs}})
    };
    let g = apply(&*t, export(3, "add", groups, None, group(&[Some(&a), Some(&b), None]), false)).expect("g");
    let members = || slapd.by_uuid(&g).expect("group").all("member");
    assert_eq!(members(), [format!("uid=gina,ou=People,{BASE}"), format!("uid=hank,ou=People,{BASE}")]);
    // A rename of a member: the group names the new DN (no refint here: the adapter did it).
    apply(&*t, export(4, "update", people, Some(&a), json!({"uid": "gina.g"}), false));
    assert_eq!(members(), [format!("uid=gina.g,ou=People,{BASE}"), format!("uid=hank,ou=People,{BASE}")]);
    // Every member removed: the placeholder keeps the group valid.
    apply(&*t, export(5, "update", groups, Some(&g), group(&[]), false));
    assert_eq!(members(), [PLACEHOLDER.to_owned()]);
    apply(&*t, export(6, "update", groups, Some(&g), group(&[Some(&b)]), false));
    assert_eq!(members(), [format!("uid=hank,ou=People,{BASE}")]);
    // memberOf (the overlay) agrees.
    assert_eq!(slapd.by_uuid(&b).expect("hank").all("memberOf"), [format!("cn=ops team,ou=Groups,{BASE}")]);
    // A move to another OU: the same.
    apply(&*t, export(7, "move", "uid={uid},ou=Disabled", Some(&b), json!({}), false));
    assert_eq!(members(), [format!("uid=hank,ou=Disabled,{BASE}")]);
}

// --- Two-way: attributes the directory owns ---------------------------------

fn import_counts(db: &TestDb) -> String {
    db.psql(
        "SELECT coalesce(string_agg(status || '=' || n, ' ' ORDER BY status), '') FROM
           (SELECT status, count(*) n FROM sync.pending_imports WHERE origin <> 'write' GROUP BY status) s",
    )
}

#[test]
fn edits_made_in_the_directory_come_back_and_our_own_writes_do_not_echo() {
    let (env, db) = setup(PEOPLE);
    env.slapd.ensure_ou("Eng");
    db.psql(
        "SELECT sync.define('people', source => 'people', target => 'dir', list => 'uid={uid},ou=People',
                            direction => 'both', inbound_inserts => 'ignore')",
    );
    db.psql("SELECT sync.shard('people', $$dept = 'eng'$$, 'uid={uid},ou=Eng')");
    db.psql("SELECT sync.map('people', 'uid', 'uid', direction => 'push')");
    for (col, field) in [("given", "givenName"), ("family", "sn"), ("mail", "mail")] {
        db.psql(&format!("SELECT sync.map('people', '{col}', '{field}')"));
    }
    db.psql("SELECT sync.map('people', NULL, 'cn', transform => $$given || ' ' || family$$, direction => 'push')");
    db.psql(
        "SELECT sync.map('people', NULL, 'objectClass', transform => $$ARRAY['inetOrgPerson']$$, direction => 'push')",
    );
    db.psql("SELECT sync.enable('people')");
    env.sync_once(&db);
    assert_eq!(open_count(&db), "0");
    // The writes reported the entries' entryCSN as their eTags.
    assert_eq!(db.psql("SELECT count(*) FROM sync.ledger WHERE etag ~ '^\\d{14}\\.\\d{6}Z#'"), "4");
    // A pull round that reads syncbridge's own writes only: echoes, no write.
    let writes = env.stats().writes;
    env.sync_once(&db);
    assert_eq!(env.stats().writes, writes);
    assert_eq!(import_counts(&db), "echo=4");

    // Another system assigns alice a mail address and changes dave's given name.
    let alice = env.slapd.by_uuid(&uuid_of(&db, "1")).expect("alice").dn;
    let dave = env.slapd.by_uuid(&uuid_of(&db, "4")).expect("dave").dn;
    let set = |v: &str| std::collections::HashSet::from([v.to_owned()]);
    env.slapd.modify(&alice, vec![ldap3::Mod::Replace("mail".into(), set("alice.archer@mail.example"))]).expect("edit");
    env.slapd.modify(&dave, vec![ldap3::Mod::Replace("givenName".into(), set("David"))]).expect("edit");
    env.sync_once(&db);
    assert_eq!(
        db.psql("SELECT string_agg(coalesce(mail, '-') || '/' || given, ' ' ORDER BY id) FROM people"),
        "alice.archer@mail.example/Alice -/J zoe@example.com/Zoë -/David"
    );
    assert_eq!(import_counts(&db), "applied=2 echo=4");
    // cn (push-only, from the names) follows the database's change of given.
    assert_eq!(env.slapd.by_uuid(&uuid_of(&db, "4")).expect("dave").get("cn"), Some("David Diaz"));
    // The next round reads that write of cn back as an echo, and nothing else.
    let writes = env.stats().writes;
    env.sync_once(&db);
    assert_eq!(import_counts(&db), "applied=2 echo=5");
    assert_eq!(env.stats().writes, writes, "nothing sent back");
    env.sync_once(&db);
    assert_eq!(import_counts(&db), "applied=2 echo=5", "a quiet directory reads nothing new");
}

// --- A thousand people, compared with an ldapsearch of the tree -------------

/// Standard base64 (RFC 4648) decoded.
fn unbase64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let (mut out, mut acc, mut bits) = (Vec::new(), 0u32, 0);
    for v in s.bytes().filter_map(val) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// `ldapsearch -LLL` of the people under the base, parsed: DN → attribute
/// (lower-case) → sorted values.
fn ldapsearch(slapd: &Slapd) -> std::collections::BTreeMap<String, std::collections::BTreeMap<String, Vec<String>>> {
    let out = std::process::Command::new("ldapsearch")
        .args(["-LLL", "-o", "ldif-wrap=no", "-x", "-H", &slapd.url(), "-D", syncbridge_tests::ldap::ADMIN_DN])
        .args(["-w", syncbridge_tests::ldap::ADMIN_PW, "-b", BASE, "(objectClass=inetOrgPerson)"])
        .args(["uid", "givenName", "sn", "cn", "mail", "entryUUID"])
        .output()
        .expect("ldapsearch (ldap-utils)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut entries = std::collections::BTreeMap::new();
    for block in String::from_utf8_lossy(&out.stdout).split("\n\n") {
        let mut dn_of = None;
        let mut attrs: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for line in block.lines() {
            let (k, v) = match line.split_once(":: ") {
                Some((k, b)) => (k, String::from_utf8(unbase64(b)).expect("UTF-8")),
                None => match line.split_once(": ") {
                    Some((k, v)) => (k, v.to_owned()),
                    None => continue,
                },
            };
            if k == "dn" {
                dn_of = Some(v);
            } else {
                attrs.entry(k.to_ascii_lowercase()).or_default().push(v);
            }
        }
        if let Some(d) = dn_of {
            attrs.values_mut().for_each(|v| v.sort());
            entries.insert(d, attrs);
        }
    }
    entries
}

#[test]
fn a_thousand_people_renamed_moved_changed_and_removed_equal_an_ldapsearch_of_the_tree() {
    let (env, db) = setup(
        "CREATE TABLE people (id int PRIMARY KEY, uid text, given text, family text, mail text, dept text);
         INSERT INTO people SELECT g, 'user' || g || CASE WHEN g % 97 = 0 THEN '-é, Ü+' ELSE '' END, 'Given' || g,
                'Family' || (g % 37), CASE WHEN g % 3 = 0 THEN NULL ELSE 'u' || g || '@example.com' END,
                CASE WHEN g % 4 = 0 THEN 'eng' ELSE 'ops' END
           FROM generate_series(1, 1000) g;",
    );
    define(&env, &db);
    env.sync_once(&db);
    assert_eq!(open_count(&db), "0");
    let before = db.psql("SELECT string_agg(sync_key || '=' || target_id, ',' ORDER BY sync_key) FROM sync.ledger");
    db.psql(
        "UPDATE people SET uid = uid || '.renamed' WHERE id % 10 = 1;
         UPDATE people SET dept = CASE dept WHEN 'eng' THEN 'ops' ELSE 'eng' END WHERE id % 10 = 2;
         UPDATE people SET family = 'Changed' || id, mail = NULL WHERE id % 10 = 3;
         UPDATE people SET uid = uid || '.both', dept = 'eng' WHERE id % 10 = 5;
         DELETE FROM people WHERE id % 20 = 7;",
    );
    env.sync_once(&db);
    assert_eq!(open_count(&db), "0", "{}", db.psql("SELECT string_agg(last_error, E'\\n') FROM sync.pending_exports"));
    // entryUUIDs kept across renames and moves (the deleted rows left the ledger).
    let after: HashMap<String, String> = db
        .psql("SELECT string_agg(sync_key || '=' || target_id, ',') FROM sync.ledger")
        .split(',')
        .filter_map(|p| p.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    for pair in before.split(',') {
        let (k, v) = pair.split_once('=').expect("key=uuid");
        if let Some(now) = after.get(k) {
            assert_eq!(now, v, "row {k} kept its entry");
        }
    }
    // The tree equals the table: one entry per row, at its template's DN.
    let tree = ldapsearch(&env.slapd);
    let rows = db.psql(
        "SELECT string_agg(concat_ws(E'\\t', uid, given, family, coalesce(mail, ''), dept, id), E'\\n' ORDER BY id) FROM people",
    );
    assert_eq!(tree.len(), 950, "950 people left");
    let mut by_name = HashMap::new();
    for (d, attrs) in &tree {
        let (rdn, parent) = dn::split_first(d);
        let value = dn::unescape(rdn.split_once('=').expect("rdn").1);
        by_name.insert((value, parent.to_ascii_lowercase()), attrs);
    }
    for line in rows.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let (uid, given, family, mail, dept, id) = (f[0], f[1], f[2], f[3], f[4], f[5]);
        let ou = if dept == "eng" { "eng" } else { "people" };
        let attrs = by_name
            .get(&(uid.to_owned(), format!("ou={ou},{BASE}")))
            .unwrap_or_else(|| panic!("row {id}: no entry uid={uid} in ou={ou}"));
        let want = |v: &str| if v.is_empty() { None } else { Some(vec![v.to_owned()]) };
        assert_eq!(attrs.get("uid").cloned(), want(uid), "row {id}");
        assert_eq!(attrs.get("givenname").cloned(), want(given), "row {id}");
        assert_eq!(attrs.get("sn").cloned(), want(family), "row {id}");
        assert_eq!(attrs.get("cn").cloned(), want(&format!("{given} {family}")), "row {id}");
        assert_eq!(attrs.get("mail").cloned(), want(mail), "row {id}");
        assert_eq!(attrs.get("entryuuid").map(|u| u[0].as_str()), after.get(id).map(String::as_str), "row {id}");
    }
}

/// Issue 20 through SQL, end to end: 300 people (two OUs, a password each)
/// and 30 groups whose members are an array of people's keys (a reference
/// to `people`: objects first, then the groups with their DNs); renames and
/// moves followed by the memberships; rows filtered out or deleted are
/// disabled first (binds refused, moved to ou=Disabled), deleted only
/// after the definition's grace, and a row back within it is the same entry
/// again; an entry syncbridge did not create (joined) is never disabled nor
/// deleted.
#[test]
fn people_and_groups_through_sql_disabled_before_delete_and_deleted_after_the_grace() {
    let env = LdapTargetEnv::start(EnvOptions::default());
    let db = cluster().new_db("ldap grace");
    prepare(
        &db,
        "CREATE TABLE people (id int PRIMARY KEY, uid text NOT NULL, family text NOT NULL, pw text, dept text, active boolean NOT NULL DEFAULT true);
         INSERT INTO people SELECT g, 'p' || g, 'Family' || g, 'pw-' || g, CASE WHEN g % 3 = 0 THEN 'eng' ELSE 'ops' END, true
           FROM generate_series(1, 300) g;
         INSERT INTO people VALUES (301, 'joined1', 'Joined', NULL, 'ops', true);
         CREATE TABLE groups (name text PRIMARY KEY, members int[] NOT NULL);
         INSERT INTO groups SELECT 'g' || g, ARRAY(SELECT m FROM generate_series(1, 301) m WHERE m % 30 = g - 1 OR m = 301) FROM generate_series(1, 30) g;",
    );
    db.psql(&format!("ALTER DATABASE \"{}\" SET sync.backoff_base_seconds = 1", db.name()));
    env.create_target_with(&db, "dir", json!({"disabled_container": "ou=Disabled"}));
    env.slapd.ensure_ou("Eng");
    // An entry made by someone else, which the row with uid joined1 adopts.
    let joined_dn = format!("uid=joined1,ou=People,{BASE}");
    env.slapd
        .add_as(
            (HR_DN, HR_PW),
            &joined_dn,
            &[("objectClass", &["inetOrgPerson"]), ("uid", &["joined1"]), ("cn", &["J"]), ("sn", &["Joined"])],
        )
        .expect("the HR entry");
    let joined_uuid = env.slapd.uuid_at(&joined_dn);
    db.psql(
        "SELECT sync.define('people', source => 'people', target => 'dir', list => 'uid={uid},ou=People',
                            row_filter => 'active', delete_grace => '1 hour')",
    );
    db.psql("SELECT sync.shard('people', $$dept = 'eng'$$, 'uid={uid},ou=Eng')");
    for (col, field) in [("uid", "uid"), ("family", "sn"), ("pw", "userPassword")] {
        db.psql(&format!("SELECT sync.map('people', '{col}', '{field}')"));
    }
    db.psql("SELECT sync.map('people', NULL, 'cn', transform => $$uid || ' ' || family$$)");
    db.psql("SELECT sync.map('people', NULL, 'objectClass', transform => $$ARRAY['inetOrgPerson']$$)");
    db.psql("SELECT sync.enable('people')");
    db.psql("SELECT sync.define('groups', source => 'groups', target => 'dir', list => 'cn={cn},ou=Groups')");
    db.psql("SELECT sync.map('groups', 'name', 'cn')");
    db.psql("SELECT sync.map('groups', 'members', 'member', reference => 'people')");
    db.psql("SELECT sync.map('groups', NULL, 'objectClass', transform => $$ARRAY['groupOfNames']$$)");
    db.psql("SELECT sync.enable('groups')");

    // Every group's members are the DNs of its rows' entries (by entryUUID).
    let check_groups = |when: &str| {
        let people: HashMap<String, String> = env
            .slapd
            .search(BASE, "(objectClass=inetOrgPerson)", &["entryUUID"])
            .into_iter()
            .map(|e| (e.get("entryUUID").expect("uuid").to_owned(), e.dn.to_ascii_lowercase()))
            .collect();
        // (the joined entry, once forgotten, keeps the memberships it had:
        // references are resolved when the group is sent, and its row did
        // not change)
        let want = db.psql(&format!(
            "SELECT string_agg(g.name || '=' || coalesce((SELECT string_agg(coalesce(l.target_id, '{joined_uuid}'), ' ' ORDER BY 1)
                                                           FROM unnest(g.members) m LEFT JOIN (sync.ledger l
                                                           JOIN sync.definitions d ON d.id = l.definition_id AND d.name = 'people')
                                                           ON l.sync_key = m::text
                                                          WHERE l.target_id IS NOT NULL OR m = 301), ''), ',')
               FROM groups g"
        ));
        let groups = env.slapd.search(&format!("ou=Groups,{BASE}"), "(objectClass=groupOfNames)", &["cn", "member"]);
        assert_eq!(groups.len(), 30, "{when}: 30 groups");
        for pair in want.split(',') {
            let (name, uuids) = pair.split_once('=').expect("name=uuids");
            let g =
                groups.iter().find(|g| g.get("cn") == Some(name)).unwrap_or_else(|| panic!("{when}: no group {name}"));
            let mut expected: Vec<String> = uuids
                .split_whitespace()
                .map(|u| people.get(u).cloned().unwrap_or_else(|| panic!("{when}: no entry {u}")))
                .collect();
            expected.sort();
            if expected.is_empty() {
                expected.push(PLACEHOLDER.to_ascii_lowercase());
            }
            let mut got: Vec<String> = g.all("member").iter().map(|m| m.to_ascii_lowercase()).collect();
            got.sort();
            assert_eq!(got, expected, "{when}: the members of {name}");
        }
    };

    env.sync_once(&db);
    assert_eq!(open_count(&db), "0", "{}", db.psql("SELECT string_agg(last_error, E'\\n') FROM sync.pending_exports"));
    assert_eq!(
        db.psql("SELECT join_type || ' ' || count(*) FROM sync.ledger l JOIN sync.definitions d ON d.id = l.definition_id WHERE d.name = 'people' GROUP BY join_type ORDER BY join_type"),
        "joined 1\nprovisioned 300"
    );
    check_groups("provisioned");
    let dn_of = |id: i64| env.slapd.by_uuid(&uuid_of(&db, &id.to_string())).map(|e| e.dn);
    assert_eq!(env.slapd.bind_rc(&dn_of(10).expect("p10"), "pw-10"), 0, "a provisioned account binds");

    // Renames and moves: the entries keep their entryUUIDs, the groups follow.
    let before = uuid_of(&db, "31");
    db.psql("UPDATE people SET uid = uid || '.renamed' WHERE id % 10 = 1; UPDATE people SET dept = 'eng' WHERE id % 10 = 2 AND dept = 'ops'");
    env.sync_once(&db);
    assert_eq!(uuid_of(&db, "31"), before);
    assert_eq!(dn_of(31).expect("p31"), format!("uid=p31.renamed,ou=People,{BASE}"));
    check_groups("renamed and moved");

    // Gone from the filter, or deleted: disabled, moved aside, binds refused,
    // still there; the joined entry is only forgotten.
    db.psql("UPDATE people SET active = false WHERE id IN (10, 11, 12, 301); DELETE FROM people WHERE id IN (20, 21)");
    env.sync_once(&db);
    for id in [10, 11, 12, 20, 21] {
        let e = env
            .slapd
            .by_uuid(&uuid_of(&db, &id.to_string()))
            .unwrap_or_else(|| panic!("p{id} deleted before the grace"));
        assert!(e.dn.to_ascii_lowercase().ends_with(&format!("ou=disabled,{BASE}")), "p{id} moved aside: {}", e.dn);
        assert!(e.get("pwdAccountLockedTime").is_some(), "p{id} locked");
        assert_eq!(env.slapd.bind_rc(&e.dn, &format!("pw-{id}")), 49, "p{id}'s bind refused");
    }
    let scheduled = db.psql(
        "SELECT count(*) || ' ' || bool_and(next_attempt_at > now() + interval '50 minutes')
           FROM sync.pending_exports WHERE op = 'delete' AND status = 'pending'",
    );
    assert_eq!(scheduled, "5 true", "five deletes scheduled after the grace");
    // (renamed with the others: id 301 ends in 1)
    let joined = env.slapd.by_uuid(&joined_uuid).expect("the joined entry stays");
    assert_eq!(joined.dn, format!("uid=joined1.renamed,ou=People,{BASE}"), "the joined entry is not moved aside");
    assert!(joined.get("pwdAccountLockedTime").is_none(), "the joined entry is not disabled");
    check_groups("disabled");

    // Back within the grace: the same entry, enabled, in its place again.
    let p10 = uuid_of(&db, "10");
    db.psql("UPDATE people SET active = true WHERE id = 10");
    env.sync_once(&db);
    let e = env.slapd.by_uuid(&p10).expect("p10");
    assert_eq!(e.dn, format!("uid=p10,ou=People,{BASE}"));
    assert!(e.get("pwdAccountLockedTime").is_none(), "p10 enabled again");
    assert_eq!(env.slapd.bind_rc(&e.dn, "pw-10"), 0, "p10 binds again");
    assert_eq!(db.psql("SELECT count(*) FROM sync.pending_exports WHERE op = 'delete' AND status = 'pending'"), "4");

    // The grace over: the four are deleted, and only they.
    db.psql("UPDATE sync.pending_exports SET next_attempt_at = now() WHERE op = 'delete' AND status = 'pending'");
    let gone: Vec<String> = [11, 12, 20, 21].iter().map(|id| uuid_of(&db, &id.to_string())).collect();
    env.sync_once(&db);
    assert_eq!(open_count(&db), "0", "{}", db.psql("SELECT string_agg(last_error, E'\\n') FROM sync.pending_exports"));
    for u in &gone {
        assert!(env.slapd.by_uuid(u).is_none(), "{u} deleted after the grace");
    }
    assert!(env.slapd.by_uuid(&joined_uuid).is_some(), "the joined entry is never deleted");
    assert_eq!(env.slapd.search(BASE, "(objectClass=inetOrgPerson)", &["uid"]).len(), 301 - 4, "the rest is there");
    let members = env.slapd.search(&format!("ou=Groups,{BASE}"), "(objectClass=groupOfNames)", &["member"]);
    for g in &members {
        for m in g.all("member") {
            assert!(!m.to_ascii_lowercase().contains("ou=disabled"), "{}: a deleted member is still listed: {m}", g.dn);
        }
    }
}
