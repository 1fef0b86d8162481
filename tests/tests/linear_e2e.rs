//! Issue 19: source → worker → Linear emulator, end to end: inserts,
//! updates, state changes that close issues, labels, deletes to the trash
//! (and a row inserted again restoring its issue), unicode and NULLs, a
//! description at the limit and one past it (a definite error with
//! Linear's message), and creates whose answers are lost (the retry finds
//! the issue by the id syncbridge chose and adopts it: one issue per row).
//! The scenarios every kind shares are in `robustness.rs`.

use serde_json::Value;
use syncbridge_tests::emulator::Fault;
use syncbridge_tests::ingest::{open_count, prepare};
use syncbridge_tests::linear::{assert_issues_equal_rows, LinearTargetEnv};
use syncbridge_tests::linear_emulator::EmulatorConfig;
use syncbridge_tests::target_env::TargetEnv;
use syncbridge_tests::{cluster, TestDb};

const TICKETS: &str = "
CREATE TABLE tickets (id int PRIMARY KEY, title text, body text, status text, tags text[], prio int, due date,
    owner text, shareable boolean NOT NULL DEFAULT true);
INSERT INTO tickets VALUES
  (1, 'Login fails', 'Steps:\n\n1. open\n2. **boom**', 'Todo', '{Bug}', 1, '2026-03-11', 'ada@example.com', true),
  (2, 'Chloé 東京 🚀 ünïcödé', NULL, NULL, NULL, NULL, NULL, NULL, true),
  (3, 'Add dark mode', 'Please', 'In Progress', '{Feature,UI}', 3, NULL, 'chloe', true),
  (4, 'Secret salary review', 'private', 'Todo', NULL, NULL, NULL, NULL, false);
";

fn setup(config: EmulatorConfig) -> (LinearTargetEnv, TestDb) {
    setup_with(config, Value::Null)
}

/// With more target configuration keys in `extra`.
fn setup_with(config: EmulatorConfig, extra: Value) -> (LinearTargetEnv, TestDb) {
    let env = LinearTargetEnv::with_config(config);
    let db = cluster().new_db("linear");
    prepare(&db, TICKETS);
    db.psql(&format!("ALTER DATABASE \"{}\" SET sync.backoff_base_seconds = 1", db.name()));
    env.env.create_target(&db, "lin", None, extra);
    db.psql(
        "SELECT sync.define('tix', source => 'tickets', target => 'lin', list => 'ENG', row_filter => 'shareable')",
    );
    for (col, field) in [
        ("title", "title"),
        ("body", "description"),
        ("status", "state"),
        ("tags", "labels"),
        ("prio", "priority"),
        ("due", "dueDate"),
        ("owner", "assignee"),
    ] {
        db.psql(&format!("SELECT sync.map('tix', '{col}', '{field}')"));
    }
    env.env.remember(&db, "tix");
    db.psql("SELECT sync.enable('tix')");
    (env, db)
}

fn labels(i: &serde_json::Map<String, Value>) -> Vec<String> {
    let mut v: Vec<String> =
        i["labels"]["nodes"].as_array().unwrap().iter().map(|l| l["name"].as_str().unwrap().to_owned()).collect();
    v.sort();
    v
}

#[test]
fn rows_become_issues_with_states_labels_and_assignees_and_deletes_go_to_the_trash() {
    let (env, db) = setup(EmulatorConfig::default());
    env.sync_once(&db);
    assert_issues_equal_rows(&env.env, &db, "tix");
    let issues = env.env.live();
    assert_eq!(issues.len(), 3, "the row that is not shareable never left");
    assert!(!serde_json::to_string(&env.env.emu.issues()).unwrap().contains("salary"));
    let one = &issues["1"];
    assert_eq!(one["description"], "Steps:\n\n1. open\n2. **boom**", "Markdown as it is");
    assert_eq!((one["state"]["name"].as_str(), one["priority"].as_i64()), (Some("Todo"), Some(1)));
    assert_eq!(labels(one), ["Bug"]);
    assert_eq!(one["dueDate"], "2026-03-11");
    assert_eq!(one["assignee"]["email"], "ada@example.com");
    let two = &issues["2"];
    assert_eq!(two["title"], "Chloé 東京 🚀 ünïcödé");
    assert!(two["description"].is_null() && two["assignee"].is_null() && two["dueDate"].is_null());
    assert_eq!(two["state"]["name"], "Todo", "no state: the team's default");
    assert_eq!(labels(&issues["3"]), ["Feature", "UI"], "a label the team lacked was created");
    assert_eq!(issues["3"]["assignee"]["displayName"], "chloe");

    // Updates: closing by state, labels replaced, values cleared.
    db.psql("UPDATE tickets SET status = 'Done', tags = '{Bug,Regression}', body = NULL, owner = NULL WHERE id = 1");
    db.psql("UPDATE tickets SET title = title || ' ✓', prio = 4 WHERE id = 2");
    env.sync_once(&db);
    assert_issues_equal_rows(&env.env, &db, "tix");
    let issues = env.env.live();
    let one = &issues["1"];
    assert_eq!(one["state"]["type"], "completed");
    assert!(one["completedAt"].is_string(), "closed");
    assert_eq!(labels(one), ["Bug", "Regression"]);
    assert!(one["description"].is_null() && one["assignee"].is_null());
    assert_eq!(issues["2"]["priority"], 4);

    // Deletes go to the trash; a row no longer shareable is removed too.
    db.psql("DELETE FROM tickets WHERE id = 3");
    db.psql("UPDATE tickets SET shareable = false WHERE id = 2");
    env.sync_once(&db);
    assert_issues_equal_rows(&env.env, &db, "tix");
    let all = env.env.issues_by_key();
    assert_eq!(all["3"]["trashed"], true);
    assert_eq!(all["2"]["trashed"], true);
    assert_eq!(open_count(&db), "0");

    // The row back with its key: the same issue, out of the trash.
    db.psql("INSERT INTO tickets (id, title, status) VALUES (3, 'Add dark mode, again', 'Backlog')");
    env.sync_once(&db);
    assert_issues_equal_rows(&env.env, &db, "tix");
    let all = env.env.issues_by_key();
    assert!(all["3"]["trashed"].is_null(), "{:?}", all["3"]);
    assert_eq!(all.len(), 3, "no issue more");
    assert_eq!(open_count(&db), "0");
    let (refused, _, echoes) = env.env.emu.state().error_counts();
    assert_eq!((refused, echoes), (0, 0), "no document refused, no write that changed nothing");
}

#[test]
fn a_description_at_the_limit_goes_and_one_past_it_is_a_definite_error_with_linears_message() {
    let mut config = EmulatorConfig::default();
    config.limits.max_description_chars = 1000;
    let (env, db) = setup(config);
    db.psql(
        "INSERT INTO tickets (id, title, body) VALUES (10, 'at', repeat('é', 1000)), (11, 'past', repeat('é', 1001))",
    );
    env.sync_once(&db);
    let issues = env.env.live();
    assert_eq!(issues["10"]["description"].as_str().map(|d| d.chars().count()), Some(1000));
    assert!(!issues.contains_key("11"));
    let err = db.psql(
        "SELECT status || '|' || error_class || '|' || last_error FROM sync.pending_exports WHERE sync_key = '11'",
    );
    assert!(err.starts_with("error|definite|"), "{err}");
    assert!(err.contains("description must be shorter than or equal to 1000 characters"), "{err}");
    // The others of its claim went (the refused one did not hold them up).
    assert_eq!(issues.len(), 4);
    // Fixed and retried: it goes.
    db.psql("UPDATE tickets SET body = left(body, 1000) WHERE id = 11");
    db.psql("SELECT sync.retry(id) FROM sync.pending_exports WHERE sync_key = '11' AND status = 'error'");
    env.sync_once(&db);
    assert_issues_equal_rows(&env.env, &db, "tix");
}

#[test]
fn a_create_whose_answer_is_lost_is_found_by_its_id_and_adopted_not_doubled() {
    let (env, db) = setup(EmulatorConfig::default());
    // The document runs, then its answer is lost: a dropped connection,
    // then a 502; then (next claim) a batch that answers only half.
    env.inject(Fault::RunThenDrop, 1);
    env.sync_once(&db);
    assert_issues_equal_rows(&env.env, &db, "tix");
    assert_eq!(env.env.issues_by_key().len(), 3, "one issue per row");
    db.psql("INSERT INTO tickets (id, title) SELECT g, 'row ' || g FROM generate_series(100, 139) g");
    env.inject(Fault::RunThenStatus(502), 1);
    env.sync_once(&db);
    db.psql("INSERT INTO tickets (id, title) SELECT g, 'row ' || g FROM generate_series(200, 219) g");
    env.inject(Fault::BatchMissingResponses, 1);
    env.sync_once(&db);
    assert_issues_equal_rows(&env.env, &db, "tix");
    let all = env.env.issues_by_key();
    assert_eq!(all.len(), 63, "no twin, no stray");
    assert!(all.keys().all(|k| !k.starts_with("<stray")));
    assert_eq!(open_count(&db), "0");
    // Each row created once; adoptions wrote nothing new.
    let stats = env.stats();
    assert!(stats.writes >= 63, "{stats:?}");
    let (refused, _, _) = env.env.emu.state().error_counts();
    assert_eq!(refused, 0, "every document the adapter sent is valid against the schema");
}

#[test]
fn linears_own_headers_pace_the_worker_when_its_budget_would_not() {
    // The target's budget is as good as unlimited; Linear allows 4
    // requests per 8 s. The worker reads x-ratelimit-requests-* and waits
    // for the bucket instead of meeting RATELIMITED.
    let config = EmulatorConfig { requests_limit: Some(4), period_secs: 8.0, ..EmulatorConfig::default() };
    let (env, db) = setup(config);
    db.psql("INSERT INTO tickets (id, title) SELECT g, 'row ' || g FROM generate_series(100, 399) g");
    let started = std::time::Instant::now();
    env.sync_once(&db);
    assert_issues_equal_rows(&env.env, &db, "tix");
    let stats = env.stats();
    eprintln!(
        "paced run: {} requests, {} refused, {:.1} s",
        stats.requests,
        stats.throttled,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(stats.throttled, 0, "no request refused by a limit the headers announced");
    assert!(stats.requests > 4, "more requests than the bucket holds: some waited ({stats:?})");
    assert_eq!(open_count(&db), "0");
}

#[test]
fn with_on_delete_archive_a_delete_archives_the_issue_and_a_row_back_unarchives_it() {
    let (env, db) = setup_with(EmulatorConfig::default(), serde_json::json!({"on_delete": "archive"}));
    env.sync_once(&db);
    db.psql("DELETE FROM tickets WHERE id IN (1, 3)");
    env.sync_once(&db);
    let all = env.env.issues_by_key();
    for k in ["1", "3"] {
        assert!(all[k]["archivedAt"].is_string(), "{k} archived");
        assert!(all[k]["trashed"].is_null(), "{k} archived, not trashed");
    }
    assert_issues_equal_rows(&env.env, &db, "tix");
    db.psql("INSERT INTO tickets (id, title) VALUES (1, 'back')");
    env.sync_once(&db);
    assert_issues_equal_rows(&env.env, &db, "tix");
    assert_eq!(env.env.issues_by_key().len(), 3, "the same issue, not a new one");
    assert_eq!(open_count(&db), "0");
}
