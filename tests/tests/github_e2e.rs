//! Issue 19: source → worker → GitHub emulator, end to end. The repository's
//! issues must equal the mapped rows after inserts, updates, label and state
//! changes and deletes (closed `not_planned`); a body at GitHub's limit goes
//! through and one past it is a definite error with GitHub's message; a
//! create whose answer is lost is adopted by its marker, never doubled; and
//! under GitHub's secondary limit on content creation nothing is refused.
//! The scenarios every kind shares are in `robustness.rs`.

use std::time::Instant;

use serde_json::json;
use syncbridge_tests::github::{assert_target_equals_source, GithubEnv};
use syncbridge_tests::github_emulator::{Fault, GithubConfig, BODY_LIMIT};
use syncbridge_tests::ingest::{open_count, prepare};
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
