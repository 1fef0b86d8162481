//! The worker's metrics endpoint, scraped while it works against the Graph
//! emulator: every metric is there with its type, the output passes a
//! strict parser of the text format, the counts equal what the emulator
//! received and the rows changed, and they move with the work done.

use std::collections::BTreeMap;
use std::fs::File;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use syncbridge_tests::emulator::Stats;
use syncbridge_tests::graph::{worker_cmd, GraphEnv};
use syncbridge_tests::graph_emulator::Fault;
use syncbridge_tests::ingest::prepare;
use syncbridge_tests::process::{signal, wait_with_limit, ChildGuard};
use syncbridge_tests::prometheus::{self, Exposition};
use syncbridge_tests::{cluster, TestDb};
use syncbridge_worker::metrics::{self as registry, Kind};

const DDL: &str = "
CREATE TABLE items (id int PRIMARY KEY, v text);
CREATE TABLE tasks (id int PRIMARY KEY, title text NOT NULL);
INSERT INTO tasks VALUES (1, 'Write docs'), (2, 'Fix bug');
";

/// How long anything may take before the test gives up (a bound on a wait,
/// never a measurement).
const PATIENCE: Duration = Duration::from_secs(120);

fn setup() -> (GraphEnv, TestDb) {
    let env = GraphEnv::start(None);
    let db = cluster().new_db("metrics");
    prepare(&db, DDL);
    db.psql(&format!("ALTER DATABASE \"{}\" SET sync.backoff_base_seconds = 1", db.name()));
    env.create_target(&db, "sp", None);
    // Two-way lists are pulled every second.
    db.psql("SELECT sync.alter_target('sp', config => '{\"pull_interval\": 1}')");
    db.psql("SELECT sync.define('items', source => 'items', target => 'sp', list => 'Items')");
    db.psql("SELECT sync.map('items', 'v', 'Title')");
    db.psql("SELECT sync.define('tasks', source => 'tasks', target => 'sp', list => 'Tasks', direction => 'both')");
    db.psql("SELECT sync.map('tasks', 'title', 'Title', direction => 'both')");
    for d in ["items", "tasks"] {
        db.psql(&format!("SELECT sync.provision('{d}'), sync.enable('{d}')"));
    }
    (env, db)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("its address").port()
}

/// GET `url`: the status, the content type and the body (None: no answer).
fn get(env: &GraphEnv, url: &str) -> Option<(u16, String, String)> {
    env.block_on(async {
        let r = reqwest::Client::new().get(url).timeout(Duration::from_secs(10)).send().await.ok()?;
        let status = r.status().as_u16();
        let ct = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        Some((status, ct, r.text().await.ok()?))
    })
}

/// Scrapes `/metrics` and parses it strictly.
fn scrape(env: &GraphEnv, base: &str) -> Exposition {
    let (status, ct, body) = get(env, &format!("{base}/metrics")).expect("/metrics answers");
    assert_eq!(status, 200, "{body}");
    assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
    prometheus::parse(&body).unwrap_or_else(|e| panic!("the exposition does not parse: {e}\n{body}"))
}

/// Waits until `ok` holds (panics with `what` after [`PATIENCE`]).
fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < PATIENCE, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The emulator's counters, and the delta pages it served.
fn emulator_counts(env: &GraphEnv) -> (Stats, u64) {
    (env.emu.stats(), env.emu.delta_pages())
}

/// A scrape taken while the emulator saw no request (its counters equal
/// before and after), for which `check` holds: the worker counts what it
/// did once it is done with it, the emulator when a request arrives, so the
/// two agree only between requests (pulls run every second). Panics with
/// the last disagreement after [`PATIENCE`].
fn quiet_scrape(
    env: &GraphEnv,
    base: &str,
    check: impl Fn(&Exposition, &Stats, u64) -> Result<(), String>,
) -> (Exposition, Stats) {
    let start = Instant::now();
    loop {
        let before = emulator_counts(env);
        let e = scrape(env, base);
        let after = emulator_counts(env);
        let last = if before == after {
            match check(&e, &after.0, after.1) {
                Ok(()) => return (e, after.0),
                Err(why) => why,
            }
        } else {
            "the emulator got requests during the scrape".into()
        };
        assert!(start.elapsed() < PATIENCE, "the metrics never agreed with the emulator: {last}\n{after:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn eq(what: &str, got: f64, want: f64) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: {got}, expected {want}"))
    }
}

const T: (&str, &str) = ("target", "sp");

/// What the emulator counted equals what the worker counts.
fn agrees_with_emulator(e: &Exposition, s: &Stats, delta_pages: u64) -> Result<(), String> {
    eq(
        "requests (every answer: tokens, requests, $batch items)",
        e.sum("syncbridge_target_requests_total", &[T]),
        s.requests as f64,
    )?;
    eq("requests without an answer", e.sum("syncbridge_target_request_errors_total", &[T]), 0.0)?;
    eq(
        "tokens",
        e.sum("syncbridge_target_requests_total", &[T, ("kind", "token"), ("code", "200")]),
        s.tokens_issued as f64,
    )?;
    eq("429s", e.sum("syncbridge_target_throttled_total", &[T]), s.throttled as f64)?;
    eq("429s by status", e.sum("syncbridge_target_requests_total", &[T, ("code", "429")]), s.throttled as f64)?;
    eq(
        "writes (exports the target confirmed)",
        e.sum("syncbridge_exports_total", &[T, ("outcome", "ok")]),
        s.writes as f64,
    )?;
    eq("delta pages", e.sum("syncbridge_pull_pages_total", &[T]), delta_pages as f64)?;
    Ok(())
}

fn fields(v: Value) -> Map<String, Value> {
    v.as_object().cloned().expect("an object")
}

fn count(e: &Exposition, sample: &str, filter: &[(&str, &str)]) -> f64 {
    e.sum(sample, filter)
}

/// Every series of every counter, and every histogram's count, keyed by
/// name and labels.
fn monotonic_series(e: &Exposition) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (name, f) in &e.families {
        for s in &f.samples {
            let counts = match f.kind.as_str() {
                "counter" => true,
                "histogram" => !s.name.ends_with("_sum"),
                _ => false,
            };
            if counts {
                out.insert(format!("{name} {} {:?}", s.name, s.labels), s.value);
            }
        }
    }
    out
}

#[test]
fn the_metrics_endpoint_counts_what_the_emulator_received() {
    let (env, db) = setup();
    let slot = db.name().to_owned();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let log_path = std::env::temp_dir().join(format!("syncbridge-metrics-{}-{port}.log", std::process::id()));
    let log = File::create(&log_path).expect("a log file");
    let mut cmd = worker_cmd(&db, &["--metrics-addr", &format!("127.0.0.1:{port}")]);
    cmd.stdout(Stdio::null()).stderr(log);
    let worker = ChildGuard::new(cmd.spawn().expect("start the worker"));
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    // Health first, then ready once it streams and exports.
    wait_until("/healthz answers", || get(&env, &format!("{base}/healthz")).is_some_and(|(s, _, _)| s == 200));
    wait_until("/readyz says ready", || get(&env, &format!("{base}/readyz")).is_some_and(|(s, _, _)| s == 200));
    let (_, ct, body) = get(&env, &format!("{base}/readyz")).expect("/readyz");
    assert!(ct.starts_with("text/plain") && body.starts_with("ready\n"), "{ct} {body}");
    assert!(body.contains("ingest: ready") && body.contains("export: ready"), "{body}");
    assert_eq!(get(&env, &format!("{base}/nothing")).map(|r| r.0), Some(404));

    // The initial load: two lists provisioned, the tasks' two rows created.
    wait_until("the initial load arrived", || {
        let items = env.items();
        items.get("Tasks").is_some_and(|t| t.len() == 2) && items.contains_key("Items")
    });

    // Every metric the worker documents, with its type and help.
    let e = scrape(&env, &base);
    for f in registry::ALL {
        let fam = e.families.get(f.name).unwrap_or_else(|| panic!("{} missing", f.name));
        assert_eq!(fam.kind, f.kind.as_str(), "{}", f.name);
        assert_eq!(fam.help.as_deref(), Some(f.help), "{}", f.name);
    }
    for (name, kind) in [
        ("syncbridge_slot_lag_bytes", Kind::Gauge),
        ("syncbridge_slot_wal_held_bytes", Kind::Gauge),
        ("syncbridge_slot_lag_seconds", Kind::Gauge),
        ("syncbridge_ingest_changes_total", Kind::Counter),
        ("syncbridge_ingest_keys_staged_total", Kind::Counter),
        ("syncbridge_exports_total", Kind::Counter),
        ("syncbridge_target_requests_total", Kind::Counter),
        ("syncbridge_target_throttled_total", Kind::Counter),
        ("syncbridge_target_retry_after_seconds_total", Kind::Counter),
        ("syncbridge_target_budget_spent_units_total", Kind::Counter),
        ("syncbridge_target_budget_allowed_units_per_second", Kind::Gauge),
        ("syncbridge_queue_exports", Kind::Gauge),
        ("syncbridge_export_claim_to_complete_seconds", Kind::Histogram),
        ("syncbridge_ingest_commit_to_staged_seconds", Kind::Histogram),
        ("syncbridge_pull_items_total", Kind::Counter),
        ("syncbridge_imports_total", Kind::Counter),
        ("syncbridge_conflicts_total", Kind::Counter),
        ("syncbridge_run_duration_seconds", Kind::Histogram),
        ("syncbridge_batch_duration_seconds", Kind::Histogram),
    ] {
        assert_eq!(e.families.get(name).map(|f| f.kind.as_str()), Some(kind.as_str()), "{name}");
    }
    assert_eq!(e.value("syncbridge_build_info", &[("version", syncbridge_worker::VERSION)]), Some(1.0));
    assert_eq!(e.value("syncbridge_target_budget_allowed_units_per_second", &[T]), Some(1_000_000.0 / 60.0));
    // No label value is a key, a URL or a secret.
    for f in e.families.values() {
        for s in &f.samples {
            for v in s.labels.values() {
                assert!(!v.contains("://") && !v.contains(&env.emu.base_url()), "{} {:?}", s.name, s.labels);
            }
        }
    }

    // Phase 1: 30 rows inserted, a person edits a task in SharePoint.
    db.psql("INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 30) g");
    wait_until("30 items arrived", || env.items().get("Items").is_some_and(|i| i.len() == 30));
    env.emu.person_edit("Tasks", "1", &fields(json!({"Title": "Write the docs"})), 7).expect("a person's edit");
    wait_until("the edit was applied", || db.psql("SELECT title FROM tasks WHERE id = 1") == "Write the docs");
    let (first, stats1) = quiet_scrape(&env, &base, |e, s, pages| {
        agrees_with_emulator(e, s, pages)?;
        eq("RU spent", count(e, "syncbridge_target_budget_spent_units_total", &[T]), s.ru_used as f64)?;
        eq("imports applied", count(e, "syncbridge_imports_total", &[T, ("outcome", "applied")]), 1.0)?;
        // The stream decodes (and skips) the applying transaction on its own time.
        eq("updates decoded", count(e, "syncbridge_ingest_changes_total", &[("op", "update")]), 1.0)
    });
    let ok = |e: &Exposition, op: &str| count(e, "syncbridge_exports_total", &[T, ("op", op), ("outcome", "ok")]);
    // What the rows did.
    let changes = |e: &Exposition, op: &str| count(e, "syncbridge_ingest_changes_total", &[("op", op)]);
    assert_eq!(changes(&first, "insert"), 30.0, "30 rows inserted");
    assert_eq!(changes(&first, "update"), 1.0, "the applied edit, decoded and skipped");
    assert_eq!((changes(&first, "delete"), changes(&first, "truncate")), (0.0, 0.0));
    assert!(count(&first, "syncbridge_ingest_transactions_skipped_total", &[]) >= 1.0);
    assert!(count(&first, "syncbridge_ingest_transactions_total", &[]) >= 2.0);
    assert_eq!(count(&first, "syncbridge_ingest_keys_staged_total", &[]), 30.0, "the applied edit is not staged");
    assert_eq!(count(&first, "syncbridge_ingest_exports_staged_total", &[("definition", "items")]), 30.0);
    assert_eq!(count(&first, "syncbridge_ingest_commit_to_staged_seconds_count", &[]), 1.0, "one transaction");
    assert_eq!((ok(&first, "provision"), ok(&first, "add")), (2.0, 32.0), "2 lists, 30 items and 2 tasks");
    assert_eq!((ok(&first, "update"), ok(&first, "delete"), ok(&first, "move")), (0.0, 0.0, 0.0));
    let all_exports = count(&first, "syncbridge_exports_total", &[T]);
    assert_eq!(all_exports, 34.0, "no export failed");
    assert_eq!(count(&first, "syncbridge_exports_claimed_total", &[T]), all_exports);
    assert_eq!(count(&first, "syncbridge_export_claim_to_complete_seconds_count", &[T]), all_exports);
    assert!(count(&first, "syncbridge_export_claim_to_complete_seconds_sum", &[T]) > 0.0);
    assert_eq!(stats1.throttled, 0);
    assert_eq!(count(&first, "syncbridge_target_retry_after_seconds_total", &[T]), 0.0);
    assert_eq!(count(&first, "syncbridge_conflicts_total", &[T]), 0.0);
    assert_eq!(count(&first, "syncbridge_pull_failures_total", &[T]), 0.0);
    // (The tasks' creation may be read back too, as echoes, when a pull comes after it.)
    assert!(count(&first, "syncbridge_pull_items_total", &[T, ("read", "pull")]) >= 1.0, "the edit was read");
    let pages = count(&first, "syncbridge_pull_pages_total", &[T, ("read", "pull")]);
    assert_eq!(count(&first, "syncbridge_batch_duration_seconds_count", &[("kind", "pull_page")]), pages);
    for kind in ["stage", "export", "backfill_chunk"] {
        assert!(count(&first, "syncbridge_batch_duration_seconds_count", &[("kind", kind)]) >= 1.0, "{kind}");
    }
    for kind in ["pull", "backfill"] {
        let runs = count(&first, "syncbridge_run_duration_seconds_count", &[("kind", kind), ("status", "succeeded")]);
        assert!(runs >= 1.0, "{kind} runs finished");
    }
    assert_eq!(count(&first, "syncbridge_restarts_total", &[]), 0.0);
    assert!(first.value("syncbridge_slot_lag_seconds", &[("slot", &slot)]).is_some_and(|v| v >= 0.0));

    // The sampled gauges: every open state of both definitions, nothing
    // pending once everything arrived, the slot's lag in bytes.
    wait_until("the sampler saw the queue drained", || {
        let e = scrape(&env, &base);
        let states_ok = ["items", "tasks"].iter().all(|d| {
            ["pending", "awaiting_approval", "executing", "failed", "error"]
                .iter()
                .all(|s| e.value("syncbridge_queue_exports", &[T, ("definition", d), ("state", s)]).is_some())
        });
        states_ok
            && e.sum("syncbridge_queue_exports", &[T]) == 0.0
            && e.sum("syncbridge_queue_exports_oldest_age_seconds", &[T]) == 0.0
            && e.value("syncbridge_queue_imports", &[T, ("definition", "tasks"), ("state", "pending")]) == Some(0.0)
            && e.value("syncbridge_slot_wal_held_bytes", &[("slot", &slot)]).is_some_and(|b| b > 0.0)
            && e.value("syncbridge_slot_lag_bytes", &[("slot", &slot)]).is_some_and(|b| b >= 0.0)
            && e.value("syncbridge_sampler_last_success_timestamp_seconds", &[]).is_some_and(|t| t > 1.6e9)
    });
    assert_eq!(count(&scrape(&env, &base), "syncbridge_sampler_failures_total", &[]), 0.0);

    // Phase 2: 10 updates and 5 deletes, and one 429 with Retry-After: 1.
    env.emu.inject(Fault::Throttle("1".into()), 1);
    db.psql("UPDATE items SET v = v || '!' WHERE id <= 10");
    db.psql("DELETE FROM items WHERE id > 25");
    wait_until("the updates and deletes arrived", || {
        env.items().get("Items").is_some_and(|i| {
            i.len() == 25 && (1..=10).all(|k| i[&k.to_string()]["Title"].as_str().is_some_and(|t| t.ends_with('!')))
        })
    });
    let (second, stats2) = quiet_scrape(&env, &base, |e, s, pages| {
        agrees_with_emulator(e, s, pages)?;
        eq("429s", s.throttled as f64, 1.0)?;
        eq("Retry-After seconds", count(e, "syncbridge_target_retry_after_seconds_total", &[T]), 1.0)?;
        eq("updates sent", ok(e, "update"), 10.0)?;
        eq("deletes sent", ok(e, "delete"), 5.0)
    });
    assert_eq!(changes(&second, "insert"), 30.0);
    assert_eq!(changes(&second, "update"), 11.0, "10 more updates");
    assert_eq!(changes(&second, "delete"), 5.0, "5 deletes");
    assert_eq!(count(&second, "syncbridge_ingest_keys_staged_total", &[]), 45.0);
    assert_eq!(count(&second, "syncbridge_ingest_exports_staged_total", &[("definition", "items")]), 45.0);
    assert_eq!(ok(&second, "add"), 32.0);
    // The throttled attempt was paid for, and paid again when sent anew.
    assert!(count(&second, "syncbridge_target_budget_spent_units_total", &[T]) > stats2.ru_used as f64);

    // The counters moved with the work, and none went back.
    let (a, b) = (monotonic_series(&first), monotonic_series(&second));
    for (k, v) in &a {
        let now = b.get(k).unwrap_or_else(|| panic!("{k} disappeared"));
        assert!(now >= v, "{k} went from {v} to {now}");
    }
    for (sample, filter) in [
        ("syncbridge_target_requests_total", &[T][..]),
        ("syncbridge_exports_total", &[T]),
        ("syncbridge_exports_claimed_total", &[T]),
        ("syncbridge_ingest_changes_total", &[]),
        ("syncbridge_ingest_keys_staged_total", &[]),
        ("syncbridge_target_budget_spent_units_total", &[T]),
        ("syncbridge_target_throttled_total", &[T]),
        ("syncbridge_export_claim_to_complete_seconds_count", &[T]),
        ("syncbridge_ingest_commit_to_staged_seconds_count", &[]),
        ("syncbridge_batch_duration_seconds_count", &[("kind", "stage")]),
    ] {
        assert!(second.sum(sample, filter) > first.sum(sample, filter), "{sample} did not move");
    }
    assert!(stats2.requests > stats1.requests && stats2.writes == stats1.writes + 15);

    // SIGTERM: the worker stops cleanly.
    signal(&worker, libc::SIGTERM);
    let out = wait_with_limit(worker, PATIENCE);
    assert!(out.status.success(), "{}", log());
    assert!(log().contains("serving /metrics, /healthz and /readyz"), "{}", log());
    let _ = std::fs::remove_file(&log_path);
}

#[test]
fn a_metrics_address_in_use_is_refused() {
    let db = cluster().new_db("metrics_busy");
    prepare(&db, "CREATE TABLE t (id int PRIMARY KEY)");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let addr = busy.local_addr().expect("its address").to_string();
    let mut cmd = worker_cmd(&db, &["--once", "--metrics-addr", &addr]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = wait_with_limit(cmd.spawn().expect("start the worker"), PATIENCE);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("cannot serve metrics on {addr}")), "{err}");
}
