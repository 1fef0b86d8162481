//! Robustness, written once for every target kind: nothing is lost or sent
//! twice when the target fails, throttles, goes away, or the worker is
//! killed. Each scenario is generic over a [`TargetEnv`]; `robustness!`
//! makes one `#[test]` per scenario for a kind, so a new kind adds one line:
//!
//! ```ignore
//! robustness!(graph, GraphTargetEnv);
//! ```
//!
//! What only some kinds can do is a capability of the environment
//! (`TargetEnv::EXPIRING_TOKENS`, `TargetEnv::BATCHES`): a scenario that needs
//! one says so and passes without running for a kind that lacks it.

use std::process::Stdio;
use std::time::{Duration, Instant};

use syncbridge_tests::emulator::Fault;
use syncbridge_tests::github::GithubTargetEnv;
use syncbridge_tests::graph::GraphTargetEnv;
use syncbridge_tests::ingest::{open_count, prepare};
use syncbridge_tests::jira::JiraTargetEnv;
use syncbridge_tests::ldap::LdapTargetEnv;
use syncbridge_tests::linear::LinearTargetEnv;
use syncbridge_tests::process::{spawn_quiet, wait_with_limit, ChildGuard};
use syncbridge_tests::target_env::{EnvOptions, TargetEnv};
use syncbridge_tests::webhook::WebhookTargetEnv;
use syncbridge_tests::worker::worker;
use syncbridge_tests::{cluster, TestDb};

/// Makes one `#[test]` per scenario for a kind: `robustness!(module, Env)`.
macro_rules! robustness {
    ($kind:ident, $env:ty) => {
        robustness!(@scenarios $kind, $env;
            injected_5xx_and_dropped_connections_are_retried_then_succeed,
            a_permanent_400_ends_in_error_visible_from_sql_and_retry_delivers,
            garbage_answers_are_classified_and_nothing_is_marked_exported_that_was_not,
            a_throttled_target_gets_everything_once_with_few_429s,
            killing_the_worker_mid_batch_ten_times_leaves_exactly_5000_items,
            two_exporters_at_once_never_send_an_export_twice,
            an_outage_spends_no_attempts_and_everything_arrives_once_it_ends,
            a_running_worker_renews_its_token_before_it_expires,
            a_revoked_token_is_renewed_on_the_next_401,
        );
    };
    (@scenarios $kind:ident, $env:ty; $($scenario:ident,)*) => {
        mod $kind {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $scenario() {
                    super::$scenario::<$env>();
                }
            )*
        }
    };
}

robustness!(graph, GraphTargetEnv);
robustness!(github, GithubTargetEnv);
robustness!(jira, JiraTargetEnv);
robustness!(linear, LinearTargetEnv);
robustness!(webhook, WebhookTargetEnv);
robustness!(ldap, LdapTargetEnv);

/// The target the scenarios create.
const TARGET: &str = "tgt";

/// The worker's export lanes (its default).
const LANES: u64 = syncbridge_worker::export::DEFAULT_LANES as u64;

/// A started environment and a database with `ddl` run and the target created.
fn setup<E: TargetEnv>(options: EnvOptions, ddl: &str) -> (E, TestDb) {
    let env = E::start(options);
    let db = cluster().new_db(E::KIND);
    prepare(&db, ddl);
    // Quick retries: the tests inject failures on purpose.
    db.psql(&format!("ALTER DATABASE \"{}\" SET sync.backoff_base_seconds = 1", db.name()));
    env.create_target(&db, TARGET);
    (env, db)
}

/// Table `t` into container `T`, provisioned and enabled.
fn define_t<E: TargetEnv>(env: &E, db: &TestDb) {
    env.define(db, "t", "t", TARGET, "T");
    // A kind whose containers exist already has nothing to provision.
    if E::PROVISION_WRITES > 0 {
        db.psql("SELECT sync.provision('t')");
    }
    db.psql("SELECT sync.enable('t')");
}

fn injected_5xx_and_dropped_connections_are_retried_then_succeed<E: TargetEnv>() {
    let (env, db) = setup::<E>(
        EnvOptions::default(),
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 60) g;",
    );
    define_t(&env, &db);
    env.inject(Fault::Status(503), 2);
    env.inject(Fault::Drop, 2);
    env.inject(Fault::Status(500), 2);
    env.sync_once(&db);
    env.assert_target_equals_source(&db, "t", &["T"]);
    assert_eq!(open_count(&db), "0");
}

fn a_permanent_400_ends_in_error_visible_from_sql_and_retry_delivers<E: TargetEnv>() {
    let (env, db) = setup::<E>(
        EnvOptions::default(),
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'one');",
    );
    define_t(&env, &db);
    env.sync_once(&db); // the container and item 1
    db.psql("INSERT INTO t VALUES (2, 'two')");
    env.inject(Fault::Status(E::REFUSAL_STATUS), 1);
    env.sync_once(&db);
    let err = db.psql(
        "SELECT status || '|' || error_class || '|' || last_error FROM sync.pending_exports WHERE sync_key = '2'",
    );
    assert!(err.starts_with("error|definite|") && err.contains(&E::REFUSAL_STATUS.to_string()), "{err}");
    let st = db.psql("SELECT error FROM sync.status WHERE definition = 't'");
    assert_eq!(st, "1", "sync.status counts the error");
    assert!(!env.items("T").contains_key("2"));
    db.psql("SELECT sync.retry(id) FROM sync.pending_exports WHERE sync_key = '2' AND status = 'error'");
    env.sync_once(&db);
    env.assert_target_equals_source(&db, "t", &["T"]);
}

fn garbage_answers_are_classified_and_nothing_is_marked_exported_that_was_not<E: TargetEnv>() {
    let (env, db) = setup::<E>(
        EnvOptions::default(),
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g;",
    );
    define_t(&env, &db);
    env.sync_once(&db);
    db.psql("UPDATE t SET v = v || '!'; INSERT INTO t SELECT g, 'n' || g FROM generate_series(101, 160) g;");
    // (a kind that reads no answer gets its garbage with an error status:
    // see TargetEnv::ANSWER_BODIES)
    let garbage = if E::ANSWER_BODIES {
        Fault::Garbage
    } else {
        Fault::Raw(500, "<!DOCTYPE html><html><body><h1>Internal error</h1>\u{0}</body></html>".into())
    };
    for f in [
        garbage.clone(),
        Fault::Truncated,
        Fault::BatchMissingResponses,
        garbage,
        Fault::Truncated,
        Fault::BatchMissingResponses,
    ] {
        // A batch missing responses needs a kind that sends batches.
        if f != Fault::BatchMissingResponses || E::BATCHES {
            env.inject(f, 1);
        }
    }
    env.sync_once(&db);
    env.assert_target_equals_source(&db, "t", &["T"]);
    // The ledger agrees with the target: every exported row's item exists.
    let ledger = db.psql("SELECT count(*) FROM sync.ledger WHERE target_id IS NOT NULL");
    assert_eq!(ledger, "160");
}

fn a_throttled_target_gets_everything_once_with_few_429s<E: TargetEnv>() {
    // 1,200 writes a minute on both sides (Graph: 2,400 RU/min): 2,000
    // creates take ~100 s.
    let (env, db) = setup::<E>(
        EnvOptions { writes_per_min: Some(1200), ..EnvOptions::default() },
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 2000) g;",
    );
    define_t(&env, &db);
    let started = Instant::now();
    env.sync_once(&db);
    let stats = env.stats();
    eprintln!(
        "throttled run: {} requests, {} batches, {} 429s, {} RU, {:.0} s",
        stats.requests,
        stats.batch_requests,
        stats.throttled,
        stats.ru_used,
        started.elapsed().as_secs_f64()
    );
    env.assert_target_equals_source(&db, "t", &["T"]);
    assert_eq!(stats.writes, 2000 + E::PROVISION_WRITES, "one create per row (and the container), nothing twice");
    assert!(stats.throttled * 100 <= stats.requests, "429s: {} of {} requests", stats.throttled, stats.requests);
}

fn killing_the_worker_mid_batch_ten_times_leaves_exactly_5000_items<E: TargetEnv>() {
    let (env, db) = setup::<E>(
        EnvOptions::default(),
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 5000) g;",
    );
    define_t(&env, &db);
    db.psql(&format!("ALTER DATABASE \"{}\" SET sync.lease_seconds = 2", db.name()));
    env.set_latency(40);
    for kill in 0..10 {
        let child = spawn_quiet(env.worker_cmd(&db, &[]));
        std::thread::sleep(Duration::from_millis(700 + 137 * kill));
        drop(child); // SIGKILL, whatever it was doing
    }
    env.set_latency(0);
    std::thread::sleep(Duration::from_secs(3)); // the last leases expire
    env.sync_once(&db);
    let items = env.items("T");
    assert_eq!(items.len(), 5000, "exactly 5,000 items, no twins (a twin would have failed items())");
    // The kills did land mid-request: leases expired and were taken over
    // with a lookup by key first.
    let recovered = db.psql("SELECT count(*) FROM sync.pending_exports WHERE status = 'exported' AND verify");
    assert_ne!(recovered, "0", "no export was recovered from a killed worker's lease");
    eprintln!("{recovered} exports recovered from expired leases");
    env.assert_target_equals_source(&db, "t", &["T"]);
}

fn two_exporters_at_once_never_send_an_export_twice<E: TargetEnv>() {
    let (env, db) = setup::<E>(
        EnvOptions::default(),
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 1500) g;",
    );
    define_t(&env, &db);
    // Stage only; then two exporters drain the queue together.
    let out = env.worker_cmd(&db, &["--once", "--no-export"]).output().expect("ingest");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    env.set_latency(5);
    let exporters: Vec<ChildGuard> = (0..2)
        .map(|_| {
            let mut c = worker();
            c.args(["export", "--once", "--dsn", &db.dsn()]);
            env.add_secret(&mut c);
            ChildGuard::new(c.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("exporter"))
        })
        .collect();
    for e in exporters {
        let out = wait_with_limit(e, Duration::from_secs(300));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let stats = env.stats();
    assert_eq!(stats.writes, 1500 + E::PROVISION_WRITES, "each export sent once (and the container created once)");
    env.assert_target_equals_source(&db, "t", &["T"]);
    let both = db.psql("SELECT count(DISTINCT leased_by) FROM sync.pending_exports WHERE status = 'exported'");
    assert_eq!(both, "2", "both exporters took part");
}

/// One budget for many workers: three exporter processes against a target
/// limited to 2,400 writes a minute (Graph: 4,800 RU), each told the same
/// budget, share it through `sync.budget_take` (each alone would spend all
/// of it: three budgets, a 429 storm). One of them is killed mid-way and
/// another started: what it held is lost with it, nothing more.
#[test]
fn graph_exporters_on_several_processes_share_one_budget() {
    let (env, db) = setup::<GraphTargetEnv>(
        EnvOptions { writes_per_min: Some(2400), ..EnvOptions::default() },
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 600) g;",
    );
    define_t(&env, &db);
    // (the killed exporter's leases expire soon)
    db.psql(&format!("ALTER DATABASE \"{}\" SET sync.lease_seconds = 5", db.name()));
    let out = env.worker_cmd(&db, &["--once", "--no-export"]).output().expect("ingest");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let exporter = || {
        let mut c = worker();
        c.args(["export", "--once", "--dsn", &db.dsn()]);
        env.add_secret(&mut c);
        ChildGuard::new(c.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("exporter"))
    };
    let mut exporters: Vec<ChildGuard> = (0..3).map(|_| exporter()).collect();
    // Killed while it holds a slice of the budget (and leases).
    let deadline = Instant::now() + Duration::from_secs(60);
    while db.psql("SELECT count(*) >= 100 FROM sync.pending_exports WHERE status = 'exported' AND sync_key IS NOT NULL")
        != "t"
    {
        assert!(Instant::now() < deadline, "the exporters made no progress");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(exporters.remove(0)); // SIGKILL
    exporters.push(exporter());
    for e in exporters {
        let out = wait_with_limit(e, Duration::from_secs(300));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let stats = env.stats();
    let budget = db.psql(&format!("SELECT round(granted)::bigint || ' RU in ' || takes || ' grants' FROM sync.target_budgets WHERE target = '{TARGET}'"));
    eprintln!(
        "shared budget: {} requests, {} 429s, {} RU used; {budget}",
        stats.requests, stats.throttled, stats.ru_used
    );
    env.assert_target_equals_source(&db, "t", &["T"]);
    assert!(stats.throttled * 100 <= stats.requests, "429s: {} of {} requests", stats.throttled, stats.requests);
    assert_ne!(budget, "", "the exporters took their budget from sync.target_budgets");
    let shared = db.psql("SELECT count(DISTINCT leased_by) FROM sync.pending_exports WHERE status = 'exported'");
    assert!(shared.parse::<u32>().expect("count") >= 3, "{shared} exporters sent exports");
}

fn an_outage_spends_no_attempts_and_everything_arrives_once_it_ends<E: TargetEnv>() {
    let (env, db) = setup::<E>(EnvOptions::default(), "CREATE TABLE t (id int PRIMARY KEY, v text)");
    define_t(&env, &db);
    env.sync_once(&db); // the slot and the container
    let _worker = spawn_quiet(env.worker_cmd(&db, &[]));
    env.set_down(true);
    db.psql("INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 2000) g");
    let wait = |what: &str, sql: &str, want: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while db.psql(sql) != want {
            assert!(Instant::now() < deadline, "{what}: {sql} is not {want}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let target_status = format!("SELECT status FROM sync.targets WHERE name = '{TARGET}'");
    wait("the outage is seen", &target_status, "unreachable");
    wait("everything is staged", "SELECT count(*) FROM sync.pending_exports WHERE sync_key IS NOT NULL", "2000");
    // Several probe rounds while the target is down.
    std::thread::sleep(Duration::from_secs(4));
    let detail = db.psql(&format!("SELECT status_detail FROM sync.targets WHERE name = '{TARGET}'"));
    assert!(detail.contains("unreachable"), "sync.targets.status_detail says why: {detail}");
    // Only the claims in flight when it went down failed (one per lane);
    // the rest was not claimed, and kept every attempt.
    let tried = db.psql("SELECT count(*) FROM sync.pending_exports WHERE sync_key IS NOT NULL AND attempts > 0");
    let tried: u64 = tried.parse().expect("count");
    assert!(tried <= LANES * E::CLAIM_SIZE, "{tried} exports spent attempts on a target that was down");
    assert_eq!(
        db.psql("SELECT count(*) FROM sync.pending_exports WHERE status = 'exported' AND sync_key IS NOT NULL"),
        "0"
    );
    env.set_down(false);
    let deadline = Instant::now() + Duration::from_secs(60);
    while env.count("T") < 2000 {
        assert!(Instant::now() < deadline, "the backlog did not drain after the outage");
        std::thread::sleep(Duration::from_millis(100));
    }
    wait("the target is healthy again", &target_status, "ok");
    env.assert_target_equals_source(&db, "t", &["T"]);
    assert_eq!(db.psql("SELECT max(attempts) <= 2 FROM sync.pending_exports WHERE sync_key IS NOT NULL"), "t");
}

fn a_running_worker_renews_its_token_before_it_expires<E: TargetEnv>() {
    if !E::EXPIRING_TOKENS {
        eprintln!("{}: no expiring tokens, nothing to renew", E::KIND);
        return;
    }
    // Tokens live 4 s: the worker must renew them (at half their life).
    let env = E::start(EnvOptions { token_lifetime_secs: Some(4), ..EnvOptions::default() });
    let db = cluster().new_db(&format!("{} token", E::KIND));
    prepare(&db, "CREATE TABLE t (id int PRIMARY KEY, v text)");
    env.create_target(&db, TARGET);
    define_t(&env, &db);
    let _worker = spawn_quiet(env.worker_cmd(&db, &[]));
    let wait_for = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while env.count("T") < n {
            assert!(Instant::now() < deadline, "the items did not arrive");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    for wave in 0..3 {
        db.psql(&format!(
            "INSERT INTO t SELECT g, 'w{wave}' FROM generate_series({}, {}) g",
            wave * 10 + 1,
            wave * 10 + 10
        ));
        wait_for(wave * 10 + 10);
        // Past the renewal point (half of 4 s): the next request renews first.
        std::thread::sleep(Duration::from_secs(3));
    }
    env.assert_target_equals_source(&db, "t", &["T"]);
    let stats = env.stats();
    assert!(
        stats.tokens_issued >= 3,
        "only {} tokens for three waves 3 s apart with 4-second tokens",
        stats.tokens_issued
    );
    // Renewed ahead of time: no request ever went out with an expired token.
    assert_eq!(stats.unauthorized, 0, "the worker waited for 401s instead of renewing");
}

fn a_revoked_token_is_renewed_on_the_next_401<E: TargetEnv>() {
    if !E::EXPIRING_TOKENS {
        eprintln!("{}: no revocable tokens", E::KIND);
        return;
    }
    // Tokens live an hour: only a 401 can make the worker renew in time.
    let (env, db) = setup::<E>(
        EnvOptions::default(),
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'one');",
    );
    define_t(&env, &db);
    let _worker = spawn_quiet(env.worker_cmd(&db, &[]));
    let deadline = Instant::now() + Duration::from_secs(60);
    while env.count("T") < 1 {
        assert!(Instant::now() < deadline, "the first item did not arrive");
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = env.stats().tokens_issued;
    env.expire_tokens();
    db.psql("INSERT INTO t VALUES (2, 'two')");
    let deadline = Instant::now() + Duration::from_secs(15);
    while env.count("T") < 2 {
        assert!(Instant::now() < deadline, "after a revocation the worker did not renew its token");
        std::thread::sleep(Duration::from_millis(100));
    }
    let stats = env.stats();
    assert_eq!(stats.tokens_issued, before + 1, "one new token");
    assert!(stats.unauthorized >= 1, "the renewal came from a 401");
    env.assert_target_equals_source(&db, "t", &["T"]);
}
