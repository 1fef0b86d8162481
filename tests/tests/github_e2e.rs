//! Issue 19: source → worker → GitHub emulator, end to end. The repository's
//! issues must equal the mapped rows after inserts, updates, label and state
//! changes and deletes (closed `not_planned`); a body at GitHub's limit goes
//! through and one past it is a definite error with GitHub's message; a
//! create whose answer is lost is adopted by its marker, never doubled; and
//! under GitHub's secondary limit on content creation nothing is refused.
//! The scenarios every kind shares are in `robustness.rs`.

use std::time::Instant;

use serde_json::{json, Map, Value};
use syncbridge_tests::github::{assert_target_equals_source, GithubEnv};
use syncbridge_tests::github_emulator::{Fault, GithubConfig, BODY_LIMIT};
use syncbridge_tests::ingest::{open_count, prepare};
use syncbridge_tests::process::spawn_quiet;
use syncbridge_tests::{cluster, TestDb};
use syncbridge_worker::target::github::marker;

const TICKETS: &str = "
CREATE TABLE tickets (id int PRIMARY KEY, title text, body text, state text, labels text[], assignee text,
    milestone int, severity int, shareable boolean NOT NULL DEFAULT true, due date);
INSERT INTO tickets VALUES
  (1, 'Login fails', 'Steps:\n1. open\n2. **fail**', 'open', '{bug,auth}', 'octocat', 1, 3, true, '2026-12-24'),
  (2, 'Émilie ✓ ünïcödé 東京 🚀', 'Body with | pipes | and `code`', NULL, '{}', NULL, NULL, NULL, true, NULL),
  (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, true, NULL),
  (4, 'Secret', 'not shareable', 'open', '{private}', NULL, NULL, 1, false, NULL);
";

fn setup(config: GithubConfig, ddl: &str, target_extra: serde_json::Value) -> (GithubEnv, TestDb) {
    let env = GithubEnv::start_with(config);
    let db = cluster().new_db("github");
    prepare(&db, ddl);
    db.psql(&format!("ALTER DATABASE \"{}\" SET sync.backoff_base_seconds = 1", db.name()));
    env.create_target(&db, "gh", target_extra);
    (env, db)
}

fn unlimited() -> GithubConfig {
    GithubConfig { content_per_min: None, content_per_hour: None, ..GithubConfig::default() }
}

fn define_tickets(env: &GithubEnv, db: &TestDb) {
    env.emu.create_repo("tracker");
    db.psql("SELECT sync.define('tickets', source => 'tickets', target => 'gh', list => 'tracker', row_filter => 'shareable')");
    for c in ["title", "body", "state", "labels", "assignee", "milestone", "severity", "due"] {
        db.psql(&format!("SELECT sync.map('tickets', '{c}', '{c}')"));
    }
    db.psql("SELECT sync.enable('tickets')");
}

#[test]
fn rows_become_issues_and_follow_updates_labels_states_and_deletes() {
    let (env, db) = setup(unlimited(), TICKETS, json!({}));
    define_tickets(&env, &db);
    // Failed requests count as seen too (the log is taken before faults).
    env.emu.inject(Fault::Status(500), 2);
    env.sync_once(&db);
    assert!(env.emu.saw("Login fails"), "the request log sees what was sent");
    assert_target_equals_source(&env, &db, "tickets", &["tracker"]);
    let items = env.items("tracker");
    assert_eq!(items.len(), 3, "the row that is not shareable never leaves");
    assert!(!env.emu.saw("not shareable") && !env.emu.saw("Secret"), "a row that is not shareable reached GitHub");
    let one = &items["1"];
    assert_eq!(one["@assignees"], json!(["octocat"]));
    assert_eq!(one["@milestone"], json!(1));
    assert_eq!(one["@labels"], json!(["bug", "auth", "syncbridge"]));
    assert_eq!(one["severity"], json!(3), "a field that is not the issue's own is in the body's table");
    assert_eq!(items["3"]["@title"], "tickets 3", "no title: the row's key");
    assert_eq!(items["2"]["@title"], "Émilie ✓ ünïcödé 東京 🚀");

    // Updates: a title, labels replaced, closed, a NULL clearing a field.
    db.psql(
        "UPDATE tickets SET title = 'Login fails on Safari', labels = '{bug}' WHERE id = 1;
         UPDATE tickets SET state = 'closed', body = NULL WHERE id = 2;
         UPDATE tickets SET severity = 5, labels = '{triage}' WHERE id = 3;",
    );
    env.sync_once(&db);
    assert_target_equals_source(&env, &db, "tickets", &["tracker"]);
    let items = env.items("tracker");
    assert_eq!(
        (items["2"]["@state"].as_str(), items["2"]["@state_reason"].as_str()),
        (Some("closed"), Some("completed"))
    );
    assert_eq!(items["1"]["@labels"], json!(["bug", "syncbridge"]));

    // Reopened; and a delete closes the issue not_planned (GitHub has no REST delete).
    db.psql("UPDATE tickets SET state = 'open' WHERE id = 2; DELETE FROM tickets WHERE id = 3;");
    env.sync_once(&db);
    assert_target_equals_source(&env, &db, "tickets", &["tracker"]);
    let closed = env.emu.issues("tracker").into_iter().find(|i| i.title == "tickets 3").expect("issue of row 3");
    assert_eq!((closed.state.as_str(), closed.state_reason.as_deref()), ("closed", Some("not_planned")));
    assert_eq!(env.items("tracker")["2"]["@state_reason"], "reopened");
    // A row that stops being shareable is closed too, and its new content never sent.
    db.psql("UPDATE tickets SET shareable = false, body = 'now private' WHERE id = 1");
    env.sync_once(&db);
    assert!(!env.items("tracker").contains_key("1"));
    assert!(!env.emu.saw("now private"), "the content of a row no longer shareable reached GitHub");
    assert_eq!(open_count(&db), "0");
    assert_eq!(env.emu.issues("tracker").len(), 3, "one issue per row, ever");
}

#[test]
fn a_body_at_githubs_limit_goes_and_one_past_it_is_refused_with_githubs_message() {
    let (env, db) = setup(unlimited(), "CREATE TABLE notes (id int PRIMARY KEY, title text, body text)", json!({}));
    env.emu.create_repo("notes");
    db.psql("SELECT sync.define('notes', source => 'notes', target => 'gh', list => 'notes')");
    db.psql("SELECT sync.map('notes', 'title', 'title'), sync.map('notes', 'body', 'body')");
    db.psql("SELECT sync.enable('notes')");
    // The body is the text, a blank line and the marker: 65,536 characters in all.
    let room = BODY_LIMIT - 2 - marker("notes", "1").chars().count();
    db.psql(&format!(
        "INSERT INTO notes VALUES (1, 'at the limit', repeat('é', {room})), (2, 'one past it', repeat('é', {}))",
        room + 1
    ));
    env.sync_once(&db);
    let items = env.items("notes");
    assert_eq!(items["1"]["@body"].as_str().map(|b| b.chars().count()), Some(room));
    assert!(!items.contains_key("2"));
    let err = db.psql(
        "SELECT status || '|' || error_class || '|' || last_error FROM sync.pending_exports WHERE sync_key = '2'",
    );
    assert!(err.starts_with("error|definite|"), "{err}");
    assert!(err.contains("HTTP 422") && err.contains("body is too long (maximum is 65536 characters)"), "{err}");
    // Fixed and retried, it goes.
    db.psql("UPDATE notes SET body = 'short' WHERE id = 2");
    db.psql("SELECT sync.retry_failed('notes')");
    env.sync_once(&db);
    assert_eq!(env.items("notes")["2"]["@body"], "short");
    assert_eq!(open_count(&db), "0");
}

#[test]
fn a_create_whose_answer_is_lost_is_adopted_by_its_marker_not_doubled() {
    let (env, db) = setup(unlimited(), TICKETS, json!({}));
    define_tickets(&env, &db);
    // The first create runs and its answer is lost; the second's connection
    // drops after it ran; then a pull request appears in the listing.
    env.emu.inject(Fault::RunThenStatus(502), 1);
    env.emu.inject(Fault::RunThenDrop, 1);
    env.sync_once(&db);
    assert_target_equals_source(&env, &db, "tickets", &["tracker"]);
    let issues = env.emu.issues("tracker");
    assert_eq!(issues.len(), 3, "three rows, three issues: {issues:#?}");
    assert_eq!(env.emu.stats().writes, 3, "adopted as they were: nothing written twice");
    let (_, _, listings) = env.emu.counters();
    assert!(listings >= 1, "the lost creates were looked up");
    // The ledger holds the issue numbers.
    let ids = db.psql("SELECT string_agg(target_id, ',' ORDER BY target_id) FROM sync.ledger");
    assert_eq!(ids, "1,2,3");
    // An update of an issue deleted on GitHub (410): definite, with GitHub's message.
    env.emu.delete_issue("tracker", 1);
    db.psql("UPDATE tickets SET severity = 9");
    env.sync_once(&db);
    let err = db.psql("SELECT string_agg(last_error, ';') FROM sync.pending_exports WHERE status = 'error'");
    assert!(err.contains("HTTP 410") && err.contains("This issue was deleted"), "{err}");
}

#[test]
fn under_githubs_secondary_limit_500_rows_arrive_without_a_refusal() {
    // GitHub's limits scaled by ten (800 content-creating requests a minute,
    // 5,000 an hour) so that the test takes forty seconds, not seven minutes;
    // the target is told the same.
    let config = GithubConfig { content_per_min: Some(800), content_per_hour: Some(5000), ..GithubConfig::default() };
    let (env, db) = setup(
        config,
        "CREATE TABLE t (id int PRIMARY KEY, title text); INSERT INTO t SELECT g, 'issue ' || g FROM generate_series(1, 500) g;",
        json!({"content_per_min": 800, "content_per_hour": 5000, "budget_per_min": 5000}),
    );
    env.emu.create_repo("load");
    db.psql("SELECT sync.define('t', source => 't', target => 'gh', list => 'load')");
    db.psql("SELECT sync.map('t', 'title', 'title'), sync.enable('t')");
    let started = Instant::now();
    env.sync_once(&db);
    let (secondary, primary) = env.emu.refusals();
    eprintln!(
        "500 issues in {:.0} s, {} requests, refusals: {secondary} secondary, {primary} primary",
        started.elapsed().as_secs_f64(),
        env.emu.stats().requests
    );
    assert_eq!(env.items("load").len(), 500);
    assert_eq!((secondary, primary), (0, 0), "a request refused by a limit the adapter knew");
    assert_eq!(open_count(&db), "0");
}

// ---------------------------------------------------------------------------
// Two-way: edits made on GitHub come back (issue 19's "Pulling").

const TWOWAY: &str = "
CREATE TABLE tickets (id serial PRIMARY KEY, title text, body text, state text, labels text[], assignee text, severity int);
INSERT INTO tickets (title, body, state, labels, assignee, severity) VALUES
  ('Login fails', 'Steps: open, fail', 'open', '{bug,auth}', 'octocat', 3),
  ('Slow page', NULL, NULL, NULL, NULL, NULL),
  ('Typo', 'in the footer', 'Open', '{}', NULL, 1);
";

/// A two-way definition of `tickets` on repository `tracker` under
/// `conflict`; six fields both ways (`severity` in the body's table).
fn twoway(conflict: &str, extra: &str) -> (GithubEnv, TestDb) {
    let (env, db) = setup(unlimited(), TWOWAY, json!({}));
    env.emu.create_repo("tracker");
    db.psql(&format!(
        "SELECT sync.define('tickets', source => 'tickets', target => 'gh', list => 'tracker', direction => 'both',
                            conflict => '{conflict}'{extra})"
    ));
    for c in ["title", "body", "state", "labels", "assignee", "severity"] {
        db.psql(&format!("SELECT sync.map('tickets', '{c}', '{c}')"));
    }
    db.psql("SELECT sync.enable('tickets')");
    // The first round creates the issues, the second reads them back.
    env.sync_once(&db);
    env.sync_once(&db);
    (env, db)
}

/// A row as JSON: `[title, body, state, labels, assignee, severity]`.
fn row(db: &TestDb, id: i32) -> Value {
    let r = db.psql(&format!(
        "SELECT json_build_array(title, body, state, labels, assignee, severity) FROM tickets WHERE id = {id}"
    ));
    serde_json::from_str(&r).unwrap_or(Value::Null)
}

/// The number of the issue carrying row `key`'s marker.
fn number(env: &GithubEnv, key: &str) -> u64 {
    env.items("tracker")[key]["@number"].as_u64().expect("the row's issue")
}

fn fields(v: Value) -> Map<String, Value> {
    v.as_object().cloned().expect("an object")
}

/// How the pulled changes were decided, `status:count` by status.
fn imports(db: &TestDb) -> String {
    db.psql(
        "SELECT string_agg(status || ':' || n, ',' ORDER BY status) FROM
           (SELECT status, count(*) n FROM sync.pending_imports WHERE origin <> 'write' GROUP BY status) s",
    )
}

/// Exports not done yet.
fn open_exports(db: &TestDb) -> String {
    db.psql("SELECT count(*) FROM sync.pending_exports WHERE status NOT IN ('exported', 'confirmed', 'cancelled')")
}

#[test]
fn edits_made_on_github_land_in_the_table_and_nothing_is_written_back() {
    let (env, db) = twoway("source_wins", "");
    assert_target_equals_source(&env, &db, "tickets", &["tracker"]);
    // The read back found syncbridge's own writes only: echoes all (each
    // write reported the version the listing shows).
    assert_eq!(imports(&db), "echo:3");
    let writes = env.emu.stats().writes;
    env.sync_once(&db);
    assert_eq!(env.emu.stats().writes, writes, "a round that sees only syncbridge's own writes writes nothing");

    // A person edits issue 1 on GitHub: its title, the text of its body,
    // its labels, and closes it.
    let n1 = number(&env, "1");
    let body = env.emu.issues("tracker")[n1 as usize - 1].body.clone().unwrap();
    assert!(body.starts_with("Steps: open, fail\n\n| field | value |"), "{body}");
    let edit = json!({"title": "Login fails on Safari", "body": body.replace("Steps: open, fail", "Steps: open Safari, fail"),
                      "labels": ["bug", "syncbridge", "ui"], "state": "closed", "state_reason": "not_planned"});
    env.emu.person_edit("tracker", n1, &fields(edit)).unwrap();
    env.sync_once(&db);
    assert_eq!(
        row(&db, 1),
        json!(["Login fails on Safari", "Steps: open Safari, fail", "closed", ["bug", "ui"], "octocat", 3])
    );
    // Nothing went back: no write at all, none that changed nothing, no
    // export open; the ledger knows the change came from GitHub.
    assert_eq!(env.emu.stats().writes, writes, "what came from GitHub is not sent to it again");
    assert_eq!(env.emu.counters().0, 0, "a write that changed nothing");
    assert_eq!(open_exports(&db), "0");
    assert_eq!(db.psql("SELECT provenance FROM sync.ledger WHERE sync_key = '1'"), "pull");

    // Reopened and relabelled, a field of the body's table edited.
    let body = env.emu.issues("tracker")[n1 as usize - 1].body.clone().unwrap();
    assert!(body.contains("| severity | 3 |"), "{body}");
    let edit = json!({"state": "open", "labels": ["syncbridge"], "body": body.replace("| severity | 3 |", "| severity | 4 |")});
    env.emu.person_edit("tracker", n1, &fields(edit)).unwrap();
    env.sync_once(&db);
    assert_eq!(row(&db, 1), json!(["Login fails on Safari", "Steps: open Safari, fail", "open", [], "octocat", 4]));
    assert_eq!(env.emu.stats().writes, writes);

    // A comment moves only updated_at: not an echo (the version moved), but
    // every field compares equal — the NULLs of row 2 and the 'Open' of
    // row 3 included — so nothing changes and nothing is written.
    let (r2, r3) = (row(&db, 2), row(&db, 3));
    assert_eq!(r2, json!(["Slow page", null, null, null, null, null]));
    env.emu.person_comment("tracker", number(&env, "2")).unwrap();
    env.emu.person_comment("tracker", number(&env, "3")).unwrap();
    let before = imports(&db);
    env.sync_once(&db);
    assert_eq!((row(&db, 2), row(&db, 3)), (r2, r3));
    assert_ne!(imports(&db), before, "the comments were read");
    assert_eq!(
        db.psql("SELECT string_agg(DISTINCT decision, ';') FROM sync.pending_imports WHERE id > (SELECT max(id) - 2 FROM sync.pending_imports)"),
        "nothing differs"
    );
    assert_eq!(env.emu.stats().writes, writes);

    // A round in which nothing changed is a 304: free of the primary limit.
    let (_, not_modified, _) = env.emu.counters();
    let used = env.emu.stats().ru_used;
    env.sync_once(&db);
    assert!(env.emu.counters().1 > not_modified, "the unchanged listing was not a 304");
    assert_eq!(env.emu.stats().ru_used, used, "an unchanged round cost something");

    // A change made here still goes out, and comes back as an echo.
    db.psql("UPDATE tickets SET severity = 2, labels = '{docs,ui}' WHERE id = 3");
    env.sync_once(&db);
    assert_eq!(env.items("tracker")["3"]["severity"], json!(2));
    assert_eq!(env.items("tracker")["3"]["@labels"], json!(["docs", "ui", "syncbridge"]));
    let writes = env.emu.stats().writes;
    env.sync_once(&db);
    assert_eq!(env.emu.stats().writes, writes, "syncbridge's own write came back and was sent again");
    assert_eq!(
        db.psql("SELECT status FROM sync.pending_imports WHERE sync_key = '3' AND origin <> 'write' ORDER BY id DESC LIMIT 1"),
        "echo"
    );
    assert_eq!(row(&db, 3), json!(["Typo", "in the footer", "Open", ["docs", "ui"], null, 2]));
    assert_eq!(env.emu.counters().0, 0);
}

/// Both sides change row 1's title; GitHub its labels, the table its
/// severity (one side each). Round A: the table first, GitHub a second
/// later; round B: GitHub first. `settle` resolves manual conflicts.
fn both_sides(policy: &str, want_a: &str, want_b: &str, settle: &dyn Fn(&TestDb, &str)) {
    let (env, db) = twoway(policy, "");
    let n1 = number(&env, "1");
    let gap = std::time::Duration::from_millis(1100);
    for (round, want, local_first) in [("A", want_a, true), ("B", want_b, false)] {
        let local =
            || db.psql(&format!("UPDATE tickets SET title = 'Local {round}', severity = severity + 1 WHERE id = 1"));
        let remote = || {
            let e =
                json!({"title": format!("Remote {round}"), "labels": ["bug", format!("remote-{round}"), "syncbridge"]});
            env.emu.person_edit("tracker", n1, &fields(e)).unwrap()
        };
        if local_first {
            local();
            std::thread::sleep(gap);
            remote();
        } else {
            remote();
            std::thread::sleep(gap);
            local();
        }
        env.sync_once(&db);
        settle(&db, round);
        env.sync_once(&db);
        let r = row(&db, 1);
        let severity = 3 + if round == "A" { 1 } else { 2 };
        assert_eq!(
            r,
            json!([want, "Steps: open, fail", "open", ["bug", format!("remote-{round}")], "octocat", severity]),
            "policy {policy}, round {round}"
        );
        let issue = &env.items("tracker")["1"];
        assert_eq!(
            (issue["@title"].as_str(), issue["severity"].clone()),
            (Some(want), json!(severity)),
            "policy {policy}, round {round}: GitHub holds what the table holds"
        );
        assert_eq!(db.psql("SELECT count(*) FROM sync.conflicts WHERE resolution IS NULL"), "0");
        assert_eq!(open_exports(&db), "0", "policy {policy}, round {round}");
        assert_eq!(env.emu.counters().0, 0, "policy {policy}, round {round}: a write that changed nothing");
        // Settled: another round writes nothing.
        let writes = env.emu.stats().writes;
        env.sync_once(&db);
        assert_eq!(env.emu.stats().writes, writes, "policy {policy}, round {round}");
    }
}

fn no_conflicts(db: &TestDb, _round: &str) {
    assert_eq!(db.psql("SELECT count(*) FROM sync.conflicts"), "0");
}

#[test]
fn under_source_wins_the_tables_title_wins_and_each_sides_other_change_is_kept() {
    both_sides("source_wins", "Local A", "Local B", &no_conflicts);
}

#[test]
fn under_target_wins_githubs_title_wins_and_each_sides_other_change_is_kept() {
    both_sides("target_wins", "Remote A", "Remote B", &no_conflicts);
}

#[test]
fn under_newest_wins_the_later_edit_wins() {
    both_sides("newest_wins", "Remote A", "Local B", &no_conflicts);
}

#[test]
fn under_manual_a_person_resolves_with_either_side_or_a_value_of_their_own() {
    both_sides("manual", "Remote A", "Agreed B", &|db: &TestDb, round: &str| {
        let c = db.psql(
            "SELECT concat_ws('|', sync_key, field, base_value, local_value, remote_value) FROM sync.conflicts WHERE resolution IS NULL",
        );
        let base = if round == "A" { "\"Login fails\"" } else { "\"Remote A\"" };
        assert_eq!(c, format!("1|title|{base}|\"Local {round}\"|\"Remote {round}\""));
        let id = "(SELECT id FROM sync.conflicts WHERE resolution IS NULL)";
        if round == "A" {
            db.psql(&format!("SELECT sync.resolve({id}, 'remote')"));
        } else {
            db.psql(&format!("SELECT sync.resolve({id}, '\"Agreed B\"'::jsonb)"));
        }
    });
}

#[test]
fn an_update_that_meets_a_persons_newer_edit_waits_for_it_to_be_pulled() {
    // GitHub has no If-Match: the update reads the issue first and, finding
    // a version it has not seen, waits while the edit is pulled.
    let (env, db) = twoway("source_wins", "");
    let n1 = number(&env, "1");
    db.psql("SELECT sync.alter_target('gh', config => (SELECT config || '{\"pull_interval\": 3600}' FROM sync.targets WHERE name = 'gh'))");
    db.psql("UPDATE sync.pulls SET next_pull_at = now() + interval '1 hour'");
    env.emu.person_edit("tracker", n1, &fields(json!({"title": "Edited on GitHub"}))).unwrap();
    db.psql("UPDATE tickets SET severity = 9 WHERE id = 1");
    // (killed when dropped, also when an assertion fails)
    let worker = spawn_quiet(env.worker_cmd(&db, &[]));
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    let done = || {
        row(&db, 1)[0] == json!("Edited on GitHub")
            && env.items("tracker").get("1").is_some_and(|i| i["severity"] == json!(9))
            && open_exports(&db) == "0"
    };
    while !done() {
        assert!(Instant::now() < deadline, "not settled within 60 s: {} {}", row(&db, 1), open_exports(&db));
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    drop(worker);
    assert_eq!(env.items("tracker")["1"]["@title"], "Edited on GitHub", "the person's title was not overwritten");
    // (without the read first, the update's answer would have been taken
    // for the issue's version and the person's title never pulled)
    assert_eq!(
        db.psql("SELECT error_class IS NULL FROM sync.pending_exports WHERE sync_key = '1' ORDER BY id DESC LIMIT 1"),
        "t"
    );
    assert_eq!(env.emu.counters().0, 0);
}

#[test]
fn issues_opened_closed_and_deleted_on_github_are_handled_as_documented() {
    let (env, db) = twoway("source_wins", ", inbound_deletes => 'apply'");
    let writes = env.emu.stats().writes;
    // Opened by a person with syncbridge's label: a row (its key from the
    // table's default), and the issue gets its marker (no second issue).
    let n = env
        .emu
        .person_create(
            "tracker",
            &fields(json!({"title": "Made on GitHub", "body": "by hand", "labels": ["syncbridge", "ui"]})),
        )
        .unwrap();
    // Without the label it is not syncbridge's: never pulled.
    env.emu.person_create("tracker", &fields(json!({"title": "Not ours", "labels": ["ui"]}))).unwrap();
    env.sync_once(&db);
    assert_eq!(row(&db, 4), json!(["Made on GitHub", "by hand", "open", ["ui"], null, null]));
    assert_eq!(db.psql("SELECT count(*) FROM tickets"), "4", "the issue without the label was pulled");
    assert_eq!(number(&env, "4"), n, "the issue opened on GitHub carries row 4's marker");
    assert_eq!(env.emu.issues("tracker").len(), 5, "no second issue");
    assert_eq!(env.emu.stats().writes, writes + 1, "one write: the marker");
    assert_eq!(db.psql("SELECT join_type FROM sync.ledger WHERE sync_key = '4'"), "projected");
    env.sync_once(&db);
    assert_eq!(env.emu.stats().writes, writes + 1, "the marker's write came back as an echo");
    assert_eq!(row(&db, 4), json!(["Made on GitHub", "by hand", "open", ["ui"], null, null]));

    // Closed on GitHub: a change of state, never a delete.
    let n1 = number(&env, "1");
    env.emu.person_edit("tracker", n1, &fields(json!({"state": "closed"}))).unwrap();
    env.sync_once(&db);
    assert_eq!(row(&db, 1)[2], "closed");

    // Deleted by an admin: gone from the listing, so only a full read finds
    // it; under inbound_deletes => 'apply' its row goes.
    env.emu.delete_issue("tracker", number(&env, "3"));
    env.sync_once(&db);
    assert_eq!(db.psql("SELECT count(*) FROM tickets WHERE id = 3"), "1", "a listing does not show deletions");
    db.psql("SELECT sync.reset_pull('tickets')");
    env.sync_once(&db);
    assert_eq!(db.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM tickets"), "1,2,4");
    assert_eq!(db.psql("SELECT count(*) FROM sync.ledger WHERE sync_key = '3'"), "0");
    // The label taken off: the issue leaves syncbridge; the next full read
    // takes it for deleted (here waiting for a person's approval).
    db.psql("UPDATE sync.definitions SET inbound_deletes = 'approve'");
    env.emu.person_edit("tracker", number(&env, "2"), &fields(json!({"labels": []}))).unwrap();
    db.psql("SELECT sync.reset_pull('tickets')");
    env.sync_once(&db);
    assert_eq!(db.psql("SELECT count(*) FROM tickets WHERE id = 2"), "1");
    assert_eq!(
        db.psql("SELECT concat_ws(':', sync_key, status, origin) FROM sync.pending_imports WHERE status = 'awaiting_approval'"),
        "2:awaiting_approval:resync"
    );
    assert_eq!(env.emu.counters().0, 0);
}

#[test]
fn a_pull_request_in_the_repository_is_never_imported() {
    let (env, db) = twoway("source_wins", "");
    let writes = env.emu.stats().writes;
    // Pull requests are listed with the issues, even with syncbridge's
    // label, even with a marker of the definition in their text.
    let a = env
        .emu
        .create_pull_request(
            "tracker",
            "Fix the login",
            Some(&format!("Fixes it\n\n{}", marker("tickets", "1"))),
            &["syncbridge"],
        )
        .unwrap();
    let b = env.emu.create_pull_request("tracker", "Unmarked", Some("no marker"), &["syncbridge", "ui"]).unwrap();
    env.sync_once(&db);
    db.psql("SELECT sync.reset_pull('tickets')");
    env.sync_once(&db);
    assert_eq!(db.psql("SELECT count(*) FROM tickets"), "3");
    assert_eq!(
        db.psql(&format!("SELECT count(*) FROM sync.pending_imports WHERE target_id IN ('{a}', '{b}')")),
        "0",
        "a pull request was handed over"
    );
    assert_eq!(row(&db, 1)[0], "Login fails", "the pull request's title did not reach row 1");
    assert_eq!(env.emu.stats().writes, writes, "nothing was written to a pull request");
    let prs = env.emu.issues("tracker").into_iter().filter(|i| i.pull_request).count();
    assert_eq!(prs, 2);
}
