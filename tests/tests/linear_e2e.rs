//! Issue 19: source → worker → Linear emulator, end to end: inserts,
//! updates, state changes that close issues, labels, deletes to the trash
//! (and a row inserted again restoring its issue), unicode and NULLs, a
//! description at the limit and one past it (a definite error with
//! Linear's message), and creates whose answers are lost (the retry finds
//! the issue by the id syncbridge chose and adopts it: one issue per row).
//! The scenarios every kind shares are in `robustness.rs`.

use serde_json::{json, Value};
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
    // Requests fail on the way too: what fails is never the secret row.
    env.inject(Fault::Status(500), 1);
    env.inject(Fault::RunThenDrop, 1);
    env.sync_once(&db);
    assert_issues_equal_rows(&env.env, &db, "tix");
    let issues = env.env.live();
    assert_eq!(issues.len(), 3, "the row that is not shareable never left");
    assert!(!serde_json::to_string(&env.env.emu.issues()).unwrap().contains("salary"));
    let state = env.env.emu.state();
    assert!(!state.received_contains("Secret salary review"), "the unshareable row reached Linear");
    assert!(state.received_contains("Login fails"), "the check sees what was sent");
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

    // Deletes go to the trash; a row no longer shareable is removed too,
    // and what it became is never sent.
    db.psql("DELETE FROM tickets WHERE id = 3");
    db.psql("UPDATE tickets SET shareable = false, title = 'SECRET-title-2' WHERE id = 2");
    env.inject(Fault::Status(503), 1);
    env.sync_once(&db);
    assert!(!env.env.emu.state().received_contains("SECRET-title-2"), "what row 2 became reached Linear");
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

// ---------------------------------------------------------------------------
// Two-way: edits made in Linear come back (issue 19's "Pulling").
// ---------------------------------------------------------------------------

const TASKS: &str = "
CREATE TABLE tasks (id serial PRIMARY KEY, title text NOT NULL, body text, status text NOT NULL DEFAULT 'Todo',
    tags text[], prio int NOT NULL DEFAULT 0);
INSERT INTO tasks (title, body, status, tags, prio) VALUES ('Write docs', 'draft', 'Todo', '{Docs}', 3),
    ('Fix login', NULL, 'In Progress', '{Bug,UI}', 1), ('Plan sprint', 'notes', 'Backlog', NULL, 0);
";

/// A two-way definition `tasks_lin` of `tasks` (title, description,
/// state, labels, priority both ways), synced and its own writes pulled
/// back once.
fn two_way(conflict: &str, extra: &str) -> (LinearTargetEnv, TestDb) {
    two_way_with(EmulatorConfig::default(), conflict, extra)
}

fn two_way_with(config: EmulatorConfig, conflict: &str, extra: &str) -> (LinearTargetEnv, TestDb) {
    let env = LinearTargetEnv::with_config(config);
    let db = cluster().new_db("linear2");
    prepare(&db, TASKS);
    db.psql(&format!("ALTER DATABASE \"{}\" SET sync.backoff_base_seconds = 1", db.name()));
    env.env.create_target(&db, "lin", None, Value::Null);
    db.psql(&format!(
        "SELECT sync.define('tasks_lin', source => 'tasks', target => 'lin', list => 'ENG', direction => 'both',
                            conflict => '{conflict}'{extra})"
    ));
    for (col, field) in
        [("title", "title"), ("body", "description"), ("status", "state"), ("tags", "labels"), ("prio", "priority")]
    {
        db.psql(&format!("SELECT sync.map('tasks_lin', '{col}', '{field}')"));
    }
    env.env.remember(&db, "tasks_lin");
    db.psql("SELECT sync.enable('tasks_lin')");
    env.sync_once(&db);
    assert_issues_equal_rows(&env.env, &db, "tasks_lin");
    (env, db)
}

/// The issue id of row `key` of `tasks_lin`.
fn id_of(env: &LinearTargetEnv, key: &str) -> String {
    syncbridge_worker::target::linear::issue_id(&env.env.config.team_id, "tasks_lin", key)
}

fn row(db: &TestDb, id: i32) -> String {
    db.psql(&format!(
        "SELECT concat_ws('|', title, coalesce(body, '-'), status, coalesce(tags::text, '-'), prio) FROM tasks WHERE id = {id}"
    ))
}

/// The inbound changes' outcomes (`status` per import, in order).
fn imports(db: &TestDb) -> Vec<String> {
    db.psql("SELECT status FROM sync.pending_imports WHERE origin <> 'write' ORDER BY id")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Each inbound change with its decision (for failure messages).
fn decisions(db: &TestDb) -> String {
    db.psql("SELECT string_agg(concat_ws(' ', id, sync_key, origin, status, decision, last_error, remote::text), E'\n' ORDER BY id) FROM sync.pending_imports")
}

fn count(v: &[String], what: &str) -> usize {
    v.iter().filter(|s| *s == what).count()
}

/// A pull round that sees only what is there writes nothing: the
/// emulator's write count does not move, and no write changed nothing.
fn assert_quiet_round(env: &LinearTargetEnv, db: &TestDb) {
    let writes = env.stats().writes;
    let applied = count(&imports(db), "applied");
    let log = env.sync_once(db);
    assert_eq!(env.stats().writes, writes, "a pull round sent writes:\n{log}");
    assert_eq!(count(&imports(db), "applied"), applied, "a pull round applied something");
    let (refused, _, unchanged) = env.env.emu.state().error_counts();
    assert_eq!((refused, unchanged), (0, 0), "no document refused, no write that changed nothing");
    assert_eq!(
        db.psql("SELECT count(*) FROM sync.pending_exports WHERE status IN ('pending', 'failed', 'error')"),
        "0"
    );
}

#[test]
fn edits_made_in_linear_land_in_the_table_and_nothing_echoes() {
    let (env, db) = two_way("source_wins", "");
    // The first round read the team whole (empty) and created three
    // issues; this one reads them back: syncbridge's own writes, echoes.
    let writes = env.stats().writes;
    env.sync_once(&db);
    assert_eq!(env.stats().writes, writes, "zero echo writes");
    assert_eq!(count(&imports(&db), "echo"), 3, "{:?}", imports(&db));
    let etag = db.psql("SELECT etag FROM sync.ledger WHERE sync_key = '1'");
    assert_eq!(etag, env.env.issues_by_key()["1"]["updatedAt"].as_str().unwrap(), "the ledger's eTag is updatedAt");
    assert_quiet_round(&env, &db);

    // A person edits in Linear: a title, a description, a state, labels.
    let st = env.env.emu.state();
    let urgent = st.label_id("Urgent");
    let docs = st.label_id("Docs");
    st.person_edit(&id_of(&env, "1"), json!({"title": "Write the docs", "labelIds": [docs, urgent]})).unwrap();
    st.person_edit(&id_of(&env, "2"), json!({"description": "Steps:\n\n1. **boom**"})).unwrap();
    st.person_edit(&id_of(&env, "3"), json!({"stateId": st.state_id("Done").unwrap(), "priority": 2})).unwrap();
    let writes = env.stats().writes;
    let log = env.sync_once(&db);
    assert_eq!(row(&db, 1), "Write the docs|draft|Todo|{Docs,Urgent}|3", "{log}\n{}", decisions(&db));
    assert_eq!(row(&db, 2), "Fix login|Steps:\n\n1. **boom**|In Progress|{Bug,UI}|1");
    assert_eq!(row(&db, 3), "Plan sprint|notes|Done|-|2");
    assert_eq!(count(&imports(&db), "applied"), 3, "{:?}", imports(&db));
    assert_eq!(env.stats().writes, writes, "what came from Linear is not sent back");
    assert_eq!(db.psql("SELECT provenance FROM sync.ledger WHERE sync_key = '3'"), "pull");
    assert_quiet_round(&env, &db);
    assert_issues_equal_rows(&env.env, &db, "tasks_lin");

    // A local change goes out as before, and comes back as an echo.
    db.psql("UPDATE tasks SET title = 'Fix the login', tags = '{Bug}' WHERE id = 2");
    env.sync_once(&db);
    assert_eq!(env.env.issues_by_key()["2"]["title"], "Fix the login");
    assert_quiet_round(&env, &db);
    assert_eq!(row(&db, 2), "Fix the login|Steps:\n\n1. **boom**|In Progress|{Bug}|1");
}

/// Title of item 1 edited on both sides (the remote first, `gap` apart);
/// returns (the row's title, the issue's title) after a round.
fn both_sides_edit(conflict: &str, local_first: bool) -> (String, String, LinearTargetEnv, TestDb) {
    let (env, db) = two_way(conflict, "");
    env.sync_once(&db);
    let remote = || env.env.emu.state().person_edit(&id_of(&env, "1"), json!({"title": "Docs (remote)"})).unwrap();
    let gap = std::time::Duration::from_millis(300);
    if local_first {
        db.psql("UPDATE tasks SET title = 'Docs (local)' WHERE id = 1");
        std::thread::sleep(gap);
        remote();
    } else {
        remote();
        std::thread::sleep(gap);
        db.psql("UPDATE tasks SET title = 'Docs (local)' WHERE id = 1");
    }
    env.sync_once(&db);
    let title = db.psql("SELECT title FROM tasks WHERE id = 1");
    let issue = env.env.issues_by_key()["1"]["title"].as_str().unwrap().to_owned();
    (title, issue, env, db)
}

#[test]
fn a_field_edited_on_both_sides_ends_as_each_policy_says() {
    for (policy, local_first, winner) in [
        ("source_wins", false, "Docs (local)"),
        ("target_wins", false, "Docs (remote)"),
        ("newest_wins", false, "Docs (local)"),
        ("newest_wins", true, "Docs (remote)"),
    ] {
        let (title, issue, env, db) = both_sides_edit(policy, local_first);
        assert_eq!((title.as_str(), issue.as_str()), (winner, winner), "{policy}, local first: {local_first}");
        // The other fields of the item are untouched, and it settles.
        assert_eq!(row(&db, 1), format!("{winner}|draft|Todo|{{Docs}}|3"));
        assert_quiet_round(&env, &db);
        assert_issues_equal_rows(&env.env, &db, "tasks_lin");
    }
}

#[test]
fn manual_conflicts_wait_for_sync_resolve_and_a_stale_write_is_held_back() {
    let (env, db) = two_way("manual", "");
    env.sync_once(&db);
    // Both sides edit the title of item 2. The list is not due for an
    // hour: a running worker sends the update first; the issue's
    // updatedAt is not the ledger's, so the write is held back (class
    // conflict, Linear's stand-in for a 412) and the team is pulled now.
    env.env.emu.state().person_edit(&id_of(&env, "2"), json!({"title": "Login (remote)"})).unwrap();
    db.psql("UPDATE tasks SET title = 'Login (local)' WHERE id = 2");
    db.psql("UPDATE sync.pulls SET next_pull_at = now() + interval '1 hour'");
    db.psql("SELECT sync.alter_target('lin', config => (SELECT config || '{\"pull_interval\": 3600}' FROM sync.targets WHERE name = 'lin'))");
    let mut worker = env.worker_cmd(&db, &[]).spawn().expect("worker");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while db.psql("SELECT count(*) FROM sync.conflicts") == "0" {
        assert!(std::time::Instant::now() < deadline, "no conflict within 60 s");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let _ = worker.kill();
    let _ = worker.wait();
    assert_eq!(env.env.issues_by_key()["2"]["title"], "Login (remote)", "the remote value is not overwritten");
    assert_eq!(
        db.psql("SELECT count(*) FROM sync.pending_exports WHERE error_class = 'conflict'"),
        "1",
        "the update was held back"
    );
    let c = db.psql("SELECT concat_ws('|', sync_key, field, base_value, local_value, remote_value) FROM sync.conflicts WHERE resolution IS NULL");
    assert_eq!(c, "2|title|\"Fix login\"|\"Login (local)\"|\"Login (remote)\"");
    // Resolved with the remote value: the row takes it, nothing is written.
    let writes = env.stats().writes;
    db.psql("SELECT sync.resolve((SELECT id FROM sync.conflicts WHERE resolution IS NULL), 'remote')");
    env.sync_once(&db);
    assert_eq!(db.psql("SELECT title FROM tasks WHERE id = 2"), "Login (remote)");
    assert_eq!(env.stats().writes, writes);
    assert_quiet_round(&env, &db);
    // A second conflict, settled with the local value: Linear gets it.
    env.env.emu.state().person_edit(&id_of(&env, "3"), json!({"description": "remote notes"})).unwrap();
    db.psql("UPDATE tasks SET body = 'local notes' WHERE id = 3");
    env.sync_once(&db);
    assert_eq!(db.psql("SELECT count(*) FROM sync.conflicts WHERE resolution IS NULL"), "1");
    db.psql("SELECT sync.resolve((SELECT id FROM sync.conflicts WHERE resolution IS NULL), 'local')");
    env.sync_once(&db);
    assert_eq!(env.env.issues_by_key()["3"]["description"], "local notes");
    assert_eq!(row(&db, 3), "Plan sprint|local notes|Backlog|-|0");
    assert_quiet_round(&env, &db);
    assert_issues_equal_rows(&env.env, &db, "tasks_lin");
}

#[test]
fn an_issue_made_in_linear_joins_the_definition_whose_label_it_carries_and_a_trash_deletes_the_row() {
    let (env, db) = two_way("source_wins", ", inbound_inserts => 'apply', inbound_deletes => 'apply'");
    // A second definition on the same team: its issues never become tasks.
    db.psql("CREATE TABLE notes (id serial PRIMARY KEY, title text NOT NULL)");
    db.psql("INSERT INTO notes (title) VALUES ('a note'), ('another note')");
    db.psql("SELECT sync.define('notes_lin', source => 'notes', target => 'lin', list => 'ENG', direction => 'both', inbound_inserts => 'apply')");
    db.psql("SELECT sync.map('notes_lin', 'title', 'title')");
    db.psql("SELECT sync.enable('notes_lin')");
    env.sync_once(&db);
    env.sync_once(&db);
    assert_eq!(env.env.emu.issues().len(), 5);
    assert_eq!(db.psql("SELECT count(*) FROM tasks"), "3", "the notes' issues are not tasks");
    assert_eq!(db.psql("SELECT count(*) FROM notes"), "2", "nor the tasks' issues notes");

    // A person makes two issues: one labelled for tasks_lin, one not.
    let st = env.env.emu.state();
    let label = st.label_id("tasks_lin");
    let made = st
        .person_create(
            json!({"title": "Made in Linear", "description": "by a person", "labelIds": [label], "priority": 4}),
        )
        .unwrap();
    let stray = st.person_create(json!({"title": "Someone's own issue"})).unwrap();
    // And trashes the issue of task 2.
    st.person_trash(&id_of(&env, "2")).unwrap();
    let writes = env.stats().writes;
    env.sync_once(&db);
    assert_eq!(
        db.psql("SELECT string_agg(concat_ws('|', id, title, body, status, tags, prio), ' / ' ORDER BY id) FROM tasks"),
        "1|Write docs|draft|Todo|{Docs}|3 / 3|Plan sprint|notes|Backlog|0 / 4|Made in Linear|by a person|Todo|{tasks_lin}|4",
        "{:?}",
        imports(&db)
    );
    assert_eq!(db.psql("SELECT count(*) FROM notes"), "2", "the label names the definition");
    assert_eq!(db.psql("SELECT target_id FROM sync.ledger WHERE sync_key = '4'"), made);
    assert_eq!(
        db.psql(&format!("SELECT count(*) FROM sync.ledger WHERE target_id = '{stray}'")),
        "0",
        "unlabelled: not imported"
    );
    assert_eq!(env.stats().writes, writes, "the new row's SyncKey needs no write: the ledger knows its issue");
    assert_quiet_round(&env, &db);
    // The new row is synced like any other: a local edit reaches its issue.
    db.psql("UPDATE tasks SET title = 'Made in Linear, edited here' WHERE id = 4");
    env.sync_once(&db);
    assert_eq!(env.env.emu.state().issue(&made).unwrap().title, "Made in Linear, edited here");
    assert_quiet_round(&env, &db);
}

#[test]
fn five_hundred_rows_arrive_under_linears_limits_and_come_back_as_echoes() {
    // Linear's published rates, 5,000 requests and 3,000,000 complexity
    // points an hour per key, in buckets of 3 s (4 requests, 2,500 points):
    // the worker knows them only from the headers (its own budget is as
    // good as unlimited). One running worker pushes 497 new rows and pulls
    // every issue back (pull_interval 5 s).
    let period = 3.0;
    let config = EmulatorConfig {
        requests_limit: Some((5000.0 * period / 3600.0_f64).round() as u32),
        complexity_limit: Some((3_000_000.0 * period / 3600.0_f64).round() as u32),
        period_secs: period,
        ..EmulatorConfig::default()
    };
    let (env, db) = two_way_with(config, "source_wins", "");
    db.psql("SELECT sync.alter_target('lin', config => (SELECT config || '{\"pull_interval\": 5}' FROM sync.targets WHERE name = 'lin'))");
    db.psql("INSERT INTO tasks (title, body, status, tags, prio) SELECT 'row ' || g, 'body ' || g, 'Todo', ARRAY['Bulk'], g % 5 FROM generate_series(4, 500) g");
    // A worker starts without headers to go by: the buckets are full then.
    std::thread::sleep(std::time::Duration::from_secs_f64(period));
    let before = env.stats();
    let started = std::time::Instant::now();
    let mut worker = env.worker_cmd(&db, &[]).spawn().expect("worker");
    let deadline = started + std::time::Duration::from_secs(90);
    while count(&imports(&db), "echo") < 500 || open_count(&db) != "0" {
        if std::time::Instant::now() > deadline {
            let _ = worker.kill();
            panic!("not done within 90 s: {} echoes, {} open", count(&imports(&db), "echo"), open_count(&db));
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    let took = started.elapsed().as_secs_f64();
    let _ = worker.kill();
    let _ = worker.wait();
    let stats = env.stats();
    eprintln!(
        "500 rows under Linear's limits: {} requests, {} refused by a rate limit, {} complexity points, {} writes, {:.1} s",
        stats.requests - before.requests,
        stats.throttled - before.throttled,
        stats.ru_used - before.ru_used,
        stats.writes - before.writes,
        took
    );
    assert_eq!(stats.throttled - before.throttled, 0, "no request refused by a limit the headers announced");
    assert_eq!(stats.writes - before.writes, 497, "one write per new row; reading them back wrote nothing");
    assert_eq!(count(&imports(&db), "echo"), 500, "each issue came back once, as an echo");
    assert_eq!(count(&imports(&db), "applied"), 0);
    assert_issues_equal_rows(&env.env, &db, "tasks_lin");
    assert_eq!(env.env.live().len(), 500);
}
